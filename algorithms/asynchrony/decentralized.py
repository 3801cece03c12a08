"""Decentralized asynchronous SGD (DASGD) and gossip averaging with delayed neighbour views.

DASGD (Tosi & Theobald, "Convergence Analysis of Decentralized ASGD"): K agents (replicas) x_r, no
server. At every step k each replica computes a gradient on its own replica, applies it at
once, and broadcasts it; replica r applies the gradient that replica s produced at step k at
step k + d_{s→r,k}, with the delay d ~ p(d) on {0…D} drawn per message (d = 0 for s = r).
Within a step, every replica first computes its gradient at x_r, then applies everything due
that step. Every replica applies every gradient exactly once, in different orders:

    x_r ← x_r − η Σ_{(s, t): t + d_{s→r,t} = k} g_s(t).

With all delays 0 and η = η_sync/K this is synchronous all-reduce SGD with the mean gradient.

Staleness between models (Tosi & Theobald): S_{ij}(k) = the number of gradients replica i has
applied that replica j has not. `S_avg` is its mean over steps and ordered pairs i ≠ j,
`S_max` its maximum.

Gossip (an extension, ours): x_i ← Σ_j W_ij x̂_j − η g_i(x_i), with W the Metropolis–Hastings
mixing matrix of a topology (ring, 2-D torus, exponential graph, complete) and x̂_j = x_j at
step k − d_{ij,k} (d_ii = 0), a delayed view of neighbour j.

Units: `k` counts steps; one step = one gradient per replica (K worker steps).
Memory: DASGD keeps an inbox of summed in-flight gradients, O(D × K × params), plus the
arrival table O(D × K²) ints; gossip keeps the last D + 1 iterates, O(D × K × params).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Int

from algorithms.asynchrony.delays import DelayModel
from algorithms.loop import RunResult, check_steps, divergence_check, recorded_scan, state_hook
from dynamics.types import GradFn, PyTree

__all__ = [
    "TOPOLOGIES",
    "topology",
    "metropolis_weights",
    "DASGDState",
    "dasgd_init",
    "dasgd_step",
    "DASGDTrace",
    "run_dasgd",
    "GossipState",
    "gossip_init",
    "gossip_step",
    "GossipTrace",
    "run_gossip",
]

TOPOLOGIES = ("ring", "torus", "exponential", "complete")


def _check_agents(num_agents: int) -> int:
    if not isinstance(num_agents, (int, np.integer)) or num_agents < 1:
        raise ValueError(f"num_agents must be an integer >= 1, got {num_agents!r}")
    return int(num_agents)


def _rate(learning_rate: optax.ScalarOrSchedule, step):
    return learning_rate(step) if callable(learning_rate) else learning_rate


def topology(name: str, num_agents: int) -> np.ndarray:
    """The symmetric adjacency matrix (bool `(K, K)`, no self-loops) of a named topology.

    - "ring": i ~ i ± 1 (mod K);
    - "torus": a 2-D wrap-around grid of r × (K/r) nodes, r the largest divisor of K <= √K;
    - "exponential": i ~ i ± 2^m (mod K) for 2^m < K;
    - "complete": all pairs.
    """
    if name not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES}, got {name!r}")
    k = _check_agents(num_agents)
    adj = np.zeros((k, k), dtype=bool)
    idx = np.arange(k)
    if name == "ring":
        adj[idx, (idx + 1) % k] = True
    elif name == "exponential":
        hop = 1
        while hop < k:
            adj[idx, (idx + hop) % k] = True
            hop *= 2
    elif name == "torus":
        rows = max(r for r in range(1, int(np.sqrt(k)) + 1) if k % r == 0)
        cols = k // rows
        grid = idx.reshape(rows, cols)
        adj[grid.ravel(), np.roll(grid, 1, axis=0).ravel()] = True
        adj[grid.ravel(), np.roll(grid, 1, axis=1).ravel()] = True
    else:
        adj[:] = True
    adj = adj | adj.T
    np.fill_diagonal(adj, False)
    return adj


def metropolis_weights(adjacency: ArrayLike, *, lazy: bool = False) -> np.ndarray:
    """Metropolis–Hastings mixing matrix: W_ij = 1/(1 + max(deg_i, deg_j)) on edges, W_ii the
    rest. Symmetric and doubly stochastic for any undirected graph.

    Its eigenvalues lie in (−1, 1], and on a bipartite graph some are negative: on the 2 × 4
    torus (K = 8) λ_min(W) = −0.5, a mode that flips sign at every mixing step. `lazy=True`
    returns the lazy walk (I + W)/2 instead, whose eigenvalues (1 + λ)/2 lie in [0, 1]: no
    oscillating mode, the same fixed point, and a spectral gap half as large.
    """
    adj = np.asarray(adjacency, dtype=bool)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or np.any(adj != adj.T):
        raise ValueError(f"adjacency must be a symmetric square matrix, got shape {adj.shape}")
    deg = adj.sum(axis=1)
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    if lazy:
        w = 0.5 * (np.eye(adj.shape[0]) + w)
    return w


def _draw_delays(delay: DelayModel, key: jax.Array, k: int) -> jax.Array:
    d = delay.sample(key, (k, k))
    return jnp.where(jnp.eye(k, dtype=bool), 0, d)


class DASGDState(NamedTuple):
    """DASGD state: `params` replicas (leaves `(K, ...)`); `inbox` gradient sums due at each
    of the next D + 1 steps (leaves `(D + 1, K, ...)`, slot = step mod (D + 1)); `arrival`
    (int `(D + 1, K_src, K_dst)`): step at which the gradient generated at step t (slot
    t mod (D + 1)) by src reaches dst (−1: none); `applied` (int `(K,)`): gradients applied per
    replica; `step`."""

    params: PyTree
    inbox: PyTree
    arrival: Int[Array, "slots agents agents"]
    applied: Int[Array, " agents"]
    step: Int[Array, ""]


def dasgd_init(params, num_agents: int, delay: DelayModel) -> DASGDState:
    """K replicas all starting at `params` (one model, no agent axis), empty inbox."""
    k = _check_agents(num_agents)
    size = delay.tau_max + 1
    replicas = jax.tree.map(lambda p: jnp.broadcast_to(p, (k,) + jnp.shape(p)), params)
    inbox = jax.tree.map(lambda p: jnp.zeros((size, k) + jnp.shape(p), p.dtype), params)
    return DASGDState(
        replicas,
        inbox,
        jnp.full((size, k, k), -1, jnp.int32),
        jnp.zeros(k, jnp.int32),
        jnp.zeros((), jnp.int32),
    )


def _pairwise_staleness(arrival: jax.Array, step: jax.Array) -> jax.Array:
    """S_ij = #gradients applied by i and not by j, `(K, K)` (only the last D + 1 steps can
    differ; older ones are applied everywhere)."""
    done = (arrival <= step).astype(jnp.int32)  # (D+1, src, dst)
    return jnp.einsum("lsi,lsj->ij", done, 1 - done)


def dasgd_step(
    state: DASGDState,
    key: jax.Array,
    *,
    grad_fn: GradFn,
    delay: DelayModel,
    learning_rate: optax.ScalarOrSchedule,
    generate: bool = True,
) -> tuple[DASGDState, tuple[jax.Array, jax.Array]]:
    """One DASGD step; returns the new state and `(losses (K,), S (K, K))` after the step.

    `generate=False` computes no new gradient (drains in-flight messages). A schedule
    `learning_rate` is evaluated at the step index `state.step`.
    """
    size = jax.tree.leaves(state.inbox)[0].shape[0]
    k = state.applied.shape[0]
    step = state.step
    key_grad, key_delay = jr.split(key)
    if generate:
        losses, grads = jax.vmap(grad_fn)(state.params, jr.split(key_grad, k))
        d = _draw_delays(delay, key_delay, k)  # (src, dst)
        slot_onehot = (((step + d) % size)[..., None] == jnp.arange(size)[None, None, :]).astype(
            jnp.result_type(float)
        )  # (src, dst, slot)
        inbox = jax.tree.map(
            lambda box, g: box + jnp.einsum("sdl,s...->ld...", slot_onehot.astype(g.dtype), g),
            state.inbox,
            grads,
        )
        arrival = state.arrival.at[step % size].set(step + d)
    else:
        losses = jnp.full((k,), jnp.nan)
        inbox, arrival = state.inbox, state.arrival
    current = step % size
    due = jnp.sum(arrival == step, axis=(0, 1), dtype=jnp.int32)  # (dst,) applied now
    lr = _rate(learning_rate, step)
    params = jax.tree.map(
        lambda p, box: (p - lr * box[current]).astype(p.dtype), state.params, inbox
    )
    inbox = jax.tree.map(lambda box: box.at[current].set(0.0), inbox)
    staleness = _pairwise_staleness(arrival, step)
    new_state = DASGDState(params, inbox, arrival, state.applied + due, step + 1)
    return new_state, (losses, staleness)


class DASGDTrace(NamedTuple):
    """Per step: `loss` (K,) at each replica (NaN while draining), `staleness_mean` and
    `staleness_max` of S_ij over i ≠ j."""

    loss: Float[Array, " agents"]
    staleness_mean: Float[Array, ""]
    staleness_max: Int[Array, ""]


def run_dasgd(
    grad_fn: GradFn,
    params: PyTree,
    key: jax.Array,
    *,
    num_agents: int,
    delay: DelayModel,
    learning_rate: optax.ScalarOrSchedule,
    num_steps: int,
    drain: bool = False,
    metrics_fn: Callable[[DASGDState], PyTree] | None = None,
    record_every: int = 1,
    state: DASGDState | None = None,
    start_step: int = 0,
    diverged_step: int = -1,
    divergence_threshold: float | None = None,
) -> RunResult:
    """Run `num_steps` DASGD steps (then D drain steps without new gradients if `drain`).

    A recorded scan (`algorithms.loop.recorded_scan`): records, divergence and continuation
    follow its conventions.

    Args:
      grad_fn: `grad_fn(x, key) -> (loss, grad)` for one replica.
      params: x_0, shared by all replicas (no agent axis; not used when `state` is given).
      key: PRNG key; step k uses `fold_in(key, k)`.
      num_agents: K >= 1 replicas.
      delay: message delay distribution on {0…D} (steps).
      learning_rate: η applied to every gradient (η_sync/K matches all-reduce SGD at delay
        0), a scalar or an Optax schedule of the step.
      num_steps: steps with new gradients (static), a multiple of `record_every`.
      drain: append D steps that only deliver in-flight messages (D a multiple of
        `record_every`); their records and trace follow the run's.
      metrics_fn: optional `metrics_fn(state) -> pytree` (state a `DASGDState`), recorded at
        `start_step` and after every `record_every` steps.
      record_every: steps between records, >= 1.
      state, start_step, diverged_step: continue an earlier run from its `result.state`, the
        index of its next step and its `diverged_step`.
      divergence_threshold: if given, a step that makes some |x_r| >= threshold or a loss
        non-finite is recorded as `diverged_step` and its block undone; None never checks.

    Returns:
      A `RunResult` with `state` the final `DASGDState` and `trace` a `DASGDTrace` (length
      `num_steps`, + D when draining); S_avg = `trace.staleness_mean[:num_steps].mean()`,
      S_max = `trace.staleness_max.max()`.
    """
    k = _check_agents(num_agents)
    check_steps(num_steps, record_every, start_step)
    drain_steps = delay.tau_max if drain else 0
    if drain_steps % record_every:
        raise ValueError(
            f"the D={drain_steps} drain steps must be a multiple of record_every={record_every}"
        )
    if state is None:
        state = dasgd_init(params, k, delay)
    off = ~jnp.eye(k, dtype=bool)
    record = state_hook(metrics_fn)

    def make_step(generate):
        def step(state, i):
            state, (losses, s) = dasgd_step(
                state, jr.fold_in(key, i), grad_fn=grad_fn, delay=delay,
                learning_rate=learning_rate, generate=generate,
            )  # fmt: skip
            s_mean = jnp.sum(jnp.where(off, s, 0)) / max(k * (k - 1), 1)
            s_max = jnp.max(jnp.where(off, s, 0))
            return state, DASGDTrace(losses, s_mean, s_max)

        return step

    def healthy(check_losses):
        # drain steps compute no gradients, so they have no losses to check
        return divergence_check(
            divergence_threshold, (lambda t: t.loss) if check_losses else (lambda t: ())
        )

    result = recorded_scan(
        make_step(True), state, num_steps=num_steps, record_every=record_every,
        metrics_fn=record, start_step=start_step, diverged_step=diverged_step,
        healthy=healthy(True),
    )  # fmt: skip
    if not drain_steps:
        return result
    drained = recorded_scan(
        make_step(False), result.state, num_steps=drain_steps, record_every=record_every,
        metrics_fn=record, start_step=result.steps[-1], diverged_step=result.diverged_step,
        healthy=healthy(False),
    )  # fmt: skip
    join = lambda a, b: jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)  # noqa: E731
    metrics = jax.tree.map(lambda m: m[1:], drained.metrics)
    return RunResult(
        drained.state, jnp.concatenate([result.steps, drained.steps[1:]]),
        join(result.metrics, metrics), join(result.trace, drained.trace),
        drained.diverged_step,
    )  # fmt: skip


class GossipState(NamedTuple):
    """Gossip state: `params` (leaves `(K, ...)`), `history` of the last D + 1 iterates
    (leaves `(D + 1, K, ...)`, slot = step mod (D + 1)), `step`."""

    params: PyTree
    history: PyTree
    step: Int[Array, ""]


def gossip_init(params, num_agents: int, delay: DelayModel) -> GossipState:
    """K replicas at `params`; the history is filled with x_0 (views before 0 see x_0)."""
    k = _check_agents(num_agents)
    size = delay.tau_max + 1
    replicas = jax.tree.map(lambda p: jnp.broadcast_to(p, (k,) + jnp.shape(p)), params)
    history = jax.tree.map(lambda p: jnp.broadcast_to(p, (size,) + jnp.shape(p)), replicas)
    return GossipState(replicas, history, jnp.zeros((), jnp.int32))


def gossip_step(
    state: GossipState,
    key: jax.Array,
    *,
    grad_fn: GradFn,
    mixing: jax.Array,
    delay: DelayModel,
    learning_rate: optax.ScalarOrSchedule,
) -> tuple[GossipState, tuple[jax.Array, jax.Array]]:
    """x_i ← Σ_j W_ij x_j(k − d_ij) − η_k g_i(x_i); returns `(losses (K,), mean view delay)`.

    A schedule `learning_rate` is evaluated at the step index `state.step`."""
    size = jax.tree.leaves(state.history)[0].shape[0]
    k = mixing.shape[0]
    key_grad, key_delay = jr.split(key)
    losses, grads = jax.vmap(grad_fn)(state.params, jr.split(key_grad, k))
    d = _draw_delays(delay, key_delay, k)  # (i viewer, j viewed)
    slot = (state.step - d) % size
    cols = jnp.broadcast_to(jnp.arange(k)[None, :], (k, k))
    lr = _rate(learning_rate, state.step)
    params = jax.tree.map(
        lambda h, g: (
            jnp.einsum("ij,ij...->i...", mixing.astype(h.dtype), h[slot, cols]) - lr * g
        ).astype(h.dtype),
        state.history,
        grads,
    )
    nxt = (state.step + 1) % size
    history = jax.tree.map(lambda h, p: h.at[nxt].set(p), state.history, params)
    edges = (mixing > 0) & ~jnp.eye(k, dtype=bool)
    mean_delay = jnp.sum(jnp.where(edges, d, 0)) / jnp.maximum(jnp.sum(edges), 1)
    return GossipState(params, history, state.step + 1), (losses, mean_delay)


class GossipTrace(NamedTuple):
    """Per step: `loss` (K,) and `view_delay` (mean delay of the neighbour views used)."""

    loss: Float[Array, " agents"]
    view_delay: Float[Array, ""]


def run_gossip(
    grad_fn: GradFn,
    params: PyTree,
    key: jax.Array,
    *,
    mixing: ArrayLike,
    delay: DelayModel,
    learning_rate: optax.ScalarOrSchedule,
    num_steps: int,
    metrics_fn: Callable[[GossipState], PyTree] | None = None,
    record_every: int = 1,
    state: GossipState | None = None,
    start_step: int = 0,
    diverged_step: int = -1,
    divergence_threshold: float | None = None,
) -> RunResult:
    """Run `num_steps` of gossip SGD with delayed neighbour views.

    A recorded scan (`algorithms.loop.recorded_scan`): records, divergence and continuation
    follow its conventions.

    Args:
      grad_fn: `grad_fn(x, key) -> (loss, grad)` for one replica.
      params: x_0 shared by all replicas (no agent axis; not used when `state` is given).
      key: PRNG key; step k uses `fold_in(key, k)`.
      mixing: W, `(K, K)` doubly stochastic (e.g. `metropolis_weights(topology(...))`);
        checked when concrete. It may be traced (e.g. `vmap` over several topologies in one
        compiled program); a traced W is not checked, so pass a valid one.
      delay: view delay distribution on {0…D} (steps).
      learning_rate: η > 0, a scalar or an Optax schedule of the step.
      num_steps: steps (static), a multiple of `record_every`.
      metrics_fn: optional `metrics_fn(state) -> pytree` (state a `GossipState`), recorded
        at `start_step` and after every `record_every` steps.
      record_every: steps between records, >= 1.
      state, start_step, diverged_step: continue an earlier run from its `result.state`, the
        index of its next step and its `diverged_step`.
      divergence_threshold: if given, a step that makes some |x_i| >= threshold or a loss
        non-finite is recorded as `diverged_step` and its block undone; None never checks.

    Returns:
      A `RunResult` with `state` the final `GossipState` and `trace` a `GossipTrace`.
    """
    if jnp.ndim(mixing) != 2 or jnp.shape(mixing)[0] != jnp.shape(mixing)[1]:
        raise ValueError(f"mixing must be a square matrix, got shape {jnp.shape(mixing)}")
    if not isinstance(mixing, jax.core.Tracer):
        host = np.asarray(mixing, dtype=float)
        if not np.allclose(host.sum(axis=1), 1.0) or np.any(host < 0):
            raise ValueError("mixing must be non-negative with rows summing to 1")
        mixing = host
    check_steps(num_steps, record_every, start_step)
    w = jnp.asarray(mixing)
    if state is None:
        state = gossip_init(params, jnp.shape(mixing)[0], delay)

    def step(state, i):
        state, (losses, view_delay) = gossip_step(
            state, jr.fold_in(key, i), grad_fn=grad_fn, mixing=w, delay=delay,
            learning_rate=learning_rate,
        )  # fmt: skip
        return state, GossipTrace(losses, view_delay)

    return recorded_scan(
        step, state, num_steps=num_steps, record_every=record_every,
        metrics_fn=state_hook(metrics_fn), start_step=start_step, diverged_step=diverged_step,
        healthy=divergence_check(divergence_threshold),
    )  # fmt: skip
