"""The multi-agent runner: `lax.scan` over steps with metrics recorded every k steps.

One compiled loop: no host syncs inside, metrics accumulated in fixed-shape arrays, and
divergence (a non-finite parameter or loss) detected and recorded with its step. After a
divergence the state is frozen at the last finite values, so the recorded metrics never
contain the NaNs of the blow-up; `diverged_step` says when it happened.
"""

from __future__ import annotations

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
    return _run(
        optimizer, params, opt_state, oracle, int(num_steps), key, int(record_every),
        metrics_fn, float(divergence_threshold), int(start_step), int(diverged_step),
    )  # fmt: skip


def _run(
    optimizer, params, opt_state, oracle, num_steps, key, record_every, metrics_fn, threshold,
    start_step, diverged_step,
):  # fmt: skip
    @jax.jit
    def go(params, opt_state, key):
        def healthy(p, losses):
            small = jnp.all(
                jnp.stack([jnp.all(jnp.abs(x) < threshold) for x in jax.tree.leaves(p)])
            )
            return tree_all_finite(p) & jnp.all(jnp.isfinite(losses)) & small

        def step(carry, k):
            params, opt_state, diverged_at = carry
            losses, grads = oracle(params, key, k)
            updates, new_state = optimizer.update(grads, opt_state, params, losses=losses)
            new_params = optax.apply_updates(params, updates)
            ok = healthy(new_params, losses) & (diverged_at < 0)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
            diverged_at = jnp.where((diverged_at < 0) & ~ok, k, diverged_at)
            return (keep(new_params, params), keep(new_state, opt_state), diverged_at), None

        def record(carry, r):
            params, opt_state, _ = carry
            losses, _ = oracle(params, key, start_step + r * record_every)
            return metrics_fn(params, opt_state, losses)

        def block(carry, r):
            ks = (start_step + r * record_every + jnp.arange(record_every)).astype(jnp.int32)
            carry, _ = jax.lax.scan(step, carry, ks)
            return carry, record(carry, r + 1)

        carry = (params, opt_state, jnp.array(diverged_step, jnp.int32))
        first = record(carry, 0)
        n_blocks = num_steps // record_every
        carry, rest = jax.lax.scan(block, carry, jnp.arange(n_blocks, dtype=jnp.int32))
        metrics = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
        steps = start_step + jnp.arange(n_blocks + 1) * record_every
        return RunResult(carry[0], carry[1], steps, metrics, carry[2])

    return go(params, opt_state, key)
