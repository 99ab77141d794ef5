"""k-means probe on frozen codes (stego_probe's own protocol, PROTOCOL §4.2).

Unlike the reference's ``ClusterLookup`` (online spherical k-means by Adam, §4.1), this probe runs
Lloyd iterations on a seeded uniform subsample of training tokens, on the CPU with Hamerly's
bounds (:mod:`stego_probe.probes.lloyd`, the default there) or with FAISS (on GPUs, or
``algorithm="faiss"``):

* cosine metric: tokens are L2-normalised *before* clustering and ``spherical=True`` renormalises
  the centroids after each update (FAISS does not normalise inputs, quirk Q43);
* ``max_points_per_centroid`` is set to ``ceil(n / K')`` so FAISS never silently trains on a
  subset (its default of 256 would use only 6,912 points for K' = 27);
* ``nredo`` restarts are run one by one, so the per-iteration objective of *every* restart is
  kept (``objective_per_redo_``) and the best restart is chosen by its final objective;
* the stopping rule is explicit (``tol``, :data:`STOPPING_RULES`): by default (``tol=0``) every
  restart runs Lloyd iterations until a fixed point (the objective no longer changes: further
  iterations would change nothing) or ``niter`` iterations; ``tol > 0`` stops earlier, at the
  first iteration whose relative objective change is ``<= tol``; ``tol=None`` runs exactly
  ``niter`` iterations. The iterations run and whether the fixed point was reached are kept
  (``n_iter_``, ``converged_``);
* prediction streams over chunks; at label resolution (``predict(codes, size=)``) the
  assignment scores are affine in the code, so they are computed on the token grid and
  upsampled instead of the ``(N, D, H, W)`` code (the same assignment, PROTOCOL §4.2).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from stego_probe.codes import (
    as_code_tensor,
    check_size,
    is_array_like,
    iter_code_chunks,
    l2_normalize,
    lead_shape,
    to_numpy,
    upsample,
    upsample_codes,
)
from stego_probe.persist import read_estimator, write_estimator
from stego_probe.probes.defaults import KMEANS_NITER, KMEANS_NREDO, KMEANS_TOL

if TYPE_CHECKING:
    import torch

METRICS = ("cosine", "euclidean")
INITS = ("k-means++", "random")
#: Lloyd engines (``algorithm``): ``"hamerly"`` (exact Lloyd with Hamerly's bounds on the CPU,
#: :func:`stego_probe.probes.lloyd.lloyd`), ``"faiss"`` (FAISS ``Kmeans``, on the GPU if
#: ``gpu`` gives one), ``"auto"`` (FAISS on GPUs, else Hamerly).
ALGORITHMS = ("auto", "hamerly", "faiss")
#: k-means++ seeding reads at most this many tokens per cluster (see ``_seed_centroids``).
SEEDING_POINTS_PER_CLUSTER = 1000
#: Default stopping rule: Lloyd iterations until a fixed point, at most ``DEFAULT_NITER``
#: (defined in the light :mod:`stego_probe.probes.defaults`, which ``--help`` reads).
DEFAULT_TOL = KMEANS_TOL
DEFAULT_NITER = KMEANS_NITER
DEFAULT_NREDO = KMEANS_NREDO
#: The three stopping rules selected by ``tol`` (see :func:`stopping_rule`).
STOPPING_RULES = ("niter", "fixed_point", "tol")


def _faiss():
    check_single_faiss()
    import faiss

    return faiss


@functools.cache
def check_single_faiss() -> None:
    """Raise ``ImportError`` if both ``faiss-cpu`` and a ``faiss-gpu*`` wheel are installed.

    Both provide the same ``faiss`` module and overwrite each other's files, which gives
    confusing failures (facebookresearch/faiss#2892). ``pip install stego-probe[gpu]`` adds
    ``faiss-gpu-cu12``; uninstall ``faiss-cpu`` afterwards (see docs/scaling.md).
    """
    from importlib import metadata

    names = set()
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("faiss-"):
            names.add(name)
    gpu = sorted(n for n in names if n.startswith("faiss-gpu"))
    if "faiss-cpu" in names and gpu:
        raise ImportError(
            f"both faiss-cpu and {', '.join(gpu)} are installed; they provide the same `faiss` "
            "module. Keep one: `pip uninstall -y faiss-cpu " + " ".join(gpu) + "` and then "
            f"`pip install {gpu[0]}` (GPU) or `pip install faiss-cpu` (CPU)"
        )


def gpu_available() -> int:
    """Number of GPUs this FAISS build can use (0 on ``faiss-cpu``)."""
    faiss = _faiss()
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def _resolve_gpu(gpu) -> int | bool:
    """``gpu`` parameter -> value for ``faiss.Kmeans(gpu=...)`` (False or a number of GPUs)."""
    if gpu == "auto":
        n = gpu_available()
        return n if n > 0 else False
    if gpu is None or gpu is False or gpu == 0:
        return False
    n = gpu_available()
    if n == 0:
        raise ValueError(
            f"gpu={gpu!r}, but this FAISS build sees no GPU (install the 'gpu' extra in place of "
            "faiss-cpu, or use gpu='auto' / False)"
        )
    if gpu is True or gpu == -1:
        return n
    if isinstance(gpu, int) and 0 < gpu <= n:
        return gpu
    raise ValueError(f"gpu: expected 'auto', a bool, -1 or a GPU count in [1, {n}], got {gpu!r}")


def _seeds(random_state, n: int) -> list[int]:
    """``n`` 31-bit seeds derived from an int / None / numpy random state."""
    if isinstance(random_state, np.random.Generator):
        random_state = int(random_state.integers(2**31 - 1))
    elif isinstance(random_state, np.random.RandomState):
        random_state = int(random_state.randint(2**31 - 1))
    words = np.random.SeedSequence(random_state).generate_state(n)
    return [int(w) & 0x7FFFFFFF for w in words]


def kmeans_plusplus(
    x: np.ndarray, k: int, seed: int, n_local_trials: int | None = None
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, with local trials).

    Each new centre is the best of ``n_local_trials`` candidates drawn with probability
    proportional to the squared distance to the nearest centre chosen so far (the candidate
    that most reduces the total squared distance wins). Cost: ``O(n k t D)`` with BLAS.

    Args:
        x: ``(n, D)`` float32 tokens (already L2-normalised for cosine k-means).
        k: number of centres, ``1 <= k <= n``.
        seed: random seed.
        n_local_trials: candidates per centre; default ``2 + int(log(k))``.

    Returns:
        ``(k, D)`` float32 centres, rows of ``x``.
    """
    rng = np.random.default_rng(seed)
    n, d = x.shape
    t = 2 + int(np.log(k)) if n_local_trials is None else int(n_local_trials)
    sq = np.einsum("ij,ij->i", x, x)

    def sqdist(idx: np.ndarray) -> np.ndarray:  # (n, len(idx))
        c = x[idx]
        return np.maximum(sq[:, None] - 2.0 * (x @ c.T) + sq[idx][None, :], 0.0)

    chosen = [int(rng.integers(n))]
    closest = sqdist(np.array(chosen))[:, 0].astype(np.float64)
    for _ in range(1, k):
        cum = np.cumsum(closest)
        if cum[-1] <= 0:  # every point coincides with a centre: pick uniformly
            cand = rng.integers(n, size=t)
        else:
            cand = np.minimum(np.searchsorted(cum, rng.random(t) * cum[-1]), n - 1)
        trial = np.minimum(closest[:, None], sqdist(cand))
        best = int(np.argmin(trial.sum(axis=0)))
        chosen.append(int(cand[best]))
        closest = trial[:, best]
    return np.ascontiguousarray(x[np.array(chosen)], dtype=np.float32)


def check_tol(tol, name: str = "tol") -> float | None:
    """Validate a k-means stopping tolerance: None or a finite number ``>= 0``.

    Returns:
        ``None`` or ``float(tol)``.

    Raises:
        ValueError: naming ``name`` and the value (negative, NaN, inf, a string, a bool).
    """
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, int | float | np.integer | np.floating):
        raise ValueError(f"{name}: expected None or a number >= 0, got {tol!r}")
    if not math.isfinite(float(tol)) or float(tol) < 0:
        raise ValueError(f"{name}: expected None or a finite number >= 0, got {tol!r}")
    return float(tol)


