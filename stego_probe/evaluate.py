"""Evaluation pipeline: fit probes on training codes, score them on validation codes.

Two entry points:

* :func:`evaluate_codes` works on plain arrays (a notebook with codes in memory);
* :func:`evaluate_stores` streams two :class:`~stego_probe.store.FeatureStore` s (train, val)
  through an optional projection and returns tidy result rows.

Protocol (PROTOCOL §4.4). Probes are fitted on *training* codes at token resolution:
``"kmeans"`` (FAISS spherical k-means on a seeded token sample, §4.2), ``"cluster"`` (the
reference's Adam-trained cluster probe, §4.1) and ``"linear"`` (1x1 conv, pixel-level
cross-entropy, §4.3). The linear probe is trained to convergence by full-batch L-BFGS on passes
over the training codes (its default ``solver="lbfgs"``), or, with ``solver="adam"`` (parity
mode), on the same seeded stream of image mini-batches as ``"cluster"``, as the reference trains
them side by side. The linear probe z-scores its input with statistics of the
training codes by default (:class:`~stego_probe.probes.linear.LinearProbe` ``standardize``); in
:func:`evaluate_stores` they come from the same seeded token sample the k-means probe is fitted
on, so its result does not depend on the scale of the features. Validation then runs in one of three modes (the ``mode``
column of the results):

* ``"pixel"`` (``mode="pixel"``; the reference's "val" pass): one pass; the code is bilinearly
  upsampled (``align_corners=False``) to label resolution and each probe predicts every pixel
  (the reference's training-time validation and every point of the paper's Figure 4);
* ``"pixel_flip"`` (``mode="pixel", flip=True``; the reference's final "eval" pass): the code
  is the average of the code of the image and the flipped-back code of the flipped image,
  ``c = (code(x) + flip(code(flip(x)))) / 2``, then as ``"pixel"``;
* ``"token"``: a fast approximation for sweeps: codes stay on the token grid and the labels are
  pooled to it by majority (:func:`stego_probe.store.pool_labels`); the linear probe is trained on
  the pooled labels as well.

With ``crf=True`` the probes' log-probabilities at label resolution (``log_softmax(2 cos)`` for
the cluster and k-means probes, ``log_softmax(W c + b)`` for the linear probe) are refined by the
dense CRF (§5) and both the no-CRF and the CRF metrics are reported (one pass).

Metrics are accumulated in confusion matrices over the whole split, batch by batch, so no
prediction is kept in memory (quirk Q30); cluster probes are matched to classes with ``match``
(Hungarian by default), the linear probe with the identity.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from stego_probe.codes import check_finite, to_numpy
from stego_probe.labels import IGNORE_VALUES, check_labels
from stego_probe.metrics import metrics_to_flat
from stego_probe.params import renamed_kwargs
from stego_probe.probes import PROBE_ALIASES, PROBE_NAMES, canonical_name, get_probe
from stego_probe.probes.cluster_lookup import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_STEPS,
    minibatch_stream,
)
from stego_probe.projections.base import check_store_sample, check_store_tokens
from stego_probe.provenance import check_compatible
from stego_probe.results import (
    RESULT_COLUMNS,
    kmeans_context,
    linear_context,
    make_rows,
    mode_column,
    to_frame,
)
from stego_probe.scoring import Scorer, score_store
from stego_probe.store import STORE_PAIR_KEYS, check_store_pair, is_store, preloaded
from stego_probe.threads import uses_threads

#: The pipeline's probes (:data:`stego_probe.probes.PROBE_NAMES`; aliases:
#: :data:`stego_probe.probes.PROBE_ALIASES`, built by :func:`stego_probe.probes.get_probe`).
PROBES = PROBE_NAMES
MODES = ("pixel", "token")
#: Store provenance keys that must agree between the training and the validation store.
COMPATIBLE_KEYS = STORE_PAIR_KEYS
#: Tokens sampled for the linear probe's input statistics when no k-means sample is drawn.
STATS_TOKENS = 100_000
#: Inverse temperature of the soft cluster assignment fed to the CRF (reference: 2).
CRF_ALPHA = 2.0


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------


def probe_list(probes) -> list[str]:
    """Canonical probe names from a list or a comma-separated string (aliases resolved, order
    kept, duplicates dropped); a ``ValueError`` names an unknown probe or an empty list."""
    if isinstance(probes, str):
        probes = [p for p in probes.split(",") if p.strip()]
    out: list[str] = []
    for p in probes:
        try:
            name = canonical_name(p)
        except ValueError as e:
            raise ValueError(f"probes: {e}") from None
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"probes: expected at least one of {list(PROBES)}, got {probes!r}")
    return out


def _prefitted_probes(probes) -> dict:
    """``{canonical name: probe}`` for the fitted probes of a ``probes`` mapping (values that
    are None are fitted as usual; a plain list / string has no fitted probes)."""
    if not isinstance(probes, Mapping):
        return {}
    out = {}
    for key, probe in probes.items():
        if probe is None:
            continue
        if not callable(getattr(probe, "predict", None)):
            raise ValueError(
                f"probes[{key!r}]: expected a fitted probe (with predict) or None, got "
                f"{type(probe).__name__}"
            )
        out[PROBE_ALIASES[str(key).strip().lower()]] = probe
    return out


def _check_mode(mode: str, flip: bool, crf: bool) -> str:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
    if mode == "token" and (flip or crf):
        raise ValueError(
            "mode='token' (`--mode token`) evaluates on the token grid; flip averaging and the "
            "CRF (`--flip`, `--crf`) are defined for mode='pixel' only"
        )
    return mode_column(mode, flip)


def _probe_kwargs(probe_kwargs: Mapping | None, name: str) -> dict:
    if probe_kwargs is None:
        return {}
    unknown = {PROBE_ALIASES.get(k, k) for k in probe_kwargs} - set(PROBES)
    if unknown:
        raise ValueError(f"probe_kwargs: unknown probes {sorted(unknown)}; expected {list(PROBES)}")
    out: dict = {}
    for k, v in probe_kwargs.items():
        if PROBE_ALIASES.get(k, k) == name:
            out.update(renamed_kwargs(v or {}, f"probe_kwargs[{k!r}]"))
    return out


def _n_outputs(probe) -> int:
    return int(getattr(probe, "n_clusters", None) or probe.n_classes)


# ---------------------------------------------------------------------------------------------
# per-batch scoring (shared by both entry points)
# ---------------------------------------------------------------------------------------------


def predict_batch(name: str, probe, codes: np.ndarray, size=None) -> np.ndarray:
    """Predictions of a fitted probe on a batch of codes upsampled to ``size``.

    Args:
        name: canonical probe name (``kmeans``, ``cluster``, ``linear``).
        probe: the fitted probe.
        codes: ``(B, D, h, w)`` float32 codes (or ``(M, D)`` with ``size=None``).
        size: label resolution ``(H, W)``, or None for token resolution.

    Returns:
        int64 ``(B, H, W)`` (or ``(B, h, w)`` / ``(M,)``) cluster / class ids.
    """
    return probe.predict(codes, size=size)


def log_probs_batch(name: str, probe, codes: np.ndarray, size) -> np.ndarray:
    """Log-probabilities ``(B, K', H, W)`` float32 of a fitted probe at label resolution (the
    CRF input), ``probe.log_probs(codes, alpha, size=size)``: ``log_softmax(2 cos)`` for
    ``cluster`` / ``kmeans`` (:data:`CRF_ALPHA`; ``-2 d^2`` for euclidean k-means),
    ``log_softmax(logits)`` (``alpha = 1``) for ``linear``."""
    alpha = 1.0 if name == "linear" else CRF_ALPHA
    return probe.log_probs(codes, alpha, size=size)


# ---------------------------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------------------------


def _codes_array(x, name: str) -> np.ndarray:
    arr = to_numpy(x, name)
    if arr.ndim not in (2, 4):
        raise ValueError(f"{name}: expected shape (N, D, h, w) or (M, D), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: empty split (no images / tokens), shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected a real-valued array, got dtype {arr.dtype}")
    return check_finite(np.asarray(arr, dtype=np.float32), name)


def _labels_array(y, codes: np.ndarray, n_classes: int, name: str) -> np.ndarray:
    if y is None:
        raise ValueError(f"{name}: labels are required")
    lab = check_labels(to_numpy(y, name), n_classes, IGNORE_VALUES, source=name)
    want = "(N, H, W)" if codes.ndim == 4 else "(M,)"
    if codes.ndim == 4 and (lab.ndim != 3 or lab.shape[0] != codes.shape[0]):
        raise ValueError(f"{name}: expected {want} with N={codes.shape[0]}, got {lab.shape}")
    if codes.ndim == 2 and lab.shape != (codes.shape[0],):
        raise ValueError(f"{name}: expected {want} with M={codes.shape[0]}, got {lab.shape}")
    return lab


def _to_token_grid(labels: np.ndarray, grid, n_classes: int) -> np.ndarray:
    from stego_probe.store import pool_labels

    if tuple(labels.shape[1:]) == tuple(grid):
        return labels
    return pool_labels(labels, tuple(grid), n_classes)


def evaluate_codes(
    train_codes,
    train_labels,
    val_codes,
    val_labels,
    n_classes: int,
    probes: Sequence[str] | str = PROBES,
    mode: str = "pixel",
    crf: bool = False,
    val_images=None,
    flip_codes=None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    probe_kwargs: Mapping | None = None,
    match: str = "hungarian",
    batch_size: int = 8,
    crf_workers: int = 0,
    return_probes: bool = False,
):
    """Fit probes on training codes and score them on validation codes (all in memory).

    Args:
        train_codes: ``(N, D, h, w)`` (or token layout ``(M, D)``) float training codes.
        train_labels: ``(N, H, W)`` pixel labels or ``(N, h, w)`` token-grid labels (``(M,)``
            for token layout); values outside ``[0, K)`` (-1, 255) are ignored. Used only by
            the linear probe (pass None when ``probes`` has no ``linear``).
        val_codes: ``(N', D, h, w)`` (or ``(M', D)``) validation codes.
        val_labels: ``(N', H, W)`` (or ``(M',)``) validation labels.
        n_classes: ``K``.
        probes: any of ``"kmeans"``, ``"cluster"``, ``"linear"`` (list or comma string).
        mode: ``"pixel"``: codes upsampled to the label resolution; ``"token"``: labels pooled
            to the token grid by majority (training and validation).
        crf: also report dense-CRF refined metrics (needs ``val_images``; pixel mode).
        val_images: ``(N', H, W, 3)`` uint8 validation images for the CRF.
        flip_codes: ``(N', D, h, w)`` codes of the horizontally flipped validation images,
            **already flipped back** to the original orientation (as the store's
            ``tokens_flipped``); when given, ``(val_codes + flip_codes) / 2`` is evaluated
            ("eval" mode).
        seed: ``random_state`` of every probe (k-means sample and seeds, Adam init and stream).
        class_names: unused here except for validation of its length (kept for symmetry with
            :func:`evaluate_stores`; use :func:`stego_probe.metrics.metrics_to_flat`).
        probe_kwargs: ``{probe: {constructor kwargs}}``, e.g.
            ``{"cluster": {"steps": 500}, "kmeans": {"n_clusters": 30}}``.
        match: cluster-to-class matching for ``kmeans`` / ``cluster`` (``"hungarian"``,
            ``"majority"``, ``"reference"``); the linear probe always uses ``"identity"``.
        batch_size: validation images per batch.
        crf_workers: worker processes for the CRF (0 = serial).
        return_probes: also return the fitted probes.

    Returns:
        ``{probe: scores}`` with :func:`stego_probe.metrics.scores` dictionaries (``accuracy``,
        ``miou``, ``iou`` ...); with ``crf=True`` also ``{probe + "+crf": scores}``. With
        ``return_probes``: ``(results, {probe: fitted probe})``.

    Raises:
        ValueError: empty inputs, NaN codes, code widths or label shapes that do not match,
            unknown probe / mode, labels outside ``[0, K)`` that are not an ignore value.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, (6, 4, 4))
        >>> codes = (np.eye(3)[y].transpose(0, 3, 1, 2) + rng.normal(0, 0.05, (6, 3, 4, 4)))
        >>> res = evaluate_codes(codes, y, codes, y, 3, probes="kmeans,linear", mode="token",
        ...                      probe_kwargs={"linear": {"max_iter": 100}})
        >>> round(res["kmeans"]["accuracy"]), round(res["linear"]["accuracy"])
        (100, 100)
    """
    names = probe_list(probes)
    _check_mode(mode, flip_codes is not None, crf)
    n_classes = int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes: expected a positive integer, got {n_classes}")
    if class_names is not None and len(class_names) != n_classes:
        raise ValueError(f"class_names: expected {n_classes} names, got {len(class_names)}")
    tr = _codes_array(train_codes, "train_codes")
    va = _codes_array(val_codes, "val_codes")
    if tr.shape[1] != va.shape[1]:
        raise ValueError(
            f"val_codes: code width D={va.shape[1]} differs from train_codes' D={tr.shape[1]}"
        )
    if tr.ndim != va.ndim:
        raise ValueError(f"train_codes {tr.shape} / val_codes {va.shape}: expected the same layout")
    vy = _labels_array(val_labels, va, n_classes, "val_labels")
    ty = None
    if "linear" in names:
        ty = _labels_array(train_labels, tr, n_classes, "train_labels")
    if flip_codes is not None:
        fc = _codes_array(flip_codes, "flip_codes")
        if fc.shape != va.shape:
            raise ValueError(
                f"flip_codes: expected shape {va.shape} like val_codes, got {fc.shape}"
            )
        va = 0.5 * (va + fc)
    if crf:
        if va.ndim != 4:
            raise ValueError("crf=True needs image-layout codes (N, D, h, w)")
        if val_images is None:
            raise ValueError("val_images: the CRF needs the (N, H, W, 3) uint8 validation images")
        val_images = np.asarray(val_images)
        if val_images.dtype != np.uint8 or val_images.shape != (*vy.shape, 3):
            raise ValueError(
                f"val_images: expected uint8 of shape {(*vy.shape, 3)}, got "
                f"{val_images.dtype} {val_images.shape}"
            )
    if mode == "token" and va.ndim == 4:
        vy = _to_token_grid(vy, va.shape[2:], n_classes)
        if ty is not None:
            ty = _to_token_grid(ty, tr.shape[2:], n_classes)
    for lab, what in ((vy, "val_labels"), (ty, "train_labels")):
        if lab is not None and not ((lab >= 0) & (lab < n_classes)).any():
            raise ValueError(
                f"{what}: no labelled pixel (all labels are ignore values, outside "
                f"[0, {n_classes})); "
                + ("nothing to score" if what == "val_labels" else "the linear probe cannot learn")
            )

    fitted = {}
    for name in names:
        probe = get_probe(
            name, n_classes, **{"random_state": seed, **_probe_kwargs(probe_kwargs, name)}
        )
        fitted[name] = probe.fit(tr, ty) if name == "linear" else probe.fit(tr)

    scorer = Scorer(fitted, n_classes, crf, crf_workers, predict_batch, log_probs_batch)
    size = tuple(vy.shape[1:]) if va.ndim == 4 else None
    for start in range(0, len(va), int(batch_size)):
        sl = slice(start, start + int(batch_size))
        imgs = val_images[sl] if crf else None
        scorer.update(va[sl], vy[sl], size, imgs)
    res = {
        (name + "+crf" if use_crf else name): s
        for (name, use_crf), s in scorer.results(match).items()
    }
    return (res, fitted) if return_probes else res


# ---------------------------------------------------------------------------------------------
# stores
# ---------------------------------------------------------------------------------------------


def _open_store(store, what: str):
    from stego_probe.store import FeatureStore

    if isinstance(store, str | os.PathLike):
        return FeatureStore.open(store)
    if not is_store(store):
        raise ValueError(f"{what}: expected a FeatureStore or a store path, got {type(store)}")
    return store


def require_labelled(store, what: str = "train") -> int:
    """Raise ``ValueError`` unless ``store`` has at least one labelled pixel (in ``[0, K)``).

    The labels are read chunk by chunk and the scan stops at the first labelled pixel, so this
    is cheap for any store with labels; a store whose labels are all ignore values is read to
    the end and refused with a message naming it.

    Args:
        store: a :class:`~stego_probe.store.FeatureStore`.
        what: ``"train"`` or ``"val"`` (for the message).

    Returns:
        the index of the first image with a labelled pixel.
    """
    k = int(store.n_classes)
    n = int(store.n_images)
    step = max(1, int(getattr(store, "chunk_images", 64) or 64))
    for start in range(0, n, step):
        lab = np.asarray(store.labels(np.arange(start, min(start + step, n))))
        hit = ((lab >= 0) & (lab < k)).reshape(len(lab), -1).any(axis=1)
        if hit.any():
            return start + int(np.argmax(hit))
    use = (
        "a linear probe trained on them would score as a random one"
        if what == "train"
        else "there is nothing to score"
    )
    raise ValueError(
        f"{what} store {store.path}: no labelled pixel in its {n} images (all {what} labels are "
        f"ignore values, outside [0, {k})); {use}. Check the dataset's labels / ignore values"
    )


def check_stores(train_store, val_store, projection=None, *, transfer: bool = False) -> None:
    """Raise ``ValueError`` unless the two stores (and the projection) can be evaluated together.

    The stores must pass :func:`stego_probe.store.check_store_pair` (same backbone, weights,
    dataset, class count, patch size and token width; neither empty; every difference listed).
    A projection fitted on a store must have been fitted on tokens of the same backbone/weights,
    and of the same dataset unless ``transfer`` (a projection fitted on another dataset, as
    :mod:`stego_probe.transfer` evaluates it).
    """
    check_store_pair(train_store, val_store)
    vp = dict(val_store.provenance)
    if projection is not None:
        fit = dict(getattr(projection, "provenance", {}) or {}).get("fit_data", {}) or {}
        compared = ("backbone", "weights_sha256") + (() if transfer else ("dataset",))
        keys = [k for k in compared if fit.get(k) is not None]
        check_compatible(
            {k: fit[k] for k in keys},
            vp,
            keys,
            what=f"projection fit data and val store {val_store.path}",
        )


def _projector(projection) -> Callable[[np.ndarray], np.ndarray]:
    """tokens (B, h, w, C) -> codes (B, D, h, w) float32, or (n, C) -> (n, D)."""

    def project(tokens: np.ndarray) -> np.ndarray:
        if projection is None:
            out = tokens.transpose(0, 3, 1, 2) if tokens.ndim == 4 else tokens
        elif tokens.ndim == 4 and hasattr(projection, "transform_tokens"):
            out = projection.transform_tokens(tokens)
        elif tokens.ndim == 4:
            out = projection.transform(np.ascontiguousarray(tokens.transpose(0, 3, 1, 2)))
        else:
            out = projection.transform(tokens)
        return np.ascontiguousarray(to_numpy(out, "projected codes"), dtype=np.float32)

    return project


class _NonFiniteTokens(Exception):
    """Raised inside a sample's transform on NaN / inf tokens (located afterwards)."""


def _draw_codes(train_store, project, n_sample: int, seed: int, token_mode: bool, targets: bool):
    """The seeded token sample of ``train_store`` as ``(n, D)`` float32 codes [and each token's
    class mass (:func:`_sample_targets`) if ``targets``].

    The tokens are projected while they are drawn (``sample_tokens(transform=...)``, block by
    block): the raw ``(n, C)`` sample never exists whole, so memory is the codes, one block of
    raw rows and the projection's intermediates for one block. Each block is checked finite
    first; on NaN / inf tokens the raw sample is drawn again to name the store and the first
    bad image (:func:`~stego_probe.projections.base.check_store_sample`). A store whose
    ``sample_tokens`` takes no ``transform`` is sampled whole, then projected.
    """
    import inspect

    from stego_probe.codes import all_finite

    def checked(rows: np.ndarray) -> np.ndarray:
        if not all_finite(rows):
            raise _NonFiniteTokens
        return project(rows)

    def draw(transform):
        if targets:
            return _sample_targets(train_store, n_sample, seed, token_mode, transform)
        return train_store.sample_tokens(n_sample, seed=seed, **_transform_kw(transform)), None

    if "transform" not in inspect.signature(train_store.sample_tokens).parameters:
        tokens, mass = draw(None)
        check_store_sample(train_store, tokens)
        return project(tokens), mass
    try:
        codes, mass = draw(checked)
    except _NonFiniteTokens:
        check_store_sample(train_store, train_store.sample_tokens(n_sample, seed=seed))
        raise  # pragma: no cover - the raw sample is not finite either, so the check raised
    return codes, mass


def _transform_kw(transform) -> dict:
    return {} if transform is None else {"transform": transform}


def dataset_for_store(store, root: str | os.PathLike | None = None, **kwargs):
    """Rebuild the dataset split a store was extracted from, from the store's provenance.

    :func:`stego_probe.data.dataset_from_provenance` on ``store.provenance``: the registry
    name, split and every recorded constructor option (e.g. ``n_images`` / ``size`` / ``seed``
    of ``synthetic``, ``ignore_value`` / ``class_names`` of ``folder``), then ``kwargs``;
    ``root`` defaults to the recorded root.

    Returns:
        a :class:`~stego_probe.data.base.SegDataset`.

    Raises:
        ValueError: the provenance records no dataset / split (named with the store).
    """
    from stego_probe.data import dataset_from_provenance

    prov = dict(store.provenance)
    if prov.get("dataset") is None or prov.get("split") is None:
        raise ValueError(
            f"{store.path}: provenance records no dataset / split to rebuild (needed for the "
            "CRF images, `--crf`)"
        )
    return dataset_from_provenance(prov, root, **kwargs)


def store_images(store, dataset) -> Callable[[np.ndarray, list[str]], np.ndarray]:
    """A function ``(indices (B,), ids) -> (B, H, W, 3) uint8`` giving the evaluation images.

    Each store image ``i`` is ``dataset[i]`` under the store's recorded transform (resolution,
    crop, mean/std), un-normalised and truncated to uint8 as the reference does (PROTOCOL §5).
    The dataset's ids are checked against the store's ids.

    Raises:
        ValueError: a five-crop store (pass your own ``images`` function), or ids that differ.
    """
    from stego_probe.data.transforms import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        denormalize_to_uint8,
        stego_transform,
    )

    prov = dict(store.provenance)
    crop = prov.get("crop", "center")
    if crop == "five":
        raise ValueError(
            f"{store.path}: five-crop store; pass images=callable(indices, ids) for the CRF "
            "(the CLI's `evaluate --crf` cannot rebuild five-crop images)"
        )
    t = dict(prov.get("transform") or {})
    res = int(t.get("res", prov.get("res", store.label_shape[0])))
    mean = tuple(t.get("mean", IMAGENET_MEAN))
    std = tuple(t.get("std", IMAGENET_STD))
    transform = stego_transform(res, crop=t.get("crop", crop), mean=mean, std=std)

    def images(indices, ids) -> np.ndarray:
        out = []
        for i, sid in zip(np.asarray(indices).tolist(), ids):
            sample = dataset[int(i)]
            if str(sample.id) != str(sid):
                raise ValueError(
                    f"{store.path}: store image {i} has id {sid!r} but dataset "
                    f"{dataset.name}/{dataset.split} item {i} has id {sample.id!r}; the images "
                    "for the CRF must come from the dataset the store was extracted from"
                )
            img, _ = transform(sample)
            out.append(denormalize_to_uint8(img, mean, std))
        return np.stack(out)

    return images


