"""The multi-agent runner with stale gradients: the discrete form of `dynamics.delay`.

`run_delayed_agents` is `algorithms.runner.run_agents` with a gradient delay d_g (steps): a
ring buffer of the last D_g + 1 parameters, and at step k

    losses_k, _ = oracle(x_k, key, k)               (the current losses, for the optimizer)
    _, g_k     = oracle(x̃_k, key, k),   x̃_{k,i} = x_{k − d_g[i], i}   (stale, x_{j<0} = x_0)
    x_{k+1}    = x_k + optimizer.update(g_k, state, x_k, losses=losses_k)

so the gradient of step k is the oracle's at each agent's stale parameters with the *current*
step's randomness (`sde_matched_oracle`: `∇f(x_{k−d}) + σ n_k`, i.e. the SDE's
`∇f(x(t − τ_g)) dt + σ dW(t)`). With a constant gradient delay 0 the oracle is called once,
and the run is `run_agents`'. Random delays are drawn per agent and step from `delay_key` with
the stream of `dynamics.delay` (`Delay.draw(delay_key, k, N, GRADIENT_STREAM)`), the one
`solve_delayed` draws, so with `euler_optimizer(DelayedSystem, h, delay_key=…)` and the same
keys the iterates equal `solve_delayed`'s Euler–Maruyama path (`solve_discrete` runs exactly
this). Memory: the buffer holds D_g + 1 copies of the parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import optax

from dynamics.delay import History, as_delay, history_init, history_push, read_stale
from dynamics.types import Oracle, PyTree

from .loop import RunResult, check_steps, finite_below, recorded_scan, state_hook

__all__ = ["DelayedAgentState", "run_delayed_agents"]


class DelayedAgentState(NamedTuple):
    """State of the delayed runner: `params` x_k, `opt_state`, and the `history` of the last
    D_g + 1 parameters (a `dynamics.delay.History`, leaves `(D_g + 1, N, …)`)."""

    params: PyTree
    opt_state: PyTree
    history: History


def run_delayed_agents(
    optimizer: optax.GradientTransformation,
    params: PyTree,
    oracle: Oracle,
    *,
    num_steps: int,
    key: jax.Array,
    gradient_delay=0,
    delay_key: jax.Array | None = None,
    record_every: int = 1,
    metrics_fn: Callable[[DelayedAgentState], PyTree] | None = None,
    divergence_threshold: float = 1e12,
    opt_state: PyTree | None = None,
    state: DelayedAgentState | None = None,
    start_step: int = 0,
    diverged_step: int = -1,
) -> RunResult:
    """Run `optimizer` on N stacked agents whose gradients are d_g steps stale.

    Args:
        optimizer: any Optax transform over stacked params (extra arg `losses`).
        params: x_0, every leaf with the agent axis N first (the history before step 0).
        oracle: `(params, key, step) -> (losses (N,), grads)`.
        num_steps: number of steps K (a multiple of `record_every`).
        key: PRNG key of the oracle, passed at every step (it folds in k).
        gradient_delay: d_g in steps: an int >= 0 or a delay distribution (`DelayModel`, any
            object with `probs`; see `dynamics.delay.as_delay`), random per agent and step.
        delay_key: PRNG key of random delays (required iff `gradient_delay` is random).
        record_every: steps between records.
        metrics_fn: `(state) -> pytree` with `state` a `DelayedAgentState`; default records
            `{"params": …}`.
        divergence_threshold: a parameter with |x| above this (or a non-finite loss) counts
            as diverged (`algorithms.loop` conventions).
        opt_state: initial optimizer state (default `optimizer.init(params)`).
        state, start_step, diverged_step: continue an earlier run from its `result.state`,
            the index of its next step and its `diverged_step`.

    Returns:
        A `RunResult` whose `state` is a `DelayedAgentState`; the per-step trace is the
        current losses `(K, N)`. Not sharded (no `mesh`).
    """
    check_steps(num_steps, record_every, start_step, min_steps=1)
    delay = as_delay(gradient_delay, "gradient_delay")
    if delay.is_random and delay_key is None:
        raise ValueError("delay_key is required for a random gradient delay")
    optimizer = optax.with_extra_args_support(optimizer)
    if state is None:
        if opt_state is None:
            opt_state = optimizer.init(params)
        state = DelayedAgentState(params, opt_state, history_init(params, delay.max_steps))
    metrics_fn = (lambda s: {"params": s.params}) if metrics_fn is None else metrics_fn
    return _run(
        state, key, delay_key, delay, jax.numpy.int32(start_step), jax.numpy.int32(diverged_step),
        optimizer=optimizer, oracle=oracle, num_steps=int(num_steps),
        record_every=int(record_every), metrics_fn=metrics_fn,
        threshold=float(divergence_threshold),
    )  # fmt: skip


@functools.partial(
    jax.jit,
    static_argnames=(
        "optimizer", "oracle", "num_steps", "record_every", "metrics_fn", "threshold",
    ),
)  # fmt: skip
def _run(
    state, key, delay_key, delay, start_step, diverged_step, *, optimizer, oracle, num_steps,
    record_every, metrics_fn, threshold,
):  # fmt: skip
    healthy = finite_below(threshold)
    fresh = not delay.is_random and delay.max_steps == 0

    def step(state, k):
        stale = read_stale(state.history, state.params, delay, delay_key, k)
        stale_losses, grads = oracle(stale, key, k)
        # The optimizer (e.g. a rule reading ℓ) sees the current losses f(x_k), as the
        # continuous model's ℓ(t); this call's gradients are unused, so XLA drops them.
        losses = stale_losses if fresh else oracle(state.params, key, k)[0]
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, losses=losses)
        params = optax.apply_updates(state.params, updates)
        history = history_push(state.history, params)
        return DelayedAgentState(params, opt_state, history), losses

    return recorded_scan(
        step, state, num_steps=num_steps, record_every=record_every,
        metrics_fn=state_hook(metrics_fn), start_step=start_step, diverged_step=diverged_step,
        healthy=lambda s, losses: healthy(s.params, losses),
    )  # fmt: skip
