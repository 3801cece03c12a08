"""Coupling rules: one vector field on (agents, auxiliary state), used by both forms.

A rule contributes a force `F_i(x, aux, ℓ)` to each agent's drift and gives the auxiliary
state its own dynamics `d aux/dt = A(x, aux, ℓ, ∇f)`. The first-order coupled system is

    dx_i = [−η ∇f(x_i) + F_i(x, aux, ℓ)] dt + σ(x_i) dW_i,    d aux = A(x, aux, ℓ, ∇f) dt,

and the heavy-ball system (`CoupledSystem(damping=γ)`) puts the same force on the velocity:
`dx_i = v_i dt`, `dv_i = [−γ v_i − η ∇f(x_i) + F_i] dt + σ dW_i`. Time is continuous time `t`
(units of time, not steps); the discrete form (`algorithms.coupling.add_coupling_force`)
takes Euler steps of it.

Rules act on pytrees whose every leaf carries the agent axis first (`(N, ...)`): an array
`(N, dim)` for landscapes, stacked Flax parameters for networks. Collective terms are
reductions over axis 0, so they become all-reduces when that axis is sharded.

Normalization: all-to-all coupling is `k (x̄ − x_i)` (not `k Σ_j (x_j − x_i) = kN (x̄ − x_i)`).
The quorum variable's pull is a sum `k_z Σ_i (x_i − z)` by default, or the mean
`k_z (x̄ − z)` with `Quorum(..., quorum_pull="mean")`.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .types import GradientField, PyTree

__all__ = [
    "AbstractCoupling",
    "Uncoupled",
    "MeanField",
    "Quorum",
    "elastic",
    "QUORUM_PULLS",
    "check_quorum_pull",
    "agent_mean",
    "toward",
    "tree_zeros_like",
]


def agent_mean(params: PyTree) -> PyTree:
    """The spatial mean `x̄ = mean_i x_i` (the agent axis 0 reduced away)."""
    return jax.tree.map(lambda leaf: jnp.mean(leaf, axis=0), params)


def toward(target: PyTree, params: PyTree, gain) -> PyTree:
    """`gain · (target − x_i)` for every agent; `target` has no agent axis.

    `gain` is a scalar or an `(N,)` vector of per-agent gains.
    """

    def one(t, leaf):
        g = jnp.asarray(gain)
        g = g.reshape(g.shape + (1,) * (leaf.ndim - g.ndim)) if g.ndim else g
        return g * (t[None] - leaf)

    return jax.tree.map(one, target, params)


def tree_zeros_like(tree: PyTree) -> PyTree:
    """Zeros with the structure, shapes and dtypes of `tree`."""
    return jax.tree.map(jnp.zeros_like, tree)


def _nonnegative(name: str, value):
    """Check a gain >= 0. Traced values (a gain swept under `vmap`) pass unchecked."""
    if isinstance(value, jax.core.Tracer):
        return value
    v = np.asarray(value, dtype=float)
    if v.ndim or not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(v)


class AbstractCoupling(eqx.Module):
    """A coupling rule: the force `F_i` on each agent and the auxiliary dynamics `A`.

    To write a new rule, subclass and implement `force`; rules with auxiliary state also
    override `init` (its initial value from the agents' initial parameters) and `aux_drift`.
    Set the class attribute `needs_losses = True` if the rule reads the agents' losses
    `ℓ = (f(x_1), …, f(x_N))`, and `needs_aux_gradient = True` if `aux_drift` calls `grad_fn`.
    """

    needs_losses: ClassVar[bool] = False
    needs_aux_gradient: ClassVar[bool] = False

    def init(self, params: PyTree) -> PyTree:
        """Initial auxiliary state from the agents' initial parameters. Default: none (`None`)."""
        del params
        return None

    @abc.abstractmethod
    def force(self, params: PyTree, aux: PyTree, losses: jax.Array | None) -> PyTree:
        """`F_i(x, aux, ℓ)`: same structure and shapes as `params` (agent axis first)."""

    def aux_drift(
        self, params: PyTree, aux: PyTree, losses: jax.Array | None, grad_fn: GradientField | None
    ) -> PyTree:
        """`d aux / dt`, same structure as `aux`. `grad_fn` is ∇f for one agent's parameters."""
        del params, losses, grad_fn
        return tree_zeros_like(aux)


class Uncoupled(AbstractCoupling):
    """No coupling: N independent SGD runs (`F_i = 0`)."""

    def force(self, params, aux, losses):
        del aux, losses
        return tree_zeros_like(params)


class MeanField(AbstractCoupling):
    """All-to-all coupling through the spatial mean: `F_i = k (x̄ − x_i)`, k >= 0.

    The gain is a pytree leaf, so it can be swept under `jax.vmap` without recompiling.
    """

    gain: float | jax.Array

    def __init__(self, gain: float):
        self.gain = _nonnegative("gain (k)", gain)

    def force(self, params, aux, losses):
        del aux, losses
        return toward(agent_mean(params), params, self.gain)


QUORUM_PULLS = ("sum", "mean")


class Quorum(AbstractCoupling):
    """Quorum sensing with a quorum variable z that has its own dynamics.

        F_i = k (z − x_i),        dz/dt = g(z) + k_z Σ_i (x_i − z),   g(z) = −η_z ∇f(z)

    (`quorum_pull="sum"`, the default), or with the mean-normalized pull
    (`quorum_pull="mean"`)

        dz/dt = g(z) + k_z (x̄ − z) = g(z) + (k_z / N) Σ_i (x_i − z).

    `center_gradient_scale = η_z = 0` gives `g = 0` (EASGD's center); `k_z → ∞` recovers
    all-to-all coupling. z starts at the agents' spatial mean.

    The normalization sets how z's relaxation rate toward x̄ depends on N: `N k_z` for the
    sum (EASGD's `x̃ ← x̃ + α Σ_i (x_i − x̃)` is this form), `k_z` for the mean. With the mean
    pull (and a linear g) the drift of (x̄, z) does not depend on N while the noise of x̄
    falls as 1/√N, so near x* the stationary E‖x̄ − x*‖² scales exactly as 1/N; with the sum
    it does not (the stationary Var(x̄) of a quadratic carries the factor
    `(ηa + N k_z)/(ηa + N k_z + k)`, `theory.quorum_mean_variance`). The two forms are the
    same model at `k_z^mean = N k_z^sum`.

    Args:
        gain: k >= 0, the pull of z on each agent (1/time).
        quorum_gain: k_z >= 0, the pull of each agent on z (1/time).
        center_gradient_scale: η_z >= 0; if > 0, z also descends the loss (needs ∇f at z).
            Note that z then descends the exact, noise-free ∇f(z): the agents' noise never
            enters z's own gradient.
        quorum_pull: "sum" (`k_z Σ_i (x_i − z)`, default) or "mean" (`k_z (x̄ − z)`).

    The gains are pytree leaves (sweepable under `jax.vmap`); η_z and the pull are static.
    """

    gain: float | jax.Array
    quorum_gain: float | jax.Array
    center_gradient_scale: float = eqx.field(static=True)
    quorum_pull: str = eqx.field(static=True)

    def __init__(
        self,
        gain: float,
        quorum_gain: float,
        center_gradient_scale: float = 0.0,
        quorum_pull: str = "sum",
    ):
        self.gain = _nonnegative("gain (k)", gain)
        self.quorum_gain = _nonnegative("quorum_gain (k_z)", quorum_gain)
        self.center_gradient_scale = _nonnegative(
            "center_gradient_scale (η_z)", center_gradient_scale
        )
        self.quorum_pull = check_quorum_pull(quorum_pull)

    @property
    def needs_aux_gradient(self) -> bool:  # type: ignore[override]
        return self.center_gradient_scale > 0

    def init(self, params):
        return agent_mean(params)

    def force(self, params, aux, losses):
        del losses
        return toward(aux, params, self.gain)

    def aux_drift(self, params, aux, losses, grad_fn):
        del losses
        reduce = jnp.sum if self.quorum_pull == "sum" else jnp.mean
        pull = jax.tree.map(
            lambda leaf, z: self.quorum_gain * reduce(leaf - z[None], axis=0), params, aux
        )
        if self.center_gradient_scale == 0:
            return pull
        if grad_fn is None:
            raise ValueError("Quorum with center_gradient_scale > 0 needs the gradient at z")
        return jax.tree.map(lambda p, g: p - self.center_gradient_scale * g, pull, grad_fn(aux))


def check_quorum_pull(quorum_pull: str) -> str:
    """Validate the quorum variable's pull normalization: "sum" or "mean"."""
    if quorum_pull not in QUORUM_PULLS:
        raise ValueError(f"quorum_pull must be one of {QUORUM_PULLS}, got {quorum_pull!r}")
    return quorum_pull


def elastic(rho: float, quorum_pull: str = "sum") -> Quorum:
    """EASGD's elastic coupling: the quorum model with `g = 0` and `k = k_z = ρ` (ρ >= 0).

    Its Euler step with step `η` is synchronous EASGD with `α = ηρ` (Zhang, Choromanska,
    LeCun 2015, "Deep learning with Elastic Averaging SGD", arXiv 1412.6651); that is the
    default `quorum_pull="sum"`, `x̃ ← x̃ + α Σ_i (x_i − x̃)`. `quorum_pull="mean"` is a
    variant (not the paper's) whose center moves by `α (x̄ − x̃)`, as if ρ_z = ρ/N.
    """
    return Quorum(gain=rho, quorum_gain=rho, quorum_pull=quorum_pull)
