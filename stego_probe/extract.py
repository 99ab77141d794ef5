"""Extract backbone patch tokens of a dataset split into a :class:`~stego_probe.store.FeatureStore`.

The extraction is resumable and refuses to mix inputs:

* all arrays are pre-allocated; images are processed block by block (a block = a zarr chunk,
  or a shard), batches never straddle blocks, and a block's progress marker is written only
  after all of its data, so a run killed at any point and started again rewrites exactly the
  unfinished blocks and ends with the same store content as an uninterrupted run;
* reopening a store made from other inputs (dataset, its options, data root, file list,
  split, limit, class names, backbone, weights, resolution, crop, transform ...) raises
  ``ValueError`` listing every difference and leaves the store untouched;
* an incomplete store with no block written yet is recreated from the new inputs, so its
  provenance always describes the data that is in it;
* a complete store is returned as is (``overwrite=True`` re-extracts);
* non-finite backbone output is refused before its block is written;
* a local store is locked (``.<name>.lock`` next to it) while it is written;
* several processes (``torchrun``, ``rank`` / ``world_size``) can write one store: each
  extracts a disjoint share of its blocks, so a killed rank loses only its unfinished blocks.

Writing happens in a background thread, overlapping with the next blocks' forward passes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from stego_probe.data.base import Sample, SegDataset
from stego_probe.device import resolve_device
from stego_probe.distributed import Ranks
from stego_probe.fileio import to_jsonable
from stego_probe.labels import IGNORE, canonicalize
from stego_probe.lock import FolderLockedError
from stego_probe.provenance import check_compatible, differing_keys, package_info
from stego_probe.store import FORMAT_VERSION, FeatureStore, normalize_path
from stego_probe.threads import uses_threads

CROPS = ("center", "five", "none")
FIVE_CROP_RATIO = 0.5

# Provenance keys that must agree between an existing store and a new extraction into it.
COMPAT_KEYS = (
    "format_version",
    "dataset",
    "split",
    "n_classes",
    "n_source_images",
    "n_images",
    "limit",
    "backbone",
    "weights_sha256",
    "patch_size",
    "embed_dim",
    "flip_average",
    "pos_interp",
    "layer",
    "res",
    "crop",
    "transform",
    "flipped",
    "token_dtype",
    "grid",
    "dim",
    "label_shape",
    "class_names",
    "data_root",
    "files_sha256",
)
#: Besides :data:`COMPAT_KEYS`, every entry of ``dataset_args`` and of ``dataset_info`` is
#: compared (as ``dataset_args.<key>`` / ``dataset_info.<key>``), except the ``dataset_info``
#: entries that repeat a compared top-level key.
_INFO_REPEATS = ("dataset", "split", "n_classes", "n_images", "root", "args", "files_sha256")

#: Provenance key -> the ``stego-probe extract`` option that sets it (for error messages).
CLI_OPTIONS = {
    "dataset": "--dataset",
    "split": "--split",
    "n_source_images": "--limit / --dataset-arg",
    "n_images": "--limit / --crop / --dataset-arg",
    "limit": "--limit",
    "data_root": "--data-root",
    "class_names": "--dataset-arg class_names=",
    "n_classes": "--dataset-arg n_classes=",
    "files_sha256": "--data-root / --dataset-arg (the files of the split)",
    "backbone": "--backbone",
    "weights_sha256": "--weights / --backbone-kwargs",
    "patch_size": "--backbone / --backbone-kwargs",
    "embed_dim": "--backbone / --backbone-kwargs",
    "pos_interp": "--backbone-kwargs pos_interp=",
    "flip_average": "--backbone-kwargs flip_average=",
    "layer": "--layer",
    "res": "--res",
    "crop": "--crop",
    "transform": "--res / --crop / --backbone",
    "flipped": "--flipped",
    "token_dtype": "--float32",
    "grid": "--res",
    "dim": "--backbone",
    "label_shape": "--res",
}


class LimitedDataset(SegDataset):
    """The first ``limit`` images of ``base``, as ``extract(limit=)`` stores them (for quick
    tries); the sweep rebuilds it to check a limited store's recorded file list."""

    def __init__(self, base: SegDataset, limit: int) -> None:
        super().__init__(
            name=base.name,
            split=base.split,
            n_classes=base.n_classes,
            class_names=list(base.class_names),
            ids=list(base.ids[:limit]),
            info=dict(base.info),
            args=dict(base.args),
            root=base.root,
        )
        self.base = base

    def load(self, i: int) -> Sample:
        return self.base[i]

    def file_list(self) -> list[str] | None:
        files = self.base.file_list()
        return None if files is None else list(files[: len(self)])

    @property
    def provenance(self) -> dict:
        # the fingerprint of the images used, not of the whole split
        return {**self.base.provenance, "n_images": len(self), "files_sha256": self.files_sha256}


