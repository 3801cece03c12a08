"""The recorded scan: the one step loop under every runner.

A run is a pure `step(state, k) -> (state, out)` applied at steps k = s0, s0 + 1, …,
s0 + K − 1 (s0 = `start_step`, K = `num_steps`) inside one `lax.scan`. Every
`record_every` steps the hook `metrics_fn(state, k)` is evaluated (k: the index of the
next step), and once before the first step, so the records are taken at steps s0, s0 + r,
…, s0 + K (`K / r + 1` records). The per-step outputs `out` (a runner's diagnostics, e.g.
the arrivals of a server update) are stacked over all K steps.

Divergence (one convention for every runner): with a `healthy(state, out)` check, the first
step whose update was not healthy is `diverged_step` (−1 while the run is healthy), and the
block of `record_every` steps that went bad is undone, so the state stays at the last healthy
record and no NaN of the blow-up reaches the records. Later blocks run again from that state.

Where the check runs. A pass over every parameter each step costs 6-12 % of a training step,
so the check runs once per block: `healthy(state at the block's end, outs of all its steps)`
(the runners' checks reduce over every leaf, so the stacked per-step outputs, e.g. every
step's losses, are checked at once). Only when a block fails is it run again from its start
with the check after every step, which finds the exact first bad step (the steps are
deterministic, so the rerun repeats them bitwise). A block is therefore flagged when a
per-step output (a loss) is bad at some step or the state is bad at the block's end; a
parameter that leaves the threshold and returns inside one block with finite losses is not
flagged (with `record_every=1` the two conventions coincide).

Continuation: `recorded_scan(step, result.state, start_step=s0 + K,
diverged_step=result.diverged_step, …)` continues a run, and K steps followed by K' more give
bitwise the numbers of K + K' steps at once (every step depends only on the state and k).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from dynamics.types import PyTree

__all__ = [
    "RunResult",
    "check_steps",
    "divergence_check",
    "finite_below",
    "recorded_scan",
    "state_hook",
]


class RunResult(NamedTuple):
    """The result of every runner.

    `state`: the final state (a runner's state NamedTuple; every one has `.params`).
    `steps` `(R,)`: the step index of each record, `start_step + r · record_every` for
    r = 0…R − 1 with R = `num_steps // record_every + 1`. `metrics`: the pytree returned by
    the metrics hook, stacked with leading axis R (None without a hook). `trace`: the
    runner's per-step outputs, leading axis `num_steps` (None when it has none).
    `diverged_step`: the first step whose update was not healthy, or −1.
    """

    state: Any
    steps: Int[Array, " records"]
    metrics: Any
    trace: Any
    diverged_step: Int[Array, ""]

    @property
    def params(self) -> PyTree:
        """The final parameters, `state.params`."""
        return self.state.params

    @property
    def opt_state(self) -> PyTree:
        """The final optimizer (or server rule) state, `state.opt_state`."""
        return self.state.opt_state


def check_steps(num_steps, record_every, start_step=0, *, min_steps: int = 0) -> None:
    """Raise a ValueError naming the bad value unless the step counts are valid.

    `num_steps` >= `min_steps` and `record_every` >= 1 are integers with `record_every`
    dividing `num_steps`; `start_step` is an integer >= 0 (or a traced integer).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be an integer >= {min_steps}, got {num_steps!r}")
    if num_steps < min_steps:
        raise ValueError(f"num_steps must be an integer >= {min_steps}, got {num_steps!r}")
    if isinstance(record_every, bool) or not isinstance(record_every, (int, np.integer)):
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    if record_every < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    if num_steps % record_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a multiple of record_every ({record_every})"
        )
    if isinstance(start_step, (int, np.integer)) and (
        isinstance(start_step, bool) or start_step < 0
    ):
        raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}")


def finite_below(threshold: float) -> Callable[[PyTree, PyTree], Bool[Array, ""]]:
    """A `healthy(params, losses)` check: every |x| < threshold and every loss finite.

    `|x| < threshold` is False for NaN and ±inf too: one fused pass per leaf.
    """

    def healthy(params, losses):
        small = [jnp.all(jnp.abs(x) < threshold) for x in jax.tree.leaves(params)]
        finite = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(losses)]
        return jnp.all(jnp.stack(small + finite))

    return healthy


