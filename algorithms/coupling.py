"""Coupling rules as Optax transforms: the Euler step of the rule's vector field.

For a rule with force `F_i(x, aux, ℓ)` and auxiliary dynamics `A` (see `dynamics.coupling`),
`add_coupling_force(rule, step_size=h, gradient_scale=η)` maps gradients to

    u_i = η g_i − F_i(x, aux, ℓ)          (the coupling enters in gradient space,
    aux ← aux + h A(x, aux, ℓ, ∇f)         like weight decay)

so that chaining with `optax.sgd(h)` gives `x_i ← x_i + h(−η g_i + F_i)`: one Euler step of
size h (time units) of the first-order system. Chaining with `heavy_ball(γ, h)` instead gives
the explicit Euler step of the heavy-ball system. Chaining with `optax.sgd(lr, momentum=β)`
puts the coupling force through the momentum trace, as in momentum quorum SGD (see
`algorithms.optimizers.coupled_sgd` for what that iteration equals in continuous time).

The time step relation. The agents advance by `lr · u` per update, where `lr` is the learning
rate of the optimizer chained after, so they take Euler steps of `lr` time units; the
auxiliary state advances by `step_size · A`. The pair is the Euler step of the rule as written
when `step_size = lr` (the named optimizers build both from one learning-rate object). With
`step_size = c · lr` it is the Euler step of the rule whose auxiliary drift is `c · A` (for
`Quorum`: quorum gain `c k_z` and center gradient scale `c η_z`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dynamics.coupling import AbstractCoupling
from dynamics.delay import (
    DelayedSystem,
    History,
    as_delay,
    delayed_coupling,
    history_init,
    history_push,
    read_channel,
)
from dynamics.system import CoupledSystem
from dynamics.types import GradientField, PyTree

__all__ = [
    "CouplingState",
    "DelayedCouplingState",
    "HeavyBallState",
    "add_coupling_force",
    "heavy_ball",
    "euler_optimizer",
]


class CouplingState(NamedTuple):
    """State holding the rule's auxiliary variable (e.g. the quorum z) and the step count."""

    aux: PyTree
    count: jax.Array


class DelayedCouplingState(NamedTuple):
    """`CouplingState` of a delayed channel: plus the `history` of the last D_c + 1 entries
    `(params, aux, losses)` (a `dynamics.delay.History`; params leaves `(D_c + 1, N, …)`,
    losses `(D_c + 1, N)` or None when the rule reads no losses)."""

    aux: PyTree
    count: jax.Array
    history: History


