"""Named multi-agent optimizers: thin chains of a coupling transform and a base optimizer.

All act on stacked agent parameters (leading axis N) and expect `params` in `update`. Every
`learning_rate` is what multiplies the gradient in an update (per step) and may be a constant
or an `optax` schedule: each optimizer builds its coupling transform and its base optimizer
from that one object, so the auxiliary state (quorum variable, center) always advances with
the same step as the agents, also when the rate decays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dynamics.coupling import AbstractCoupling, Quorum, agent_mean, elastic
from dynamics.types import GradientField, PyTree

from .coupling import CouplingState, _at, _check_rate, _check_rate_or_schedule, add_coupling_force

__all__ = [
    "coupled_sgd",
    "quorum_sgd",
    "momentum_quorum_sgd",
    "easgd",
    "eamsgd",
    "easgd_center",
    "ElasticAveragingState",
    "elastic_averaging",
]


def coupled_sgd(
    rule: AbstractCoupling,
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    aux_gradient_fn: GradientField | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD on every agent plus the coupling `rule`: `chain(add_coupling_force, sgd(lr, β))`.

    Without momentum, the update `x_i ← x_i − lr (g_i − F_i)`, `aux ← aux + lr A` is the
    Euler step h = lr (time) of the first-order system `dx_i = [−∇f(x_i) + F_i] dt`,
    `d aux = A dt` (gradient scale η = 1), i.e. `CoupledSystem(f, rule)` with
    `euler_optimizer(system, lr)`.

    With momentum β (heavy ball, `nesterov=False`) the coupling force goes through the
    momentum trace: `m ← β m + g − F`, `x ← x − lr m`, `aux ← aux + lr A`. Writing
    `v = −m √lr`, this is exactly
        `v ← v + h(−γ v − ∇f(x) + F)`,   `x ← x + h v` (the new v),   `aux ← aux + h (√lr A)`
    with `h = √lr` and `γ = (1 − β)/√lr`: the semi-implicit Euler step h of the heavy-ball
    system `CoupledSystem(f, rule', damping=γ)` (η = 1, v starting at 0), where `rule'` has its
    auxiliary drift multiplied by √lr. The auxiliary state advances by `lr = h²` per step, not
    h: for `Quorum(k, k_z, η_z)` the continuous rule is `Quorum(k, √lr k_z, √lr η_z)`, so the
    discrete `quorum_gain` is not the continuous k_z. The gain k is the same in both.

    Args:
        rule: the coupling rule (`dynamics.coupling.AbstractCoupling`).
        learning_rate: lr > 0 per step, a constant or an `optax` schedule.
        momentum: β in [0, 1), or None for plain SGD.
        nesterov: Nesterov momentum (then the mapping above does not apply).
        aux_gradient_fn: ∇f for one agent, for rules with `needs_aux_gradient`.
    """
    return optax.chain(
        add_coupling_force(rule, learning_rate, aux_gradient_fn=aux_gradient_fn),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def quorum_sgd(
    learning_rate: optax.ScalarOrSchedule,
    gain: float,
    quorum_gain: float,
    center_gradient_scale: float = 0.0,
    aux_gradient_fn: GradientField | None = None,
    quorum_pull: str = "sum",
) -> optax.GradientTransformationExtraArgs:
    """Quorum-sensing SGD, the Euler step h = lr of the quorum model (docs/papers.md).

    `x_i ← x_i − lr(g_i − k(z − x_i))`, `z ← z + lr(k_z Σ_i (x_i − z) − η_z ∇f(z))`, or with
    `quorum_pull="mean"` `z ← z + lr(k_z (x̄ − z) − η_z ∇f(z))` (see `dynamics.Quorum`).

    Args:
        learning_rate: lr > 0 (the step h of the continuous model with unit gradient scale),
            a constant or an `optax` schedule.
        gain: k >= 0; quorum_gain: k_z >= 0; center_gradient_scale: η_z >= 0 (needs
            `aux_gradient_fn`, ∇f for one set of parameters, if > 0; z then uses the exact
            ∇f(z), an oracle the agents do not have).
        quorum_pull: "sum" (default) or "mean", the normalization of z's pull.
    """
    rule = Quorum(gain, quorum_gain, center_gradient_scale, quorum_pull=quorum_pull)
    return coupled_sgd(rule, learning_rate, aux_gradient_fn=aux_gradient_fn)


def momentum_quorum_sgd(
    learning_rate: optax.ScalarOrSchedule,
    gain: float,
    quorum_gain: float,
    momentum: float = 0.9,
    center_gradient_scale: float = 0.0,
    aux_gradient_fn: GradientField | None = None,
    quorum_pull: str = "sum",
) -> optax.GradientTransformationExtraArgs:
    """Quorum SGD with heavy-ball momentum β on each agent (coupling inside the trace).

    For a constant lr this is the semi-implicit Euler step `h = √lr` of the heavy-ball quorum
    system with damping `γ = (1 − β)/√lr`, gain k, and quorum gain `√lr k_z` (center gradient
    scale `√lr η_z`), with the same `quorum_pull` ("sum" by default, or "mean"): see
    `coupled_sgd`.
    """
    rule = Quorum(gain, quorum_gain, center_gradient_scale, quorum_pull=quorum_pull)
    return coupled_sgd(rule, learning_rate, momentum=momentum, aux_gradient_fn=aux_gradient_fn)


def easgd(
    learning_rate: optax.ScalarOrSchedule,
    rho: float,
    momentum: float | None = None,
    quorum_pull: str = "sum",
) -> optax.GradientTransformationExtraArgs:
    """Synchronous Elastic Averaging SGD (Zhang, Choromanska, LeCun 2015, arXiv 1412.6651).

    `x_i ← x_i − η g_i − α(x_i − x̃)`, `x̃ ← x̃ + α Σ_i (x_i − x̃)` with `α = ηρ` (η the
    learning rate); the center x̃ starts at the agents' mean (read it with `easgd_center`).
    With N = 1 it is a non-distributed optimizer. `quorum_pull="mean"` is a variant, not the
    paper's update: `x̃ ← x̃ + α (x̄ − x̃)` (see `dynamics.coupling.elastic`).
    """
    return coupled_sgd(elastic(rho, quorum_pull=quorum_pull), learning_rate, momentum=momentum)


class ElasticAveragingState(NamedTuple):
    """State holding the center variable x̃ and the step count."""

    center: PyTree
    count: jax.Array


def elastic_averaging(
    alpha: optax.ScalarOrSchedule, period: int = 1
) -> optax.GradientTransformation:
    """The elastic step of EASGD applied in parameter space every `period` steps.

    On steps `k ≡ 0 (mod period)` adds `−α(x_i − x̃)` to the incoming parameter updates and
    sets `x̃ ← x̃ + α Σ_i (x_i − x̃)` (both from the pre-update `x`); otherwise passes updates
    through. Chain it after a base optimizer (its updates are parameter deltas).

    Args:
        alpha: α = ηρ in [0, 1], or a schedule evaluated at this transform's step count.
        period: τ >= 1, steps between elastic updates (communication period).
    """
    if not callable(alpha):
        alpha = _check_rate("alpha", alpha, allow_zero=True)
        if alpha > 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if int(period) != period or period < 1:
        raise ValueError(f"period must be an integer >= 1, got {period!r}")

    def init_fn(params):
        return ElasticAveragingState(agent_mean(params), jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("elastic_averaging needs params")
        active = (state.count % period) == 0
        w = jnp.where(active, _at(alpha, state.count), 0.0)
        out = jax.tree.map(lambda u, x, c: u - w * (x - c[None]), updates, params, state.center)
        center = jax.tree.map(
            lambda c, x: c + w * jnp.sum(x - c[None], axis=0), state.center, params
        )
        return out, ElasticAveragingState(center, optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def eamsgd(
    learning_rate: optax.ScalarOrSchedule, rho: float, momentum: float = 0.9, period: int = 1
) -> optax.GradientTransformation:
    """Elastic Averaging Momentum SGD: Nesterov local steps, elastic step every τ steps.

    `chain(sgd(η, momentum=δ, nesterov=True), elastic_averaging(α = ηρ, τ))`; with a
    schedule η(k), α(k) = η(k) ρ. Read the center with `easgd_center`.
    """
    learning_rate = _check_rate_or_schedule("learning_rate", learning_rate)
    if callable(learning_rate):
        schedule = learning_rate

        def alpha(count):
            return schedule(count) * rho
    else:
        alpha = learning_rate * rho
    return optax.chain(
        optax.sgd(learning_rate, momentum=momentum, nesterov=True),
        elastic_averaging(alpha, period),
    )


def easgd_center(opt_state: PyTree) -> PyTree:
    """The EASGD center x̃ (no agent axis) from the state of `easgd` or `eamsgd`.

    Works for any optimizer state that holds exactly one `CouplingState` (its auxiliary
    variable, e.g. the quorum z of `quorum_sgd`) or one `ElasticAveragingState`.
    """
    kinds = (CouplingState, ElasticAveragingState)
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, kinds))
        if isinstance(s, kinds)
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected one CouplingState or ElasticAveragingState in opt_state, found {len(found)}"
        )
    (state,) = found
    return state.aux if isinstance(state, CouplingState) else state.center
