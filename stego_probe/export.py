"""Export what an evaluation computed: the fitted probes and the per-image predictions.

* :func:`save_probes` / :func:`load_probes`: every fitted probe of an evaluation as one ``.npz``
  file (each probe's ``save`` / ``load``: the common estimator format of
  :mod:`stego_probe.persist`; older probe files still load) plus a ``probes.json`` manifest.
* :class:`PredictionWriter`: used by :func:`stego_probe.evaluate.evaluate_stores` with
  ``save_predictions=DIR``; streams the validation predictions of every probe (and CRF setting)
  to one PNG per image, batch by batch, and at the end maps cluster ids to classes with the
  matching the reported scores used (Hungarian / majority / identity), writing the mapping to
  ``mapping.json``. Nothing of the size of the split is held in memory.
* :func:`iter_predictions` / :func:`score_predictions`: read the PNGs back and rescore them
  against a store's labels (this reproduces the reported accuracy and mIoU).
* :func:`class_aligned_predictions`: k-means predictions of a few validation images in class
  ids, with the split-wide matching the scores use (the qualitative figures' colours).

Layout of a predictions folder::

    DIR/<probe>/mapping.json          # one folder per probe: kmeans, cluster, linear
    DIR/<probe>/<image id>.png        # class ids; 255 (uint8) / 65535 (uint16) = no class
    DIR/<probe>_crf/...               # with crf=True, the CRF-refined predictions

The image id is the store's id (``FeatureStore.ids``); ids with ``/`` become sub-folders.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from stego_probe.fileio import atomic_write, to_jsonable
from stego_probe.params import renamed_kwargs

#: Name of the manifest written by :func:`save_probes`.
PROBES_MANIFEST = "probes.json"
#: Name of the per-probe mapping / index file written by :class:`PredictionWriter`.
MAPPING_FILE = "mapping.json"


def _check_empty_dir(path: str | os.PathLike, what: str) -> Path:
    """``Path(path)`` if it does not exist or is an empty directory; ValueError otherwise."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(
            f"{what} {path}: exists and is not an empty directory; choose a new folder (nothing "
            "is overwritten)"
        )
    return path


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise ``ValueError`` unless ``path`` is absent or an empty directory (checked before work).

    Returns:
        ``Path(path)``.
    """
    return _check_empty_dir(path, what)


def check_writable(path: str | os.PathLike, what: str = "output file") -> Path:
    """Fail at once, naming the path, unless the file ``path`` can be created or replaced.

    Meant to run before any long computation. Missing parent folders are created (as the
    write itself would); then a probe file is created and removed in the folder (``os.access``
    is not trusted: it says yes to root and on read-only mounts), and an existing ``path``
    must be a file that opens for appending (its contents are untouched).

    Args:
        path: the file to be written (e.g. a results CSV, replaced atomically through a
            temporary file in the same folder).
        what: how the message names it (e.g. ``"--out"``).

    Returns:
        ``Path(path)``.

    Raises:
        OSError (``PermissionError``, ``NotADirectoryError``, ``IsADirectoryError`` ...): the
            message names ``what``, the path and the reason, in one line.
    """
    import tempfile

    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path}: is a directory; expected a file path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(
            f"{what} {path}: cannot create its folder {folder}: {e.strerror or e}"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise type(e)(
            f"{what} {path}: cannot write into folder {folder}: {e.strerror or e}"
        ) from None
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            raise type(e)(f"{what} {path}: cannot be written: {e.strerror or e}") from None
    return path


# ---------------------------------------------------------------------------------------------
# probes
# ---------------------------------------------------------------------------------------------


def _probe_classes() -> dict:
    from stego_probe.probes import list_probes, probe_class

    return {probe_class(n).__name__: probe_class(n) for n in list_probes()}


def save_probes(
    probes: Mapping[str, object], out_dir: str | os.PathLike, info: Mapping | None = None
) -> dict[str, Path]:
    """Write fitted probes to ``out_dir/<name>.npz`` and a ``probes.json`` manifest.

    Args:
        probes: ``{name: fitted probe}`` (e.g. the second value of ``evaluate_stores(...,
            return_probes=True)``); each must be a :class:`~stego_probe.probes.KMeansProbe`,
            :class:`~stego_probe.probes.ClusterLookupProbe` or
            :class:`~stego_probe.probes.LinearProbe`.
        out_dir: a new or empty folder.
        info: extra JSON-serialisable entries for the manifest (seed, stores, method ...).

    Returns:
        ``{name: path written}``.

    Raises:
        ValueError: ``out_dir`` is not empty, or a probe of another class.
    """
    classes = _probe_classes()
    for name, probe in probes.items():
        if type(probe).__name__ not in classes:
            raise ValueError(
                f"probes[{name!r}]: cannot save a {type(probe).__name__}; expected one of "
                f"{sorted(classes)}"
            )
    out = check_output_dir(out_dir, "save_probes: out_dir")
    out.mkdir(parents=True, exist_ok=True)
    paths, manifest = {}, {"probes": {}, **dict(info or {})}
    for name, probe in probes.items():
        path = out / f"{name}.npz"
        probe.save(path)
        paths[name] = path
        manifest["probes"][name] = {"class": type(probe).__name__, "file": path.name}
    atomic_write(out / PROBES_MANIFEST, json.dumps(to_jsonable(manifest), indent=2))
    return paths


def load_probes(path: str | os.PathLike) -> dict[str, object]:
    """Read the probes written by :func:`save_probes` (ready to ``predict``).

    Args:
        path: the folder holding ``probes.json``.

    Returns:
        ``{name: probe}`` in the manifest's order; pass it as ``evaluate_stores(probes=...)`` to
        evaluate them again without fitting.
    """
    path = Path(path)
    manifest_path = path / PROBES_MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"{path}: no {PROBES_MANIFEST}; expected a save_probes folder")
    manifest = json.loads(manifest_path.read_text())
    classes = _probe_classes()
    out = {}
    for name, entry in manifest.get("probes", {}).items():
        cls = classes.get(entry.get("class"))
        if cls is None:
            raise ValueError(f"{manifest_path}: probe {name!r} has unknown class {entry!r}")
        out[name] = cls.load(path / entry["file"])
    return out


# ---------------------------------------------------------------------------------------------
# predictions
# ---------------------------------------------------------------------------------------------


def _safe_relpath(image_id: str) -> str:
    """A relative file path (without extension) for an image id: ``/`` and ``\\`` separate
    sub-folders; empty, ``.`` and ``..`` components become ``_``."""
    parts = str(image_id).replace("\\", "/").split("/")
    return "/".join(p if p not in ("", ".", "..") else "_" for p in parts)


def _dtype(n_values: int):
    """Smallest PNG dtype holding ids ``0 .. n_values - 1`` plus the 'no class' value."""
    return np.uint8 if n_values < 255 else np.uint16


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def folder_name(probe: str, crf: bool) -> str:
    """Sub-folder of a (probe, CRF) pair: ``kmeans``, ``kmeans_crf`` ..."""
    return f"{probe}_crf" if crf else probe


class PredictionWriter:
    """Stream per-image predictions to PNG files; map clusters to classes at the end.

    Args:
        out_dir: a new or empty folder (checked here, before any work).
        n_outputs: ``{(probe, crf): K'}``, the number of clusters / outputs of each probe.
        n_classes: ``K``.
        class_names: the ``K`` class names (recorded in ``mapping.json``).

    Use :meth:`write` for every validation batch and :meth:`finalize` once with the scores.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        n_outputs: Mapping[tuple[str, bool], int],
        n_classes: int,
        class_names=None,
    ):
        self.out_dir = check_output_dir(out_dir, "save_predictions")
        self.n_outputs = {k: int(v) for k, v in n_outputs.items()}
        self.n_classes = int(n_classes)
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        self.files: dict[str, str] = {}  # image id -> relative path (shared by every probe)
        self._used: set[str] = set()
        # ids written per (probe, crf) key, in order: the probes may be written in several
        # passes over the split (evaluate_stores scores k-means before the trained probes)
        self._written: dict[tuple[str, bool], dict[str, None]] = {k: {} for k in self.n_outputs}
        self._finalized: set[tuple[str, bool]] = set()

    def _relpath(self, image_id: str) -> str:
        if image_id in self.files:
            return self.files[image_id]
        rel = base = _safe_relpath(image_id)
        i = 1
        while rel in self._used:  # two ids that sanitise to the same path
            rel, i = f"{base}__{i}", i + 1
        self._used.add(rel)
        self.files[image_id] = rel
        return rel

    def write(self, predictions: Mapping[tuple[str, bool], np.ndarray], ids) -> None:
        """Write one batch: ``predictions[(probe, crf)]`` is ``(B, H, W)`` int cluster / class
        ids (values outside ``[0, K')`` are written as 'no class'); ``ids`` the ``B`` image ids.
        """
        ids = [str(i) for i in ids]
        for key in predictions:
            if key not in self.n_outputs:
                raise ValueError(f"predictions[{key}]: not one of {sorted(self.n_outputs)}")
            if key in self._finalized:
                raise RuntimeError(f"PredictionWriter.write: {key} is already finalized")
            seen = set()
            for i in ids:
                if i in seen or i in self._written[key]:
                    raise ValueError(f"save_predictions: image id {i!r} occurs twice in the store")
                seen.add(i)
        rels = [self._relpath(i) for i in ids]
        for key, pred in predictions.items():
            pred = np.asarray(pred)
            if pred.ndim != 3 or len(pred) != len(ids):
                raise ValueError(
                    f"predictions[{key}]: expected (B={len(ids)}, H, W), got {pred.shape}"
                )
            dtype = _dtype(self.n_outputs[key])
            none = np.iinfo(dtype).max
            folder = self.out_dir / folder_name(*key)
            for rel, p in zip(rels, pred):
                q = np.where((p >= 0) & (p < self.n_outputs[key]), p, none).astype(dtype)
                _write_png(folder / f"{rel}.png", q)
            self._written[key].update(dict.fromkeys(ids))

    def finalize(
        self, scores: Mapping[tuple[str, bool], Mapping], info: Mapping | None = None
    ) -> None:
        """Map every saved prediction from cluster ids to class ids and write ``mapping.json``.

        Called once per (probe, crf) key, for all keys at once or in several calls (each key's
        predictions must all be written before its call).

        Args:
            scores: ``{(probe, crf): stego_probe.metrics.scores(...) dict}`` (their
                ``cluster_to_class`` and ``match``); the linear probe's identity leaves the
                files as they are.
            info: extra JSON-serialisable entries (seed, mode, stores ...).
        """
        again = sorted(k for k in scores if k in self._finalized)
        if again:
            raise RuntimeError(f"PredictionWriter.finalize: already called for {again}")
        for key, s in scores.items():
            if key not in self.n_outputs:
                continue
            files = {i: self.files[i] for i in self._written[key]}
            k_out = self.n_outputs[key]
            c2c = np.asarray(s["cluster_to_class"], dtype=np.int64)
            src_dtype, dst_dtype = _dtype(k_out), _dtype(self.n_classes)
            src_none, dst_none = np.iinfo(src_dtype).max, np.iinfo(dst_dtype).max
            # lookup table over every value a file can hold (cluster ids and the 'none' value)
            lut = np.full(int(src_none) + 1, dst_none, dtype=dst_dtype)
            valid = c2c >= 0
            lut[np.flatnonzero(valid)] = c2c[valid].astype(dst_dtype)
            identity = (
                src_dtype == dst_dtype
                and len(c2c) == self.n_classes
                and np.array_equal(c2c, np.arange(self.n_classes))
            )
            folder = self.out_dir / folder_name(*key)
            if not identity:
                for rel in files.values():
                    path = folder / f"{rel}.png"
                    _write_png(path, lut[_read_png(path)])
            probe, crf = key
            mapping = {
                "probe": probe,
                "crf": bool(crf),
                "match": s.get("match"),
                "n_clusters": k_out,
                "n_classes": self.n_classes,
                "class_names": self.class_names,
                "cluster_to_class": c2c.tolist(),
                "no_class_value": int(dst_none),
                "dtype": np.dtype(dst_dtype).name,
                "accuracy": float(s["accuracy"]),
                "miou": float(s["miou"]),
                **dict(info or {}),
                "files": {i: f"{rel}.png" for i, rel in files.items()},
            }
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / MAPPING_FILE, json.dumps(to_jsonable(mapping), indent=2))
            self._finalized.add(key)