def divergence_check(
    threshold: float | None, losses: Callable[[Any], PyTree] = lambda out: out.loss
) -> Callable[[Any, Any], Bool[Array, ""]] | None:
    """The `healthy(state, out)` check of a runner with a `divergence_threshold` argument.

    `state.params` below `threshold` (`finite_below`) and `losses(out)` finite (default: the
    per-step output's `.loss`); None for `threshold=None`, which never checks.
    """
    if threshold is None:
        return None
    check = finite_below(float(threshold))
    return lambda state, out: check(state.params, losses(out))


def state_hook(metrics_fn: Callable[[Any], PyTree] | None):
    """A runner's public `metrics_fn(state)` as `recorded_scan`'s `(state, k)` hook."""
    return None if metrics_fn is None else (lambda state, k: metrics_fn(state))


def recorded_scan(
    step: Callable[[Any, Int[Array, ""]], tuple[Any, Any]],
    state: Any,
    *,
    num_steps: int,
    record_every: int = 1,
    metrics_fn: Callable[[Any, Int[Array, ""]], PyTree] | None = None,
    start_step: int | Int[Array, ""] = 0,
    diverged_step: int | Int[Array, ""] = -1,
    healthy: Callable[[Any, Any], Bool[Array, ""]] | None = None,
) -> RunResult:
    """Apply `step` at steps `start_step … start_step + num_steps − 1` with records.

    Traceable (no host syncs; call it inside `jit` or `vmap`).

    Args:
      step: `(state, k) -> (state, out)` for the integer step index k (int32); `out` is any
        pytree of per-step outputs (or None).
      state: the state before step `start_step`.
      num_steps: K >= 0 steps (static), a multiple of `record_every`.
      record_every: steps between records, >= 1.
      metrics_fn: `(state, k) -> pytree`, evaluated before step `start_step` and after
        every `record_every` steps, with k the index of the next step (`steps[r]`); None
        records nothing.
      start_step: the index of the first step (continue a run from its `state`).
      diverged_step: the `diverged_step` of the run being continued (−1: healthy so far).
      healthy: `(state, out) -> bool`; None never checks (and never undoes a block). It is
        called once per block on the block's final state and the stacked outputs of its
        steps (so it must reduce over a leading steps axis of `out`), and per step only when
        the block failed (module docstring).

    Returns:
      A `RunResult`.
    """
    check_steps(num_steps, record_every, start_step)
    num_blocks = num_steps // record_every
    start = jnp.asarray(start_step, jnp.int32)
    record = (lambda s, k: None) if metrics_fn is None else metrics_fn

    def checked_step(carry, k):
        s, first_bad = carry
        s, out = step(s, k)
        first_bad = jnp.where((first_bad < 0) & ~healthy(s, out), k, first_bad)
        return (s, first_bad), None

    def plain_step(s, k):
        return step(s, k)

    def block(carry, r):
        s, diverged_at = carry
        ks = start + r * record_every + jnp.arange(record_every, dtype=jnp.int32)
        new, outs = jax.lax.scan(plain_step, s, ks)
        if healthy is not None:
            ok = healthy(new, outs)

            def first_bad_step():
                # Replays the block with the per-step check: the exact first bad step.
                no_bad = jnp.array(-1, jnp.int32)
                return jax.lax.scan(checked_step, (s, no_bad), ks)[0][1]

            first_bad = jax.lax.cond(ok, lambda: jnp.array(-1, jnp.int32), first_bad_step)
            # A block that went bad is undone as a whole: the state stays at the last
            # healthy record (one select per block, not per step).
            new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, s)
            diverged_at = jnp.where((diverged_at < 0) & ~ok, first_bad, diverged_at)
        return (new, diverged_at), (outs, record(new, start + (r + 1) * record_every))

    first = record(state, start)
    carry = (state, jnp.asarray(diverged_step, jnp.int32))
    blocks = jnp.arange(num_blocks, dtype=jnp.int32)
    (state, diverged_at), (outs, rest) = jax.lax.scan(block, carry, blocks)
    metrics = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    trace = jax.tree.map(lambda a: a.reshape((num_steps,) + a.shape[2:]), outs)
    steps = start + jnp.arange(num_blocks + 1, dtype=jnp.int32) * record_every
    return RunResult(state, steps, metrics, trace, diverged_at)
