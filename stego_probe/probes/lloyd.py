"""Exact Lloyd iterations with Hamerly's distance bounds (the k-means probe's CPU engine).

:func:`lloyd` runs the same iterations as FAISS's ``Clustering`` (and scikit-learn's
``algorithm="lloyd"``): assign every token to its nearest centroid, record the objective, move
each centroid to the mean of its tokens (renormalised for spherical k-means). It returns the same
centroids and the same per-iteration objective trace as plain Lloyd from the same seeds (with
``bounds=False``: bit for bit, as long as no token lies within float32 rounding of a tie between
two centroids; at such a tie the two may pick different centroids, and the runs can then reach
different local optima), but it skips most of the distance computations once the centroids
move little.

**Hamerly's bounds** (G. Hamerly, "Making k-means even faster", SDM 2010). Every token keeps an
upper bound ``u`` on its distance to its own centroid and a lower bound ``l`` on its distance to
every other centroid. When the centroids move by ``delta_k``, ``u += delta[a]`` and
``l -= max_{k != a} delta_k`` keep them valid (triangle inequality). A token whose
``u <= max(l, s[a])``, with ``s[k]`` half the distance from centroid ``k`` to its nearest other
centroid, cannot change its assignment, so its distances are not computed at all; the others
get all ``K`` distances from one matrix product, which renews both bounds exactly. Near
convergence almost every token is skipped, so an iteration costs a few vector operations over
``N`` instead of an ``N x D x K`` product plus a pass over the ``N x D`` tokens.

**No pass over the tokens for the update or the objective.** The per-cluster sums ``S_k`` and
counts ``n_k`` are kept in float64 and changed only by the tokens that move. The objective of
the current assignment follows from them without touching the tokens:

* euclidean: ``sum_x |x - c_a(x)|^2 = sum_x |x|^2 - 2 sum_k <c_k, S_k> + sum_k n_k |c_k|^2``;
* cosine (unit tokens, unit centroids): ``sum_x <x, c_a(x)> = sum_k <c_k, S_k>``.

These are FAISS's ``km.obj`` values (measured after the assignment, before the update). At a
fixed point the assignment, sums and centroids repeat exactly, so two consecutive objectives are
bitwise equal, which is the ``tol = 0`` stopping rule of :class:`~stego_probe.probes.KMeansProbe`.

**Empty clusters** (rare after k-means++ seeding) are reseeded deterministically, as
scikit-learn does: the centroid moves to the token farthest from its own centroid (the next
farthest for the next empty cluster), which joins it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Tokens per block of a distance computation (bounds the ``block x K`` distance matrix and the
#: float64 copy used to update the sums).
BLOCK = 65536
#: Relative slack on the pruning test: a token is skipped only if its bound clears the other by
#: more than float32 rounding of the distances could explain.
SLACK = 1e-5


@dataclass
class LloydResult:
    """What :func:`lloyd` returns.

    Attributes:
        centroids: ``(K, D)`` float32 centroids after the last update (unit rows if spherical).
        objective: ``(T,)`` float64 objective of each iteration's assignment, before its update
            (rises for spherical, falls for euclidean).
        labels: ``(N,)`` int64 assignment of every token to ``centroids`` (the final ones).
        inertia: objective of ``labels`` with ``centroids`` (the value a next iteration would
            record).
        n_iter: ``T``, iterations run.
        distance_rows: ``(T + 1,)`` int64 tokens whose ``K`` distances were computed in each
            iteration (the last entry: the final assignment); ``N`` in every entry means no
            pruning.
    """

    centroids: np.ndarray
    objective: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    distance_rows: np.ndarray


def _torch():
    import torch

    return torch


def _distances(x, x_sq, c, c_sq):
    """Nearest and second-nearest centroid of ``(m, D)`` float32 rows ``x`` (squared norms
    ``x_sq``) among centroids ``c`` (squared norms ``c_sq``).

    Returns ``(label (m,) int64, d1 (m,) float32, d2 (m,) float32)``, Euclidean distances
    (``d2`` is ``inf`` when ``K = 1``).
    """
    torch = _torch()
    d = torch.addmm(c_sq[None, :], x, c.T, beta=1.0, alpha=-2.0)
    d += x_sq[:, None]
    d1, label = d.min(1)
    if d.shape[1] == 1:
        d2 = torch.full_like(d1, float("inf"))
    else:
        d.scatter_(1, label[:, None], float("inf"))
        d2 = d.min(1).values.clamp_(min=0.0).sqrt_()
    return label, d1.clamp_(min=0.0).sqrt_(), d2


def _objective(sums, counts, c64, sq_total: float, spherical: bool) -> float:
    """Objective of the assignment behind ``sums``/``counts`` with centroids ``c64``."""
    torch = _torch()
    inner = float(torch.sum(c64 * sums))
    if spherical:
        return inner
    return sq_total - 2.0 * inner + float(torch.sum(counts * (c64 * c64).sum(1)))


def _centroids(sums, counts, spherical: bool):
    """``(K, D)`` float64 means (unit-normalised sums if spherical); empty rows are zero."""
    if spherical:
        norms = sums.norm(dim=1, keepdim=True)
        return sums / norms.clamp(min=1e-30)
    return sums / counts.clamp(min=1)[:, None].to(sums.dtype)


def lloyd(
    x: np.ndarray,
    init: np.ndarray,
    *,
    niter: int,
    tol: float | None = 0.0,
    spherical: bool = False,
    bounds: bool = True,
) -> LloydResult:
    """Lloyd's k-means from ``init`` with Hamerly's bounds (exact; see the module docstring).

    Args:
        x: ``(N, D)`` float32 tokens (unit rows if ``spherical``); not modified.
        init: ``(K, D)`` initial centroids, ``K <= N``.
        niter: maximum iterations (``>= 1``).
        tol: stopping rule, as FAISS's ``early_stop_threshold``: stop after the first
            iteration ``i >= 1`` whose objective changed by ``<= tol * |obj[i-1]|`` (``0``: at a
            fixed point); ``None``: run exactly ``niter`` iterations.
        spherical: renormalise the centroids to unit norm after each update (the objective is
            then the sum of inner products).
        bounds: ``False`` computes every distance in every iteration (plain Lloyd; for tests
            and benchmarks).

    Returns:
        :class:`LloydResult`.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(m, 0.1, (50, 2)) for m in (0, 5)]).astype(np.float32)
        >>> res = lloyd(x, x[[0, 99]], niter=20)
        >>> res.n_iter, np.bincount(res.labels).tolist()
        (3, [50, 50])
    """
    torch = _torch()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"x: expected (N, D) tokens, got shape {x.shape}")
    c0 = np.asarray(init, dtype=np.float32)
    n, d = x.shape
    if c0.ndim != 2 or c0.shape[1] != d or not 1 <= len(c0) <= n:
        raise ValueError(f"init: expected (K, {d}) centroids with 1 <= K <= {n}, got {c0.shape}")
    if int(niter) < 1:
        raise ValueError(f"niter: expected a positive integer, got {niter!r}")
    k = len(c0)
    X = torch.from_numpy(x)
    x_sq = torch.from_numpy(np.einsum("ij,ij->i", x, x))
    sq_total = float(torch.sum(x_sq, dtype=torch.float64))
    c = torch.from_numpy(c0.copy())
    labels = torch.empty(n, dtype=torch.int64)
    upper = torch.empty(n, dtype=torch.float32)
    lower = torch.empty(n, dtype=torch.float32)
    sums = torch.zeros(k, d, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    scale = float(np.sqrt(sq_total / n)) if n else 1.0

    def assign_rows(rows, first: bool) -> int:
        """Full distances for ``rows`` (None: all), renew bounds, move changed rows' sums."""
        c_sq = (c * c).sum(1)
        total = n if rows is None else len(rows)
        for start in range(0, total, BLOCK):
            if rows is None:
                sel = slice(start, min(start + BLOCK, n))
                xb, xb_sq = X[sel], x_sq[sel]
            else:
                sel = rows[start : start + BLOCK]
                xb, xb_sq = X.index_select(0, sel), x_sq.index_select(0, sel)
            new, d1, d2 = _distances(xb, xb_sq, c, c_sq)
            upper[sel], lower[sel] = d1, d2
            if first:
                sums.index_add_(0, new, xb.double())
                counts.index_add_(0, new, torch.ones(len(new), dtype=torch.float64))
            else:
                old = labels[sel]
                moved = torch.nonzero(new != old).flatten()
                if len(moved):
                    xm = xb.index_select(0, moved).double()
                    sums.index_add_(0, new[moved], xm)
                    sums.index_add_(0, old[moved], -xm)
                    ones = torch.ones(len(moved), dtype=torch.float64)
                    counts.index_add_(0, new[moved], ones)
                    counts.index_add_(0, old[moved], -ones)
            labels[sel] = new
        return total

    def pruned_assign() -> int:
        if not bounds:
            return assign_rows(None, False)
        cc = torch.cdist(c.double(), c.double())
        cc.fill_diagonal_(float("inf"))
        half = (0.5 * cc.min(1).values).float() if k > 1 else torch.full((1,), float("inf"))
        limit = torch.maximum(lower, half[labels])
        active = torch.nonzero(upper * (1 + SLACK) + SLACK * scale > limit).flatten()
        if len(active) > n // 2:
            return assign_rows(None, False)
        return assign_rows(active, False) if len(active) else 0

    def reseed_empty(cnew):
        """Move each empty centroid onto the farthest token (sklearn's rule); returns the
        centroids to use. The distances are exact (one pass; empty clusters are rare)."""
        empty = torch.nonzero(counts == 0).flatten()
        if not len(empty):
            return cnew
        c_old = c.double()
        dist = torch.empty(n, dtype=torch.float64)
        for start in range(0, n, BLOCK):
            xb = X[start : start + BLOCK].double()
            dist[start : start + BLOCK] = (xb - c_old[labels[start : start + BLOCK]]).norm(dim=1)
        far = torch.argsort(dist, descending=True, stable=True)
        taken = 0
        for j in empty.tolist():
            while taken < n and counts[labels[far[taken]]] <= 1:
                taken += 1  # do not empty another cluster
            if taken >= n:
                break
            p = int(far[taken])
            taken += 1
            xp = X[p].double()
            old = int(labels[p])
            sums[old] -= xp
            counts[old] -= 1
            sums[j] += xp
            counts[j] += 1
            labels[p] = j
            upper[p], lower[p] = float("inf"), 0.0  # recomputed next iteration
        out = _centroids(sums, counts, spherical)
        still = counts == 0  # no token left to give (K close to N, duplicates): keep the centroid
        out[still] = c.double()[still]
        return out

    objective: list[float] = []
    rows: list[int] = []
    for i in range(int(niter)):
        rows.append(assign_rows(None, True) if i == 0 else pruned_assign())
        objective.append(_objective(sums, counts, c.double(), sq_total, spherical))
        cnew = reseed_empty(_centroids(sums, counts, spherical))
        cnew32 = cnew.float()
        shift = (cnew32.double() - c.double()).norm(dim=1).float()
        c = cnew32
        if k > 1:
            top = torch.topk(shift, 2).values
            far_shift = torch.where(labels == int(torch.argmax(shift)), top[1], top[0])
        else:
            far_shift = torch.zeros(())
        upper += shift[labels]
        lower -= far_shift
        if tol is not None and i > 0:
            prev = objective[-2]
            if abs(objective[-1] - prev) <= tol * abs(prev):
                break
    rows.append(pruned_assign())
    inertia = _objective(sums, counts, c.double(), sq_total, spherical)
    return LloydResult(
        centroids=c.numpy().copy(),
        objective=np.asarray(objective, dtype=np.float64),
        labels=labels.numpy().copy(),
        inertia=inertia,
        n_iter=len(objective),
        distance_rows=np.asarray(rows, dtype=np.int64),
    )
