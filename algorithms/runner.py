"""The multi-agent runner: `lax.scan` over steps with metrics recorded every k steps.

One compiled loop: no host syncs inside, metrics accumulated in fixed-shape arrays, and
divergence (a non-finite or huge parameter, or a non-finite loss) detected and recorded with
its step. After a divergence the state is frozen at the last healthy record (the block of
`record_every` steps that went bad is undone), so the recorded metrics never contain the
NaNs of the blow-up; `diverged_step` says at which step it happened.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["RunResult", "run_agents", "tree_all_finite"]

PyTree = Any
Oracle = Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, PyTree]]


class RunResult(NamedTuple):
    """Output of `run_agents`.

    `params`, `opt_state`: final values (stacked, agent axis first). `steps` `(R,)`: the step
    index of each record (0, k, 2k, …, num_steps). `metrics`: a dict of arrays with leading
    axis R. `diverged_step`: the first step whose update was non-finite, or −1.
    """

    params: PyTree
    opt_state: PyTree
    steps: jax.Array
    metrics: dict
    diverged_step: jax.Array


def tree_all_finite(tree: PyTree) -> jax.Array:
    """True when every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _default_metrics(params, opt_state, losses):
    del opt_state
    return {"params": params, "losses": losses}


def run_agents(
    optimizer: optax.GradientTransformation,
    params: PyTree,
    oracle: Oracle,
    *,
    num_steps: int,
    key: jax.Array,
    record_every: int = 1,
    metrics_fn: Callable[[PyTree, PyTree, jax.Array], dict] | None = None,
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

    Args:
        optimizer: any Optax transform over stacked params; extra args (`losses`) are
            passed to transforms that take them.
        params: initial parameters, every leaf with the agent axis N first.
        oracle: `(params, key, step) -> (losses (N,), grads)`.
        num_steps: number of steps (a multiple of `record_every`).
        key: PRNG key for the oracle.
        record_every: steps between records; records are taken at steps 0, k, …, num_steps.
        metrics_fn: `(params, opt_state, losses) -> dict of arrays` evaluated at each record
            (`losses` are the oracle's at that step); default records params and losses.
        divergence_threshold: a parameter with |x| above this counts as diverged.
        opt_state, start_step, diverged_step: continue an earlier run (e.g. from a
            checkpoint): its optimizer state, the index of the next step, and its
            `diverged_step`. Running k steps and then n − k more from the saved state gives
            the same numbers as running n steps at once.
        mesh: a mesh with an `"agents"` axis (`algorithms.sharding.agent_mesh`): the agent
            axis is split across its devices and collective terms become all-reduces.
            Default: the mesh of an enclosing `algorithms.sharding.use_agent_mesh(...)` (the
            experiments CLI sets one from `--devices`), used for calls outside `jit`/`vmap`
            when N is divisible by its size. Placement never changes the numbers
            beyond float reassociation.

    Returns:
        A `RunResult` (records have leading axis `num_steps // record_every + 1`).
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if int(record_every) != record_every or record_every < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    if num_steps % record_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a multiple of record_every ({record_every})"
        )
    leaves = jax.tree.leaves(params)
    if not leaves or any(jnp.ndim(leaf) < 1 for leaf in leaves):
        raise ValueError("params must be a pytree of arrays with a leading agent axis")
    n_agents = {jnp.shape(leaf)[0] for leaf in leaves}
    if len(n_agents) != 1 or min(n_agents) < 1:
        raise ValueError(f"all leaves need the same agent axis N >= 1, got sizes {n_agents}")
    metrics_fn = _default_metrics if metrics_fn is None else metrics_fn
    optimizer = optax.with_extra_args_support(optimizer)
    if int(start_step) != start_step or start_step < 0:
        raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}")
    if opt_state is None:
        opt_state = optimizer.init(params)
    params, opt_state, oracle = _place_on_mesh(mesh, params, opt_state, oracle, min(n_agents))
    return _run(
        params, opt_state, key, jnp.int32(start_step), jnp.int32(diverged_step),
        optimizer=optimizer, oracle=oracle, num_steps=int(num_steps),
        record_every=int(record_every), metrics_fn=metrics_fn,
        threshold=float(divergence_threshold),
    )  # fmt: skip


