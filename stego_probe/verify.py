"""Check a feature store block by block, and re-extract only its damaged blocks.

:func:`verify_store` reads every block of every array of a
:class:`~stego_probe.store.FeatureStore` (tokens, tokens_flipped, labels, ids), and reports
blocks whose content does not match its stored CRC-32, whose chunk cannot be decoded (truncated,
garbled) or whose chunk file is missing, plus store-level damage (an unreadable ``zarr.json``,
``layout`` attributes that disagree with the arrays). :func:`repair_store` marks the damaged
blocks not written (:meth:`~stego_probe.store.FeatureStore.invalidate_blocks`), rebuilds the
dataset and backbone from the store's provenance and resumes
:func:`stego_probe.extract.extract` on the store, which recomputes exactly those blocks. When
the inputs cannot be rebuilt, the blocks stay invalidated and the result carries the
``stego-probe extract`` command that finishes the store.

The command line is ``stego-probe verify STORE [--repair]`` (see ``docs/store.md``).
"""

from __future__ import annotations

import json
import os
import shlex
import warnings
from dataclasses import dataclass, field

from stego_probe.fileio import to_jsonable
from stego_probe.store import FeatureStore, StoreCorruptError, normalize_path


@dataclass
class BlockDamage:
    """One damaged array of one block.

    Attributes:
        block: block index.
        start, stop: its image range ``[start, stop)``.
        array: ``tokens``, ``tokens_flipped``, ``labels`` or ``ids``.
        reason: what is wrong.
    """

    block: int
    start: int
    stop: int
    array: str
    reason: str