#: Training stores up to this many bytes (float32 tokens + int64 labels) are read into memory
#: once for probe training instead of once per mini-batch; larger ones are streamed.
IN_MEMORY_BYTES = 256 * 2**20
#: Images per chunk of a full-batch (L-BFGS) linear probe's pass over a training store.
PASS_CHUNK_IMAGES = 64


def _batch_readers(store, token_mode: bool):
    """``(tokens_of(idx), labels_of(idx))`` for mini-batches of ``store``, read into memory
    once if small (:func:`stego_probe.store.preloaded`).

    The tokens are checked finite (:func:`~stego_probe.projections.base.check_store_tokens`,
    naming the store and the image): once when cached, batch by batch when streamed."""
    copy = preloaded(store, IN_MEMORY_BYTES, token_labels=token_mode)
    if copy is not store:  # checked whole
        return copy.tokens, copy.labels
    return _checked_readers(store, token_mode)


def _checked_readers(store, token_mode: bool):
    """``(tokens_of(idx), labels_of(idx))`` reading ``store`` batch by batch, each token batch
    checked finite (naming the store and the image)."""

    def tokens_of(idx) -> np.ndarray:
        tokens = store.tokens(idx)
        check_store_tokens(store, idx, tokens)
        return tokens

    return tokens_of, (store.token_labels if token_mode else store.labels)


