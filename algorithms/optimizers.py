"""Named multi-agent optimizers: thin chains of a coupling transform and a base optimizer.

All act on stacked agent parameters (leading axis N) and expect `params` in `update`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dynamics.coupling import AbstractCoupling, Quorum, agent_mean, elastic

from .coupling import _check_rate, coupling

__all__ = [
    "coupled_sgd",
    "quorum_sgd",
    "momentum_quorum_sgd",
    "easgd",
    "eamsgd",
    "ElasticAveragingState",
    "elastic_averaging",
]


def coupled_sgd(
    rule: AbstractCoupling,
    learning_rate: float,
    momentum: float | None = None,
    nesterov: bool = False,
    aux_gradient_fn: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD on every agent plus the coupling `rule`: `chain(coupling(rule, lr), sgd(lr, β))`.

    Without momentum this is the Euler step h = learning_rate of
    `dx_i = [−∇f(x_i) + F_i] dt` (η = 1); with momentum β the coupling force goes through
    the momentum trace.
    """
    return optax.chain(
        coupling(rule, learning_rate, aux_gradient_fn=aux_gradient_fn),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def quorum_sgd(
    learning_rate: float,
    gain: float,
    quorum_gain: float,
    center_learning_rate: float = 0.0,
    aux_gradient_fn: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Quorum-sensing SGD, the Euler step h = η of the quorum model (PAPERS.md §1).

    `x_i ← x_i − η(g_i − k(z − x_i))`, `z ← z + η(k_z Σ_i (x_i − z) − η_z ∇f(z))`.

    Args:
        learning_rate: η > 0 (the step h of the continuous model with unit gradient weight).
        gain: k >= 0; quorum_gain: k_z >= 0; center_learning_rate: η_z >= 0 (needs
            `aux_gradient_fn`, ∇f for one set of parameters, if > 0).
    """
    rule = Quorum(gain, quorum_gain, center_learning_rate)
    return coupled_sgd(rule, learning_rate, aux_gradient_fn=aux_gradient_fn)


def momentum_quorum_sgd(
    learning_rate: float,
    gain: float,
    quorum_gain: float,
    momentum: float = 0.9,
    center_learning_rate: float = 0.0,
    aux_gradient_fn: Callable[[Any], Any] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Quorum SGD with heavy-ball momentum β on each agent (coupling inside the trace)."""
    rule = Quorum(gain, quorum_gain, center_learning_rate)
    return coupled_sgd(rule, learning_rate, momentum=momentum, aux_gradient_fn=aux_gradient_fn)


def easgd(
    learning_rate: float, rho: float, momentum: float | None = None
) -> optax.GradientTransformationExtraArgs:
    """Synchronous Elastic Averaging SGD (Zhang, Choromanska, LeCun 2015, arXiv 1412.6651).

    `x_i ← x_i − η g_i − α(x_i − x̃)`, `x̃ ← x̃ + α Σ_i (x_i − x̃)` with `α = ηρ`; the center
    x̃ starts at the agents' mean. With N = 1 it is a non-distributed optimizer.
    """
    return coupled_sgd(elastic(rho), learning_rate, momentum=momentum)


class ElasticAveragingState(NamedTuple):
    """State holding the center variable x̃ and the step count."""

    center: Any
    count: jax.Array


def elastic_averaging(alpha: float, period: int = 1) -> optax.GradientTransformation:
    """The elastic step of EASGD applied in parameter space every `period` steps.

    On steps `k ≡ 0 (mod period)` adds `−α(x_i − x̃)` to the incoming parameter updates and
    sets `x̃ ← x̃ + α Σ_i (x_i − x̃)` (both from the pre-update `x`); otherwise passes updates
    through. Chain it after a base optimizer (its updates are parameter deltas).

    Args:
        alpha: α = ηρ in [0, 1].
        period: τ >= 1, steps between elastic updates (communication period).
    """
    a = _check_rate("alpha", alpha, allow_zero=True)
    if a > 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if int(period) != period or period < 1:
        raise ValueError(f"period must be an integer >= 1, got {period!r}")

    def init_fn(params):
        return ElasticAveragingState(agent_mean(params), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("elastic_averaging needs params")
        active = (state.count % period) == 0
        w = jnp.where(active, a, 0.0)
        out = jax.tree.map(lambda u, x, c: u - w * (x - c[None]), updates, params, state.center)
        center = jax.tree.map(
            lambda c, x: c + w * jnp.sum(x - c[None], axis=0), state.center, params
        )
        return out, ElasticAveragingState(center, optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def eamsgd(
    learning_rate: float, rho: float, momentum: float = 0.9, period: int = 1
) -> optax.GradientTransformation:
    """Elastic Averaging Momentum SGD: Nesterov local steps, elastic step every τ steps.

    `chain(sgd(η, momentum=δ, nesterov=True), elastic_averaging(α = ηρ, τ))`.
    """
    return optax.chain(
        optax.sgd(learning_rate, momentum=momentum, nesterov=True),
        elastic_averaging(learning_rate * rho, period),
    )
