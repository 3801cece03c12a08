"""Alternating, repeated timing: medians of several runs of each contender, one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def time_alternating(contenders: dict[str, Callable[[], object]], repeats: int = 5) -> dict:
    """Median wall time (s) of each zero-argument callable, run in alternation after warm-up.

    Alternating (A, B, A, B, …) spreads machine noise evenly over the contenders; each
    call's result is blocked on, so asynchronous dispatch is timed in full.
    """
    for fn in contenders.values():  # compile and warm up
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "all_s": t} for name, t in times.items()}