def _uses_passes(probe) -> bool:
    """True for a probe trained by full passes over the training set (the linear probe's
    pixel-level L-BFGS solver), False for one trained on a mini-batch stream (Adam)."""
    return getattr(probe, "solver", "adam") == "lbfgs" and hasattr(probe, "fit_passes")


def _fits_sample(probe) -> bool:
    """True for a probe trained on the seeded token sample (the linear probe's
    ``solver="tokens"``: L-BFGS on the tokens and their class mass, in memory)."""
    return getattr(probe, "solver", None) == "tokens" and hasattr(probe, "fit_targets")


@contextlib.contextmanager
def _pass_bar(progress: bool, desc: str):
    """An ``on_pass(n_passes, loss)`` callback that advances a tqdm bar (None without
    ``progress``); the bar is closed on exit."""
    if not progress:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="pass")
    try:
        yield lambda i, loss: bar.update(1)
    finally:
        bar.close()


def _sample_targets(train_store, n_sample: int, seed: int, token_mode: bool, transform=None):
    """The seeded token sample of ``train_store`` (through ``transform`` if given) with each
    token's class mass ``(n, K)`` float32: its bilinear footprint's valid pixels per class
    (pixel mode, ``soft_labels=True``), or its pooled label one-hot (token mode; no valid
    pixel: zeros)."""
    k = int(train_store.n_classes)
    kw = _transform_kw(transform)
    if not token_mode:
        return train_store.sample_tokens(n_sample, seed=seed, soft_labels=True, **kw)
    tokens, labels = train_store.sample_tokens(n_sample, seed=seed, with_labels=True, **kw)
    targets = np.zeros((len(labels), k), dtype=np.float32)
    valid = (labels >= 0) & (labels < k)
    targets[np.flatnonzero(valid), labels[valid]] = 1.0
    return tokens, targets


