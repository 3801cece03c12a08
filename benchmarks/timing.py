"""Alternating, repeated timing: medians of several runs of each contender, one process."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Collection

import jax


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def time_alternating(
    contenders: dict[str, Callable[[], object]],
    repeats: int = 5,
    warm_up: Collection[str] | None = None,
) -> dict:
    """Median wall time (s) of each zero-argument callable, run in alternation after warm-up.

    Alternating (A, B, A, B, …) spreads machine noise evenly over the contenders; each
    call's result is blocked on, so asynchronous dispatch is timed in full. Also records
    the process's CPU time (user + system, all threads) per call: `median_cpu_s` over
    `median_s` is about the number of cores a contender kept busy, spinning waits included.
    `warm_up` names the contenders called once, untimed, first (default: all; a JAX program
    compiles there); a contender with nothing to compile whose calls take many seconds can
    skip it.
    """
    unknown = set(warm_up or ()) - set(contenders)
    if unknown:
        raise ValueError(f"warm_up names unknown contenders {sorted(unknown)}")
    for name, fn in contenders.items():  # compile and warm up
        if warm_up is None or name in warm_up:
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            cpu_start, start = _cpu_seconds(), time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
            cpu[name].append(_cpu_seconds() - cpu_start)
    return {
        name: {
            "median_s": statistics.median(t),
            "all_s": t,
            "median_cpu_s": statistics.median(cpu[name]),
        }
        for name, t in times.items()
    }
