"""Timing one step callable: warm-up, then repeated single-step timings, time-budgeted."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Timing:
    """Per-step wall times of one implementation on one case (seconds)."""

    times: tuple[float, ...]
    first_call_s: float          # the first warm-up call: tracing, compilation, lazy state

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def min_s(self) -> float:
        return min(self.times)

    @property
    def max_s(self) -> float:
        return max(self.times)

    @property
    def iqr_s(self) -> float:
        """Interquartile range (0 with fewer than 2 samples)."""
        if len(self.times) < 2:
            return 0.0
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[2] - q[0]

    def spread(self) -> dict[str, float]:
        return {"min_s": self.min_s, "max_s": self.max_s, "iqr_s": self.iqr_s}


def measure(step: Callable[[], Any], *, warmup: int = 2, repeats: int | None = None,
            budget_s: float = 0.25, min_repeats: int = 3, max_repeats: int = 200,
            limit_s: float | None = None) -> Timing:
    """Time `step` one call at a time.

    Up to `warmup` untimed calls come first: the first one (reported as
    ``first_call_s``) always, the others only while the warm-up has taken
    less than `budget_s`, so a slow step is not run twice before timing.
    Then, with `repeats` given, exactly that many timed calls;
    otherwise at least `min_repeats` and at most `max_repeats`, stopping once
    `budget_s` of timed calls has passed, or once `limit_s` has (default
    ``max(2, 20 * budget_s)``; it bounds a case whose steps stall, even
    below `min_repeats`). The garbage collector is paused while timing.
    """
    limit_s = max(2.0, 20 * budget_s) if limit_s is None else limit_s
    first = float("nan")
    start = time.perf_counter()
    for i in range(warmup):
        if i > 0 and time.perf_counter() - start >= budget_s:
            break
        step()
        if i == 0:
            first = time.perf_counter() - start
    times: list[float] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            n = len(times)
            if repeats is not None:
                if n >= repeats:
                    break
            else:
                elapsed = time.perf_counter() - start
                if n >= max_repeats or elapsed >= limit_s or (n >= min_repeats and elapsed >= budget_s):
                    break
    finally:
        if enabled:
            gc.enable()
    if warmup == 0:
        first = times[0]
    return Timing(tuple(times), first)
