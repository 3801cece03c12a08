"""Delay models and the delayed-iterate recursion with a ring buffer of past parameters.

Asynchronous SGD seen from the server is gradient descent on stale iterates
(Regatti et al., "Distributed SGD Generalizes Well Under Asynchrony"):

    x_{k+1} = x_k − η Σ_τ w(τ) g(x_{k−τ}),

with `k` counted in server updates and `τ` the staleness (delay) in server updates. Two forms
are provided:

- sampled (`mode="sample"`): one gradient per step at a random delay `τ_k ~ p(τ)`, weight 1;
- averaged (`mode="mean"`): the deterministic mixture with `w(τ) = p(τ)`, one gradient per
  delay in the support (`τ_max + 1` gradients per step).

Before the run starts the buffer holds `x_0` everywhere, i.e. `x_{k−τ} = x_0` when `k < τ`.

Memory: the ring buffer stores `τ_max + 1` copies of the parameters, O(τ_max × params).
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

from algorithms.loop import RunResult, check_steps, divergence_check, recorded_scan, state_hook
from dynamics.types import GradFn, PyTree

__all__ = [
    "DelayModel",
    "constant_delay",
    "uniform_delay",
    "geometric_delay",
    "categorical_delay",
    "RingBuffer",
    "ring_buffer_init",
    "ring_buffer_push",
    "ring_buffer_read",
    "DelayedState",
    "DelayedTrace",
    "delayed_sgd",
    "divergence_step",
]


class DelayModel(NamedTuple):
    """A distribution of the delay τ on {0, …, τ_max}: `probs[τ] = P(τ)`, shape `(τ_max + 1,)`.

    Every delay model (constant, uniform, geometric, user-supplied) is represented by its
    probability vector, so models with the same `τ_max` share one compiled program and can be
    passed through `jit`/`vmap` as data.
    """

    probs: jax.Array

    @property
    def tau_max(self) -> int:
        """The largest delay in the support (static: the buffer length minus one)."""
        return int(self.probs.shape[-1]) - 1

    def sample(self, key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
        """Draw delays τ ~ p(τ) (int32, `shape`)."""
        logits = jnp.log(self.probs)
        return jr.categorical(key, logits, shape=shape).astype(jnp.int32)

    def mean(self) -> jax.Array:
        """E[τ]."""
        return jnp.sum(self.probs * jnp.arange(self.probs.shape[-1]))


def _check_tau_max(tau_max: int, name: str = "tau_max") -> int:
    if not isinstance(tau_max, (int, np.integer)) or isinstance(tau_max, bool) or tau_max < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {tau_max!r}")
    return int(tau_max)


def constant_delay(tau: int, tau_max: int | None = None) -> DelayModel:
    """The constant delay τ (a point mass), in a buffer of length `tau_max + 1` (default τ).

    Args:
      tau: the delay, an integer >= 0 (server updates).
      tau_max: buffer size minus one, >= tau; a larger value lets several constant delays share
        one compiled program.
    """
    tau = _check_tau_max(tau, "tau")
    tau_max = tau if tau_max is None else _check_tau_max(tau_max)
    if tau > tau_max:
        raise ValueError(f"tau must be <= tau_max, got tau={tau}, tau_max={tau_max}")
    return DelayModel(jnp.zeros(tau_max + 1).at[tau].set(1.0))


def uniform_delay(tau_max: int) -> DelayModel:
    """The uniform distribution on {0, …, τ_max} (Regatti et al.'s bounded random delay)."""
    tau_max = _check_tau_max(tau_max)
    return DelayModel(jnp.full(tau_max + 1, 1.0 / (tau_max + 1)))


def geometric_delay(p: float, tau_max: int) -> DelayModel:
    """A geometric delay `P(τ) ∝ p (1 − p)^τ`, truncated to {0, …, τ_max} and renormalized.

    Args:
      p: success probability, in (0, 1]; the untruncated mean is (1 − p)/p.
      tau_max: the truncation point, >= 0.
    """
    tau_max = _check_tau_max(tau_max)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    w = p * (1.0 - p) ** np.arange(tau_max + 1)
    return DelayModel(jnp.asarray(w / w.sum()))


def categorical_delay(probs: ArrayLike) -> DelayModel:
    """A user-supplied distribution: `probs[τ] = P(τ)` for τ = 0…len(probs) − 1.

    Args:
      probs: non-negative weights of shape `(τ_max + 1,)`, not all zero; renormalized to sum 1.
    """
    w = np.asarray(probs, dtype=float)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"probs must be a non-empty 1-D array, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"probs must be finite, >= 0 and not all zero, got {w!r}")
    return DelayModel(jnp.asarray(w / w.sum()))


class RingBuffer(NamedTuple):
    """State holding the last `τ_max + 1` iterates; `history` leaves have a leading axis
    `τ_max + 1`, `head` is the slot of the newest iterate x_k."""

    history: PyTree
    head: Int[Array, ""]


def ring_buffer_init(params, tau_max: int) -> RingBuffer:
    """A buffer of length `τ_max + 1` filled with `params` (so x_{−j} = x_0)."""
    tau_max = _check_tau_max(tau_max)
    history = jax.tree.map(lambda p: jnp.broadcast_to(p, (tau_max + 1,) + jnp.shape(p)), params)
    return RingBuffer(history, jnp.zeros((), jnp.int32))


def ring_buffer_push(buffer: RingBuffer, params) -> RingBuffer:
    """Append the new iterate x_{k+1}, overwriting x_{k−τ_max}."""
    size = jax.tree.leaves(buffer.history)[0].shape[0]
    head = (buffer.head + 1) % size
    history = jax.tree.map(lambda h, p: h.at[head].set(p), buffer.history, params)
    return RingBuffer(history, head)


def ring_buffer_read(buffer: RingBuffer, tau: ArrayLike):
    """The iterate x_{k−τ} (0 <= τ <= τ_max; τ may be traced)."""
    size = jax.tree.leaves(buffer.history)[0].shape[0]
    slot = (buffer.head - tau) % size
    return jax.tree.map(lambda h: h[slot], buffer.history)


class DelayedState(NamedTuple):
    """State of the delayed recursion: the iterate `params` x_k and the `buffer` of the last
    `τ_max + 1` iterates."""

    params: PyTree
    buffer: RingBuffer


class DelayedTrace(NamedTuple):
    """Per step k: `loss` reported by `grad_fn` at x_{k−τ_k} (sampled mode) or the w-weighted
    loss (mean mode); `staleness` τ_k (sampled mode; −1 in mean mode)."""

    loss: Float[Array, ""]
    staleness: Int[Array, ""]


def delayed_sgd(
    grad_fn: GradFn,
    params: PyTree,
    delay: DelayModel,
    learning_rate: optax.ScalarOrSchedule,
    num_steps: int,
    key: jax.Array,
    *,
    mode: str = "sample",
    metrics_fn: Callable[[DelayedState], PyTree] | None = None,
    record_every: int = 1,
    state: DelayedState | None = None,
    start_step: int = 0,
    diverged_step: int = -1,
    divergence_threshold: float | None = None,
) -> RunResult:
    """Run `x_{k+1} = x_k − η_k Σ_τ w(τ) g(x_{k−τ})` for `num_steps` server updates.

    Traceable (call it inside `jit`/`vmap`; `delay.probs` and `learning_rate` may be traced).
    A recorded scan (`algorithms.loop.recorded_scan`): records, divergence and continuation
    follow its conventions.

    Args:
      grad_fn: `grad_fn(x, key) -> (loss, grad)` for one worker; `grad` has the pytree
        structure of `x`.
      params: x_0 (not used when `state` is given).
      delay: the delay model p(τ) on {0…τ_max}.
      learning_rate: η > 0, a scalar or an Optax schedule of the step k.
      num_steps: number of server updates K (static).
      key: PRNG key; step k uses `fold_in(key, k)`.
      mode: "sample" (one gradient at a delay τ_k ~ p) or "mean" (w(τ) = p(τ), τ_max + 1
        gradients per step).
      metrics_fn: optional `metrics_fn(state) -> pytree` (state a `DelayedState`), recorded
        at step `start_step` and after every `record_every` steps.
      record_every: steps between records, >= 1, must divide `num_steps`.
      state, start_step, diverged_step: continue an earlier run from its `result.state`,
        the index of its next step and its `diverged_step`.
      divergence_threshold: if given, an update that makes some |x| >= threshold or the
        loss non-finite is recorded as `diverged_step` and its block undone; None (default)
        never checks.

    Returns:
      A `RunResult`: `state` a `DelayedState` (`result.params` = x_K), `trace` a
      `DelayedTrace` of length K, `metrics` with leading axis `K / record_every + 1`.
      Memory O(τ_max × params) for the buffer.
    """
    if mode not in ("sample", "mean"):
        raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
    check_steps(num_steps, record_every, start_step)
    tau_max = delay.tau_max
    if state is None:
        state = DelayedState(params, ring_buffer_init(params, tau_max))

    def step(state, k):
        x, buf = state
        key_k = jr.fold_in(key, k)
        if mode == "sample":
            tau = delay.sample(jr.fold_in(key_k, 0))
            loss, g = grad_fn(ring_buffer_read(buf, tau), jr.fold_in(key_k, 1))
            direction = g
        else:
            taus = jnp.arange(tau_max + 1)
            stale = jax.vmap(lambda t: ring_buffer_read(buf, t))(taus)
            keys = jr.split(jr.fold_in(key_k, 1), tau_max + 1)
            losses, gs = jax.vmap(grad_fn)(stale, keys)
            loss = jnp.sum(delay.probs * losses)
            direction = jax.tree.map(lambda g: jnp.tensordot(delay.probs, g, axes=1), gs)
            tau = jnp.asarray(-1, jnp.int32)
        lr = learning_rate(k) if callable(learning_rate) else learning_rate
        x_new = jax.tree.map(lambda p, d: (p - lr * d).astype(p.dtype), x, direction)
        return DelayedState(x_new, ring_buffer_push(buf, x_new)), DelayedTrace(loss, tau)

    return recorded_scan(
        step, state, num_steps=num_steps, record_every=record_every,
        metrics_fn=state_hook(metrics_fn),
        start_step=start_step, diverged_step=diverged_step,
        healthy=divergence_check(divergence_threshold),
    )  # fmt: skip


def divergence_step(values: ArrayLike, threshold: float = 1e6) -> jax.Array:
    """The first index along the last axis where `values` is non-finite or |value| > threshold.

    Returns −1 where the run never diverged (the `diverged_step` convention of the runners;
    int, shape `values[..., 0]`).
    """
    v = jnp.asarray(values)
    bad = ~jnp.isfinite(v) | (jnp.abs(v) > threshold)
    return jnp.where(jnp.any(bad, axis=-1), jnp.argmax(bad, axis=-1), -1)
