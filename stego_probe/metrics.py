"""Segmentation metrics: confusion matrix, cluster-to-class matching, accuracy / IoU / P / R.

Definitions (PROTOCOL §4.5, §4.6; formulas in ``docs/metrics.md``):

* ``M[p, a]`` counts valid pixels (label in ``[0, K)``, see :func:`stego_probe.labels.valid_mask`)
  predicted as cluster ``p`` with true class ``a``; ``M`` is ``(K', K)``, rows = predictions.
* A matching turns clusters into classes. It is stored as ``cluster_to_class`` ``(K',)``: the
  class each cluster predicts, or -1 ("no class", an unmatched extra cluster).
* ``TP_a`` = pixels of class ``a`` in clusters mapped to ``a``; ``FP_a`` = pixels of other classes
  in clusters mapped to ``a``; ``FN_a`` = pixels of class ``a`` anywhere else, unmatched clusters
  included. Unmatched clusters' pixels are never FP and stay in the accuracy denominator.
* Accuracy = ``sum TP / sum M``; ``IoU_a = TP/(TP+FP+FN)``; mIoU averages the classes with
  ``TP+FP+FN > 0``; precision ``TP/(TP+FP)``; recall ``TP/(TP+FN)``. All in percent.

Matching modes: ``hungarian`` (one-to-one, the default; the paper's protocol), ``majority``
(many-to-one, for over-clustering; not comparable to the paper), ``identity`` (linear probe),
``reference`` (STEGO's ``UnsupervisedMetrics`` incl. quirk Q12, for parity/documentation only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from stego_probe.labels import valid_mask

MATCH_MODES = ("hungarian", "majority", "identity", "reference")


def _int_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == bool:
        return x.astype(np.int64)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False)


def _check_sizes(n_clusters: int, n_classes: int) -> tuple[int, int]:
    if int(n_clusters) < 1 or int(n_classes) < 1:
        raise ValueError(
            f"n_clusters and n_classes must be >= 1, got n_clusters={n_clusters}, "
            f"n_classes={n_classes}"
        )
    return int(n_clusters), int(n_classes)


def _check_matrix(M) -> np.ndarray:
    M = np.asarray(M)
    if M.ndim != 2 or min(M.shape) < 1:
        raise ValueError(f"M: expected a (K', K) confusion matrix, got shape {M.shape}")
    if not np.issubdtype(M.dtype, np.integer) or (M < 0).any():
        raise ValueError(f"M: expected non-negative integer counts, got dtype {M.dtype}")
    return M.astype(np.int64, copy=False)


def confusion_matrix(pred, target, n_clusters: int, n_classes: int) -> np.ndarray:
    """Count valid pixels by (predicted cluster, true class).

    Args:
        pred: int array (any shape) of cluster ids in ``[0, n_clusters)``.
        target: int array, same shape; values outside ``[0, n_classes)`` are ignored.
        n_clusters: ``K'``, number of prediction ids.
        n_classes: ``K``, number of ground-truth classes.

    Returns:
        ``(K', K)`` int64 matrix ``M[p, a]`` (rows = predictions, columns = ground truth).

    Raises:
        ValueError: shapes differ, non-integer input, or a prediction outside ``[0, K')`` at a
            valid pixel (predictions at ignored pixels are not checked).

    Examples:
        >>> confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 0, -1]), 3, 2)
        array([[1, 0],
               [1, 1],
               [0, 0]])
    """
    n_clusters, n_classes = _check_sizes(n_clusters, n_classes)
    pred = _int_array(pred, "pred")
    target = _int_array(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred shape {pred.shape} does not match target shape {target.shape}; "
            "predictions must be at label resolution"
        )
    valid = valid_mask(target, n_classes)
    p, t = pred[valid], target[valid]
    bad = (p < 0) | (p >= n_clusters)
    if bad.any():
        raise ValueError(
            f"pred: {int(bad.sum())} valid pixels have cluster ids outside [0, {n_clusters}) "
            f"(e.g. {np.unique(p[bad])[:5].tolist()})"
        )
    counts = np.bincount(p * n_classes + t, minlength=n_clusters * n_classes)
    return counts.reshape(n_clusters, n_classes).astype(np.int64, copy=False)


class ConfusionAccumulator:
    """Streaming confusion matrix: call :meth:`update` per batch, read :attr:`matrix`.

    Nothing but the ``(K', K)`` int64 counts is kept, so evaluation memory does not grow with
    the split (quirk Q30).

    Args:
        n_clusters: ``K'``.
        n_classes: ``K``.

    Examples:
        >>> acc = ConfusionAccumulator(2, 2)
        >>> _ = acc.update(np.array([[0, 1]]), np.array([[0, 0]]))
        >>> acc.matrix.tolist()
        [[1, 0], [1, 0]]
    """

    def __init__(self, n_clusters: int, n_classes: int):
        self.n_clusters, self.n_classes = _check_sizes(n_clusters, n_classes)
        self.matrix = np.zeros((self.n_clusters, self.n_classes), dtype=np.int64)

    def update(self, pred, target) -> ConfusionAccumulator:
        """Add a batch: ``pred`` and ``target`` int arrays of the same (any) shape."""
        self.matrix += confusion_matrix(pred, target, self.n_clusters, self.n_classes)
        return self

    def merge(self, other: ConfusionAccumulator) -> ConfusionAccumulator:
        """Add the counts of another accumulator of the same size (e.g. from another worker)."""
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(
                f"cannot merge accumulators of shapes {self.matrix.shape} and {other.matrix.shape}"
            )
        self.matrix += other.matrix
        return self

    @property
    def n_pixels(self) -> int:
        """Number of valid pixels counted so far."""
        return int(self.matrix.sum())

    def scores(self, match: str = "hungarian") -> dict:
        """:func:`scores` of the accumulated matrix."""
        return scores(self.matrix, match=match)


def hungarian_mapping(M) -> np.ndarray:
    """One-to-one matching maximising the matched pixel count (``linear_sum_assignment``).

    Args:
        M: ``(K', K)`` confusion matrix, rows = clusters.

    Returns:
        ``(K,)`` int64: the cluster matched to each class. With ``K' >= K`` every class gets a
        distinct cluster; with ``K' < K`` only ``K'`` classes are matched and the others are -1
        (they get TP = 0, all their pixels FN).
    """
    M = _check_matrix(M)
    rows, cols = linear_sum_assignment(M, maximize=True)
    mapping = np.full(M.shape[1], -1, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def majority_mapping(M) -> np.ndarray:
    """Many-to-one matching: each cluster predicts its most frequent true class.

    Args:
        M: ``(K', K)`` confusion matrix.

    Returns:
        ``(K',)`` int64 class per cluster; -1 for clusters with no valid pixel (ties go to the
        lowest class id).
    """
    M = _check_matrix(M)
    lut = M.argmax(axis=1).astype(np.int64)
    lut[M.sum(axis=1) == 0] = -1
    return lut


def _lut_from_class_to_cluster(mapping: np.ndarray, n_clusters: int) -> np.ndarray:
    lut = np.full(n_clusters, -1, dtype=np.int64)
    matched = mapping >= 0
    lut[mapping[matched]] = np.flatnonzero(matched)
    return lut


def _percent(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(100.0 * num, den, out=out, where=den > 0)
    return out


def _summary(tp, fp, fn, n_pixels, mapping, lut, match, miou=None) -> dict:
    if n_pixels == 0:
        raise ValueError("M: the confusion matrix is empty (no valid pixel was counted)")
    denom = tp + fp + fn
    iou = _percent(tp, denom)
    if miou is None:
        miou = float(np.mean(iou[denom > 0]))
    return {
        "accuracy": float(100.0 * tp.sum() / n_pixels),
        "miou": float(miou),
        "iou": iou,
        "precision": _percent(tp, tp + fp),
        "recall": _percent(tp, tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "mapping": mapping,
        "cluster_to_class": lut,
        "n_pixels": int(n_pixels),
        "match": match,
    }


def _counts_from_lut(M: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, ...]:
    n_classes = M.shape[1]
    rows = np.flatnonzero(lut >= 0)
    cls = lut[rows]
    tp = np.bincount(cls, weights=M[rows, cls], minlength=n_classes).astype(np.int64)
    predicted = np.bincount(cls, weights=M[rows].sum(axis=1), minlength=n_classes)
    fp = predicted.astype(np.int64) - tp
    fn = M.sum(axis=0) - tp
    return tp, fp, fn


def apply_mapping(M, mapping) -> dict:
    """Score ``M`` with a fixed cluster-to-class mapping, e.g. one fitted on the train split.

    This implements ``match_on="train"`` (PROTOCOL §4.2): fit ``scores(M_train)``, then
    ``apply_mapping(M_val, scores(M_train))``.

    Args:
        M: ``(K', K)`` confusion matrix.
        mapping: ``(K',)`` int class per cluster (-1 = no class), or a :func:`scores` result
            (its ``"cluster_to_class"`` entry is used).

    Returns:
        the :func:`scores` dictionary, with ``match="fixed"``.
    """
    M = _check_matrix(M)
    if isinstance(mapping, Mapping):
        mapping = mapping["cluster_to_class"]
    lut = np.asarray(mapping, dtype=np.int64)
    if lut.shape != (M.shape[0],) or (lut < -1).any() or (lut >= M.shape[1]).any():
        raise ValueError(
            f"mapping: expected ({M.shape[0]},) class ids in [-1, {M.shape[1]}), got "
            f"shape {lut.shape}"
        )
    tp, fp, fn = _counts_from_lut(M, lut)
    return _summary(tp, fp, fn, M.sum(), lut, lut, "fixed")


def _reference_scores(M: np.ndarray) -> dict:
    """STEGO ``UnsupervisedMetrics.compute`` semantics, including quirk Q12."""
    n_clusters, n_classes = M.shape
    if n_clusters < n_classes:
        raise ValueError(f"match='reference' needs K' >= K, got M of shape {M.shape}")
    stats = M.copy()
    stats[n_classes:] = 0  # the reference masks out pixels predicted as a cluster >= K
    rows, cols = linear_sum_assignment(stats, maximize=True)
    if n_clusters == n_classes:
        per_class = rows[np.argsort(cols)]
    else:
        _, per_class = linear_sum_assignment(stats.T, maximize=True)  # matching on the transpose
    hist = stats[per_class].astype(np.float64)  # (K, K), row a = cluster matched to class a
    if n_clusters > n_classes:
        missing = sorted(set(range(n_clusters)) - set(rows.tolist()))
        extra_row = stats[missing].sum(axis=0, keepdims=True)
        hist = np.vstack([hist, extra_row])
        hist = np.hstack([hist, np.zeros((n_classes + 1, 1))])
    tp_all = np.diag(hist)
    col, row = hist.sum(axis=0), hist.sum(axis=1)
    iou_all = _percent(tp_all, tp_all + (col - tp_all) + (row - tp_all))
    miou = float(np.nanmean(iou_all))  # may include the extra (K+1)-th entry
    tp = tp_all[:n_classes].astype(np.int64)
    fp = (row[:n_classes] - tp).astype(np.int64)
    fn = (col[:n_classes] - tp).astype(np.int64)
    mapping = per_class.astype(np.int64)
    lut = _lut_from_class_to_cluster(mapping, n_clusters)
    out = _summary(tp, fp, fn, int(hist.sum()), mapping, lut, "reference", miou=miou)
    out["n_dropped"] = int(M[n_classes:].sum())
    return out


def scores(M, match: str = "hungarian") -> dict:
    """Accuracy, mIoU and per-class IoU / precision / recall of a confusion matrix.

    Args:
        M: ``(K', K)`` int confusion matrix (rows = predictions).
        match: ``"hungarian"`` (one-to-one, unmatched clusters predict no class),
            ``"majority"`` (each cluster -> its majority class), ``"identity"`` (``K' == K``,
            linear probe), ``"reference"`` (STEGO's computation incl. quirk Q12: pixels
            predicted as cluster ``>= K`` are dropped, and for ``K' > K`` an extra histogram
            entry joins the mIoU average; for documentation and parity only).

    Returns:
        dict with ``accuracy``, ``miou`` (floats, percent), ``iou``, ``precision``, ``recall``
        (``(K,)`` float64 percent, NaN where undefined), ``tp``, ``fp``, ``fn`` (``(K,)``
        int64), ``mapping`` (hungarian/identity/reference: ``(K,)`` cluster per class, -1 =
        unmatched; majority: ``(K',)`` class per cluster), ``cluster_to_class`` (``(K',)`` class
        per cluster, -1 = none), ``n_pixels`` (pixels in the accuracy denominator), ``match``;
        ``reference`` adds ``n_dropped``.

    Raises:
        ValueError: unknown ``match``, ``identity`` on a non-square matrix, empty matrix.

    Examples:
        >>> s = scores(np.array([[3, 1], [0, 4]]))
        >>> round(s["accuracy"], 1), s["mapping"].tolist()
        (87.5, [0, 1])
    """
    M = _check_matrix(M)
    n_clusters, n_classes = M.shape
    if match == "reference":
        return _reference_scores(M)
    if match == "hungarian":
        mapping = hungarian_mapping(M)
        lut = _lut_from_class_to_cluster(mapping, n_clusters)
    elif match == "identity":
        if n_clusters != n_classes:
            raise ValueError(f"match='identity' needs a square matrix, got shape {M.shape}")
        mapping = lut = np.arange(n_classes, dtype=np.int64)
    elif match == "majority":
        mapping = lut = majority_mapping(M)
    else:
        raise ValueError(f"match: expected one of {MATCH_MODES}, got {match!r}")
    tp, fp, fn = _counts_from_lut(M, lut)
    return _summary(tp, fp, fn, M.sum(), mapping, lut, match)


def segmentation_metrics(
    pred, target, n_classes: int, n_clusters: int | None = None, match: str = "hungarian"
) -> dict:
    """Confusion matrix + :func:`scores` in one call, for two label arrays.

    Args:
        pred: int array of cluster (or class) ids, any shape.
        target: int array of true labels, same shape; values outside ``[0, n_classes)`` ignored.
        n_classes: ``K``.
        n_clusters: ``K'``; default ``max(K, pred.max() + 1)``.
        match: see :func:`scores`.

    Returns:
        the :func:`scores` dictionary.

    Examples:
        >>> pred = np.array([[1, 1, 0], [0, 0, 2]])
        >>> target = np.array([[0, 0, 1], [1, 1, 255]])
        >>> m = segmentation_metrics(pred, target, n_classes=2)
        >>> m["accuracy"], m["miou"]
        (100.0, 100.0)
    """
    if n_clusters is None:
        p = _int_array(pred, "pred")
        n_clusters = max(int(n_classes), int(p.max()) + 1 if p.size else 1)
    M = confusion_matrix(pred, target, n_clusters, n_classes)
    return scores(M, match=match)


def map_predictions(pred, cluster_to_class) -> np.ndarray:
    """Turn cluster ids into class ids (-1 for clusters that predict no class).

    Args:
        pred: int array of cluster ids in ``[0, K')``, any shape.
        cluster_to_class: ``(K',)`` int, e.g. ``scores(M)["cluster_to_class"]``.

    Returns:
        int64 array with the shape of ``pred``.
    """
    pred = _int_array(pred, "pred")
    lut = np.asarray(cluster_to_class, dtype=np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= len(lut)):
        raise ValueError(f"pred: cluster ids must lie in [0, {len(lut)})")
    return lut[pred]


def metrics_to_flat(d: Mapping, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Flatten a :func:`scores` result into tidy metric names for the results table.

    Args:
        d: a :func:`scores` / :func:`segmentation_metrics` dictionary.
        class_names: ``K`` names; default the class indices as strings.

    Returns:
        ``{"accuracy", "miou", "iou:<class>", "precision:<class>", "recall:<class>"}`` ->
        float (percent; NaN where undefined), ready for :func:`stego_probe.results.make_rows`.
    """
    n = len(d["iou"])
    names = [str(i) for i in range(n)] if class_names is None else [str(c) for c in class_names]
    if len(names) != n:
        raise ValueError(f"class_names: expected {n} names, got {len(names)}")
    out = {"accuracy": float(d["accuracy"]), "miou": float(d["miou"])}
    for key in ("iou", "precision", "recall"):
        for name, value in zip(names, d[key]):
            out[f"{key}:{name}"] = float(value)
    return out
