"""Where a sweep's points run: :func:`run_local` (a loop in this process) or :func:`run_ray`
(one Ray task per point). Both append each finished point's rows at once
(:func:`stego_probe.sweep.table.append_point`, from the driver only) and record failures in the
:class:`~stego_probe.sweep.progress.SweepProgress` tracker.
"""

from __future__ import annotations

import time
from pathlib import Path

from stego_probe.sweep.measure import run_point
from stego_probe.sweep.points import Point
from stego_probe.sweep.progress import SweepProgress
from stego_probe.sweep.table import append_point


def _record(point: Point, outcome, seconds, results: Path, tracker: SweepProgress) -> None:
    """Shared by both executors: append a finished point's rows to ``results`` (as soon as it
    finishes, so nothing finished is lost), or record its failure (an exception; also rows
    with non-finite headline values, which are not written)."""
    if not isinstance(outcome, BaseException):
        try:
            append_point(point, outcome, results)
        except ValueError as e:
            outcome = e
    if isinstance(outcome, BaseException):
        tracker.finish(point, error=outcome)
    else:
        tracker.finish(point, seconds)


def run_local(config, todo, train_store, val_store, cache_dir, results, tracker) -> None:
    for point in todo:
        tracker.start(point)
        try:
            outcome = run_point(config, point, train_store, val_store, cache_dir)
        except Exception as e:  # reported with its point at the end; the others still run
            outcome = e
        _record(point, outcome, None, results, tracker)


def run_ray(config, todo, train_path, val_path, cache_dir, results, tracker) -> None:
    import ray  # checked by check_dependencies
    import torch

    # Ray hides GPUs from tasks that do not ask for one.
    @ray.remote(num_gpus=1 if torch.cuda.is_available() else 0)
    def task(cfg, point):
        from stego_probe.store import FeatureStore

        start = time.perf_counter()
        rows = run_point(
            cfg, point, FeatureStore.open(train_path), FeatureStore.open(val_path), cache_dir
        )
        return rows, time.perf_counter() - start

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    pending = {}
    for p in todo:
        pending[task.remote(config, p)] = p
        tracker.start(p)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            point = pending.pop(ref)
            # Rows are appended by the driver only, so the CSV has a single writer.
            try:
                rows, seconds = ray.get(ref)
            except Exception as e:  # a failed task: reported at the end, the others go on
                _record(point, e, None, results, tracker)
            else:
                _record(point, rows, seconds, results, tracker)
