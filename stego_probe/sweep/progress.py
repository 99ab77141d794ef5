"""Progress and ETA of a sweep: :class:`SweepProgress`, weighted by cost and calibrated as
points finish."""

from __future__ import annotations

import sys
import time

from stego_probe.sweep.points import Point, point_label


def error_summary(error: BaseException) -> str:
    """``"ErrorType: first line of the message"`` (a Ray task error shows its cause)."""
    cause = getattr(error, "cause", None)  # ray.exceptions.RayTaskError wraps the task's error
    if isinstance(cause, BaseException):
        error = cause
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class SweepProgress:
    """Progress bar and ETA of a sweep's points, weighted by cost and calibrated as they finish.

    Counting points gives a wrong ETA: a STEGO point trains a head and costs many times a PCA or
    RP point. Here the time left is estimated as

        sum over unfinished points of  weight(point) * seconds_per_weight(method)

    divided by the measured parallelism (work-seconds finished per wall-second: about 1 for the
    local loop, the number of busy workers with Ray). ``seconds_per_weight`` of a method is
    measured on its finished points; for a method with none finished yet, the rate of all finished
    points is used with the prior weights (:func:`point_weights`). The bar fills with the
    estimated share of the work done and shows the points done, failures, the ETA and the current
    point ``(method, D, seed)``.

    Args:
        points: the points to run.
        weights: prior cost of each point (missing points weigh 1).
        desc: bar description.
        disable: no bar (the bookkeeping and :meth:`eta` still work).
        clock: a ``time.monotonic``-like function (tests pass a fake clock).

    Attributes:
        done: finished point -> measured seconds (None for a failed point).
        failures: ``[(point, exception)]`` in the order the points failed.
        running: points started and not finished, in start order.
    """

    #: bar resolution (the bar counts thousandths of the estimated work).
    _STEPS = 1000

    def __init__(
        self,
        points: list[Point],
        weights: dict[Point, float] | None = None,
        *,
        desc: str = "sweep",
        disable: bool = False,
        clock=time.monotonic,
    ) -> None:
        from tqdm.auto import tqdm

        self.points = list(points)
        weights = weights or {}
        self.weights = {p: float(weights.get(p, 1.0)) for p in self.points}
        self.clock = clock
        self.done: dict[Point, float | None] = {}
        self.failures: list[tuple[Point, BaseException]] = []
        self.running: list[Point] = []
        self._started: dict[Point, float] = {}
        self._t0: float | None = None
        self._t_last: float | None = None
        self._last: Point | None = None
        self.bar = tqdm(
            total=self._STEPS,
            desc=desc,
            disable=disable,
            bar_format=f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| 0/{len(self.points)} points",
        )
        self._show()

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()

    def start(self, point: Point) -> None:
        """Mark ``point`` as started (the local loop) or submitted (Ray)."""
        now = self.clock()
        if self._t0 is None:
            self._t0 = self._t_last = now
        self._started[point] = now
        self.running.append(point)
        self._show()

    def finish(
        self, point: Point, seconds: float | None = None, error: BaseException | None = None
    ) -> None:
        """Mark ``point`` as finished after ``seconds`` of work (default: since :meth:`start`),
        or as failed with ``error`` (its time is not used for the estimate)."""
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        if point in self.running:
            self.running.remove(point)
        if seconds is None:
            seconds = now - self._started.get(point, now)
        self.done[point] = None if error is not None else max(float(seconds), 0.0)
        self._t_last, self._last = now, point
        if error is not None:
            self.failures.append((point, error))
            if not self.bar.disable:
                msg = f"sweep point {point_label(point)} failed: {error_summary(error)}"
                self.bar.write(msg, file=sys.stderr)
        self._show()

    # ---------------------------------------------------------------------------- estimate
    def _rates(self) -> tuple[float | None, dict[str, float]]:
        """Seconds per unit weight: over all timed points, and per method."""
        per: dict[str, list[float]] = {}
        for p, s in self.done.items():
            if s is not None:
                acc = per.setdefault(p.method, [0.0, 0.0])
                acc[0] += s
                acc[1] += self.weights.get(p, 1.0)
        if not per:
            return None, {}
        total_s = sum(a[0] for a in per.values())
        total_w = sum(a[1] for a in per.values())
        return total_s / total_w, {m: a[0] / a[1] for m, a in per.items()}

    def _estimate(self, point: Point, overall: float, per: dict[str, float]) -> float:
        return self.weights.get(point, 1.0) * per.get(point.method, overall)

    def remaining_work(self) -> float | None:
        """Estimated work-seconds of the unfinished points (None before a point is timed)."""
        overall, per = self._rates()
        if overall is None:
            return None
        return sum(self._estimate(p, overall, per) for p in self.points if p not in self.done)

    def eta(self) -> float | None:
        """Estimated wall-clock seconds until every point has finished (None before the first
        point has been timed)."""
        left = self.remaining_work()
        if left is None:
            return None
        work = sum(s for s in self.done.values() if s is not None)
        wall = (self._t_last or 0.0) - (self._t0 or 0.0)
        throughput = work / wall if wall > 0 and work > 0 else 1.0
        return max(left / throughput - (self.clock() - self._t_last), 0.0)

    def fraction_done(self) -> float:
        """Estimated share of the work done, in [0, 1]."""
        if not self.points:
            return 1.0
        overall, per = self._rates()
        if overall is None:
            done = sum(self.weights[p] for p in self.done if p in self.weights)
            return done / sum(self.weights.values())
        done = sum(
            s if s is not None else self._estimate(p, overall, per) for p, s in self.done.items()
        )
        left = self.remaining_work() or 0.0
        return done / (done + left) if done + left > 0 else 1.0

    def postfix(self) -> str:
        """The bar's text: points done, failures, ETA and the current point."""
        parts = [f"{len(self.done)}/{len(self.points)} points"]
        if self.failures:
            parts.append(f"{len(self.failures)} failed")
        eta = self.eta()
        if eta is not None and len(self.done) < len(self.points):
            parts.append(f"eta {self.bar.format_interval(eta)}")
        if len(self.running) == 1:
            parts.append(f"now {point_label(self.running[0])}")
        elif self.running:
            parts.append(f"{len(self.running)} submitted")
            if self._last is not None:
                parts.append(f"last {point_label(self._last)}")
        return ", ".join(parts)

    def _show(self) -> None:
        self.bar.n = int(round(self.fraction_done() * self._STEPS))
        text = self.postfix().replace("{", "{{").replace("}", "}}")
        self.bar.bar_format = "{desc}: {percentage:3.0f}%|{bar}| " + text + " [{elapsed}]"
        self.bar.refresh()