def _check_rate(name: str, value: float, allow_zero: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _check_rate_or_schedule(name: str, value: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
    """A constant is checked (> 0) now; a schedule `count -> value` is taken as given."""
    return value if callable(value) else _check_rate(name, value)


def _at(value: optax.ScalarOrSchedule, count: jax.Array):
    """The value of a constant or of a schedule at step `count`."""
    return value(count) if callable(value) else value


def _check_update_args(rule: AbstractCoupling, params, losses) -> None:
    """The coupling transforms' `update` needs the params, and the losses if the rule reads
    them (a ValueError says which)."""
    if params is None:
        raise ValueError(
            "add_coupling_force needs the agents' params: call update(grads, state, params)"
        )
    if rule.needs_losses and losses is None:
        raise ValueError(f"{type(rule).__name__} needs the agents' losses: pass losses=(N,)")


def add_coupling_force(
    rule: AbstractCoupling,
    step_size: optax.ScalarOrSchedule,
    gradient_scale: float = 1.0,
    aux_gradient_fn: GradientField | None = None,
    *,
    delay=0,
    delay_key: jax.Array | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Add the coupling rule's force to the gradients of stacked agent parameters.

    Args:
        rule: a coupling rule (`dynamics.coupling.AbstractCoupling`).
        step_size: h > 0, the time the auxiliary state advances per update (its Euler step),
            a constant or an `optax` schedule evaluated at this transform's own update count
            (0, 1, 2, …). It should equal the learning rate of the optimizer chained after
            for the Euler step of `rule` as written (see the module docstring for the
            relation otherwise).
        gradient_scale: η > 0, the gradient's weight in the drift.
        aux_gradient_fn: ∇f for one agent's parameters, needed by rules with
            `needs_aux_gradient` (e.g. a quorum variable that descends the loss).
        delay: the coupling channel's delay d_c in updates (steps): 0 (default: no delay,
            no buffer), an int >= 0, or a delay distribution (`DelayModel`, any object with
            `probs` over {0, …, D_c}; see `dynamics.delay.as_delay`), redrawn per agent (and
            once for aux) at every update from `delay_key` (the stream of
            `dynamics.delay`). With a delay, update k evaluates the rule on the entry
            `(params, aux, losses)` of update k − d_c (update 0's before the start):
            `u_i = η g_i − F_i(delayed)`, `aux ← aux + h A(delayed)`.
        delay_key: PRNG key of random delays (required iff `delay` is random); the delays
            of update k are those of step k = this transform's update count.

    Returns:
        A transform whose `update(grads, state, params, *, losses=None)` returns
        `η g − F(params, aux, losses)`; every leaf has the agent axis N first. `losses` `(N,)`
        is required by rules with `needs_losses`. Its state is a `CouplingState`, or a
        `DelayedCouplingState` (memory O(D_c × params)) with a delay.
    """
    if not isinstance(rule, AbstractCoupling):
        raise TypeError(f"rule must be an AbstractCoupling, got {type(rule)}")
    step_size = _check_rate_or_schedule("step_size", step_size)
    eta = _check_rate("gradient_scale", gradient_scale)
    if rule.needs_aux_gradient and aux_gradient_fn is None:
        raise ValueError(f"{type(rule).__name__} needs aux_gradient_fn (∇f at the auxiliary state)")
    delay = as_delay(delay, "delay")
    if delay.is_random and delay_key is None:
        raise ValueError("delay_key is required for a random coupling delay")
    if delay.is_random or delay.max_steps > 0:
        return _delayed_coupling_force(rule, step_size, eta, aux_gradient_fn, delay, delay_key)

    def init_fn(params):
        return CouplingState(aux=rule.init(params), count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, losses=None, **extra_args):
        del extra_args
        _check_update_args(rule, params, losses)
        h = _at(step_size, state.count)
        force = rule.force(params, state.aux, losses)
        out = jax.tree.map(lambda g, f: eta * g - f, updates, force)
        aux_dot = rule.aux_drift(params, state.aux, losses, aux_gradient_fn)
        aux = jax.tree.map(lambda a, d: a + h * d, state.aux, aux_dot)
        return out, CouplingState(aux=aux, count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _delayed_coupling_force(rule, step_size, eta, aux_gradient_fn, delay, delay_key):
    """`add_coupling_force` with a delayed channel (a ring buffer of (params, aux, losses))."""

    def init_fn(params):
        aux = rule.init(params)
        losses = None
        if rule.needs_losses:
            # Unknown until update 0, which fills them in (the history before it is constant).
            num_agents = jax.tree.leaves(params)[0].shape[0]
            losses = jnp.zeros((num_agents,), jax.tree.leaves(params)[0].dtype)
        history = history_init((params, aux, losses), delay.max_steps)
        return DelayedCouplingState(aux, jnp.zeros([], jnp.int32), history)

    def update_fn(updates, state, params=None, *, losses=None, **extra_args):
        del extra_args
        _check_update_args(rule, params, losses)
        h = _at(step_size, state.count)
        history = state.history
        entry_losses = None
        if rule.needs_losses:
            entry_losses = jnp.asarray(losses, history.states[2].dtype)
            # The history before update 0 holds update 0's losses (constant history).
            first = jnp.broadcast_to(entry_losses, history.states[2].shape)
            past = jnp.where(state.count == 0, first, history.states[2])
            history = History((history.states[0], history.states[1], past), history.head)
        # Push update k's entry, then read the one d_c updates old (ring of D_c + 1).
        history = history_push(history, (params, state.aux, entry_losses))
        current = (params, state.aux, entry_losses)
        num_agents = jax.tree.leaves(params)[0].shape[0]
        (x, aux, ell), index = read_channel(
            history, current, delay, delay_key, state.count, num_agents
        )
        force, aux_dot = delayed_coupling(rule, x, aux, ell, index, aux_gradient_fn)
        out = jax.tree.map(lambda g, f: eta * g - f, updates, force)
        aux = jax.tree.map(lambda a, d: a + h * d, state.aux, aux_dot)
        count = optax.safe_increment(state.count)
        return out, DelayedCouplingState(aux=aux, count=count, history=history)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class HeavyBallState(NamedTuple):
    """State holding the agents' velocities v (same pytree as params)."""

    velocity: PyTree


def heavy_ball(damping: float, step_size: float) -> optax.GradientTransformation:
    """Explicit Euler step of `dx = v dt, dv = (−γ v − u) dt` with step h.

    Given incoming updates `u` (a force in gradient units, e.g. `η g − F`), returns the
    parameter update `h v_k` and sets `v_{k+1} = v_k + h(−γ v_k − u)`. Unlike
    `optax.sgd(momentum=β)` (which steps with the new velocity), this is exactly
    Euler–Maruyama on the heavy-ball SDE when `u` carries the noise.

    Args:
        damping: γ >= 0 (1/time).
        step_size: h > 0 (time per step).
    """
    gamma = _check_rate("damping", damping, allow_zero=True)
    h = _check_rate("step_size", step_size)

    def init_fn(params):
        return HeavyBallState(velocity=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        step = jax.tree.map(lambda v: h * v, state.velocity)
        velocity = jax.tree.map(lambda v, u: v + h * (-gamma * v - u), state.velocity, updates)
        return step, HeavyBallState(velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


def euler_optimizer(
    system: CoupledSystem | DelayedSystem, step_size: float, *, delay_key: jax.Array | None = None
) -> optax.GradientTransformationExtraArgs:
    """The discrete form of `system`: one Euler step of size h (time units) per update.

    First order: `chain(add_coupling_force(rule, h, η), scale(−h))`; heavy ball:
    `chain(add_coupling_force(rule, h, η), heavy_ball(γ, h))`. With gradients
    `g = ∇f(x) + ξ` from `algorithms.oracles.sde_matched_oracle(system, h)` and the same key,
    the iterates equal the Euler–Maruyama path of `dynamics.solve` (`solve_discrete` runs
    exactly this).

    A `dynamics.DelayedSystem` gives the coupling transform its coupling delay
    (`add_coupling_force(..., delay=τ_c, delay_key=delay_key)`). Its gradient delay is the
    runner's business: the optimizer only sees gradients, so run it with
    `algorithms.delayed.run_delayed_agents(..., gradient_delay=τ_g)`, which evaluates the
    oracle at the stale parameters (`solve_discrete` does both).
    """
    delay = 0
    if isinstance(system, DelayedSystem):
        delay, system = system.coupling_delay, system.system
    rule = add_coupling_force(
        system.coupling,
        step_size,
        gradient_scale=system.gradient_scale,
        aux_gradient_fn=system.landscape.grad,
        delay=delay,
        delay_key=delay_key,
    )
    if system.momentum:
        return optax.chain(rule, heavy_ball(system.damping, step_size))
    return optax.chain(rule, optax.scale(-step_size))