def stopping_rule(tol) -> str:
    """Name of the stopping rule a ``tol`` value selects (:data:`STOPPING_RULES`).

    * ``None`` -> ``"niter"``: exactly ``niter`` Lloyd iterations per restart, no check;
    * ``0`` -> ``"fixed_point"``: stop at the first iteration whose objective equals the previous
      one (a fixed point of Lloyd's algorithm: the centroids are those ``"niter"`` would end
      with), or after ``niter`` iterations; FAISS's own rule (``early_stop_threshold = 0``);
    * ``> 0`` -> ``"tol"``: early stop at the first iteration whose objective changed by a
      relative amount ``<= tol`` (the centroids are *not* converged).

    Examples:
        >>> [stopping_rule(t) for t in (None, 0, 1e-4)]
        ['niter', 'fixed_point', 'tol']
    """
    tol = check_tol(tol)
    if tol is None:
        return "niter"
    return "fixed_point" if tol == 0 else "tol"


def n_iter_until_converged(objective: np.ndarray, tol: float) -> int:
    """Number of iterations up to and including the first whose objective changed by a
    relative amount ``<= tol`` (FAISS's ``early_stop_threshold`` rule).

    Args:
        objective: ``(T,)`` per-iteration objective (either direction).
        tol: relative tolerance.

    Returns:
        ``i + 1`` for the smallest ``i >= 1`` with ``|obj[i] - obj[i-1]| <= tol * |obj[i-1]|``,
        or ``T`` if there is none.
    """
    obj = np.asarray(objective, dtype=np.float64)
    for i in range(1, len(obj)):
        if abs(obj[i] - obj[i - 1]) <= tol * abs(obj[i - 1]):
            return i + 1
    return len(obj)


