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
from jax.typing import ArrayLike

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
    "DelayedRun",
    "delayed_sgd",
    "divergence_step",
]

GradFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


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

    history: object
    head: jax.Array


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


class DelayedRun(NamedTuple):
    """Result of `delayed_sgd`: final params, per-step losses at the stale iterate, delays.

    `losses[k]` is the loss reported by `grad_fn` at x_{k−τ_k} (sampled mode) or the w-weighted
    loss (mean mode), shape `(num_steps,)`; `staleness[k]` is τ_k (sampled mode; −1 in mean
    mode); `trajectory` is `record(x_{k+1})` stacked over steps, or None.
    """

    params: object
    losses: jax.Array
    staleness: jax.Array
    trajectory: object


def delayed_sgd(
    grad_fn: GradFn,
    params,
    delay: DelayModel,
    learning_rate: ArrayLike,
    num_steps: int,
    key: jax.Array,
    *,
    mode: str = "sample",
    record: Callable | None = None,
    record_every: int = 1,
) -> DelayedRun:
    """Run `x_{k+1} = x_k − η Σ_τ w(τ) g(x_{k−τ})` for `num_steps` server updates.

    Traceable (call it inside `jit`/`vmap`; `delay.probs` and `learning_rate` may be traced).

    Args:
      grad_fn: `grad_fn(x, key) -> (loss, grad)` for one worker; `grad` has the pytree
        structure of `x`.
      params: x_0.
      delay: the delay model p(τ) on {0…τ_max}.
      learning_rate: η > 0 (scalar).
      num_steps: number of server updates K (static).
      key: PRNG key; step k uses `fold_in(key, k)`.
      mode: "sample" (one gradient at a delay τ_k ~ p) or "mean" (w(τ) = p(τ), τ_max + 1
        gradients per step).
      record: optional `record(x) -> pytree` saved after every `record_every` steps.
      record_every: steps between records, >= 1, must divide `num_steps`.

    Returns:
      A `DelayedRun`. Memory O(τ_max × params) for the buffer.
    """
    if mode not in ("sample", "mean"):
        raise ValueError(f"mode must be 'sample' or 'mean', got {mode!r}")
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
        raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}")
    if not isinstance(record_every, (int, np.integer)) or record_every < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    if num_steps % record_every:
        raise ValueError(f"record_every={record_every} must divide num_steps={num_steps}")
    tau_max = delay.tau_max
    buffer = ring_buffer_init(params, tau_max)

    def step(carry, k):
        x, buf = carry
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
        x_new = jax.tree.map(lambda p, d: (p - learning_rate * d).astype(p.dtype), x, direction)
        buf = ring_buffer_push(buf, x_new)
        return (x_new, buf), (loss, tau)

    def chunk(carry, ks):
        carry, out = jax.lax.scan(step, carry, ks)
        return carry, (out, None if record is None else record(carry[0]))

    ks = jnp.arange(num_steps).reshape(num_steps // record_every, record_every)
    (x, _), ((losses, taus), traj) = jax.lax.scan(chunk, (params, buffer), ks)
    return DelayedRun(x, losses.reshape(num_steps), taus.reshape(num_steps), traj)


def divergence_step(values: ArrayLike, threshold: float = 1e6) -> jax.Array:
    """The first index along the last axis where `values` is non-finite or |value| > threshold.

    Returns the length of the last axis where the run never diverged (int, shape `values[..., 0]`).
    """
    v = jnp.asarray(values)
    bad = ~jnp.isfinite(v) | (jnp.abs(v) > threshold)
    n = v.shape[-1]
    return jnp.where(jnp.any(bad, axis=-1), jnp.argmax(bad, axis=-1), n)
