"""The CPU lowering of JAX's threefry generator: unrolled instead of rolled loops.

Why this module exists. Every noisy hot path here draws random numbers each step (the Brownian
increment of an SDE step, the minibatch indices of a training step, the arrival times of the
asynchronous pool). JAX's default CPU lowering of the `threefry2x32` primitive emits its 20
rounds as rolled `while` loops (several tiny loops per draw), which XLA's CPU backend runs
slowly: on a 2-core machine the draws were most of an Euler–Maruyama step of `dynamics.solve`
(N = 256, d = 100; `make bench` reports what the pieces of a step cost now). JAX also has an
unrolled lowering of the same function, the generic rule it registers for all platforms (the
CPU rule overrides it); it computes the same bits (the same arithmetic in the same order, only
not in a loop). Registering it for the CPU makes the draws several times cheaper (`python -m
benchmarks bench_rng` measures both lowerings) and leaves every random stream, and so every
stored result, unchanged. (Other generators, such as `rbg` keys, or drawing a block of steps'
noise at once, would change the stream.)

It is a private JAX API (`jax._src`), so it is confined here: `use_unrolled_threefry()` is
called once when `dynamics` is imported, checks the JAX version and the names it needs, and
falls back to JAX's default (returning False) if anything is missing. Set the environment
variable `COUPLED_SGD_ROLLED_THREEFRY=1` before importing to keep JAX's default lowering.
tests/test_rng.py checks that the draws are bit-identical with and without it.

The unrolled lowering is emitted as one out-of-line function per compiled program that draws
random numbers, so each such program takes a little longer to compile (within the noise of
our compile-time checks).
"""

from __future__ import annotations

import os

import jax

__all__ = ["use_unrolled_threefry", "unrolled_threefry_active"]

# JAX versions on which the private names below were checked: 0.10.x (constraints.txt pins
# 0.10.2). Outside this range JAX's default lowering is kept.
_TESTED = ((0, 10, 0), (0, 11, 0))
_ENV = "COUPLED_SGD_ROLLED_THREEFRY"
_active = False


def _version() -> tuple[int, ...]:
    parts = []
    for piece in jax.__version__.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def use_unrolled_threefry() -> bool:
    """Lower `threefry2x32` on CPU with JAX's unrolled rule; True if it is now in use.

    Idempotent. Returns False (and changes nothing) when `COUPLED_SGD_ROLLED_THREEFRY=1`, when
    the JAX version is outside the tested range, or when the private names are missing.
    """
    global _active
    if _active:
        return True
    if os.environ.get(_ENV, "") not in ("", "0"):
        return False
    low, high = _TESTED
    if not low <= _version() < high:
        return False
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        primitive = tf.threefry2x32_p
        unrolled = tf._threefry2x32_lowering_rule
    except (ImportError, AttributeError):
        return False
    # The generic rule (registered for all platforms) is the unrolled one; registering it for
    # "cpu" overrides the rolled CPU rule. Programs compiled before this call keep theirs.
    mlir.register_lowering(primitive, unrolled, platform="cpu", inline=False)
    _active = True
    return True


def unrolled_threefry_active() -> bool:
    """Whether `use_unrolled_threefry` is in effect in this process."""
    return _active