def _place_on_mesh(mesh, params, opt_state, oracle, n_agents):
    from . import sharding  # local import: sharding is optional machinery

    explicit = mesh is not None
    concrete = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params))
    if mesh is None:
        mesh = sharding.current_agent_mesh()
        # Inside jit/vmap, or when N does not split evenly, placement is left to XLA.
        if mesh is None or not concrete or mesh.devices.size == 1:
            return params, opt_state, oracle
        if n_agents % mesh.devices.size:
            return params, opt_state, oracle
    if explicit:
        sharding.check_divisible(n_agents, mesh)
    if concrete:  # under vmap/jit the oracle's constraints do the placement
        params = sharding.shard_agents(params, mesh, num_agents=n_agents)
        opt_state = sharding.shard_agents(opt_state, mesh, num_agents=n_agents)
    return params, opt_state, sharding.sharded_oracle(oracle, mesh)


@functools.partial(
    jax.jit,
    static_argnames=(
        "optimizer", "oracle", "num_steps", "record_every", "metrics_fn", "threshold",
    ),
)  # fmt: skip
def _run(
    params, opt_state, key, start_step, diverged_step, *, optimizer, oracle, num_steps,
    record_every, metrics_fn, threshold,
):  # fmt: skip
    # Compiled once per (optimizer, oracle, metrics_fn, sizes): repeated calls with the same
    # objects, e.g. the segments of a checkpointed run, reuse the executable.

    def healthy(p, losses):
        # |x| < threshold is False for NaN and ±inf too: one fused pass per leaf.
        small = [jnp.all(jnp.abs(x) < threshold) for x in jax.tree.leaves(p)]
        return jnp.all(jnp.stack(small)) & jnp.all(jnp.isfinite(losses))

    def step(carry, k):
        params, opt_state, first_bad = carry
        losses, grads = oracle(params, key, k)
        updates, opt_state = optimizer.update(grads, opt_state, params, losses=losses)
        params = optax.apply_updates(params, updates)
        bad = ~healthy(params, losses)
        first_bad = jnp.where((first_bad < 0) & bad, k, first_bad)
        return (params, opt_state, first_bad), None

    def record(params, opt_state, r):
        losses, _ = oracle(params, key, start_step + r * record_every)
        return metrics_fn(params, opt_state, losses)

    def block(carry, r):
        params, opt_state, diverged_at = carry
        ks = (start_step + r * record_every + jnp.arange(record_every)).astype(jnp.int32)
        no_bad = jnp.array(-1, jnp.int32)
        (new_params, new_state, first_bad), _ = jax.lax.scan(step, (params, opt_state, no_bad), ks)
        # A block that went bad is undone as a whole: the state stays at the last healthy
        # record, so no NaN reaches the metrics (one select per block, not per step).
        ok = first_bad < 0
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
        params, opt_state = keep(new_params, params), keep(new_state, opt_state)
        diverged_at = jnp.where((diverged_at < 0) & ~ok, first_bad, diverged_at)
        return (params, opt_state, diverged_at), record(params, opt_state, r + 1)

    first = record(params, opt_state, 0)
    n_blocks = num_steps // record_every
    carry = (params, opt_state, jnp.asarray(diverged_step, jnp.int32))
    carry, rest = jax.lax.scan(block, carry, jnp.arange(n_blocks, dtype=jnp.int32))
    metrics = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    steps = start_step + jnp.arange(n_blocks + 1) * record_every
    return RunResult(carry[0], carry[1], steps, metrics, carry[2])
