"""A job's metric curves for the charts, bounded however long the job runs.

Use from Python (app/studio/jobview.py does this):
    from app.studio.curves import curves, Curve
    found = curves(jobs.api.metric_buckets(job_id, CHART_POINTS))   # one Curve per metric
    found["loss"].add(step, value)          # new rows from later polls
    found["loss"].points()                  # what a chart draws: min and max of each bucket

A Curve holds at most CHART_POINTS buckets of aligned steps, the store's grid: past that,
neighbours merge pairwise and the width doubles. A bucket of many steps is drawn as its min and
its max, so a one-step spike stays visible; the smoothed curve is smooth()'s EMA over buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from typing import Any

CHART_POINTS = 1500            # buckets per curve; longer curves merge steps (the store keeps all)
SMOOTHING = 0.9                # EMA weight of the smoothed loss (TensorBoard-style, debiased)


@dataclass(slots=True)
class Bucket:
    """One metric over an aligned run of steps, as jobs.store.metric_buckets returns it: how
    many values and their sum, the first and last step, the min and the max with their steps
    (a tied min keeps its earliest step, a tied max its latest, as the store ranks them)."""
    count: int
    sum: float
    first_step: int
    last_step: int
    min: float
    min_step: int
    max: float
    max_step: int

    @classmethod
    def of(cls, step: int, value: float) -> "Bucket":
        return cls(1, value, step, step, value, step, value, step)

    def absorb(self, later: "Bucket") -> None:
        """Take in the bucket (or value) that follows this one."""
        self.count, self.sum, self.last_step = self.count + later.count, \
            self.sum + later.sum, later.last_step
        if later.min < self.min:
            self.min, self.min_step = later.min, later.min_step
        if later.max >= self.max:
            self.max, self.max_step = later.max, later.max_step


@dataclass
class Curve:
    """One metric of a job in at most `limit` buckets of `width` steps (bucket b: steps
    b*width+1 .. (b+1)*width), fed with the store's buckets and then with new values one by
    one. Past `limit` buckets, neighbours merge pairwise and the width doubles, so it holds
    O(limit) numbers however long the job runs, and stays on the store's grid."""
    limit: int = CHART_POINTS
    width: int = 1
    buckets: list[Bucket] = dataclass_field(default_factory=list)
    first: tuple[int, float] | None = None      # the metric's first and last (step, value)
    last: tuple[int, float] | None = None

    @classmethod
    def seeded(cls, width: int, seed: dict[str, Any], limit: int = CHART_POINTS) -> "Curve":
        """From one metric of jobs.api.metric_buckets."""
        ends = [(e["step"], e["value"]) if e else None for e in (seed.get("first"),
                                                                  seed.get("last"))]
        curve = cls(limit, width, [Bucket(**b) for b in seed["buckets"]], *ends)
        curve._fit()
        return curve

    def add(self, step: int, value: float) -> bool:
        """Count one value; False for a step this curve has already counted (each poll
        fetches the last seen step again)."""
        if self.last is not None and step <= self.last[0]:
            return False
        tail = self.buckets[-1] if self.buckets else None
        if tail is not None and self._key(tail) == (step - 1) // self.width:
            tail.absorb(Bucket.of(step, value))
        else:
            self.buckets.append(Bucket.of(step, value))
        self.first, self.last = self.first or (step, value), (step, value)
        self._fit()
        return True

    def points(self) -> list[tuple[int, float]]:
        """What the chart draws: a bucket of one step as its value, a bucket of many as its
        min and its max in step order (a one-step spike stays visible), and the metric's
        first and last values."""
        out: list[tuple[int, float]] = []
        for b in self.buckets:
            out += [(b.first_step, b.min)] if b.count == 1 else \
                sorted({(b.min_step, b.min), (b.max_step, b.max)})
        if self.first and (not out or self.first[0] < out[0][0]):
            out.insert(0, self.first)
        if self.last and (not out or self.last[0] > out[-1][0]):
            out.append(self.last)
        return out

    def smoothed(self, weight: float = SMOOTHING) -> list[tuple[int, float]]:
        """smooth() over the buckets, one point at each bucket's last step. A bucket of n
        steps counts as n steps all at its mean (weight**n): exactly smooth() while buckets
        hold one step; for longer ones only the order of values inside a bucket is lost."""
        out, avg, seen = [], 0.0, 0
        for b in self.buckets:
            keep = weight ** b.count
            avg = keep * avg + (1 - keep) * (b.sum / b.count)
            seen += b.count
            out.append((b.last_step, avg / (1 - weight ** seen)))
        return out

    def _key(self, bucket: Bucket) -> int:
        return (bucket.first_step - 1) // self.width

    def _fit(self) -> None:
        while len(self.buckets) > self.limit:
            self.width *= 2
            merged: list[Bucket] = []
            for b in self.buckets:
                if merged and self._key(merged[-1]) == self._key(b):
                    merged[-1].absorb(b)
                else:
                    merged.append(b)
            self.buckets = merged


def curves(seed: dict[str, Any]) -> dict[str, Curve]:
    """A Curve per metric of jobs.api.metric_buckets."""
    return {name: Curve.seeded(seed["width"], s) for name, s in seed["metrics"].items()}


def smooth(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average, as TensorBoard draws it (Curve.smoothed draws
    it over buckets)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out