def _wrap_error(e: BaseException, sample_id: str, index: int, what: str) -> BaseException:
    """An exception of a CLI-printable type whose message names the sample."""
    msg = f"sample {sample_id!r} (index {index}) of {what}: {type(e).__name__}: {e}"
    if isinstance(e, FileNotFoundError):
        return FileNotFoundError(msg)
    if isinstance(e, KeyError):
        return KeyError(msg)
    if isinstance(e, ValueError | OSError):  # OSError: an unreadable / truncated image file
        return ValueError(msg)
    return RuntimeError(msg)


class _Items(torch.utils.data.Dataset):
    """Store index ``j`` -> transformed ``(image (3, res, res) float32, label (res, res) int64,
    j, id)``. With five-crop, item ``j`` is crop ``j % 5`` of source image ``j // 5``; the
    crops of the last source image are cached, so consecutive items decode each image once."""

    def __init__(self, dataset: SegDataset, transform, crop: str, res: int) -> None:
        self.dataset = dataset
        self.transform = transform
        self.five = crop == "five"
        self.res = res
        self.n_classes = int(dataset.n_classes)
        self.what = f"dataset {dataset.name}/{dataset.split}"
        self._cache: tuple[int, list[Sample]] | None = None

    def __len__(self) -> int:
        return len(self.dataset) * (5 if self.five else 1)

    def _source(self, i: int) -> Sample:
        sample = self.dataset[i]
        if not isinstance(sample, Sample):
            raise ValueError(f"dataset[{i}] returned {type(sample).__name__}, expected a Sample")
        if sample.label is not None:
            lab = np.asarray(sample.label)
            hw = (sample.image.height, sample.image.width)
            if lab.shape != hw:
                raise ValueError(f"label shape {lab.shape} does not match image size {hw} (H, W)")
        return sample

    def _sample(self, j: int) -> Sample:
        if not self.five:
            return self._source(j)
        i, k = divmod(j, 5)
        if self._cache is None or self._cache[0] != i:
            from stego_probe.data.transforms import five_crop_sample

            self._cache = (i, five_crop_sample(self._source(i), ratio=FIVE_CROP_RATIO))
        return self._cache[1][k]

    def __getitem__(self, j: int):
        i = j // 5 if self.five else j
        sid = str(self.dataset.ids[i])
        try:
            sample = self._sample(j)
            sid = sample.id
            image, label = self.transform(sample)
            r = self.res
            if tuple(image.shape) != (3, r, r) or tuple(label.shape) != (r, r):
                raise ValueError(
                    f"transform returned image {tuple(image.shape)} / label "
                    f"{tuple(label.shape)}, expected (3, {r}, {r}) / ({r}, {r})"
                )
            label = torch.from_numpy(canonicalize(np.asarray(label), self.n_classes))
        except Exception as e:  # noqa: BLE001 - re-raised with the sample id
            raise _wrap_error(e, sid, j, self.what) from e
        return image.float(), label, j, sid


def _collate(items):
    images = torch.stack([it[0] for it in items])
    labels = torch.stack([it[1] for it in items])
    return images, labels, [it[2] for it in items], [it[3] for it in items]