@dataclass
class VerifyReport:
    """What :func:`verify_store` found.

    Attributes:
        path: the store.
        n_blocks: blocks in the store (0 when it could not be opened).
        blocks_checked: blocks read and checked (written blocks).
        unwritten: blocks of an incomplete store that are not written yet (not damage).
        checksummed: whether the store has checksums (format 2); format-1 stores are checked
            for decode errors and missing chunk files only.
        complete: whether the store is marked complete.
        damaged: the damaged (block, array) pairs.
        problems: store-level damage (unreadable ``zarr.json``, layout mismatch); blocks are
            not checked when there is any.
    """

    path: str
    n_blocks: int = 0
    blocks_checked: int = 0
    unwritten: list[int] = field(default_factory=list)
    checksummed: bool = True
    complete: bool = False
    damaged: list[BlockDamage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def damaged_blocks(self) -> list[int]:
        """Sorted indices of the blocks with any damage."""
        return sorted({d.block for d in self.damaged})

    @property
    def ok(self) -> bool:
        """True when nothing is damaged (an incomplete store can be ok)."""
        return not self.damaged and not self.problems

    def to_json(self) -> dict:
        """A JSON-able dict of the report."""
        return {
            "path": self.path,
            "ok": self.ok,
            "n_blocks": self.n_blocks,
            "blocks_checked": self.blocks_checked,
            "unwritten": self.unwritten,
            "checksummed": self.checksummed,
            "complete": self.complete,
            "damaged_blocks": self.damaged_blocks,
            "damaged": [d.__dict__ for d in self.damaged],
            "problems": self.problems,
        }

    def summary(self) -> str:
        """Human-readable multi-line summary (what ``stego-probe verify`` prints)."""
        lines = [f"store {self.path}"]
        if self.problems:
            lines += [f"  DAMAGED: {p}" for p in self.problems]
            lines.append(
                "  the store's metadata is damaged: blocks were not checked; re-extract it "
                "(`stego-probe extract ... --overwrite`)"
            )
            return "\n".join(lines)
        how = "checksums, decode, markers" if self.checksummed else "decode, missing chunks"
        lines.append(f"  blocks checked: {self.blocks_checked}/{self.n_blocks} ({how})")
        if not self.checksummed:
            lines.append(
                "  UNVERIFIABLE: format-1 store without checksums; altered content that still "
                "decodes cannot be detected (re-extract with --overwrite to add checksums)"
            )
        if self.unwritten:
            lines.append(
                f"  incomplete: {len(self.unwritten)} blocks not written yet (rerun the "
                f"extraction to finish)"
            )
        if not self.damaged:
            lines.append("  no damage found")
            return "\n".join(lines)
        lines.append(f"  damaged blocks: {len(self.damaged_blocks)}")
        for d in self.damaged:
            lines.append(
                f"    block {d.block} (images {d.start}..{d.stop - 1}) {d.array}: {d.reason}"
            )
        return "\n".join(lines)


def verify_store(path: str | os.PathLike, progress: bool = False) -> VerifyReport:
    """Check every block of a feature store.

    Args:
        path: store directory or fsspec URL.
        progress: show a tqdm bar over the blocks.

    Returns:
        a :class:`VerifyReport`; ``report.ok`` is False when anything is damaged.

    Raises:
        FileNotFoundError: no store at ``path``.
        ValueError: not a feature store (wrong ``format``) or an unsupported format version.
    """
    path = normalize_path(path)
    report = VerifyReport(path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the report says "unverifiable"
            store = FeatureStore.open(path, allow_incomplete=True)
    except StoreCorruptError as e:
        report.problems.append(e.reason)
        return report
    report.n_blocks = store.n_blocks
    report.checksummed = store.checksummed
    report.complete = store.complete
    done = store.done_blocks()
    blocks = range(store.n_blocks)
    if progress:
        from tqdm.auto import tqdm

        blocks = tqdm(blocks, unit="block", desc="verify")
    for b in blocks:
        if not done[b] and not report.complete:
            report.unwritten.append(b)
            continue
        report.blocks_checked += 1
        s, t = store.block_range(b)
        for array, reason in store.check_block(b):
            report.damaged.append(BlockDamage(b, s, t, array, reason))
    return report


@dataclass
class RepairResult:
    """What :func:`repair_store` did.

    Attributes:
        before: the report that found the damage.
        invalidated: blocks marked not written.
        reextracted: whether the blocks were re-extracted (False: inputs could not be rebuilt,
            see ``reason`` and ``command``).
        after: the report of a verification after re-extraction (None if not re-extracted).
        reason: why the inputs could not be rebuilt.
        command: the ``stego-probe extract`` command that finishes the store.
    """

    before: VerifyReport
    invalidated: list[int] = field(default_factory=list)
    reextracted: bool = False
    after: VerifyReport | None = None
    reason: str | None = None
    command: str | None = None

    @property
    def ok(self) -> bool:
        """True when the store is intact now."""
        if not self.invalidated:
            return self.before.ok
        return self.reextracted and self.after is not None and self.after.ok


# dataset-provenance keys that describe the split rather than being dataset options
_DATASET_META = {"dataset", "split", "n_classes", "n_images", "class_names", "generator"}


def _dataset_kwargs(prov: dict) -> tuple[dict | None, str | None]:
    """(dataset options, root) recorded in provenance; options None when not recorded
    (:func:`stego_probe.data.dataset_args_from_provenance`)."""
    from stego_probe.data import dataset_args_from_provenance

    info = prov.get("dataset_info") if isinstance(prov.get("dataset_info"), dict) else {}
    root = prov.get("data_root", info.get("data_root", info.get("root")))
    return dataset_args_from_provenance(prov), root


def _rebuild_dataset(prov: dict, data_root: str | None):
    """The dataset the store was extracted from, rebuilt from provenance and checked against
    the recorded dataset provenance (:func:`stego_probe.data.dataset_from_provenance`)."""
    from stego_probe.data import dataset_from_provenance

    return dataset_from_provenance(prov, data_root, check=True)


def _backbone_kwargs(prov: dict) -> dict:
    info = prov.get("backbone_info") if isinstance(prov.get("backbone_info"), dict) else {}
    for src in (prov, info):
        if isinstance(src.get("backbone_kwargs"), dict):
            return dict(src["backbone_kwargs"])
    kw = {}
    if info.get("pretrained") is False:
        kw["pretrained"] = False
        if info.get("init_seed") is not None:
            kw["seed"] = info["init_seed"]
    if info.get("model_kwargs"):
        kw["model_kwargs"] = info["model_kwargs"]
    if prov.get("pos_interp") is not None:
        kw["pos_interp"] = prov["pos_interp"]
    if prov.get("flip_average"):
        kw["flip_average"] = True
    return kw


def _rebuild_backbone(prov: dict, device):
    from stego_probe.backbones import get_backbone

    name = prov.get("backbone")
    if not name:
        raise ValueError("the provenance does not record the backbone")
    kw = _backbone_kwargs(prov)
    backbone = get_backbone(name, weights=prov.get("weights"), device=device, **kw)
    bp = to_jsonable(backbone.provenance)
    if prov.get("weights_sha256") != bp.get("weights_sha256"):
        raise ValueError(
            f"the rebuilt backbone's weights hash {bp.get('weights_sha256')} differs from the "
            f"recorded {prov.get('weights_sha256')}"
        )
    return backbone, kw


def extract_command(
    prov: dict, path: str, data_root: str | None = None, layout: dict | None = None
) -> str:
    """The ``stego-probe extract`` command that re-creates (or, run on a store with
    invalidated blocks, finishes) a store with the provenance ``prov`` and the layout
    ``layout`` (:meth:`FeatureStore.info`'s ``chunk_images`` and ``compress_labels``, for a
    store that is re-created whole); parts the provenance does not record are left as
    UPPERCASE placeholders."""
    kwargs, root = _dataset_kwargs(prov)
    root = data_root or root
    parts = ["stego-probe", "extract", "--dataset", str(prov.get("dataset", "DATASET"))]
    if root:
        parts += ["--data-root", str(root)]
    elif prov.get("dataset") != "synthetic":
        parts += ["--data-root", "DATA_ROOT"]
    parts += ["--split", str(prov.get("split", "SPLIT"))]
    if kwargs is None:
        info = prov.get("dataset_info") if isinstance(prov.get("dataset_info"), dict) else {}
        kwargs = {k: v for k, v in info.items() if k not in _DATASET_META | {"root"}}
        if prov.get("dataset") == "synthetic" and "n_images" in info and not prov.get("limit"):
            kwargs["n_images"] = info["n_images"]
    for k, v in sorted(kwargs.items()):
        parts += ["--dataset-arg", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    parts += ["--backbone", str(prov.get("backbone", "BACKBONE"))]
    if prov.get("weights"):
        parts += ["--weights", str(prov["weights"])]
    bkw = _backbone_kwargs(prov)
    if bkw:
        parts += ["--backbone-kwargs", json.dumps(bkw, sort_keys=True)]
    parts += ["--res", str(prov.get("res", "RES")), "--crop", str(prov.get("crop", "center"))]
    if prov.get("flipped"):
        parts.append("--flipped")
    if prov.get("token_dtype") == "float32":
        parts.append("--float32")
    if prov.get("limit") is not None:
        parts += ["--limit", str(prov["limit"])]
    layout = layout or {}
    if layout.get("chunk_images", 32) != 32:
        parts += ["--chunk-images", str(layout["chunk_images"])]
    if layout.get("compress_labels", True) is False:
        parts.append("--raw-labels")
    parts += ["--store", path]
    return " ".join(shlex.quote(p) for p in parts)


def repair_store(
    path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 16,
    num_workers: int | str = "auto",
    progress: bool = False,
) -> RepairResult:
    """Verify a store and re-extract only its damaged blocks.

    The damaged blocks are marked not written (and the store incomplete); the dataset and
    backbone are rebuilt from the store's provenance (``data_root`` overrides the recorded
    root) and checked against it, and :func:`stego_probe.extract.extract` resumes on the store
    with the recorded ``res``, ``crop``, ``flipped``, ``limit`` and ``token_dtype``: it
    recomputes exactly the invalidated blocks and refuses inputs that differ from the
    provenance. When the inputs cannot be rebuilt, the blocks stay invalidated and
    ``result.command`` is the ``stego-probe extract`` command that finishes the store.

    Args:
        path: store directory or fsspec URL.
        data_root: the dataset root, if it moved since the extraction.
        device, batch_size, num_workers: as for :func:`~stego_probe.extract.extract` (use the
            batch size of the original run for bit-identical tokens on backbones whose output
            depends on it).
        progress: progress bars.

    Returns:
        a :class:`RepairResult`; ``result.ok`` tells whether the store is intact now.

    Raises:
        ValueError: store-level damage (unreadable ``zarr.json``, layout mismatch) or a
            format-1 store: neither can be repaired block by block (re-extract with
            ``--overwrite``).
    """
    path = normalize_path(path)
    before = verify_store(path, progress=progress)
    result = RepairResult(before=before)
    if before.problems:
        raise ValueError(
            f"{path}: cannot repair block by block: {before.problems[0]}; re-extract the store "
            f"(`stego-probe extract ... --overwrite`)"
        )
    blocks = before.damaged_blocks
    if not blocks:
        return result
    if not before.checksummed:
        raise ValueError(
            f"{path}: format-1 store (no checksums) with damaged blocks {blocks}: it cannot be "
            f"resumed by this version; re-extract it (`stego-probe extract ... --overwrite`)"
        )
    store = FeatureStore.open(path, mode="r+")
    prov = store.provenance
    # when every block is invalidated the store is re-created: with its own layout
    layout = store.info()
    store.invalidate_blocks(blocks)
    result.invalidated = blocks
    result.command = extract_command(
        prov, path, None if data_root is None else os.fspath(data_root), layout
    )
    try:
        from stego_probe.device import resolve_device

        dev = resolve_device(device)
        dataset = _rebuild_dataset(prov, None if data_root is None else os.fspath(data_root))
        backbone, _ = _rebuild_backbone(prov, dev)
    except Exception as e:  # noqa: BLE001 - reported, with the command to finish by hand
        result.reason = f"{type(e).__name__}: {e}"
        return result
    from stego_probe.extract import extract

    crop = prov.get("crop", "center")
    extract(
        dataset,
        backbone,
        path,
        res=int(prov["res"]),
        crop=crop,
        batch_size=batch_size,
        device=dev,
        flipped=bool(prov.get("flipped", False)),
        num_workers=num_workers,
        progress=progress,
        limit=prov.get("limit"),
        token_dtype=prov.get("token_dtype", "float16"),
        chunk_images=layout["chunk_images"],
        shard_images=layout["shard_images"],
        compress_labels=layout["compress_labels"],
    )
    result.reextracted = True
    result.after = verify_store(path)
    return result