def _train_images(probe, train_store) -> int:
    """Training images a linear probe trained here drew from: the L-BFGS probe's
    ``max_images`` subset (:func:`_train_pass_probe`), else the whole store (Adam's stream and
    the token sample draw from every image; how many they happened to touch is not counted)."""
    from stego_probe.probes.linear import train_subset

    n = int(train_store.n_images)
    if _uses_passes(probe):
        subset = train_subset(n, getattr(probe, "max_images", None), probe.random_state)
        return n if subset is None else len(subset)
    return n


def _train_pass_probe(probe, train_store, project, token_mode, progress):
    """Fit a full-batch (L-BFGS) linear probe on passes over a training store.

    The pass covers the store's images, or the seeded subset of at most ``probe.max_images``
    of them (:func:`stego_probe.probes.linear.train_subset`, seed ``probe.random_state``).
    Each pass reads them in chunks of images (:data:`PASS_CHUNK_IMAGES`; a small store without
    a subset is read into memory once, :func:`_batch_readers`), projects and checks them; the probe
    keeps the chunks after the first pass when they are small
    (:data:`stego_probe.probes.linear.PASS_CACHE_BYTES`), so a small training set is read and
    projected once, a large one once per pass with one chunk in memory. The input statistics
    must be set beforehand (as for the stream).
    """
    from stego_probe.probes.linear import train_subset

    n = int(train_store.n_images)
    subset = train_subset(n, getattr(probe, "max_images", None), probe.random_state)
    images = np.arange(n) if subset is None else subset
    if subset is None:
        tokens_of, labels_of = _batch_readers(train_store, token_mode)
    else:  # the subset alone is read (not the whole store preloaded)
        tokens_of, labels_of = _checked_readers(train_store, token_mode)
    step = max(1, int(PASS_CHUNK_IMAGES))

    def one_pass():
        for start in range(0, len(images), step):
            idx = images[start : start + step]
            codes = check_finite(project(tokens_of(idx)), f"train store {train_store.path} codes")
            yield codes, labels_of(idx)

    with _pass_bar(progress, "train linear (L-BFGS)") as on_pass:
        probe.fit_passes(one_pass, on_pass=on_pass)
    return probe


