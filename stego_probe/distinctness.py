"""Cluster-distinctness statistics of codes (a stego_probe extension, PROTOCOL §4.7).

The paper's evidence that STEGO makes "more distinct clusters" is indirect: the gap between the
cluster probe and the linear probe at equal ``D``. This module measures distinctness directly:

* :func:`kmeans_convergence` — how fast FAISS k-means converges and how much restarts agree
  (well-separated clusters converge in few iterations and give the same partition every time);
* :func:`cluster_statistics` — silhouette (cosine), Davies–Bouldin, Calinski–Harabasz of a
  clustering;
* :func:`label_separability` — how far apart the ground-truth classes are: scatter ratio,
  intra- vs inter-class cosine similarity, nearest-centroid margin;
* :func:`distinctness_report` — all of the above as one flat ``{name: float}`` dict for
  :func:`stego_probe.results.make_rows`.

Every statistic is computed on **L2-normalised** codes (row ``x -> x / max(||x||, 1e-12)``), so
that codes of different width ``D`` and scale are comparable. None of them is invariant to
anisotropic rescaling of the codes (standardisation, whitening, a random projection): compare
methods and ``D`` only under the same normalisation. They also assume roughly convex clusters.

Codes are ``(M, D)`` or ``(N, D, h, w)`` numpy arrays / torch tensors; per-token ids and labels
are ``(M,)`` or ``(N, h, w)`` (token order image, row, column, as
:func:`stego_probe.codes.flatten_codes`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from stego_probe.codes import flatten_codes, l2_normalize, to_numpy
from stego_probe.labels import valid_mask

#: Keys of :func:`distinctness_report` (label-based ones only when labels are given).
REPORT_KEYS = (
    "silhouette",
    "silhouette_std",
    "davies_bouldin",
    "calinski_harabasz",
    "kmeans_iterations",
    "kmeans_iterations_std",
    "kmeans_ari",
    "kmeans_nmi",
    "scatter_ratio",
    "intra_cos",
    "inter_cos",
    "centroid_margin",
    "margin_positive_frac",
)


def _flat_ids(ids: Any, m: int, name: str) -> np.ndarray:
    """Per-token ids/labels as int64 ``(m,)``; any layout whose size is ``m``."""
    arr = np.asarray(to_numpy(ids, name))
    if arr.size != m:
        raise ValueError(
            f"{name}: expected {m} per-token values (one per code), got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name}: expected integer ids, got dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64)


def kmeans_convergence(
    codes: Any,
    n_clusters: int,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    niter: int = 50,
    metric: str = "cosine",
    tol: float = 1e-4,
    n_tokens: int = 1_000_000,
    gpu: Any = "auto",
) -> dict:
    """Convergence speed of k-means and agreement between restarts with different seeds.

    For every seed a :class:`stego_probe.probes.kmeans.KMeansProbe` (FAISS; cosine: normalised
    inputs and spherical centroids; ``max_points_per_centroid`` set so the whole subsample is
    used; one restart) is fitted on a seeded subsample of ``n_tokens`` tokens, and all tokens are
    assigned. The seed varies both the subsample and the FAISS initialisation.

    Args:
        codes: ``(M, D)`` or ``(N, D, h, w)`` array / tensor.
        n_clusters: ``K'``.
        seeds: random states, one k-means run each (>= 2 for the agreement scores).
        niter: Lloyd iterations per run.
        metric: ``"cosine"`` or ``"euclidean"`` (as ``KMeansProbe``).
        tol: relative objective change below which a run counts as converged.
        n_tokens: tokens clustered per run (all if fewer).
        gpu: as ``KMeansProbe``.

    Returns:
        dict with
        ``seeds`` (list), ``objectives`` (list of ``(T,)`` float64 per-iteration objectives:
        sum of cosine similarities, rising, for cosine; sum of squared distances, falling, for
        euclidean), ``iterations`` ((S,) int64: the first iteration ``i >= 1`` whose objective
        changed by ``<= tol`` relative to the previous one, or ``T`` if none),
        ``iterations_mean`` / ``iterations_std`` (floats), ``assignments`` ((S, M) int64 cluster
        of every token per seed), ``ari_pairs`` / ``nmi_pairs`` (list over seed pairs of
        ``adjusted_rand_score`` / ``normalized_mutual_info_score``), ``ari`` / ``nmi`` (their
        means; NaN with fewer than 2 seeds).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> centers = np.eye(3, 8, dtype=np.float32) * 10
        >>> x = np.repeat(centers, 50, axis=0) + rng.normal(size=(150, 8)).astype(np.float32)
        >>> out = kmeans_convergence(x, 3, seeds=(0, 1), niter=20, gpu=False)
        >>> round(out["ari"], 3)
        1.0
    """
    from stego_probe.probes.kmeans import KMeansProbe

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    x, _ = flatten_codes(codes, "codes")
    objectives, iterations, assignments = [], [], []
    for seed in seeds:
        probe = KMeansProbe(
            n_clusters=n_clusters,
            n_tokens=n_tokens,
            niter=niter,
            nredo=1,
            metric=metric,
            random_state=seed,
            gpu=gpu,
            tol=tol,
        ).fit(x)
        objectives.append(np.asarray(probe.objective_, dtype=np.float64))
        iterations.append(int(probe.n_iter_))
        assignments.append(probe.predict(x).reshape(-1))
    ari = [adjusted_rand_score(assignments[a], assignments[b]) for a, b in _pairs(len(seeds))]
    nmi = [
        normalized_mutual_info_score(assignments[a], assignments[b]) for a, b in _pairs(len(seeds))
    ]
    it = np.asarray(iterations, dtype=np.int64)
    return {
        "seeds": seeds,
        "objectives": objectives,
        "iterations": it,
        "iterations_mean": float(it.mean()),
        "iterations_std": float(it.std()),
        "assignments": np.stack(assignments),
        "ari_pairs": [float(v) for v in ari],
        "nmi_pairs": [float(v) for v in nmi],
        "ari": float(np.mean(ari)) if ari else float("nan"),
        "nmi": float(np.mean(nmi)) if nmi else float("nan"),
    }


def _pairs(n: int) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(n), 2))


def stratified_subsample(ids: np.ndarray, n_tokens: int, seed: int | None) -> np.ndarray:
    """Indices of a per-cluster (stratified) random subsample of about ``n_tokens`` tokens.

    Cluster ``k`` with ``n_k`` of ``M`` tokens contributes ``min(n_k, max(1, round(n_tokens *
    n_k / M)))`` tokens drawn without replacement, so small clusters are kept. If
    ``n_tokens >= M`` all indices are returned.

    Args:
        ids: (M,) int64 cluster ids.
        n_tokens: target total.
        seed: random seed.

    Returns:
        sorted int64 indices into ``ids``.
    """
    m = ids.shape[0]
    if n_tokens >= m:
        return np.arange(m, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.argsort(ids, kind="stable")
    uniq, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    quota = np.minimum(counts, np.maximum(1, np.round(n_tokens * counts / m).astype(np.int64)))
    parts = [
        order[s : s + c][rng.choice(c, size=q, replace=False)]
        for s, c, q in zip(starts, counts, quota)
    ]
    return np.sort(np.concatenate(parts)).astype(np.int64)


def cluster_statistics(
    codes: Any,
    cluster_ids: Any,
    *,
    n_tokens: int = 10_000,
    seeds: Sequence[int] = (0, 1, 2),
    metric: str = "cosine",
) -> dict:
    """Silhouette, Davies–Bouldin and Calinski–Harabasz of a clustering of L2-normalised codes.

    * **silhouette** (``sklearn.metrics.silhouette_score`` with ``metric``, default cosine;
      ``O(n^2 D)``): computed on a stratified per-cluster subsample of about ``n_tokens``
      tokens (:func:`stratified_subsample`) for every seed; mean and population std over seeds.
      When ``n_tokens >= M`` the sample is all tokens for every seed, so the silhouette is
      computed once (``silhouette_std`` is 0).
      In ``[-1, 1]``, higher = more distinct.
    * **Davies–Bouldin** (lower = more distinct) and **Calinski–Harabasz** (higher = more
      distinct) from scikit-learn on all tokens (``O(M D)``), Euclidean on the normalised codes.

    Tokens with a negative cluster id (e.g. ``-1``) are left out.

    Args:
        codes: ``(M, D)`` or ``(N, D, h, w)`` array / tensor.
        cluster_ids: per-token cluster ids, ``(M,)`` or ``(N, h, w)``.
        n_tokens: silhouette subsample size (the full set if ``>= M``).
        seeds: one silhouette subsample per seed.
        metric: silhouette metric, ``"cosine"`` or ``"euclidean"``.

    Returns:
        dict with ``silhouette``, ``silhouette_std``, ``silhouette_per_seed`` (list),
        ``davies_bouldin``, ``calinski_harabasz`` (floats), ``n_clusters`` and ``n_tokens``
        (ints).

    Raises:
        ValueError: fewer than 2 clusters, mismatched sizes, unknown metric.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric: expected 'cosine' or 'euclidean', got {metric!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    x, _ = flatten_codes(codes, "codes")
    ids = _flat_ids(cluster_ids, x.shape[0], "cluster_ids")
    keep = ids >= 0
    x, ids = l2_normalize(x[keep]), ids[keep]
    n_clusters = int(np.unique(ids).size)
    if n_clusters < 2 or n_clusters >= x.shape[0]:
        raise ValueError(
            f"cluster_ids: need 2 <= number of clusters < number of tokens, got {n_clusters} "
            f"clusters for {x.shape[0]} tokens"
        )
    if int(n_tokens) >= x.shape[0]:
        # the "subsample" is every token whatever the seed: one silhouette serves all seeds
        sil = [float(silhouette_score(x, ids, metric=metric))] * len(seeds)
    else:
        sil = []
        for seed in seeds:
            idx = stratified_subsample(ids, int(n_tokens), seed)
            sil.append(float(silhouette_score(x[idx], ids[idx], metric=metric)))
    return {
        "silhouette": float(np.mean(sil)),
        "silhouette_std": float(np.std(sil)),
        "silhouette_per_seed": sil,
        "davies_bouldin": float(davies_bouldin_score(x, ids)),
        "calinski_harabasz": float(calinski_harabasz_score(x, ids)),
        "n_clusters": n_clusters,
        "n_tokens": int(x.shape[0]),
    }


def label_separability(codes: Any, labels: Any, n_classes: int, chunk_size: int = 262_144) -> dict:
    """How separable the ground-truth classes are in the (L2-normalised) code space, in ``O(M D)``.

    With ``x_i`` the normalised codes of the ``M`` valid tokens, ``n_k`` tokens and sum
    ``s_k = sum_{i in k} x_i`` per present class, ``m_k = s_k / n_k``, ``m`` the global mean:

    * ``scatter_ratio = trace(S_B) / trace(S_W)`` with ``trace(S_B) = sum_k n_k ||m_k - m||^2`` and
      ``trace(S_W) = sum_i ||x_i - m_{y_i}||^2`` (no degrees-of-freedom normalisation);
    * ``intra_cos``: mean cosine similarity over all pairs of *distinct* tokens of the same
      class, ``sum_k (||s_k||^2 - sum_{i in k} ||x_i||^2) / sum_k n_k (n_k - 1)`` (token-pair
      weighted, so large classes weigh more);
    * ``inter_cos``: mean cosine over all pairs of tokens of different classes,
      ``(||sum_k s_k||^2 - sum_k ||s_k||^2) / (M^2 - sum_k n_k^2)``;
    * ``centroid_margin``: mean over tokens of ``cos(x_i, c_{y_i}) - max_{k != y_i} cos(x_i,
      c_k)`` with ``c_k = m_k / ||m_k||`` the class mean directions; ``margin_positive_frac``: the
      fraction of tokens with a positive margin (nearest-centroid accuracy, ties excluded).

    Labels outside ``[0, n_classes)`` are ignored (:func:`stego_probe.labels.valid_mask`).

    Args:
        codes: ``(M, D)`` or ``(N, D, h, w)`` array / tensor.
        labels: per-token class ids ``(M,)`` or ``(N, h, w)`` (e.g. ``FeatureStore.token_labels``).
        n_classes: ``K``.
        chunk_size: tokens per block for the margin computation.

    Returns:
        dict of floats ``scatter_ratio, intra_cos, inter_cos, centroid_margin,
        margin_positive_frac`` and ints ``n_tokens, n_classes_present``.

    Raises:
        ValueError: fewer than 2 classes present, no class with 2 tokens, mismatched sizes.
    """
    x, _ = flatten_codes(codes, "codes")
    y = _flat_ids(labels, x.shape[0], "labels")
    keep = valid_mask(y, n_classes)
    x, y = l2_normalize(x[keep]), y[keep]
    m = x.shape[0]
    present = np.unique(y)
    if present.size < 2:
        raise ValueError(
            f"labels: need at least 2 classes in [0, {n_classes}) among the tokens, got "
            f"{present.tolist()}"
        )
    remap = np.full(n_classes, -1, dtype=np.int64)
    remap[present] = np.arange(present.size)
    yk = remap[y]
    k = present.size
    onehot = sp.csr_matrix((np.ones(m), (yk, np.arange(m))), shape=(k, m))
    xd = x.astype(np.float64)
    sums = np.asarray(onehot @ xd)  # (k, D)
    counts = np.bincount(yk, minlength=k).astype(np.float64)
    sq = np.einsum("ij,ij->i", xd, xd)
    sq_k = np.bincount(yk, weights=sq, minlength=k)
    sum_norm2 = np.einsum("ij,ij->i", sums, sums)  # ||s_k||^2
    total = sums.sum(axis=0)
    within = float(sq.sum() - (sum_norm2 / counts).sum())
    between = float((sum_norm2 / counts).sum() - total @ total / m)
    intra_pairs = float((counts * (counts - 1)).sum())
    if intra_pairs == 0:
        raise ValueError("labels: no class has 2 or more tokens; intra-class similarity undefined")
    intra = float((sum_norm2 - sq_k).sum() / intra_pairs)
    inter = float((total @ total - sum_norm2.sum()) / (m * m - (counts**2).sum()))
    means = sums / counts[:, None]
    cent = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    margins = np.empty(m)
    for start in range(0, m, int(chunk_size)):
        blk = xd[start : start + chunk_size] @ cent.T  # (b, k)
        own_k = yk[start : start + chunk_size]
        rows = np.arange(blk.shape[0])
        own = blk[rows, own_k].copy()
        blk[rows, own_k] = -np.inf
        margins[start : start + blk.shape[0]] = own - blk.max(axis=1)
    return {
        "scatter_ratio": between / within if within > 0 else float("inf"),
        "intra_cos": intra,
        "inter_cos": inter,
        "centroid_margin": float(margins.mean()),
        "margin_positive_frac": float((margins > 0).mean()),
        "n_tokens": int(m),
        "n_classes_present": int(k),
    }


def distinctness_report(
    codes: Any,
    labels: Any = None,
    *,
    n_clusters: int,
    n_classes: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    silhouette_tokens: int = 10_000,
    niter: int = 50,
    n_tokens: int = 1_000_000,
    metric: str = "cosine",
    tol: float = 1e-4,
    gpu: Any = "auto",
) -> dict[str, float]:
    """All distinctness measures as a flat ``{metric name: float}`` dict.

    Runs :func:`kmeans_convergence` (one k-means per seed), then :func:`cluster_statistics` on
    the first seed's assignments, and, if ``labels`` are given, :func:`label_separability`.

    Args:
        codes: ``(M, D)`` or ``(N, D, h, w)`` array / tensor.
        labels: optional per-token labels ``(M,)`` or ``(N, h, w)``.
        n_clusters: k-means ``K'``.
        n_classes: ``K`` for the labels (default ``n_clusters``).
        seeds, niter, n_tokens, metric, tol, gpu: k-means settings (:func:`kmeans_convergence`).
        silhouette_tokens: silhouette subsample (:func:`cluster_statistics`'s ``n_tokens``).

    Returns:
        dict with the keys of :data:`REPORT_KEYS` (``scatter_ratio`` ... ``margin_positive_frac``
        only when ``labels`` is given), ready for ``stego_probe.results.make_rows(context,
        report)`` with ``probe="none"``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> centers = np.eye(2, 4, dtype=np.float32) * 5
        >>> x = np.repeat(centers, 30, axis=0) + rng.normal(size=(60, 4)).astype(np.float32)
        >>> y = np.repeat([0, 1], 30)
        >>> r = distinctness_report(x, y, n_clusters=2, seeds=(0, 1), niter=10, gpu=False)
        >>> sorted(r) == sorted(REPORT_KEYS), r["kmeans_ari"]
        (True, 1.0)
    """
    conv = kmeans_convergence(
        codes,
        n_clusters,
        seeds=seeds,
        niter=niter,
        metric=metric,
        tol=tol,
        n_tokens=n_tokens,
        gpu=gpu,
    )
    stats = cluster_statistics(
        codes, conv["assignments"][0], n_tokens=silhouette_tokens, seeds=seeds, metric=metric
    )
    report = {
        "silhouette": stats["silhouette"],
        "silhouette_std": stats["silhouette_std"],
        "davies_bouldin": stats["davies_bouldin"],
        "calinski_harabasz": stats["calinski_harabasz"],
        "kmeans_iterations": conv["iterations_mean"],
        "kmeans_iterations_std": conv["iterations_std"],
        "kmeans_ari": conv["ari"],
        "kmeans_nmi": conv["nmi"],
    }
    if labels is not None:
        sep = label_separability(codes, labels, n_clusters if n_classes is None else n_classes)
        for key in ("scatter_ratio", "intra_cos", "inter_cos", "centroid_margin"):
            report[key] = sep[key]
        report["margin_positive_frac"] = sep["margin_positive_frac"]
    return {k: float(v) for k, v in report.items()}