def _batches(store: FeatureStore, blocks: Sequence[int], batch_size: int) -> list[list[int]]:
    """Index batches for ``blocks``; a batch never straddles two blocks, so the batches of a
    block are the same whether or not the extraction was resumed."""
    out = []
    for b in blocks:
        start, stop = store.block_range(b)
        out.extend(
            list(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size)
        )
    return out


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily run torch's intra-op ops on ``n`` threads.

    Per-image transforms are small tensor ops; on a busy machine splitting them over several
    threads costs far more in thread wake-ups than it saves (measured on 2 contended cores:
    6 ms per 224-px image single-threaded vs 30-90 ms with 2 threads). DataLoader workers
    already run single-threaded; this gives the in-process loader the same behaviour.
    """
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: The most DataLoader workers ``num_workers="auto"`` starts per process on a CUDA device.
AUTO_CUDA_WORKERS = 8


def auto_num_workers(device: torch.device, local_world_size: int | None = None) -> int:
    """The DataLoader workers of ``extract(num_workers="auto")`` (the default) on ``device``.

    On the CPU: 0 (decoding in-process): the forward already keeps every core busy, so worker
    processes would only take cores from it. On a CUDA device: the cores this process may run
    on (:func:`stego_probe.threads.available_cores`) shared among the ranks of this machine
    (``local_world_size``, default the ``LOCAL_WORLD_SIZE`` variable ``torchrun`` sets, else 1),
    one left to the rank itself, between 1 and :data:`AUTO_CUDA_WORKERS`: the images of the
    next batches are decoded and transformed while the GPU runs the forward, instead of the GPU
    waiting for them. Also 0 where new processes are not forked (Windows, macOS: "spawn"
    workers would need a picklable dataset and an ``if __name__ == "__main__":`` guard in the
    calling script; pass ``num_workers=N`` there explicitly).

    Args:
        device: the device of the forward pass.
        local_world_size: ranks on this machine.

    Returns:
        the number of workers (int >= 0).

    Examples:
        >>> auto_num_workers(torch.device("cpu"))
        0
    """
    # the start method in force, else the platform's default (listed first), without fixing it
    method = multiprocessing.get_start_method(allow_none=True)
    if device.type != "cuda" or (method or multiprocessing.get_all_start_methods()[0]) != "fork":
        return 0
    from stego_probe.threads import available_cores

    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    per_rank = available_cores() // max(1, int(local_world_size)) - 1
    return max(1, min(AUTO_CUDA_WORKERS, per_rank))


def _load(items: _Items, batches, num_workers: int, pin: bool) -> Iterator:
    """Yield collated batches: ``(images (B, 3, res, res), labels (B, res, res), js, ids)``."""
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            items,
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin,
            persistent_workers=False,
        )
        yield from loader
    else:
        for batch in batches:
            with _torch_threads(1):
                out = _collate([items[j] for j in batch])
            yield out


def store_provenance(
    dataset: SegDataset,
    backbone,
    *,
    res: int,
    crop: str,
    flipped: bool,
    limit: int | None,
    n_source_images: int,
    transform_info: dict,
    token_dtype: str = "float16",
) -> dict:
    """The provenance dict written into a store (JSON types; see ``docs/store.md``).

    A backbone whose provenance has no ``weights_sha256`` (no weight file) but that holds
    weights (a non-empty ``state_dict``) gets the SHA-256 fingerprint of those weights
    (:func:`~stego_probe.backbones.weights.state_dict_fingerprint`) as ``weights_sha256`` and
    ``weights_fingerprint``, so stores of different random weights are never compatible.
    """
    ds = dict(dataset.provenance)
    bb = dict(backbone.provenance)
    patch = int(bb.get("patch_size", backbone.patch_size))
    grid = [res // patch, res // patch]
    weights_sha = bb.get("weights_sha256")
    if weights_sha is None and isinstance(backbone, torch.nn.Module) and backbone.state_dict():
        from stego_probe.backbones.weights import state_dict_fingerprint

        weights_sha = bb.get("weights_fingerprint") or state_dict_fingerprint(backbone)
        bb["weights_fingerprint"] = weights_sha
    args = ds.get("args")
    files_sha = ds.get("files_sha256")
    if files_sha is None:  # a dataset that does not derive from SegDataset's provenance
        from stego_probe.data.base import files_fingerprint

        files_sha = files_fingerprint([str(i) for i in dataset.ids], None)
    prov = {
        "format_version": FORMAT_VERSION,
        "dataset": ds.get("dataset", dataset.name),
        "split": ds.get("split", dataset.split),
        "n_classes": int(dataset.n_classes),
        "class_names": list(dataset.class_names),
        "n_source_images": int(n_source_images),
        "n_images": int(n_source_images) * (5 if crop == "five" else 1),
        "limit": limit,
        "dataset_args": dict(args) if isinstance(args, Mapping) else {},
        "data_root": ds.get("root"),
        "files_sha256": files_sha,
        "dataset_info": ds,
        "backbone": bb.get("backbone", backbone.name),
        "weights": bb.get("weights"),
        "weights_sha256": weights_sha,
        "patch_size": patch,
        "embed_dim": int(bb.get("embed_dim", backbone.embed_dim)),
        "flip_average": bool(bb.get("flip_average", False)),
        "pos_interp": bb.get("pos_interp"),
        "layer": bb.get("layer"),  # None: the final output
        "backbone_info": bb,
        "res": int(res),
        "crop": crop,
        "five_crop_ratio": FIVE_CROP_RATIO if crop == "five" else None,
        "transform": transform_info,
        "flipped": bool(flipped),
        "token_dtype": token_dtype,
        "grid": grid,
        "dim": int(bb.get("embed_dim", backbone.embed_dim)),
        "label_shape": [int(res), int(res)],
        "package": package_info(),
    }
    return to_jsonable(prov)


def compat_view(prov: Mapping) -> dict:
    """The entries of a store provenance that must agree for an extraction to resume:
    :data:`COMPAT_KEYS`, ``dataset_args.<key>`` for every dataset option, and
    ``dataset_info.<key>`` for the dataset's other provenance entries (label map, list files,
    ignore values ...)."""
    view = {k: prov.get(k) for k in COMPAT_KEYS}
    args = prov.get("dataset_args") or {}
    for k, v in args.items():
        view[f"dataset_args.{k}"] = v
    for k, v in (prov.get("dataset_info") or {}).items():
        if k not in _INFO_REPEATS and k not in args:
            view[f"dataset_info.{k}"] = v
    return view


def _cli_option(key: str) -> str:
    if key.startswith("dataset_args."):
        return f"--dataset-arg {key.split('.', 1)[1]}="
    if key.startswith("dataset_info."):
        return "--dataset / --dataset-arg / --data-root"
    return CLI_OPTIONS.get(key, key)


def check_store_compatible(existing: Mapping, new: Mapping, path: str) -> None:
    """Raise ``ValueError`` unless a store with provenance ``existing`` can take an extraction
    with provenance ``new``; the message lists every difference (:func:`compat_view`), the
    ``stego-probe extract`` options behind them, and how to replace the store."""
    old_view, new_view = compat_view(existing), compat_view(new)
    keys = list(COMPAT_KEYS) + sorted((set(old_view) | set(new_view)) - set(COMPAT_KEYS))
    diff = differing_keys(old_view, new_view, keys)
    if not diff:
        return
    try:
        check_compatible(old_view, new_view, diff, what=f"feature store {path}")
    except ValueError as e:
        options = list(dict.fromkeys(_cli_option(k) for k in diff))
        old = ""
        if not existing.get("files_sha256"):
            old = (
                " (this store was written by an older stego_probe, which did not record the "
                "dataset options, data root and file list)"
            )
        raise ValueError(
            f"{e}{old}. The options that differ: {', '.join(options)}. The existing store is "
            "kept: write to another store path (--store), or pass overwrite=True "
            "(`extract --overwrite`) to replace it"
        ) from None


@contextlib.contextmanager
def _store_lock(path: str) -> Iterator[None]:
    """Exclusive lock on a local store while it is written: ``fcntl.flock`` on the hidden file
    ``.<store name>.lock`` next to it (released by the kernel when the process dies). URLs and
    systems without ``fcntl`` are not locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if fcntl is None or "://" in path:
        yield
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lock = p.parent / f".{p.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise FolderLockedError(
                f"feature store {path} is being written by another extraction ({holder}); wait "
                "for it to finish, or write to another store path (--store)"
            ) from None
        import socket

        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_partial_files(path: str) -> None:
    """Delete ``*.partial`` temp files a killed zarr LocalStore write leaves behind."""
    if "://" in path or not os.path.isdir(path):
        return
    for dirpath, _, files in os.walk(path):
        for f in files:
            if f.endswith(".partial"):
                os.unlink(os.path.join(dirpath, f))