def _train_stream_probes(probes: dict, train_store, project, seed, token_mode, progress):
    """Fit unfitted cluster / linear probes on a store: on seeded streams of training batches
    (Adam), or on passes over the store (the linear probe's default L-BFGS solver,
    :func:`_train_pass_probe`).

    Probes with the same ``(steps, batch_size)`` share one stream (each batch is read and
    projected once and fed to all of them, as the reference trains its probes side by side);
    the stream is :func:`minibatch_stream` with ``seed``, the one ``probe.fit`` would use.
    A linear probe that standardises its input must have its statistics set beforehand.
    """
    for p in probes.values():
        if _uses_passes(p):
            _train_pass_probe(p, train_store, project, token_mode, progress)
    groups: dict[tuple[int, int], list[str]] = {}
    for n, p in probes.items():
        if not _uses_passes(p):
            groups.setdefault((int(p.steps), int(p.batch_size)), []).append(n)
    bar = None
    if progress and groups:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(s for s, _ in groups), desc="train probes", unit="step")
    tokens_of, labels_of = _batch_readers(train_store, token_mode)
    try:
        for (steps, batch_size), members in groups.items():
            for idx in minibatch_stream(train_store.n_images, batch_size, steps, seed):
                codes = check_finite(
                    project(tokens_of(idx)), f"train store {train_store.path} codes"
                )
                for name in members:
                    if name == "linear":
                        probes[name].partial_fit(codes, labels_of(idx))
                    else:
                        probes[name].partial_fit(codes)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return probes