def iter_predictions(folder: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(image id, (H, W) int64 class ids, -1 = no class)`` from one probe's folder.

    Args:
        folder: ``DIR/<probe>`` written by :class:`PredictionWriter` (holds ``mapping.json``).
    """
    folder = Path(folder)
    path = folder / MAPPING_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no {MAPPING_FILE}; expected a predictions folder")
    mapping = json.loads(path.read_text())
    none = int(mapping["no_class_value"])
    for image_id, rel in mapping["files"].items():
        p = _read_png(folder / rel).astype(np.int64)
        p[p == none] = -1
        yield image_id, p


def score_predictions(folder: str | os.PathLike, store) -> dict:
    """Accuracy and IoU of saved predictions against a store's labels (identity matching).

    The predictions are already class ids, so this reproduces the ``accuracy`` / ``miou`` that
    the evaluation reported for that probe (Hungarian, majority or identity matching; pixels of
    unmatched clusters count as wrong). Reads one image at a time.

    Args:
        folder: ``DIR/<probe>`` with ``mapping.json``.
        store: the validation :class:`~stego_probe.store.FeatureStore` (or its path); token
            mode predictions are compared with its token labels.

    Returns:
        dict with ``accuracy``, ``miou`` (percent), ``iou`` ((K,) percent, NaN where undefined),
        ``n_pixels``.
    """
    from stego_probe.store import FeatureStore

    if isinstance(store, str | os.PathLike):
        store = FeatureStore.open(store)
    k = int(store.n_classes)
    index = {str(s): i for i, s in enumerate(store.ids)}
    m = np.zeros((k + 1, k), dtype=np.int64)  # row k: 'no class'
    for image_id, pred in iter_predictions(folder):
        if image_id not in index:
            raise ValueError(f"{folder}: image id {image_id!r} is not in store {store.path}")
        i = index[image_id]
        lab = store.labels([i])[0] if pred.shape == tuple(store.label_shape) else None
        if lab is None:
            lab = store.token_labels([i])[0]
        if lab.shape != pred.shape:
            raise ValueError(
                f"{folder}: prediction for {image_id!r} has shape {pred.shape}; the store's "
                f"labels are {tuple(store.label_shape)} (tokens {tuple(store.grid)})"
            )
        valid = (lab >= 0) & (lab < k)
        rows = np.where(pred[valid] >= 0, pred[valid], k)
        m += np.bincount(rows * k + lab[valid], minlength=(k + 1) * k).reshape(k + 1, k)
    tp = np.diag(m[:k]).astype(np.float64)
    fp = m[:k].sum(1) - tp
    fn = m.sum(0) - tp
    denom = tp + fp + fn
    iou = np.full(k, np.nan)
    np.divide(100.0 * tp, denom, out=iou, where=denom > 0)
    n = int(m.sum())
    return {
        "accuracy": 100.0 * tp.sum() / n if n else float("nan"),
        "miou": float(np.mean(iou[denom > 0])) if (denom > 0).any() else float("nan"),
        "iou": iou,
        "n_pixels": n,
    }


def class_aligned_predictions(
    train_store,
    val_store,
    projection,
    indices,
    seed: int = 0,
    kmeans_kwargs: Mapping | None = None,
    batch_size: int = 16,
) -> np.ndarray:
    """k-means predictions on some val images, relabelled to classes by Hungarian matching.

    A :class:`~stego_probe.probes.KMeansProbe` with ``K`` clusters is fitted on a seeded sample
    of the projected training tokens, every validation image is predicted at label resolution
    (code first, then assignment) to fill the confusion matrix, and the clusters are matched to
    classes over the whole split (:func:`stego_probe.metrics.scores`, ``"hungarian"``): the
    colours of a qualitative figure mean the same as the reported numbers.

    Args:
        train_store, val_store: feature stores (``sample_tokens``; ``iter_batches``,
            ``tokens``, ``n_classes``, ``label_shape``).
        projection: a fitted projection (``Identity`` for the raw features): ``transform``
            ``(M, C) -> (M, D)`` and ``transform_tokens`` ``(B, h, w, C) -> (B, D, h, w)``.
        indices: val image indices to return, any order (repeats allowed).
        seed: k-means seed (of the training sample and of the clustering).
        kmeans_kwargs: :class:`~stego_probe.probes.KMeansProbe` arguments (``n_tokens``,
            ``niter``, ``nredo`` ...), as the sweep's ``probe_kwargs["kmeans"]``; ``n_tokens``
            defaults to 50,000 tokens.
        batch_size: val images per prediction batch.

    Returns:
        int64 ``(len(indices), H, W)`` class ids, ``(H, W) = val_store.label_shape``; -1 where
        the pixel's cluster matched no class.
    """
    from stego_probe.metrics import ConfusionAccumulator, map_predictions
    from stego_probe.probes import get_probe

    def codes(tokens):
        return np.asarray(projection.transform_tokens(tokens), dtype=np.float32)

    k = int(val_store.n_classes)
    kw = {"n_tokens": 50_000, **renamed_kwargs(kmeans_kwargs or {}, "kmeans_kwargs")}
    kw.setdefault("n_clusters", k)
    kw.setdefault("random_state", seed)
    sample = train_store.sample_tokens(int(kw["n_tokens"]), seed=seed)
    sample = np.ascontiguousarray(projection.transform(sample), dtype=np.float32)
    probe = get_probe("kmeans", **kw).fit(sample)
    size = tuple(val_store.label_shape)
    acc = ConfusionAccumulator(int(probe.n_clusters), k)
    for tokens, labels, _ in val_store.iter_batches(batch_size):
        acc.update(probe.predict(codes(tokens), size=size), labels)
    cluster_to_class = acc.scores("hungarian")["cluster_to_class"]
    pred = probe.predict(codes(val_store.tokens(np.asarray(indices))), size=size)
    return map_predictions(pred, cluster_to_class)


__all__ = [
    "PredictionWriter",
    "check_output_dir",
    "class_aligned_predictions",
    "check_writable",
    "folder_name",
    "iter_predictions",
    "load_probes",
    "save_probes",
    "score_predictions",
]
