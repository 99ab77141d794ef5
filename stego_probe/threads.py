"""CPU thread policy: how many threads torch, FAISS and the BLAS libraries use.

Every long-running entry point (``stego-probe sweep`` / ``evaluate`` / ``extract`` /
``train-stego`` / ``demo``, the experiment scripts, :func:`stego_probe.sweep.run_sweep`,
:func:`stego_probe.sweep.run_point`, :func:`stego_probe.evaluate.evaluate_stores` and
:func:`stego_probe.extract.extract`) takes a ``threads`` setting and runs under :func:`limit`,
which restores the previous thread counts when it ends. A setting is one of

* ``"auto"`` (the default): the thread count of the enclosing explicit setting if there is
  one, else the process-wide choice (:func:`set_default`, ``STEGO_PROBE_THREADS``,
  ``OMP_NUM_THREADS``), else the measured policy: **one thread for small-tensor work**
  (probes, projections and STEGO training on stores with fewer than :data:`LARGE_STORE`
  token values per image, such as the demo's) and **all cores for large-tensor work** (a
  backbone forward pass; stores of ViT-sized tokens);
* a positive int: exactly that many threads everywhere inside;
* ``"all"``: every core this process may run on (``os.sched_getaffinity``);
* ``None``: leave the libraries' own defaults (one thread per core) untouched.

Why: small tensor operations split over several OpenMP threads gain nothing on an idle machine
and lose a lot on a busy one: every operation waits for its slowest thread, and with OpenMP's
default "active" wait policy the waiting threads spin on the cores the others need. Large
operations amortise that cost and run faster on all cores. The measurements are in
``docs/threads.md`` (``benchmarks/bench_threads.py``).

The OpenMP wait policy can only be chosen before the OpenMP runtime starts, i.e. before torch
or FAISS is imported; :func:`passive_wait` (called first thing by the ``stego-probe`` command
and the experiment scripts) sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator

#: The thread settings :func:`resolve_threads` accepts besides positive ints and ``None``.
NAMED = ("auto", "all")

#: Workloads with their own ``"auto"`` count: ``"small"`` (many small tensor operations: probes,
#: projections, k-means, STEGO training and sweep points on small stores) runs on 1 thread,
#: ``"large"`` (large matrix products: a backbone forward, the same work on ViT-sized stores)
#: on every available core.
WORKLOADS = ("small", "large")

#: Token values per image (``h * w * C``) from which a store's work counts as ``"large"``
#: (:func:`store_workload`). The demo's stores have 8 * 8 * 64 = 4,096; a ViT-S/8 store at
#: 224 px 28 * 28 * 384 = 301,056, a ViT-B/8 one at 320 px 40 * 40 * 768 = 1,228,800.
LARGE_STORE = 1 << 16

#: Environment variable giving the process-wide meaning of ``"auto"`` (an int or ``all``).
ENV_VAR = "STEGO_PROBE_THREADS"

_local = threading.local()
_default: int | str | None = None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _stack() -> list[tuple[int, bool]]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def check_threads(threads, name: str = "threads") -> int | str | None:
    """Validate a thread setting without resolving it (``"8"`` -> ``8``, ``"All"`` -> ``"all"``).

    Raises:
        ValueError: anything but ``None``, ``"auto"``, ``"all"`` or a positive int (or its
            string); the message names ``name``.
    """
    if threads is None:
        return None
    if isinstance(threads, str):
        text = threads.strip().lower()
        if text in NAMED:
            return text
        if text.isdigit() and int(text) > 0:
            return int(text)
    elif isinstance(threads, int) and not isinstance(threads, bool) and threads > 0:
        return int(threads)
    raise ValueError(f"{name} must be 'auto', 'all', a positive integer or None, got {threads!r}")


def _check_workload(workload: str) -> None:
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")


def set_default(threads: int | str | None) -> None:
    """Make ``threads`` the process-wide meaning of ``"auto"`` (``None`` or ``"auto"``: back to
    the environment and the measured policy). An explicit setting still wins."""
    global _default
    value = check_threads(threads)
    _default = None if value == "auto" else value


def _process_default() -> int | str | None:
    """The process-wide choice behind ``"auto"``: :func:`set_default`, else the
    ``STEGO_PROBE_THREADS``, else the ``OMP_NUM_THREADS`` environment variable, else None."""
    if _default is not None:
        return _default
    for var in (ENV_VAR, "OMP_NUM_THREADS"):
        text = os.environ.get(var, "").strip()
        if text and text.lower() != "auto":
            return check_threads(text, var)
    return None


def resolve_threads(threads: int | str | None = "auto", workload: str = "small") -> int | None:
    """The thread count a setting stands for (``None``: leave the library defaults).

    ``"auto"`` resolves, first match wins, to

    1. the count of the innermost enclosing :func:`limit` with an explicit setting (so
       ``run_sweep(threads=2)`` keeps 2 threads in the ``evaluate_stores`` calls it makes);
    2. the process-wide choice: :func:`set_default`, else the ``STEGO_PROBE_THREADS``
       environment variable, else ``OMP_NUM_THREADS``;
    3. the measured policy: 1 for ``workload="small"``, :func:`available_cores` for
       ``workload="large"``.

    Args:
        threads: ``"auto"``, ``"all"``, a positive int (or its string) or ``None``.
        workload: one of :data:`WORKLOADS` (see :func:`store_workload`).

    Returns:
        a positive int, or None for ``threads=None``.

    Raises:
        ValueError: a bad ``threads`` or ``workload`` (the message names the argument).
    """
    _check_workload(workload)
    value = check_threads(threads)
    if value == "auto":
        explicit = [n for n, is_explicit in _stack() if is_explicit]
        if explicit:
            return explicit[-1]
        value = _process_default()
        if value is None:
            return 1 if workload == "small" else available_cores()
    if value == "all":
        return available_cores()
    return value


def store_workload(store) -> str:
    """``"large"`` for a store with at least :data:`LARGE_STORE` token values per image
    (``h * w * C``), else ``"small"``.

    Args:
        store: a :class:`~stego_probe.store.FeatureStore`, its path, or None; a path that
            cannot be opened counts as ``"small"`` (the caller reports the error).
    """
    if store is None:
        return "small"
    if not hasattr(store, "grid"):
        from stego_probe.store import FeatureStore

        try:
            store = FeatureStore.open(store, allow_incomplete=True)
        except (OSError, ValueError, KeyError, TypeError):
            return "small"
    h, w = store.grid
    return "large" if int(h) * int(w) * int(store.dim) >= LARGE_STORE else "small"


def get_threads() -> dict[str, int]:
    """Current thread counts: ``{"torch": ..., "faiss": ..., "blas": ...}`` (``blas``: the
    largest count threadpoolctl reports for a loaded BLAS library, 0 without threadpoolctl)."""
    import faiss
    import torch

    blas = 0
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        blas = max(
            (i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=0
        )
    return {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads(), "blas": blas}


def _blas_limits(n: int):
    """threadpoolctl's BLAS limit to ``n`` threads (restores on exit); a no-op without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


