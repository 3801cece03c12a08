"""Broadcast coupling: rules shaped by each agent's "measure of success", its loss `ℓ_i`.

Boffi & Slotine (docs/papers.md, claim 5) let every agent broadcast a measure of success and
shape the coupling with it. The exact form is not available to us; these three rules are
ours. Each reads the agents' losses `ℓ = (f(x_1), …, f(x_N))` (`needs_losses = True`), so
one rule object gives both the SDE (`dynamics.system.CoupledSystem`, losses from the
landscape) and the optimizer (`algorithms.coupling.add_coupling_force`, losses from the oracle).

- `SuccessWeightedQuorum`: a quorum variable pulled toward the better agents,
  `dz = k_z Σ_i r_i (x_i − z) dt` with `r = N softmax(−β ℓ)`.
- `LossWeightedGains`: per-agent gains `k_i = k r_i`, `r = N softmax(+β ℓ)`, so worse agents
  are pulled harder toward the spatial mean (or a quorum variable).
- `Leader`: every agent is pulled toward the current best agent (a soft arg-min).

Relative weights. All three use relative weights `r_i = N w_i` with `w` a softmax, computed
as `r_i = e_i / mean_j e_j`, `e_i = exp(±β (ℓ_i − ℓ_ref))` (`ℓ_ref` the min or max loss for
stability). They have mean 1 over the agents, and at `β = 0` (or all-equal losses) every
`r_i` is exactly 1.0 in floating point, so each rule then reproduces its plain counterpart
(`Quorum`, `MeanField`) bit for bit, not only to rounding. Losses that are not finite give
non-finite weights; the runner records that as a divergence.

Time is continuous time `t`; gains are in 1/time. The gains and β are pytree leaves, so they
can be swept under `jax.vmap` without recompiling.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .coupling import AbstractCoupling, _nonnegative, agent_mean, toward
from .types import PyTree

__all__ = [
    "success_weights",
    "SuccessWeightedQuorum",
    "LossWeightedGains",
    "Leader",
]


def success_weights(losses: jax.Array, beta) -> jax.Array:
    """Relative weights `r = N softmax(−β ℓ)`, shape `(N,)`, mean 1; larger for lower loss.

    `r_i = e_i / mean_j e_j` with `e_i = exp(−β (ℓ_i − min ℓ))`; `β = 0` gives exactly 1.0
    for every agent. A negative β weights the worse agents up (used by `LossWeightedGains`
    through `success_weights(ℓ, −β)`).

    Args:
        losses: `(N,)` the agents' losses.
        beta: inverse temperature β (1/loss units); a scalar, may be traced.
    """
    losses = jnp.asarray(losses)
    if losses.ndim != 1:
        raise ValueError(f"losses must have shape (N,), got {losses.shape}")
    beta = jnp.asarray(beta, dtype=losses.dtype)
    # Shift by the loss that makes every exponent <= 0 (no overflow for either sign of β).
    reference = jnp.where(beta >= 0, jnp.min(losses), jnp.max(losses))
    e = jnp.exp(-beta * (losses - reference))
    return e / jnp.mean(e)


def _weighted_sum(weights: jax.Array, leaf: jax.Array) -> jax.Array:
    """`Σ_i r_i leaf_i` over the agent axis, `weights` `(N,)` broadcast explicitly."""
    w = weights.reshape(weights.shape + (1,) * (leaf.ndim - 1))
    return jnp.sum(w * leaf, axis=0)


class SuccessWeightedQuorum(AbstractCoupling):
    """Quorum sensing whose quorum variable listens more to the successful agents.

        F_i = k (z − x_i),     dz/dt = k_z Σ_i r_i (x_i − z),     r = N softmax(−β ℓ).

    Since `Σ r_i = N`, `dz/dt = k_z N (x̃ − z)` with `x̃ = Σ_i w_i x_i` the success-weighted
    mean: z relaxes toward the low-loss agents at rate `k_z N`, as plain quorum's z relaxes
    toward x̄. `β = 0` is plain `Quorum(k, k_z)` (g = 0) exactly; `β → ∞` makes z follow the
    best agent. z starts at the agents' spatial mean.

    Args:
        gain: k >= 0, the pull of z on each agent (1/time).
        quorum_gain: k_z >= 0, the pull of each agent on z (1/time).
        beta: β >= 0, inverse temperature of the softmax over losses (1/loss units).
    """

    gain: float | jax.Array
    quorum_gain: float | jax.Array
    beta: float | jax.Array
    needs_losses: ClassVar[bool] = True

    def __init__(self, gain: float, quorum_gain: float, beta: float):
        self.gain = _nonnegative("gain (k)", gain)
        self.quorum_gain = _nonnegative("quorum_gain (k_z)", quorum_gain)
        self.beta = _nonnegative("beta (β)", beta)

    def init(self, params):
        return agent_mean(params)

    def force(self, params, aux, losses):
        del losses
        return toward(aux, params, self.gain)

    def aux_drift(self, params, aux, losses, grad_fn):
        del grad_fn
        if losses is None:
            raise ValueError("SuccessWeightedQuorum needs the agents' losses")
        r = success_weights(losses, self.beta)
        return jax.tree.map(
            lambda leaf, z: self.quorum_gain * _weighted_sum(r, leaf - z[None]), params, aux
        )


class LossWeightedGains(AbstractCoupling):
    """Loss-dependent gains: worse agents are pulled harder toward the group.

        F_i = k_i (c − x_i),     k_i = k h(ℓ)_i,     h(ℓ) = N softmax(+β ℓ),

    with the target `c` the spatial mean x̄ (default) or, given `quorum_gain`, a quorum
    variable z with `dz/dt = k_z Σ_i (x_i − z)`. The gains average to k over the agents
    (`mean_i h_i = 1`), lie in `(0, kN)`, and rise with an agent's loss; `β = 0` gives
    `MeanField(k)` (or `Quorum(k, k_z)`) exactly. Explicit Euler steps h of the discrete
    form need `h k N < 2` in the worst case (one agent far worse than the rest).

    Args:
        gain: k >= 0, the average gain (1/time).
        beta: β >= 0, how strongly the gain rises with the loss (1/loss units).
        quorum_gain: None to pull toward x̄; else k_z >= 0 of a quorum variable z (starts
            at x̄, g = 0).
    """

    gain: float | jax.Array
    beta: float | jax.Array
    quorum_gain: float | jax.Array
    through_quorum: bool = eqx.field(static=True)
    needs_losses: ClassVar[bool] = True

    def __init__(self, gain: float, beta: float, quorum_gain: float | None = None):
        self.gain = _nonnegative("gain (k)", gain)
        self.beta = _nonnegative("beta (β)", beta)
        self.through_quorum = quorum_gain is not None
        self.quorum_gain = 0.0 if quorum_gain is None else _nonnegative("quorum_gain", quorum_gain)

    def gains(self, losses: jax.Array) -> jax.Array:
        """The per-agent gains `k_i = k N softmax(β ℓ)_i`, shape `(N,)`."""
        return self.gain * success_weights(losses, -self.beta)

    def init(self, params):
        return agent_mean(params) if self.through_quorum else None

    def force(self, params, aux, losses):
        if losses is None:
            raise ValueError("LossWeightedGains needs the agents' losses")
        target = aux if self.through_quorum else agent_mean(params)
        return toward(target, params, self.gains(losses))

    def aux_drift(self, params, aux, losses, grad_fn):
        del losses, grad_fn
        if not self.through_quorum:
            return None
        return jax.tree.map(
            lambda leaf, z: self.quorum_gain * jnp.sum(leaf - z[None], axis=0), params, aux
        )


class Leader(AbstractCoupling):
    """Follow the leader: every agent is pulled toward the current best agent.

        F_i = k (x_lead − x_i),     x_lead = Σ_j w_j x_j,     w = softmax(−ℓ / T).

    `temperature = 0` is the hard rule `x_lead = x_{argmin ℓ}` (ties go to the lowest index);
    its vector field jumps when the leader changes, so the SDE has a discontinuous drift
    (Euler–Maruyama still applies, but only at weak order 1/2 near switches, and adaptive
    solvers struggle). A temperature T > 0 (loss units) smooths the switch: `T → ∞` gives
    `MeanField(k)`, and with all-equal losses the soft rule is `MeanField(k)` exactly. The
    leader itself feels no pull (hard rule), so the spatial mean drifts toward the leader.

    Args:
        gain: k >= 0 (1/time).
        temperature: T >= 0 (loss units); 0 for the hard arg-min.
    """

    gain: float | jax.Array
    temperature: float | jax.Array
    hard: bool = eqx.field(static=True)
    needs_losses: ClassVar[bool] = True

    def __init__(self, gain: float, temperature: float = 0.0):
        self.gain = _nonnegative("gain (k)", gain)
        self.temperature = _nonnegative("temperature (T)", temperature)
        self.hard = not isinstance(self.temperature, jax.core.Tracer) and self.temperature == 0.0

    def weights(self, losses: jax.Array) -> jax.Array:
        """The leader weights `w` `(N,)` (sum 1): one-hot of the arg-min, or soft."""
        losses = jnp.asarray(losses)
        if self.hard:
            return jax.nn.one_hot(jnp.argmin(losses), losses.shape[0], dtype=losses.dtype)
        r = success_weights(losses, 1.0 / jnp.asarray(self.temperature, losses.dtype))
        return r / losses.shape[0]

    def leader(self, params: PyTree, losses: jax.Array) -> PyTree:
        """`x_lead`, the (soft) best agent: a pytree without the agent axis."""
        if self.hard:
            best = jnp.argmin(losses)
            return jax.tree.map(lambda leaf: leaf[best], params)
        r = success_weights(losses, 1.0 / jnp.asarray(self.temperature, losses.dtype))
        # mean_j r_j x_j: with r ≡ 1 this is exactly agent_mean (MeanField).
        return jax.tree.map(lambda leaf: _weighted_sum(r, leaf) / leaf.shape[0], params)

    def force(self, params, aux, losses):
        del aux
        if losses is None:
            raise ValueError("Leader needs the agents' losses")
        return toward(self.leader(params, losses), params, self.gain)