def _fixed_point_iter(objective) -> int | None:
    """First iteration (1-based) whose objective equals the previous one, or None."""
    obj = np.asarray(objective, dtype=np.float64)
    same = np.flatnonzero(obj[1:] == obj[:-1])
    return int(same[0]) + 2 if len(same) else None


def _last_rel_change(objective) -> float:
    """``|obj[-1] - obj[-2]| / |obj[-2]|`` (NaN for fewer than two iterations)."""
    obj = np.asarray(objective, dtype=np.float64)
    if len(obj) < 2 or obj[-2] == 0:
        return float("nan")
    return float(abs(obj[-1] - obj[-2]) / abs(obj[-2]))


class KMeansProbe(BaseEstimator):
    """k-means probe (exact Lloyd: Hamerly on the CPU, FAISS on GPUs): ``fit`` on training
    codes, ``predict`` cluster ids.

    Args:
        n_clusters: ``K'`` (``K`` in the paper's protocol, ``E = 0``).
        n_tokens: size of the uniform token subsample used for clustering (all tokens if fewer).
        niter: maximum Lloyd iterations per restart (exact count with ``tol=None``).
        nredo: number of restarts; the best final objective wins.
        metric: ``"cosine"`` (normalised tokens, spherical k-means, inner-product assignment)
            or ``"euclidean"`` (raw tokens, squared-L2 k-means).
        random_state: int / None / numpy random state; seeds the subsample and the restarts.
        gpu: ``"auto"`` (use all GPUs if the FAISS build has them), ``False``, ``True`` / -1
            (all GPUs, error if none) or a number of GPUs.
        chunk_size: tokens per block when reading and predicting.
        tol: the stopping rule of each restart (:func:`stopping_rule`). ``0`` (default):
            iterate until a fixed point (the objective no longer changes at all) or ``niter``
            iterations, i.e. to convergence; a warning is issued when ``niter`` is reached
            first. ``> 0``: early stop after the first iteration whose objective changed by a
            relative amount ``<= tol`` (FAISS ``early_stop_threshold``). ``None``: exactly
            ``niter`` iterations (same centroids as ``0`` whenever the fixed point is reached
            within ``niter``; useful for fixed-length objective traces).
        init: ``"k-means++"`` (greedy k-means++ seeding, :func:`kmeans_plusplus`, as in
            scikit-learn, on a uniform subsample of at most 1000 tokens per cluster; the
            default) or ``"random"`` (FAISS's default: ``K'`` random
            training points). Random seeding often puts two centroids into one well-separated
            group, from which Lloyd iterations cannot recover.
        verbose: FAISS progress output.
        algorithm: the Lloyd engine (:data:`ALGORITHMS`). ``"auto"`` (default): FAISS when
            ``gpu`` resolves to GPUs or ``init="random"``, else ``"hamerly"``: exact Lloyd
            iterations that skip the distances Hamerly's bounds rule out
            (:func:`stego_probe.probes.lloyd.lloyd`; the same iterates as plain Lloyd up to
            float rounding, several times faster near convergence). ``"faiss"``: FAISS
            ``Kmeans`` on the CPU or GPU. Both follow the same stopping rule (``tol``).
        copy_x: ``False`` lets :meth:`fit` cluster a ``(M, D)`` float32 C-contiguous array of
            at most ``n_tokens`` rows in place (normalised in place for cosine) instead of
            copying it: one copy of the sample less in memory (as scikit-learn's ``copy_x``).
            The caller's array is then changed (its rows normalised, for cosine).

    Attributes (after ``fit``):
        cluster_centers_: ``(K', D)`` float32 (unit norm for cosine).
        objective_: ``(T,)`` float64 per-iteration objective of the chosen restart (FAISS
            ``km.obj``): sum of inner products (rises) for cosine, sum of squared distances
            (falls) for euclidean. Each value is measured *before* that iteration's update.
        objective_per_redo_: list of ``nredo`` such arrays, one per restart.
        best_redo_: index of the chosen restart.
        inertia_: objective of the final centroids on the training subsample (same units).
        n_iter_: iterations run by the chosen restart (``len(objective_)``);
            n_iter_per_redo_: the same for every restart.
        converged_: whether the chosen restart reached a fixed point (two consecutive
            objectives equal); n_iter_converged_: the iteration at which it did
            (:func:`n_iter_until_converged` with ``tol=0``), or None.
        stopping_rule_: :func:`stopping_rule` of ``tol``.
        n_tokens_used_: tokens actually clustered; n_tokens_seen_: tokens the sample came from.
        max_points_per_centroid_: the value passed to FAISS (``ceil(n_tokens_used_ / K')``).
        n_features_in_: ``D``. gpu_: the resolved GPU setting. algorithm_: the engine that
            ran (``"hamerly"`` or ``"faiss"``).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> codes = rng.normal(size=(4, 8, 5, 5)).astype(np.float32)  # (N, D, h, w)
        >>> probe = KMeansProbe(n_clusters=3, niter=5, nredo=1).fit(codes)
        >>> probe.predict(codes).shape, probe.n_tokens_used_
        ((4, 5, 5), 100)
    """

    def __init__(
        self,
        n_clusters: int,
        *,
        n_tokens: int = 1_000_000,
        niter: int = DEFAULT_NITER,
        nredo: int = DEFAULT_NREDO,
        metric: str = "cosine",
        random_state=0,
        gpu="auto",
        chunk_size: int = 1_000_000,
        tol: float | None = DEFAULT_TOL,
        init: str = "k-means++",
        verbose: bool = False,
        algorithm: str = "auto",
        copy_x: bool = True,
    ):
        self.n_clusters = n_clusters
        self.n_tokens = n_tokens
        self.niter = niter
        self.nredo = nredo
        self.metric = metric
        self.random_state = random_state
        self.gpu = gpu
        self.chunk_size = chunk_size
        self.tol = tol
        self.init = init
        self.verbose = verbose
        self.algorithm = algorithm
        self.copy_x = copy_x

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        for name in ("n_clusters", "n_tokens", "niter", "nredo", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric: expected one of {METRICS}, got {self.metric!r}")
        check_tol(self.tol)
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {self.init!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.algorithm == "hamerly" and self.init != "k-means++":
            raise ValueError(
                "init: algorithm='hamerly' seeds with 'k-means++' only ('random' is FAISS's own "
                "seeding: use algorithm='faiss')"
            )

    def _subsample(self, codes, seed: int) -> tuple[np.ndarray, int]:
        """Uniform sample without replacement of ``n_tokens`` tokens from an array or a stream.

        Every token gets an i.i.d. uniform key and the ``n_tokens`` smallest keys are kept, so
        the sample is the same whether the tokens arrive as one array or in chunks; the kept
        tokens are returned in their original order.

        Memory: one buffer of at most ``n_tokens`` rows plus the block being read. When a block
        does not fit, the ``n_tokens``-th smallest key of the buffer and the block is the new
        threshold; buffer rows above it are compacted away in place (order kept) and the
        block's rows below it are appended.
        """
        rng = np.random.default_rng(seed)
        cap = int(self.n_tokens)
        if (
            not self.copy_x
            and isinstance(codes, np.ndarray)
            and codes.ndim == 2
            and codes.dtype == np.float32
            and codes.flags.c_contiguous
            and 0 < len(codes) <= cap
        ):
            for _ in iter_code_chunks(codes, self.chunk_size, "codes"):
                pass  # the same checks (finite, width) without a copy
            return codes, len(codes)
        buf: np.ndarray | None = None
        keys = np.empty(0)
        filled = seen = 0
        for chunk in iter_code_chunks(codes, self.chunk_size, "codes"):
            m = len(chunk)
            ck = rng.random(m)
            seen += m
            if filled + m > cap:
                tau = np.partition(np.concatenate([keys[:filled], ck]), cap - 1)[cap - 1]
                keep = np.flatnonzero(keys[:filled] <= tau)
                for a in range(0, len(keep), 65536):  # forward compaction: keep[j] >= j
                    b = min(a + 65536, len(keep))
                    buf[a:b] = buf[keep[a:b]]
                keys[: len(keep)] = keys[keep]
                filled = len(keep)
                take = np.flatnonzero(ck <= tau)
                chunk, ck = chunk[take], ck[take]
            if buf is None or filled + len(chunk) > len(buf):
                size = min(cap, max(2 * (filled + len(chunk)), 4096))
                grown = np.empty((size, chunk.shape[1]), dtype=np.float32)
                new_keys = np.empty(size)
                if buf is not None:
                    grown[:filled], new_keys[:filled] = buf[:filled], keys[:filled]
                buf, keys = grown, new_keys
            buf[filled : filled + len(chunk)] = chunk
            keys[filled : filled + len(chunk)] = ck
            filled += len(chunk)
        if seen == 0:
            raise ValueError("codes: no tokens to fit on (empty array or empty iterable)")
        # the buffer is a fresh array, so the caller's array is never normalised in place later
        return buf[:filled], seen

    def fit(self, codes, labels=None) -> KMeansProbe:
        """Cluster a uniform subsample of the training tokens.

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` array / tensor, or an iterable of such blocks
                (out-of-core data; read once).
            labels: ignored (unsupervised); accepted for the common probe interface.

        Returns:
            self.
        """
        self._check_params()
        tol = check_tol(self.tol)
        seeds = _seeds(self.random_state, self.nredo + 1)
        x, seen = self._subsample(codes, seeds[0])
        n, d = x.shape
        k = int(self.n_clusters)
        if n < k:
            raise ValueError(f"codes: {n} tokens cannot make {k} clusters (need n >= n_clusters)")
        if self.metric == "cosine":
            x = l2_normalize(x, copy=False)
        self.gpu_ = _resolve_gpu(self.gpu)
        self.algorithm_ = self._engine()
        self.max_points_per_centroid_ = math.ceil(n / k)
        spherical = self.metric == "cosine"
        run = self._run_hamerly if self.algorithm_ == "hamerly" else self._run_faiss
        objectives, centers, inertias = [], [], []
        for r in range(int(self.nredo)):
            objective, center, inertia = run(x, k, seeds[r + 1], tol, spherical)
            objectives.append(objective)
            centers.append(center)
            inertias.append(inertia)
        finals = np.array([o[-1] for o in objectives])
        self.best_redo_ = int(np.argmax(finals) if spherical else np.argmin(finals))
        c = centers[self.best_redo_]
        self.cluster_centers_ = l2_normalize(c) if spherical else np.ascontiguousarray(c)
        self.objective_ = objectives[self.best_redo_]
        self.objective_per_redo_ = objectives
        self._set_convergence()
        if self.stopping_rule_ == "fixed_point" and not self.converged_:
            warnings.warn(
                f"KMeansProbe: the chosen restart did not reach a fixed point in niter="
                f"{self.niter} iterations (last relative objective change "
                f"{_last_rel_change(self.objective_):.2e}); raise niter for a converged fit",
                RuntimeWarning,
                stacklevel=2,
            )
        self.n_tokens_used_ = n
        self.n_tokens_seen_ = seen
        self.n_features_in_ = d
        self.inertia_ = inertias[self.best_redo_]
        if self.inertia_ is None:
            score, _ = self._search(x)
            self.inertia_ = float(score.sum(dtype=np.float64))
        return self

    def _engine(self) -> str:
        """The Lloyd engine ``algorithm`` resolves to on this machine (``gpu_`` resolved)."""
        if self.algorithm == "auto":
            return "faiss" if self.gpu_ or self.init != "k-means++" else "hamerly"
        if self.algorithm == "hamerly" and self.gpu_ and self.gpu != "auto":
            raise ValueError(f"algorithm='hamerly' runs on the CPU; gpu={self.gpu!r} needs 'faiss'")
        return self.algorithm

    def _run_hamerly(self, x, k, seed, tol, spherical):
        """One restart with :func:`~stego_probe.probes.lloyd.lloyd`: (objective, centers,
        inertia)."""
        from stego_probe.probes.lloyd import lloyd

        res = lloyd(
            x, self._seed_centroids(x, k, seed), niter=int(self.niter), tol=tol,
            spherical=spherical,
        )  # fmt: skip
        return res.objective, res.centroids, res.inertia

    def _run_faiss(self, x, k, seed, tol, spherical):
        """One restart with FAISS ``Kmeans``: (objective, centers, None); the inertia is
        measured afterwards by a FAISS search."""
        faiss = _faiss()
        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=int(self.niter),
            nredo=1,
            seed=seed,
            spherical=spherical,
            max_points_per_centroid=self.max_points_per_centroid_,
            min_points_per_centroid=1,
            verbose=bool(self.verbose),
            gpu=self.gpu_,
        )
        if not hasattr(km.cp, "early_stop_threshold"):  # pragma: no cover - old FAISS
            raise ImportError(
                "this FAISS build has no ClusteringParameters.early_stop_threshold (added "
                "in FAISS 1.8); the k-means stopping rule needs it: pip install -U faiss-cpu"
            )
        # FAISS stops when |obj_i - obj_{i-1}| <= threshold * |obj_{i-1}|; -1 never stops.
        km.cp.early_stop_threshold = -1.0 if tol is None else tol
        if self.init == "k-means++":
            km.train(x, init_centroids=self._seed_centroids(x, k, seed))
        else:
            km.train(x)
        return np.asarray(km.obj, dtype=np.float64).copy(), np.array(km.centroids, np.float32), None

    def _set_convergence(self) -> None:
        """Derive the iteration bookkeeping from ``objective_per_redo_`` / ``best_redo_``."""
        self.stopping_rule_ = stopping_rule(self.tol)
        self.n_iter_per_redo_ = [len(o) for o in self.objective_per_redo_]
        self.n_iter_ = self.n_iter_per_redo_[self.best_redo_]
        self.n_iter_converged_ = _fixed_point_iter(self.objective_)
        self.converged_ = self.n_iter_converged_ is not None

    @staticmethod
    def _seed_centroids(x: np.ndarray, k: int, seed: int) -> np.ndarray:
        """k-means++ seeds from at most ``SEEDING_POINTS_PER_CLUSTER * k`` tokens of ``x``.

        Seeding costs one pass over its input per centre; a uniform subsample of 1000 tokens
        per centre keeps every sizeable group represented while making the seeding cheap
        next to the Lloyd iterations, which always use all of ``x``.
        """
        m = SEEDING_POINTS_PER_CLUSTER * k
        if len(x) > m:
            rows = np.sort(np.random.default_rng(seed).choice(len(x), m, replace=False))
            x = np.ascontiguousarray(x[rows])
        return kmeans_plusplus(x, k, seed)

    # --------------------------------------------------------------- prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("KMeansProbe is not fitted: call fit(codes) first")

    def _index(self):
        faiss = _faiss()
        d = self.cluster_centers_.shape[1]
        index = faiss.IndexFlatIP(d) if self.metric == "cosine" else faiss.IndexFlatL2(d)
        if self.gpu_:
            index = faiss.index_cpu_to_all_gpus(index, ngpu=int(self.gpu_))
        index.add(self.cluster_centers_)
        return index

    def _search(self, x: np.ndarray, index=None) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of ``(m, D)`` float32 tokens: (score (m,), id (m,) int64).

        For cosine the argmax of the inner product does not depend on the token's norm, so
        tokens are not normalised here; the score is the raw inner product.
        """
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"codes: expected code width D={self.n_features_in_}, got {x.shape[1]}"
            )
        index = self._index() if index is None else index
        score, ids = index.search(x, 1)
        return score[:, 0], ids[:, 0].astype(np.int64)

    def predict_stream(self, codes) -> Iterator[np.ndarray]:
        """Predict block by block: yields ``(m,)`` int64 cluster ids per token block.

        Args:
            codes: array / tensor or an iterable of blocks, as in :meth:`fit`.
        """
        self._check_fitted()
        index = self._index()
        for chunk in iter_code_chunks(codes, self.chunk_size, "codes"):
            yield self._search(chunk, index)[1]

    def _upsampled_blocks(self, codes, size) -> Iterator[np.ndarray]:
        """``(n, D, H, W)`` float32 blocks of image-layout codes upsampled to ``size``, a few
        images at a time (about ``chunk_size`` pixels per block)."""
        x = to_numpy(codes, "codes")
        if x.ndim != 4:
            raise ValueError(f"codes: size= needs image-layout codes (N, D, h, w), got {x.shape}")
        size = (int(size[0]), int(size[1]))
        step = max(1, int(self.chunk_size) // max(1, size[0] * size[1]))
        for start in range(0, x.shape[0], step):
            yield upsample_codes(x[start : start + step], size)

    def _assignment_scores(self, codes) -> torch.Tensor:
        """Scores whose argmax is the assignment of image-layout codes, ``(N, K', h, w)``.

        cosine: ``<c, mu_k>`` with unit centroids (the code norm does not change the argmax);
        euclidean: ``2 <c, mu_k> - |mu_k|^2``. Both are affine in ``c`` with weights that sum
        to one under bilinear interpolation, so upsampling these scores equals scoring the
        upsampled code (PROTOCOL §4.2 "code first, then assignment") without materialising
        ``(N, D, H, W)``.
        """
        import torch

        x = as_code_tensor(codes, "cpu")
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"codes: expected code width D={self.n_features_in_}, got {x.shape[1]}"
            )
        mu = torch.from_numpy(np.ascontiguousarray(self.cluster_centers_, dtype=np.float32))
        s = torch.einsum("bdhw,kd->bkhw", x, mu)
        if self.metric != "cosine":
            s = 2 * s - mu.square().sum(1)[None, :, None, None]
        return s

    def predict(self, codes, *, size=None) -> np.ndarray:
        """Cluster id of every token (or pixel, with ``size``).

        Image-layout arrays are assigned by the argmax of scores affine in the code
        (:meth:`_assignment_scores`: inner products with the centroids), computed on the token
        grid and, with ``size``, upsampled bilinearly (``align_corners=False``) a few images at
        a time: the assignment of the upsampled code (PROTOCOL §4.2: code first, then
        assignment). Token-layout arrays and iterables of blocks are searched with FAISS.

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` array / tensor, or an iterable of blocks.
            size: optional ``(H, W)`` label resolution (image-layout arrays only).

        Returns:
            int64 ``(N, h, w)`` / ``(N, H, W)`` / ``(M,)`` matching the input layout; for an
            iterable, the ``(M_total,)`` concatenation (use :meth:`predict_stream` to avoid
            holding it).
        """
        self._check_fitted()
        if is_array_like(codes) and len(codes.shape) == 4:
            scores = self._assignment_scores(codes)
            size = check_size(size, scores)
            h, w = size if size is not None else tuple(scores.shape[2:])
            step = max(1, int(self.chunk_size) // max(1, h * w))
            parts = [
                upsample(scores[start : start + step], size).argmax(1).numpy()
                for start in range(0, len(scores), step)
            ]
            return np.concatenate(parts).astype(np.int64, copy=False)
        if size is not None:
            raise ValueError(
                "size: only image-layout codes (N, D, h, w) can be upsampled, got "
                + (f"shape {tuple(codes.shape)}" if is_array_like(codes) else "an iterable")
            )
        parts = list(self.predict_stream(codes))
        out = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        if is_array_like(codes):
            out = out.reshape(lead_shape(codes))
        return out

    def log_probs(self, codes, alpha: float = 2.0, *, size=None) -> np.ndarray:
        """Soft assignment ``log_softmax(alpha * s)`` for the CRF (§4.4, §5).

        ``s`` is the cosine similarity to the centroids (cosine metric) or minus the squared
        distance (euclidean).

        Args:
            codes: ``(N, D, h, w)`` or ``(M, D)`` array / tensor.
            alpha: inverse temperature (the reference uses 2).
            size: optional ``(H, W)`` to upsample image-layout codes to first (as in
                :meth:`predict`).

        Returns:
            float32 ``(N, K', h, w)`` / ``(N, K', H, W)`` or ``(M, K')``.
        """
        self._check_fitted()
        if size is not None:
            blocks = self._upsampled_blocks(codes, size)
            return np.concatenate([self.log_probs(b, alpha=alpha) for b in blocks])
        x = to_numpy(codes, "codes")
        lead = lead_shape(x)
        parts = []
        for chunk in iter_code_chunks(x, self.chunk_size, "codes"):
            if chunk.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"codes: expected code width D={self.n_features_in_}, got {chunk.shape[1]}"
                )
            if self.metric == "cosine":
                s = l2_normalize(chunk) @ self.cluster_centers_.T
            else:
                c = self.cluster_centers_
                s = -((chunk**2).sum(1, keepdims=True) - 2 * chunk @ c.T + (c**2).sum(1)[None, :])
            z = alpha * s.astype(np.float64)
            z -= z.max(axis=1, keepdims=True)
            z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
            parts.append(z.astype(np.float32))
        out = np.concatenate(parts)
        if len(lead) == 3:
            n, h, w = lead
            return np.ascontiguousarray(out.reshape(n, h, w, -1).transpose(0, 3, 1, 2))
        return out

    # -------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write parameters and learned state to ``path`` (the common estimator format of
        :mod:`stego_probe.persist`: an ``.npz`` file; the FAISS index is rebuilt on load).

        Returns:
            the path written.
        """
        self._check_fitted()
        params = dict(self.get_params())
        if not isinstance(params["random_state"], int | type(None)):
            params["random_state"] = None
        state = {
            "best_redo_": self.best_redo_,
            "n_iter_": self.n_iter_,
            "n_tokens_used_": self.n_tokens_used_,
            "n_tokens_seen_": self.n_tokens_seen_,
            "n_features_in_": self.n_features_in_,
            "max_points_per_centroid_": self.max_points_per_centroid_,
            "inertia_": self.inertia_,
            "algorithm_": self.algorithm_,
        }
        arrays = {f"objective_redo_{i}": o for i, o in enumerate(self.objective_per_redo_)}
        return write_estimator(
            path,
            kind="probe",
            cls_name=type(self).__name__,
            params=params,
            state=state,
            arrays={"cluster_centers_": self.cluster_centers_, **arrays},
        )

    @classmethod
    def load(cls, path: str | os.PathLike, gpu="auto") -> KMeansProbe:
        """Read a probe written by :meth:`save`, also by an older version (``gpu`` is
        re-resolved on this machine).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: not a stego_probe estimator file, or not a KMeansProbe.
        """
        saved = read_estimator(path, kind="probe", expected=cls.__name__)
        arrays = saved.arrays
        if "cluster_centers_" not in arrays:
            raise ValueError(f"{saved.path}: a KMeansProbe file without cluster_centers_")
        probe = cls(**{**saved.params, "gpu": gpu})
        probe.cluster_centers_ = np.ascontiguousarray(arrays["cluster_centers_"], np.float32)
        n_redo = sum(1 for key in arrays if key.startswith("objective_redo_"))
        probe.objective_per_redo_ = [arrays[f"objective_redo_{i}"] for i in range(n_redo)]
        probe.algorithm_ = "faiss"  # files written before the Hamerly engine existed
        for key, value in saved.state.items():
            setattr(probe, key, value)
        probe.objective_ = probe.objective_per_redo_[probe.best_redo_]
        probe._set_convergence()
        probe.gpu_ = _resolve_gpu(gpu)
        return probe