@contextlib.contextmanager
def limit(threads: int | str | None = "auto", workload: str = "small") -> Iterator[int | None]:
    """Run a block with torch intra-op, FAISS OpenMP and BLAS (threadpoolctl) thread counts set
    by ``threads``; the previous counts are restored on exit, also after an exception.

    Example::

        with limit(1):
            run_sweep(config, "runs/x")

    Args:
        threads: a setting, as in :func:`resolve_threads` (``None``: change nothing).
        workload: ``"small"`` or ``"large"``: which ``"auto"`` count applies.

    Yields:
        the resolved thread count (None for ``threads=None``).
    """
    n = resolve_threads(threads, workload)
    if n is None:
        yield None
        return
    import faiss
    import torch

    old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    stack = _stack()
    stack.append((n, check_threads(threads) != "auto"))
    try:
        with _blas_limits(n):
            torch.set_num_threads(n)
            faiss.omp_set_num_threads(n)
            try:
                yield n
            finally:
                torch.set_num_threads(old_torch)
                faiss.omp_set_num_threads(old_faiss)
    finally:
        stack.pop()


def uses_threads(workload: str = "small", store: str | None = None) -> Callable:
    """Decorator: run the function under :func:`limit` of its ``threads`` argument.

    Args:
        workload: the ``"auto"`` workload of the function.
        store: name of a store argument whose size decides the workload instead
            (:func:`store_workload`).

    Example::

        @uses_threads(store="train_store")
        def evaluate_stores(train_store, val_store, *, threads="auto"): ...
    """
    _check_workload(workload)

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        if "threads" not in sig.parameters:
            raise TypeError(f"{fn.__qualname__} has no 'threads' parameter")
        default = sig.parameters["threads"].default

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                arguments = sig.bind(*args, **kwargs).arguments
            except TypeError:  # let the function report its own call error
                return fn(*args, **kwargs)
            kind = workload if store is None else store_workload(arguments.get(store))
            with limit(arguments.get("threads", default), kind):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def set_num_threads(threads: int | str | None) -> int | None:
    """Set the torch, FAISS and BLAS thread counts for the rest of the process (not restored)
    and make ``threads`` the meaning of ``"auto"`` (:func:`set_default`); ``"auto"`` applies
    the small-work count. ``None`` changes nothing.

    Returns:
        the count applied (None for ``threads=None``).
    """
    value = check_threads(threads)
    if value is None:
        return None
    set_default(value)
    n = resolve_threads(value)
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    _blas_limits(n)  # threadpoolctl applies the limit when the object is created
    return n


def passive_wait() -> bool:
    """Let idle OpenMP threads sleep instead of spinning: ``OMP_WAIT_POLICY=PASSIVE``.

    The variable is set unless the environment already sets it, and only while torch and FAISS
    are not imported yet: OpenMP reads it once, when it starts. The ``stego-probe`` command and
    the experiment scripts call this first; in Python, set the variable before importing torch.

    Returns:
        True if the variable was set here.
    """
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules or "faiss" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def threads_arg(text: str) -> int | str:
    """``argparse`` type of ``--threads``: ``auto``, ``all`` or a positive int."""
    import argparse

    try:
        return check_threads(text, "--threads")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, all or a positive integer, got {text!r}"
        ) from None


def add_threads_argument(parser, workload: str = "small") -> None:
    """Add the shared ``--threads`` option (default ``auto``) to an argparse parser or argument
    group. ``stego-probe`` runs the command under :func:`limit` of its value and ``workload``
    (stored as the parser default ``threads_workload``)."""
    _check_workload(workload)
    parser.set_defaults(threads_workload=workload)
    parser.add_argument(
        "--threads",
        type=threads_arg,
        default="auto",
        metavar="auto|all|N",
        help="CPU threads of torch / FAISS / BLAS (default auto: 1 for small stores, all "
        "cores for ViT-sized stores and backbone forwards; see docs/threads.md)",
    )


__all__ = [
    "ENV_VAR",
    "LARGE_STORE",
    "NAMED",
    "WORKLOADS",
    "add_threads_argument",
    "available_cores",
    "check_threads",
    "get_threads",
    "limit",
    "passive_wait",
    "resolve_threads",
    "set_default",
    "set_num_threads",
    "store_workload",
    "threads_arg",
    "uses_threads",
]
