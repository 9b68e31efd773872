"""Summaries of timing samples and the interleaving schedule of compared variants."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation, numpy's default); NaN without samples."""
    if len(samples) == 0:
        return math.nan
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def summarize(samples: Sequence[float]) -> dict:
    """``n``, median, p95, p99, mean, min, max of ``samples`` (seconds, as given)."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        return {"n": 0}
    return {
        "n": int(arr.size),
        "median": float(np.median(arr)),
        "p95": percentile(arr, 95),
        "p99": percentile(arr, 99),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


def ratio(a: dict | None, b: dict | None, key: str = "median") -> float | None:
    """``a[key] / b[key]`` of two summaries, or None when either is missing."""
    if not a or not b or a.get("n", 0) == 0 or b.get("n", 0) == 0 or not b.get(key):
        return None
    return float(a[key] / b[key])


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict | None:
    """Median (and p5..p95 spread) of the per-round ratios ``a[i] / b[i]``.

    Rounds interleave the variants, so the ratio of one round's two samples cancels the load
    the machine had during that round; its median is the most noise-robust comparison.
    """
    n = min(len(a), len(b))
    if n == 0:
        return None
    r = np.asarray(a[:n], dtype=np.float64) / np.asarray(b[:n], dtype=np.float64)
    return {"n": n, "median": float(np.median(r)), "p5": percentile(r, 5), "p95": percentile(r, 95)}


@dataclass
class Rounds:
    """Interleaved rounds: every round runs each variant once, in a rotated order (ABC, BCA, ...).

    Stops after ``rounds`` rounds, or earlier once another round (as long as the rounds so far
    took on average) would end after ``budget_s`` seconds and at least ``min_rounds`` are done:
    the machine may be slower than expected.
    """

    rounds: int
    budget_s: float = math.inf
    min_rounds: int = 1
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    stopped_early: bool = False

    def __iter__(self) -> Iterator[int]:
        self.started = time.monotonic()
        for r in range(self.rounds):
            elapsed = time.monotonic() - self.started
            per_round = elapsed / r if r else 0.0
            if r >= self.min_rounds and elapsed + per_round > self.budget_s:
                self.stopped_early = True
                return
            yield r
            self.done = r + 1

    @staticmethod
    def order(names: Sequence[str], round_index: int) -> list[str]:
        k = round_index % max(1, len(names))
        return [*names[k:], *names[:k]]


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class TimedParts:
    """Wraps instance methods to add up their wall time (per name)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj: object, method: str, name: str) -> None:
        inner = getattr(obj, method)

        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

        setattr(obj, method, timed)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out