@uses_threads("large")
def extract(
    dataset: SegDataset,
    backbone,
    store_path: str | os.PathLike,
    *,
    res: int = 224,
    crop: str = "center",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    flipped: bool = False,
    num_workers: int | str = "auto",
    progress: bool = True,
    limit: int | None = None,
    chunk_images: int = 32,
    shard_images: int | None = None,
    compress_labels: bool = True,
    token_dtype: str = "float16",
    overwrite: bool = False,
    threads: int | str | None = "auto",
    rank: int | None = None,
    world_size: int | None = None,
) -> FeatureStore:
    """Extract the backbone's patch tokens of every image of ``dataset`` into a store.

    Args:
        dataset: a :class:`~stego_probe.data.base.SegDataset` (``dataset[i] -> Sample``).
        backbone: a :class:`~stego_probe.backbones.base.Backbone`:
            (B, 3, res, res) float32 normalised images -> (B, C, res/p, res/p) features.
        store_path: local directory or fsspec URL of the store.
        res: side of the square input (224 for training caches, 320 for evaluation).
        crop: ``"center"`` (shorter side -> res, centre crop), ``"none"`` (square resize), or
            ``"five"``: each image is expanded into its five crops (ratio 0.5, PROTOCOL §2.6),
            each then centre-transformed; crop ``k`` of image ``i`` is store index ``5i + k``
            with id ``f"{id}_c{k}"``.
        batch_size: images per forward pass.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        flipped: also store ``tokens_flipped = flip_W(backbone(flip_W(x)))`` for the
            evaluation-mode flip average (PROTOCOL §4.4).
        num_workers: DataLoader worker processes for decoding / transforms (0: in-process);
            ``"auto"`` (default): 0 on the CPU, up to :data:`AUTO_CUDA_WORKERS` on a CUDA
            device (:func:`auto_num_workers`). The store is the same for any number.
        progress: tqdm progress bar.
        limit: use only the first ``limit`` images of ``dataset`` (recorded in provenance).
        token_dtype: ``"float16"`` (default) or ``"float32"`` (parity runs, PROTOCOL §2.7).
        chunk_images, shard_images, compress_labels: store layout for a new store (see
            :meth:`FeatureStore.create`; ``compress_labels=False``, ``--raw-labels``: labels
            stored raw, read without decoding for more disk); an existing store with written
            blocks keeps its own.
        overwrite: delete an existing store at ``store_path`` and extract again. Without it,
            an existing store is resumed (or returned, when complete) only if it was made from
            the same inputs (:func:`check_store_compatible`); an incomplete one with no block
            written yet is recreated from the new inputs.
        threads: CPU threads of the backbone forward (restored after): ``"auto"`` (all
            cores, or an enclosing :func:`stego_probe.threads.limit`'s explicit count),
            ``"all"``, an int or None (library defaults); see :mod:`stego_probe.threads`.
        rank, world_size: run as rank ``rank`` of ``world_size`` processes writing the one
            store (default: the ``RANK`` / ``WORLD_SIZE`` variables ``torchrun`` sets, else a
            single process). Rank 0 locks, validates or creates the store; the ranks then
            extract disjoint shares of the pending blocks (:meth:`Ranks.mine
            <stego_probe.distributed.Ranks.mine>`) and rank 0 marks the store complete once
            all are written. The process group is joined if not initialised (``gloo`` on CPU,
            ``nccl`` on CUDA, ``env://``); ``device="cuda"`` / ``"auto"`` means
            ``cuda:LOCAL_RANK``. The store is byte-identical to a single-process extraction.

    Returns:
        the complete store, opened read-only.

    Raises:
        ValueError: bad arguments; an existing store with data made from different inputs
            (the message lists every difference; the store is left untouched); a sample whose
            label does not match its image, an unreadable image, or non-finite backbone output
            (NaN / inf, or beyond the float16 range) for a sample (the message names the sample
            id and index; that block is not written, blocks written before stay valid). Other
            per-sample failures are re-raised as ``FileNotFoundError`` / ``KeyError`` /
            ``RuntimeError`` naming the sample.
        FolderLockedError: another process is writing the (local) store.
        RuntimeError: (``world_size > 1``) another rank failed; the blocks the ranks finished
            are kept and a re-run, with any number of ranks, extracts the others.
    """
    if crop not in CROPS:
        raise ValueError(f"crop: expected one of {list(CROPS)}, got {crop!r}")
    if crop == "five" and getattr(dataset, "name", "") == "potsdam3":
        # The reference silently ignores crops for Potsdam (quirk Q24); we refuse them.
        raise ValueError(
            "crop (--crop): potsdam3 is used without cropping (PROTOCOL §2.3); use 'center'"
        )
    for name, v in (("res", res), ("batch_size", batch_size)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v <= 0:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} ({flag}): expected a positive int, got {v!r}")
    if num_workers != "auto" and (
        not isinstance(num_workers, int | np.integer)
        or isinstance(num_workers, bool)
        or num_workers < 0
    ):
        raise ValueError(
            "num_workers (--num-workers): expected a non-negative int or 'auto', got "
            f"{num_workers!r}"
        )
    patch = int(backbone.patch_size)
    if res % patch:
        raise ValueError(
            f"res (--res): {res} is not divisible by the backbone's patch size {patch}"
        )
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ValueError(f"limit (--limit): expected a positive int, got {limit!r}")
        if limit < len(dataset):
            dataset = LimitedDataset(dataset, limit)
        else:
            limit = None
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset.name}/{dataset.split} has no images")
    dev = resolve_device(device)
    path = normalize_path(store_path)

    from stego_probe.data.transforms import stego_transform

    transform = stego_transform(
        int(res),
        crop="none" if crop == "none" else "center",
        mean=tuple(backbone.mean),
        std=tuple(backbone.std),
    )
    transform_info = transform.describe()
    prov = store_provenance(
        dataset,
        backbone,
        res=int(res),
        crop=crop,
        flipped=flipped,
        limit=limit,
        n_source_images=len(dataset),
        transform_info=transform_info,
        token_dtype=token_dtype,
    )
    n_images = prov["n_images"]
    grid = tuple(prov["grid"])
    dim = prov["dim"]

    ranks = Ranks.resolve(rank, world_size)
    if ranks.distributed and str(path).startswith("memory://"):
        raise ValueError(
            f"store {path}: a memory:// store lives in one process; {ranks.world_size} ranks "
            "need a path every rank can reach (a shared folder or an object store URL)"
        )
    if ranks.distributed and dev.type == "cuda" and str(device) in ("auto", "cuda", "None"):
        dev = torch.device("cuda", ranks.local_rank)  # one GPU per rank of a machine
    if dev.type == "cuda" and ranks.distributed:
        torch.cuda.set_device(dev)
    if num_workers == "auto":
        # ranks started without torchrun (rank= / world_size=): assume they share this machine
        local = os.environ.get("LOCAL_WORLD_SIZE") or ranks.world_size
        num_workers = auto_num_workers(dev, int(local))
    num_workers = int(num_workers)

    def open_store() -> tuple[FeatureStore, bool]:
        """Rank 0 (the only rank of a single-process run): the store to write, and whether
        it is complete already."""
        nonlocal overwrite
        if FeatureStore.exists(path) and not overwrite:
            existing = FeatureStore.open(path, mode="r", allow_incomplete=True)
            if existing.complete or existing.done_blocks().any():
                check_store_compatible(existing.provenance, prov, path)
                if existing.complete:
                    return existing, True
                _remove_partial_files(path)
                return FeatureStore.open(path, mode="r+"), False
            # No block holds data yet (the first run failed early): start again from these
            # inputs, so that the provenance describes what will be written.
            overwrite = True
        store = FeatureStore.create(
            path,
            n_images=n_images,
            grid=grid,
            dim=dim,
            label_shape=(int(res), int(res)),
            provenance=prov,
            chunk_images=chunk_images,
            shard_images=shard_images,
            flipped=flipped,
            compress_labels=compress_labels,
            token_dtype=token_dtype,
            overwrite=overwrite,
        )
        return store, False

    with ranks.group(dev.type), contextlib.ExitStack() as stack:
        # Rank 0 locks the store for the whole run (the other ranks write under its lock),
        # validates or creates it, and tells the others what to do.
        store, state, error = None, None, None
        if ranks.is_main:
            try:
                stack.enter_context(_store_lock(path))
                store, complete = open_store()
                # a complete store is returned as it is (`verify` finds a lost marker)
                pending = [] if complete else np.flatnonzero(~store.done_blocks()).tolist()
                # the store's inputs go with the pending blocks: every rank checks its own
                # (dataset, backbone, weights, ...) against them before writing, or before
                # returning a store that is complete already
                state = (pending, dict(store.provenance), complete)
            except Exception as e:  # noqa: BLE001 - re-raised below, after telling the others
                error = e
        shared = ranks.broadcast(state if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if isinstance(shared, str):
            raise RuntimeError(f"extraction rank 0 could not open the store {path}: {shared}")
        pending, store_prov, complete = shared
        mine = ranks.mine(pending)
        try:
            if store is None:  # a failure here reaches every rank through the gather below
                try:  # each machine may hold its own copy of the data (file hashes compared)
                    check_store_compatible(
                        {**store_prov, "data_root": None}, {**prov, "data_root": None}, path
                    )
                except ValueError as e:
                    what = (
                        "found rank 0's store complete, but made from other inputs than its own"
                        if complete
                        else "would write other inputs into rank 0's store"
                    )
                    raise ValueError(
                        f"rank {ranks.rank} {what}: every rank must extract the same dataset "
                        "with the same backbone and weights (seed a randomly initialised "
                        f"backbone alike on every rank). {e}"
                    ) from None
                store = FeatureStore.open(path, mode="r" if complete else "r+")
            if mine:
                _run(
                    store,
                    dataset,
                    backbone,
                    transform,
                    mine,
                    crop,
                    int(res),
                    batch_size,
                    dev,
                    flipped,
                    num_workers,
                    progress and ranks.is_main,
                )
        except BaseException as e:
            # the other ranks learn of it (and keep the blocks they finished) before it rises
            ranks.gather(f"{type(e).__name__}: {e}")
            raise
        failed = [(r, msg) for r, msg in enumerate(ranks.gather(None)) if msg is not None]
        if failed:
            what = "; ".join(f"rank {r}: {msg}" for r, msg in failed)
            raise RuntimeError(
                f"extraction into {path} failed on {len(failed)} of {ranks.world_size} ranks "
                f"({what}); the blocks the ranks finished are kept: run the same command again "
                "(with any number of ranks) to extract the rest"
            )
        if ranks.is_main and not complete:
            FeatureStore.open(path, mode="r+").mark_complete()
        ranks.gather(None)  # no rank returns before the store is marked complete
        return store if complete else FeatureStore.open(path, mode="r")


#: dtype -> (unsigned view, exponent mask): a value is NaN / inf exactly when all its exponent
#: bits are set (an integer test, cheaper than ``np.isfinite`` on float16).
_EXPONENT = {"float16": (np.uint16, 0x7C00), "float32": (np.uint32, 0x7F800000)}


def _checked(
    tok: torch.Tensor, feats: torch.Tensor, ids: list[str], js: list[int], backbone: str, what: str
) -> np.ndarray:
    """``tok`` (B, h, w, C) in the token dtype as a numpy array, after :func:`_check_finite`
    (on the device for CUDA tensors, else with an integer test of the exponent bits)."""
    token_dtype = str(tok.dtype).removeprefix("torch.")
    if tok.is_cuda:
        if not bool(torch.isfinite(tok).all()):
            _check_finite(tok.cpu().numpy(), feats, ids, js, backbone, token_dtype, what)
        return tok.cpu().numpy()
    arr = tok.cpu().numpy()
    _check_finite(arr, feats, ids, js, backbone, token_dtype, what)
    return arr


def _check_finite(
    tok: np.ndarray,
    feats: torch.Tensor,
    ids: list[str],
    js: list[int],
    backbone: str,
    token_dtype: str,
    what: str,
) -> None:
    """``ValueError`` naming the first sample of the batch whose tokens as stored (``tok``,
    (B, h, w, C) in ``token_dtype``) are not all finite: NaN / inf in the backbone output
    ``feats`` (B, C, h, w), or finite values beyond the float16 range."""
    view, mask = _EXPONENT[token_dtype]
    bad_bits = (tok.view(view) & mask) == mask
    if not bad_bits.any():
        return
    k = int(np.flatnonzero(bad_bits.reshape(len(tok), -1).any(axis=1))[0])
    bad = ~torch.isfinite(feats[k])
    if bool(bad.any()):
        n_nan = int(torch.isnan(feats[k]).sum())
        reason = (
            f"the backbone output has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values "
            "(check the weights and the input normalisation)"
        )
    else:
        top = float(feats[k].abs().max())
        reason = (
            f"feature values up to {top:.4g} overflow {token_dtype} (max 65504); store "
            "float32 tokens (token_dtype='float32', `extract --float32`)"
        )
    raise ValueError(
        f"backbone {backbone}: non-finite {what} for sample {ids[k]!r} (index {js[k]}): "
        f"{reason}. Its block was not written; blocks written before stay valid"
    )


def _run(
    store: FeatureStore,
    dataset: SegDataset,
    backbone,
    transform,
    blocks: list[int],
    crop: str,
    res: int,
    batch_size: int,
    dev: torch.device,
    flipped: bool,
    num_workers: int,
    progress: bool,
) -> None:
    """Extract ``blocks`` into ``store``; finished blocks are written by a background thread."""
    backbone = backbone.to(dev).eval()
    items = _Items(dataset, transform, crop, res)
    batches = _batches(store, blocks, batch_size)
    h, w = store.grid
    C = store.dim
    token_dtype = store.provenance.get("token_dtype", "float16")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        done_imgs = store.n_images - sum(e - s for s, e in map(store.block_range, blocks))
        bar = tqdm(total=store.n_images, initial=done_imgs, unit="img", desc="extract")

    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
    pending: list[Future] = []

    def submit(b, tok, lab, ids, tokf):
        # At most two blocks in flight: bounded memory, and writer errors surface quickly.
        while len(pending) >= 2:
            pending.pop(0).result()
        pending.append(writer.submit(store.write_block, b, tok, lab, ids, tokf))

    cur_block = -1
    buf = None
    try:
        for images, labels, js, ids in _load(items, batches, num_workers, dev.type == "cuda"):
            b = js[0] // store.block_images
            start, stop = store.block_range(b)
            if b != cur_block:
                m = stop - start
                buf = {
                    "tok": np.empty((m, h, w, C), token_dtype),
                    "tokf": np.empty((m, h, w, C), token_dtype) if flipped else None,
                    "lab": np.full((m, res, res), IGNORE, np.int64),
                    "ids": [""] * m,
                    "filled": 0,
                }
                cur_block = b
            x = images.to(dev, non_blocking=True)
            feats = backbone(x)
            if tuple(feats.shape) != (len(js), C, h, w):
                raise ValueError(
                    f"backbone {backbone.name}: expected features {(len(js), C, h, w)} for input "
                    f"{tuple(x.shape)}, got {tuple(feats.shape)}"
                )
            lo, hi = js[0] - start, js[-1] - start + 1
            tok = feats.permute(0, 2, 3, 1).to(getattr(torch, token_dtype))
            buf["tok"][lo:hi] = _checked(tok, feats, ids, js, backbone.name, "tokens")
            if flipped:
                ff = backbone(x.flip(-1)).flip(-1)
                tokf = ff.permute(0, 2, 3, 1).to(getattr(torch, token_dtype))
                buf["tokf"][lo:hi] = _checked(tokf, ff, ids, js, backbone.name, "flipped tokens")
            buf["lab"][lo:hi] = labels.numpy()
            buf["ids"][lo:hi] = ids
            buf["filled"] += hi - lo
            if bar is not None:
                bar.update(hi - lo)
            if buf["filled"] == stop - start:
                submit(b, buf["tok"], buf["lab"], buf["ids"], buf["tokf"])
                buf = None
    except BaseException:
        # Let every finished block reach the store (and its marker) before propagating the
        # error; a half-filled block is dropped and redone by the next run.
        for f in pending:
            try:
                f.result()
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
        raise
    else:
        for f in pending:
            f.result()
    finally:
        writer.shutdown(wait=True)
        if bar is not None:
            bar.close()
