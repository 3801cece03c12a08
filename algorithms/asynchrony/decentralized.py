"""Decentralized asynchronous SGD (DASGD) and gossip averaging with delayed neighbour views.

DASGD (Tosi & Theobald, "Convergence Analysis of Decentralized ASGD"): K replicas x_r, no
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
from jax.typing import ArrayLike

from algorithms.asynchrony.delays import DelayModel

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


def _check_replicas(num_replicas: int) -> int:
    if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an integer >= 1, got {num_replicas!r}")
    return int(num_replicas)


def topology(name: str, num_replicas: int) -> np.ndarray:
    """The symmetric adjacency matrix (bool `(K, K)`, no self-loops) of a named topology.

    - "ring": i ~ i ± 1 (mod K);
    - "torus": a 2-D wrap-around grid of r × (K/r) nodes, r the largest divisor of K <= √K;
    - "exponential": i ~ i ± 2^m (mod K) for 2^m < K;
    - "complete": all pairs.
    """
    if name not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {TOPOLOGIES}, got {name!r}")
    k = _check_replicas(num_replicas)
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


def metropolis_weights(adjacency: ArrayLike) -> np.ndarray:
    """Metropolis–Hastings mixing matrix: W_ij = 1/(1 + max(deg_i, deg_j)) on edges, W_ii the
    rest. Symmetric and doubly stochastic for any undirected graph."""
    adj = np.asarray(adjacency, dtype=bool)
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or np.any(adj != adj.T):
        raise ValueError(f"adjacency must be a symmetric square matrix, got shape {adj.shape}")
    deg = adj.sum(axis=1)
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
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

    params: object
    inbox: object
    arrival: jax.Array
    applied: jax.Array
    step: jax.Array


def dasgd_init(params, num_replicas: int, delay: DelayModel) -> DASGDState:
    """K replicas all starting at `params` (one model, no agent axis), empty inbox."""
    k = _check_replicas(num_replicas)
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
    grad_fn: Callable,
    delay: DelayModel,
    learning_rate: ArrayLike,
    generate: bool = True,
) -> tuple[DASGDState, tuple[jax.Array, jax.Array]]:
    """One DASGD step; returns the new state and `(losses (K,), S (K, K))` after the step.

    `generate=False` computes no new gradient (drains in-flight messages).
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
    params = jax.tree.map(
        lambda p, box: (p - learning_rate * box[current]).astype(p.dtype), state.params, inbox
    )
    inbox = jax.tree.map(lambda box: box.at[current].set(0.0), inbox)
    staleness = _pairwise_staleness(arrival, step)
    new_state = DASGDState(params, inbox, arrival, state.applied + due, step + 1)
    return new_state, (losses, staleness)


class DASGDTrace(NamedTuple):
    """Per step: `loss` (K,) at each replica (NaN while draining), `staleness_mean` and
    `staleness_max` of S_ij over i ≠ j, and `record(state)`."""

    loss: jax.Array
    staleness_mean: jax.Array
    staleness_max: jax.Array
    record: object


def run_dasgd(
    grad_fn: Callable,
    params,
    key: jax.Array,
    *,
    num_replicas: int,
    delay: DelayModel,
    learning_rate: ArrayLike,
    num_steps: int,
    drain: bool = False,
    record: Callable[[DASGDState], object] | None = None,
) -> tuple[DASGDState, DASGDTrace]:
    """Run `num_steps` DASGD steps (then D drain steps without new gradients if `drain`).

    Args:
      grad_fn: `grad_fn(x, key) -> (loss, grad)` for one replica.
      params: x_0, shared by all replicas (no agent axis).
      key: PRNG key.
      num_replicas: K >= 1.
      delay: message delay distribution on {0…D} (steps).
      learning_rate: η applied to every gradient (η_sync/K matches all-reduce SGD at delay 0).
      num_steps: steps with new gradients (static).
      drain: append D steps that only deliver in-flight messages.
      record: optional `record(state) -> pytree` per step.

    Returns:
      `(final_state, DASGDTrace)`; S_avg = `trace.staleness_mean[:num_steps].mean()`,
      S_max = `trace.staleness_max.max()`.
    """
    k = _check_replicas(num_replicas)
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    state = dasgd_init(params, k, delay)
    off = ~jnp.eye(k, dtype=bool)

    def make_body(generate):
        def body(state, i):
            state, (losses, s) = dasgd_step(
                state,
                jr.fold_in(key, i),
                grad_fn=grad_fn,
                delay=delay,
                learning_rate=learning_rate,
                generate=generate,
            )
            s_mean = jnp.sum(jnp.where(off, s, 0)) / max(k * (k - 1), 1)
            s_max = jnp.max(jnp.where(off, s, 0))
            out = (losses, s_mean, s_max, None if record is None else record(state))
            return state, out

        return body

    state, out = jax.lax.scan(make_body(True), state, jnp.arange(num_steps))
    if drain and delay.tau_max > 0:
        state, out2 = jax.lax.scan(
            make_body(False), state, jnp.arange(num_steps, num_steps + delay.tau_max)
        )
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, out2)
    return state, DASGDTrace(*out)


