"""The multi-agent runner: N agents, one Optax transform, records every k steps.

`run_agents` is the recorded scan (`algorithms.loop.recorded_scan`) of the step
`losses, grads = oracle(params, key, k)`, `params ← params + optimizer.update(grads, …)`:
one compiled loop, no host syncs inside, metrics accumulated in fixed-shape arrays, and
divergence (a non-finite or huge parameter, or a non-finite loss) recorded with its step.
After a divergence the state is frozen at the last healthy record (the block of
`record_every` steps that went bad is undone), so the recorded metrics never contain the
NaNs of the blow-up; `diverged_step` says at which step it happened.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dynamics.types import Oracle, PyTree

from .loop import RunResult, check_steps, finite_below, recorded_scan

__all__ = ["AgentState", "RunResult", "run_agents"]


class AgentState(NamedTuple):
    """State of the agent runner: stacked `params` (agent axis first) and the `opt_state`."""

    params: PyTree
    opt_state: PyTree


def _default_metrics(params, opt_state, losses):
    del opt_state
    return {"params": params, "losses": losses}


def _takes_losses(metrics_fn: Callable) -> bool:
    """True for the hook form `(params, opt_state, losses)`, False for `(state)`."""
    try:
        inspect.signature(metrics_fn).bind(None)
    except TypeError:
        return True
    return False


def run_agents(
    optimizer: optax.GradientTransformation,
    params: PyTree,
    oracle: Oracle,
    *,
    num_steps: int,
    key: jax.Array,
    record_every: int = 1,
    metrics_fn: Callable[..., PyTree] | None = None,
    divergence_threshold: float = 1e12,
    opt_state: PyTree | None = None,
    start_step: int = 0,
    diverged_step: int = -1,
    mesh: jax.sharding.Mesh | None = None,
) -> RunResult:
    """Run `optimizer` on N stacked agents for `num_steps` steps of `oracle` gradients.

    Each step k: `losses, grads = oracle(params, key, k)`;
    `updates, state = optimizer.update(grads, state, params, losses=losses)`;
    `params = params + updates`. The same `key` is passed at every step: oracles derive
    step k's randomness with `fold_in(key, k)` (as the SDE's Brownian path does).

    Which steps the oracle sees (a contract, so that an oracle reading a table of K
    per-step noise rows knows what it must cover): the updates call it at steps
    `start_step … start_step + num_steps − 1`. A hook in the `(params, opt_state, losses)`
    form (and the default one) also calls it at every record's step k for the losses
    `oracle(params_k, key, k)[0]`, so the last record calls it at step
    `start_step + num_steps`, past the run; only its losses are used there, never its
    gradients (`algorithms.landscape_oracle` with a `noise_table` of K rows returns NaN noise
    past row K − 1 and exact losses, so K = `num_steps` rows suffice). A hook in the
    `(state)` form never calls the oracle.

    Args:
        optimizer: any Optax transform over stacked params; extra args (`losses`) are
            passed to transforms that take them.
        params: initial parameters, every leaf with the agent axis N first.
        oracle: `(params, key, step) -> (losses (N,), grads)`.
        num_steps: number of steps (a multiple of `record_every`).
        key: PRNG key for the oracle.
        record_every: steps between records; records are taken at steps 0, k, …, num_steps.
        metrics_fn: the hook evaluated at each record, in one of two forms: `(state) ->
            pytree` with `state` an `AgentState(params, opt_state)` (the form every runner
            takes), or `(params, opt_state, losses) -> pytree` with the oracle's losses `(N,)`
            at the record's step. Default: records `{"params": …, "losses": …}`.
        divergence_threshold: a parameter with |x| above this counts as diverged.
        opt_state, start_step, diverged_step: continue an earlier run (e.g. from a
            checkpoint): its optimizer state, the index of the next step, and its
            `diverged_step`. Running k steps and then n − k more from the saved state gives
            the same numbers as running n steps at once.
        mesh: a mesh with an `"agents"` axis (`algorithms.sharding.agent_mesh`): the agent
            axis is split across its devices and collective terms become all-reduces.
            Default: the mesh of an enclosing `algorithms.sharding.use_agent_mesh(...)` (the
            experiments CLI sets one from `--devices`), used for calls outside `jit`/`vmap`;
            N must then be a multiple of its device count (a ValueError names both).
            Placement never changes the numbers beyond float reassociation.

    Returns:
        A `RunResult` whose `state` is an `AgentState` (`result.params`,
        `result.opt_state`), records with leading axis `num_steps // record_every + 1`.
    """
    check_steps(num_steps, record_every, start_step, min_steps=1)
    leaves = jax.tree.leaves(params)
    if not leaves or any(jnp.ndim(leaf) < 1 for leaf in leaves):
        raise ValueError("params must be a pytree of arrays with a leading agent axis")
    num_agents = {jnp.shape(leaf)[0] for leaf in leaves}
    if len(num_agents) != 1 or min(num_agents) < 1:
        raise ValueError(f"all leaves need the same agent axis N >= 1, got sizes {num_agents}")
    metrics_fn = _default_metrics if metrics_fn is None else metrics_fn
    optimizer = optax.with_extra_args_support(optimizer)
    if opt_state is None:
        opt_state = optimizer.init(params)
    params, opt_state, oracle = _place_on_mesh(mesh, params, opt_state, oracle, min(num_agents))
    return _run(
        AgentState(params, opt_state), key, jnp.int32(start_step), jnp.int32(diverged_step),
        optimizer=optimizer, oracle=oracle, num_steps=int(num_steps),
        record_every=int(record_every), metrics_fn=metrics_fn,
        takes_losses=_takes_losses(metrics_fn), threshold=float(divergence_threshold),
    )  # fmt: skip


def _place_on_mesh(mesh, params, opt_state, oracle, num_agents):
    from . import sharding  # local import: sharding is optional machinery

    concrete = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params))
    if mesh is None:
        mesh = sharding.current_agent_mesh()
        # Inside jit/vmap placement is left to XLA (the caller placed the inputs).
        if mesh is None or not concrete or mesh.devices.size == 1:
            return params, opt_state, oracle
    # Never a silent fallback to one device: N must split evenly over the mesh.
    sharding.check_divisible(num_agents, mesh)
    if concrete:  # under vmap/jit the oracle's constraints do the placement
        params = sharding.shard_agents(params, mesh, num_agents=num_agents)
        opt_state = sharding.shard_agents(opt_state, mesh, num_agents=num_agents)
    return params, opt_state, sharding.sharded_oracle(oracle, mesh)


@functools.partial(
    jax.jit,
    static_argnames=(
        "optimizer", "oracle", "num_steps", "record_every", "metrics_fn", "takes_losses",
        "threshold",
    ),
)  # fmt: skip
def _run(
    state, key, start_step, diverged_step, *, optimizer, oracle, num_steps, record_every,
    metrics_fn, takes_losses, threshold,
):  # fmt: skip
    # Compiled once per (optimizer, oracle, metrics_fn, sizes): repeated calls with the same
    # objects, e.g. the segments of a checkpointed run, reuse the executable.
    healthy = finite_below(threshold)

    def step(state, k):
        losses, grads = oracle(state.params, key, k)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, losses=losses)
        params = optax.apply_updates(state.params, updates)
        return AgentState(params, opt_state), losses

    def record(state, k):
        if not takes_losses:
            return metrics_fn(state)
        losses, _ = oracle(state.params, key, k)
        return metrics_fn(state.params, state.opt_state, losses)

    return recorded_scan(
        step, state, num_steps=num_steps, record_every=record_every, metrics_fn=record,
        start_step=start_step, diverged_step=diverged_step,
        healthy=lambda s, losses: healthy(s.params, losses),
    )  # fmt: skip