@uses_threads(store="train_store")
def evaluate_stores(
    train_store,
    val_store,
    *,
    probes: Sequence[str] | str | Mapping = PROBES,
    projection=None,
    method: str | None = None,
    mode: str = "pixel",
    crf: bool = False,
    flip: bool = False,
    seed: int = 0,
    match: str = "hungarian",
    steps: int = DEFAULT_STEPS,
    train_batch_size: int = DEFAULT_BATCH_SIZE,
    n_tokens: int = 1_000_000,
    probe_kwargs: Mapping | None = None,
    batch_size: int = 8,
    images: Callable | None = None,
    crf_workers: int = 0,
    return_probes: bool = False,
    progress: bool = True,
    save_predictions: str | os.PathLike | None = None,
    threads: int | str | None = "auto",
    on_rows: Callable | None = None,
    skip: Sequence[str] | str = (),
    transfer: bool = False,
):
    """Fit probes on a training store and evaluate them on a validation store (streaming).

    Args:
        train_store, val_store: :class:`~stego_probe.store.FeatureStore` s or their paths;
            same backbone, weights, dataset and class count.
        probes: any of ``"kmeans"``, ``"cluster"``, ``"linear"``; or a mapping from those names
            to already fitted probes, which are evaluated as they are (no training; e.g. a
            released STEGO checkpoint's own probes, ``dict(zip(("cluster", "linear"),
            head.probes()))``), a ``None`` value meaning "fit this one as usual".
        projection: a fitted projection (``transform_tokens`` / ``transform``) applied to the
            tokens of both stores, or None for the raw features (the DINO baseline).
        method: value of the ``method`` column (default ``projection.method_name`` or
            ``"dino"``).
        mode: ``"pixel"`` (codes upsampled to the label resolution) or ``"token"`` (labels
            pooled to the token grid; fast approximation).
        crf: also compute dense-CRF metrics (pixel mode); needs ``images`` or a dataset that
            :func:`dataset_for_store` can rebuild without a data root argument.
        flip: evaluation-mode flip average with the val store's ``tokens_flipped``.
        seed: ``random_state`` of the probes (k-means token sample and seeds, Adam init and the
            training stream).
        match: matching of the unsupervised probes (linear always uses ``"identity"``).
        steps, train_batch_size: training mini-batches and images per batch of the cluster
            probe and of an Adam linear probe (``probe_kwargs={"linear": {"solver": "adam"}}``;
            reference: 7000 x 32; Potsdam 5000 x 16). The default L-BFGS linear probe ignores
            them (its budget: ``max_iter`` iterations, each a pass over the train store's
            images, or over a seeded subset of ``max_images`` of them:
            ``probe_kwargs={"linear": {"max_images": ...}}``, default 1,000).
        n_tokens: tokens sampled from the training store for the k-means probe; the linear
            probe's input statistics come from the same sample (from ``min(n_tokens,
            STATS_TOKENS)`` tokens when k-means does not run), and a linear probe with
            ``solver="tokens"`` is trained on it (``n_tokens`` tokens also without k-means),
            each token with its class mass (``sample_tokens(..., soft_labels=True)``).
        probe_kwargs: ``{probe: {constructor kwargs}}`` overriding the above.
        batch_size: validation images per batch (reference: 8).
        images: ``(indices, ids) -> (B, H, W, 3) uint8`` evaluation images for the CRF (see
            :func:`store_images`).
        crf_workers: CRF worker processes (0 = serial).
        return_probes: also return the fitted probes.
        progress: tqdm bars.
        save_predictions: a new or empty folder: write every validation image's predictions
            (one PNG per image and probe, cluster ids mapped to classes with the matching of
            the reported scores, plus ``mapping.json``; :class:`stego_probe.export.
            PredictionWriter`), streamed batch by batch.
        threads: CPU threads of torch / FAISS / BLAS during the call (restored after):
            ``"auto"`` (1 for small stores, all cores for ViT-sized ones; or an enclosing
            :func:`stego_probe.threads.limit`'s explicit count), ``"all"``, an int or None
            (library defaults); see :mod:`stego_probe.threads`.
        on_rows: called as ``on_rows(probe, rows)`` (``rows`` a DataFrame of that probe's rows,
            both CRF settings) as soon as a probe is scored, e.g. to append them to a file:
            the k-means (and prefitted) probes are scored in a first validation pass, before
            the cluster / linear training, and those in a second one (the validation store is
            then read twice), so a crash during the training keeps the k-means rows.
        skip: probes among ``probes`` that are neither fitted nor scored (their rows exist
            already); everything else is computed exactly as in the full run (same token
            sample for the linear probe's statistics, same training stream).
        transfer: ``projection`` was fitted on another dataset than the stores' (a transfer,
            :func:`stego_probe.transfer.run_transfer`): its fit data's backbone and weights are
            still checked against the stores, its dataset is not.

    Returns:
        a pandas DataFrame with :data:`stego_probe.results.RESULT_COLUMNS` (one row per metric:
        ``accuracy``, ``miou``, ``iou:<class>``, ``precision:<class>``, ``recall:<class>``) for
        every probe (and CRF setting); with ``return_probes`` a ``(frame, probes)`` tuple.

    Raises:
        ValueError: incompatible stores, NaN or infinite tokens in either store (the message
            names the store, the image index and its id), NaN codes, a missing ``tokens_flipped`` with
            ``flip=True``, a val store without one labelled pixel, a linear probe to train on a
            train store without one (both checked before any training), bad arguments.
    """
    names = probe_list(probes)
    prefitted = _prefitted_probes(probes)
    mode_col = _check_mode(mode, flip, crf)
    skipped = set(probe_list(skip)) if skip else set()
    if skipped - set(names):
        raise ValueError(f"skip: {sorted(skipped - set(names))} are not among probes {names}")
    run = [n for n in names if n not in skipped]
    if on_rows is not None and not callable(on_rows):
        raise ValueError(f"on_rows: expected a callable (probe, rows) or None, got {on_rows!r}")
    if save_predictions is not None:
        from stego_probe.export import check_output_dir

        check_output_dir(save_predictions, "save_predictions")  # before any work
    token_mode = mode == "token"
    train_store = _open_store(train_store, "train_store")
    val_store = _open_store(val_store, "val_store")
    check_stores(train_store, val_store, projection, transfer=transfer)
    if flip and not getattr(val_store, "has_flipped", False):
        raise ValueError(
            f"val store {val_store.path}: has no tokens_flipped; re-extract it with "
            "`stego-probe extract ... --flipped` (flipped=True) for flip=True / eval mode"
        )
    n_classes = int(val_store.n_classes)
    class_names = val_store.class_names or [str(i) for i in range(n_classes)]
    if not run:
        frame = to_frame([])
        return (frame, {}) if return_probes else frame
    # labels that could only give a meaningless score are refused before any training
    require_labelled(val_store, "val")
    if "linear" in run and "linear" not in prefitted:
        require_labelled(train_store, "train")
    if crf and images is None:
        images = store_images(val_store, dataset_for_store(val_store))
    project = _projector(projection)
    kwargs = {n: _probe_kwargs(probe_kwargs, n) for n in names}
    for n in ("cluster", "linear"):
        if n in kwargs:
            kwargs[n] = {"steps": steps, "batch_size": train_batch_size, **kwargs[n]}

    # -- fit ------------------------------------------------------------------------------------
    fitted = dict(prefitted)
    stream_names = [n for n in run if n != "kmeans" and n not in prefitted]
    fit_kmeans = "kmeans" in run and "kmeans" not in prefitted
    # the sample size depends on the probes asked for, not on those skipped: a skipped k-means
    # probe still sets it, so a resumed linear probe gets the statistics of the full run
    kmeans_sample = "kmeans" in names and "kmeans" not in prefitted
    stream = {
        n: get_probe(n, n_classes, **{"random_state": seed, **kwargs[n]}) for n in stream_names
    }
    on_sample = [n for n, p in stream.items() if _fits_sample(p)]
    needs_stats = [
        p
        for n, p in stream.items()
        if n not in on_sample and getattr(p, "standardize", "none") != "none"
    ]
    sample = targets = None
    if fit_kmeans or needs_stats or on_sample:
        # One seeded token sample serves the k-means fit, the linear probe's training (default
        # solver "tokens") or its input statistics (which alone need far fewer tokens than
        # k-means: mean and std per channel).
        if kmeans_sample:
            n_sample = int(kwargs.get("kmeans", {}).get("n_tokens", n_tokens))
        elif on_sample:
            n_sample = int(n_tokens)
        else:
            n_sample = min(int(n_tokens), STATS_TOKENS)
        sample, targets = _draw_codes(
            train_store, project, int(n_sample), seed, token_mode, targets=bool(on_sample)
        )
        sample = check_finite(sample, f"train store {train_store.path} codes")
    for probe in needs_stats:
        probe.fit_scaler(sample)
    for name in on_sample:  # before k-means, which may normalise the sample in place
        with _pass_bar(progress, f"train {name} (L-BFGS on tokens)") as on_pass:
            try:
                fitted[name] = stream.pop(name).fit_targets(sample, targets, on_pass=on_pass)
            except ValueError as e:
                if "no labelled pixel" not in str(e):
                    raise
                raise ValueError(
                    f"train store {train_store.path}: the {n_sample:,} sampled tokens hold no "
                    "labelled pixel; the linear probe cannot be trained on them"
                ) from e
    del targets
    if fit_kmeans:
        # the sample is ours: k-means may normalise it in place (after the input statistics)
        kw = {"n_tokens": int(n_tokens), "copy_x": False, **kwargs["kmeans"]}
        fitted["kmeans"] = get_probe("kmeans", n_classes, **{"random_state": seed, **kw})
        fitted["kmeans"].fit(sample)
    del sample

    # -- validate, phase by phase ---------------------------------------------------------------
    # Probes that need no stream training (k-means, prefitted ones) are scored first and their
    # rows handed to ``on_rows`` before the long cluster / linear training starts.
    prov = dict(val_store.provenance)
    if method is None:
        method = (
            "dino"
            if projection is None
            else getattr(projection, "method_name", None) or type(projection).__name__.lower()
        )
    writer = None
    if save_predictions is not None:
        from stego_probe.export import PredictionWriter

        every = {**fitted, **stream}
        outputs = {
            (n, c): _n_outputs(every[n]) for n in run for c in ((False, True) if crf else (False,))
        }
        writer = PredictionWriter(save_predictions, outputs, n_classes, class_names)
    size = None if token_mode else tuple(val_store.label_shape)

    def validate(subset: dict) -> dict:
        scorer = Scorer(subset, n_classes, crf, crf_workers, predict_batch, log_probs_batch)
        score_store(
            val_store,
            scorer,
            project,
            batch_size=int(batch_size),
            size=size,
            flip=flip,
            token_labels=token_mode,
            images=images if crf else None,
            on_batch=None if writer is None else writer.write,
            progress=progress,
        )
        return scorer.results(match)

    def probe_rows(name: str, results: dict) -> list[dict]:
        out = []
        for (n, use_crf), s in results.items():
            if n != name:
                continue
            context = {
                "dataset": prov.get("dataset", ""),
                "backbone": prov.get("backbone", ""),
                "weights_sha256": prov.get("weights_sha256") or "",
                "method": method,
                "dim": int(getattr(fitted[name], "n_features_in_", 0)),
                "seed": seed,
                "probe": name,
                "crf": use_crf,
                "mode": mode_col,
                "match": "identity" if name == "linear" else match,
                "split": prov.get("split", ""),
            }
            if name == "kmeans" and hasattr(fitted[name], "n_iter_"):
                context.update(kmeans_context(fitted[name]))  # stopping rule, iterations run
            if name == "linear":  # solver, training images, iterations run
                images = None if "linear" in prefitted else _train_images(fitted[name], train_store)
                context.update(linear_context(fitted[name], images))
            out += make_rows(context, metrics_to_flat(s, class_names))
        return out

    rows = []
    phases = [[n for n in run if n not in stream], [n for n in run if n in stream]]
    for phase in (p for p in phases if p):
        if phase[0] in stream:
            fitted.update(
                _train_stream_probes(stream, train_store, project, seed, token_mode, progress)
            )
            if "linear" in stream:
                stream["linear"].check_labelled(f"train store {train_store.path}")
        results = validate({n: fitted[n] for n in phase})
        if writer is not None:
            writer.finalize(
                results,
                {
                    "seed": seed,
                    "mode": mode_col,
                    "method": method,
                    "val_store": str(val_store.path),
                },
            )
        for name in phase:
            probe_rows_ = probe_rows(name, results)
            rows += probe_rows_
            if on_rows is not None:
                on_rows(name, to_frame(probe_rows_))
    fitted = {n: fitted[n] for n in run}
    frame = to_frame(rows)
    return (frame, fitted) if return_probes else frame


__all__ = [
    "PROBES",
    "RESULT_COLUMNS",
    "check_stores",
    "dataset_for_store",
    "evaluate_codes",
    "evaluate_stores",
    "log_probs_batch",
    "predict_batch",
    "require_labelled",
    "store_images",
]