class GossipState(NamedTuple):
    """Gossip state: `params` (leaves `(K, ...)`), `history` of the last D + 1 iterates
    (leaves `(D + 1, K, ...)`, slot = step mod (D + 1)), `step`."""

    params: object
    history: object
    step: jax.Array


def gossip_init(params, num_replicas: int, delay: DelayModel) -> GossipState:
    """K replicas at `params`; the history is filled with x_0 (views before 0 see x_0)."""
    k = _check_replicas(num_replicas)
    size = delay.tau_max + 1
    replicas = jax.tree.map(lambda p: jnp.broadcast_to(p, (k,) + jnp.shape(p)), params)
    history = jax.tree.map(lambda p: jnp.broadcast_to(p, (size,) + jnp.shape(p)), replicas)
    return GossipState(replicas, history, jnp.zeros((), jnp.int32))


def gossip_step(
    state: GossipState,
    key: jax.Array,
    *,
    grad_fn: Callable,
    mixing: jax.Array,
    delay: DelayModel,
    learning_rate: ArrayLike,
) -> tuple[GossipState, tuple[jax.Array, jax.Array]]:
    """x_i ← Σ_j W_ij x_j(k − d_ij) − η g_i(x_i); returns `(losses (K,), mean view delay)`."""
    size = jax.tree.leaves(state.history)[0].shape[0]
    k = mixing.shape[0]
    key_grad, key_delay = jr.split(key)
    losses, grads = jax.vmap(grad_fn)(state.params, jr.split(key_grad, k))
    d = _draw_delays(delay, key_delay, k)  # (i viewer, j viewed)
    slot = (state.step - d) % size
    cols = jnp.broadcast_to(jnp.arange(k)[None, :], (k, k))
    params = jax.tree.map(
        lambda h, g: (
            jnp.einsum("ij,ij...->i...", mixing.astype(h.dtype), h[slot, cols]) - learning_rate * g
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
    """Per step: `loss` (K,), `view_delay` (mean delay of the neighbour views used), `record`."""

    loss: jax.Array
    view_delay: jax.Array
    record: object


def run_gossip(
    grad_fn: Callable,
    params,
    key: jax.Array,
    *,
    mixing: ArrayLike,
    delay: DelayModel,
    learning_rate: ArrayLike,
    num_steps: int,
    record: Callable[[GossipState], object] | None = None,
) -> tuple[GossipState, GossipTrace]:
    """Run `num_steps` of gossip SGD with delayed neighbour views.

    Args:
      grad_fn: `grad_fn(x, key) -> (loss, grad)` for one replica.
      params: x_0 shared by all replicas (no agent axis).
      key: PRNG key.
      mixing: W, `(K, K)` doubly stochastic (e.g. `metropolis_weights(topology(...))`).
      delay: view delay distribution on {0…D} (steps).
      learning_rate: η > 0.
      num_steps: steps (static).
      record: optional `record(state) -> pytree` per step.
    """
    mixing = np.asarray(mixing, dtype=float)
    if mixing.ndim != 2 or mixing.shape[0] != mixing.shape[1]:
        raise ValueError(f"mixing must be a square matrix, got shape {mixing.shape}")
    if not np.allclose(mixing.sum(axis=1), 1.0) or np.any(mixing < 0):
        raise ValueError("mixing must be non-negative with rows summing to 1")
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    w = jnp.asarray(mixing)
    state = gossip_init(params, mixing.shape[0], delay)

    def body(state, i):
        state, (losses, view_delay) = gossip_step(
            state,
            jr.fold_in(key, i),
            grad_fn=grad_fn,
            mixing=w,
            delay=delay,
            learning_rate=learning_rate,
        )
        return state, (losses, view_delay, None if record is None else record(state))

    state, out = jax.lax.scan(body, state, jnp.arange(num_steps))
    return state, GossipTrace(*out)
