"""Stochastic delay differential equations: stale gradients and a delayed coupling channel.

The delayed coupled system, in the notation of `dynamics.system` (first order):

    dx_i = [−η ∇f(x_i(t − τ_g)) + F_i(x(t − τ_c), aux(t − τ_c), ℓ(t − τ_c))] dt + σ(x_i(t)) dW_i
    d aux = A(x(t − τ_c), aux(t − τ_c), ℓ(t − τ_c), ∇f) dt

and the heavy-ball system (`CoupledSystem(damping=γ)`) the same on the velocity:
`dx_i = v_i dt`, `dv_i = [−γ v_i − η ∇f(x_i(t − τ_g)) + F_i(…(t − τ_c))] dt + σ(x_i(t)) dW_i`.
The gradient reads the agent's own position τ_g ago (an asynchronous worker computing on a
stale copy); the coupling channel reads the whole coupled state (x, aux, ℓ = (f(x_1), …,
f(x_N))) τ_c ago; the velocity, the damping and the noise are current. Before t0 the history is
constant, `x(t) = x_0`, `aux(t) = aux_0` for t < t0 (as in `algorithms.asynchrony.delays`).

Delays are counted in steps h (`τ = d·h`, d an integer >= 0), given as an `int` (constant) or
as a distribution on {0, …, D} (`Delay`, or any object with a `probs` array such as
`algorithms.asynchrony.delays.DelayModel`), redrawn at every step k and for every party:
agent i's gradient delay `d_g[i]` and coupling delay `d_c[i]` for i < N, and one more coupling
delay `d_c[N]` for the auxiliary state. With random coupling delays agent i's force is row i
of `F(x, aux, ℓ)` evaluated on the whole coupled state `d_c[i]` steps ago, and `A` is
evaluated on the state `d_c[N]` steps ago.

Random streams (shared by the continuous and the discrete form, so that both draw the same
delays): at step k, with `key_k = fold_in(delay_key, k)`,

    d_g = categorical(fold_in(key_k, 0), log probs_g, shape (N,))        (GRADIENT_STREAM)
    d_c = categorical(fold_in(key_k, 1), log probs_c, shape (N + 1,))    (COUPLING_STREAM)

`delay_key` is independent of the Brownian key.

Integration: `DelayedEuler`, a Diffrax solver (Euler–Maruyama) that carries the history in its
own `solver_state`, a ring buffer of the last D + 1 states (x and aux; D = the largest delay in
steps), so memory is O(D × state). Each step reads the delayed states, passes them to the drift
through `args` (a `DelayedArgs`), evaluates the diffusion at the current state and pushes the
new state. `solve_delayed` mirrors `dynamics.solve.solve`.

Supported: fixed steps only (`diffrax.ConstantStepSize`, whose step must equal the buffer's
step h); Euler–Maruyama only (a delayed drift has no higher-order Runge–Kutta stages on the
grid); every coupling rule (the rule is evaluated on the delayed state as it is).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from equinox.internal import ω
from jaxtyping import Array, Int

from .coupling import AbstractCoupling
from .solve import (
    Solution,
    _check_brownian,
    _check_interval,
    _save_at,
    _solve,
)
from .system import AgentState, CoupledSystem
from .types import GradientField, PyTree

__all__ = [
    "COUPLING_STREAM",
    "GRADIENT_STREAM",
    "Delay",
    "DelayedArgs",
    "DelayedEuler",
    "DelayedSystem",
    "History",
    "as_delay",
    "delayed_coupling",
    "history_init",
    "history_push",
    "history_read",
    "history_read_agents",
    "history_slots",
    "read_channel",
    "read_stale",
    "solve_delayed",
]

GRADIENT_STREAM = 0
COUPLING_STREAM = 1


# --- delay specifications ------------------------------------------------------------------


class Delay(eqx.Module):
    """One delay in steps: the constant `max_steps` (`probs` None), or random on {0, …, D}.

    `probs[d] = P(d)` `(D + 1,)` (a pytree leaf, so it may be traced or swept); `max_steps` is
    the constant delay or D, the largest delay of the support (static: it sizes the buffer).
    Build one with `as_delay`.
    """

    probs: jax.Array | None
    max_steps: int = eqx.field(static=True)

    @property
    def is_random(self) -> bool:
        return self.probs is not None

    def draw(self, delay_key, step, count: int, stream: int) -> Int[Array, " count"]:
        """The delays (steps, int32 `(count,)`) of step k: random from the stream
        `fold_in(fold_in(delay_key, k), stream)`, or the constant (no key needed)."""
        if self.probs is None:
            return jnp.full((count,), self.max_steps, jnp.int32)
        key = jr.fold_in(jr.fold_in(delay_key, step), stream)
        return jr.categorical(key, jnp.log(self.probs), shape=(count,)).astype(jnp.int32)


def as_delay(value, name: str = "delay") -> Delay:
    """A `Delay` from an int number of steps >= 0, a `Delay`, or an object with `probs`.

    `probs` (e.g. an `algorithms.asynchrony.delays.DelayModel`) is a probability vector
    `(D + 1,)` over delays {0, …, D} in steps; a concrete point mass becomes a constant delay.
    A float is accepted only if it is a whole number of steps. Raises ValueError naming the
    bad value otherwise.
    """
    if isinstance(value, Delay):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a whole number of steps >= 0, got {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0 steps, got {value!r}")
        return Delay(None, int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or value != round(value):
            raise ValueError(f"{name} must be a whole number of steps (τ = d·h), got {value!r}")
        return as_delay(int(round(value)), name)
    probs = getattr(value, "probs", None)
    if probs is None:
        raise ValueError(
            f"{name} must be an int number of steps or a delay distribution with `probs`, "
            f"got {value!r}"
        )
    if isinstance(probs, jax.core.Tracer):  # swept under vmap/jit: only the shape is checked
        if probs.ndim != 1:
            raise ValueError(f"{name}.probs must be 1-D (D + 1,), got shape {probs.shape}")
        return Delay(probs, probs.shape[0] - 1)
    p = np.asarray(probs, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"{name}.probs must be a non-empty 1-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-6:
        raise ValueError(f"{name}.probs must be >= 0 and sum to 1, got {p.tolist()}")
    support = np.flatnonzero(p > 0)
    if support.size == 1:  # a point mass: no draws, one buffer read
        return Delay(None, int(support[0]))
    return Delay(jnp.asarray(probs), p.size - 1)


# --- the history: a ring buffer of the last D + 1 states -----------------------------------


class History(NamedTuple):
    """The last D + 1 states: `states` leaves have a leading axis D + 1 (ring order), `head`
    is the slot of the newest state (step k's, before step k's update)."""

    states: PyTree
    head: Int[Array, ""]


def history_init(state: PyTree, max_delay: int) -> History:
    """A buffer of D + 1 = `max_delay + 1` copies of `state` (the constant history)."""
    states = jax.tree.map(lambda a: jnp.broadcast_to(a, (max_delay + 1,) + jnp.shape(a)), state)
    return History(states, jnp.zeros((), jnp.int32))


def _size(history: History) -> int:
    return jax.tree.leaves(history.states)[0].shape[0]


def history_push(history: History, state: PyTree) -> History:
    """Append the newest state, overwriting the oldest."""
    head = (history.head + 1) % _size(history)
    states = jax.tree.map(lambda h, s: h.at[head].set(s), history.states, state)
    return History(states, head)


def history_slots(history: History, delays) -> jax.Array:
    """The slots holding the states `delays` steps old (0 <= delay <= D)."""
    return (history.head - jnp.asarray(delays, jnp.int32)) % _size(history)


def history_read(history: History, delay) -> PyTree:
    """The state `delay` steps old (a scalar delay, may be traced)."""
    slot = history_slots(history, delay)
    return jax.tree.map(lambda h: h[slot], history.states)


def history_read_agents(history: History, delays: Int[Array, " agents"]) -> PyTree:
    """Per agent: row i of the state `delays[i]` steps old; leaves `(D + 1, N, …)` -> `(N, …)`."""
    slots = history_slots(history, delays)
    rows = jnp.arange(delays.shape[0])
    return jax.tree.map(lambda h: h[slots, rows], history.states)


def read_stale(history: History, current: PyTree, delay: Delay, delay_key, step) -> PyTree:
    """The stale positions of the gradient: agent i's row `d_g[i]` steps old, `(N, …)`.

    `history` holds the positions (leaves `(D + 1, N, …)`), `current` the newest (returned
    as is for the constant delay 0).
    """
    if not delay.is_random:
        return current if delay.max_steps == 0 else history_read(history, delay.max_steps)
    num_agents = jax.tree.leaves(current)[0].shape[0]
    return history_read_agents(history, delay.draw(delay_key, step, num_agents, GRADIENT_STREAM))


def read_channel(
    history: History, current: PyTree, delay: Delay, delay_key, step, num_agents: int
) -> tuple[PyTree, Int[Array, " parties"] | None]:
    """What the coupling channel delivers at step k: `(states, index)`.

    Constant delay d: `(the state d steps old, None)` (`current` for d = 0). Random delays:
    `(all D + 1 states (ring order), index)` with `index` `(N + 1,)` the slot read by each
    agent and, last, by the auxiliary state (`delayed_coupling` evaluates the rule there).
    """
    if not delay.is_random:
        if delay.max_steps == 0:
            return current, None
        return history_read(history, delay.max_steps), None
    parties = delay.draw(delay_key, step, num_agents + 1, COUPLING_STREAM)
    return history.states, history_slots(history, parties)


def delayed_coupling(
    rule: AbstractCoupling,
    x: PyTree,
    aux: PyTree,
    losses: jax.Array | None,
    index: Int[Array, " parties"] | None,
    grad_fn: GradientField | None,
) -> tuple[PyTree, PyTree]:
    """The force `F` (agent axis first) and `d aux/dt` read through the coupling channel.

    `index` None: `x`, `aux`, `losses` are one state and this is `(rule.force(x, aux, ℓ),
    rule.aux_drift(x, aux, ℓ, ∇f))`. Otherwise they carry a leading axis S of states; agent
    i's force is row i of `F` at state `index[i]` and `A` is evaluated at state `index[N]`
    (cost: S evaluations of the force).
    """
    if index is None:
        return rule.force(x, aux, losses), rule.aux_drift(x, aux, losses, grad_fn)
    num_agents = index.shape[0] - 1
    forces = jax.vmap(rule.force)(x, aux, losses)
    rows = jnp.arange(num_agents)
    force = jax.tree.map(lambda f: f[index[:num_agents], rows], forces)
    at = index[num_agents]
    pick = lambda tree: jax.tree.map(lambda leaf: leaf[at], tree)  # noqa: E731
    aux_dot = rule.aux_drift(pick(x), pick(aux), pick(losses), grad_fn)
    return force, aux_dot


# --- the delayed system --------------------------------------------------------------------


class DelayedArgs(NamedTuple):
    """The delayed states the drift reads (`DelayedSystem.drift`'s `args`).

    `gradient_x` `(N, dim)`: agent i's position `d_g[i]` steps ago. `coupled_x`, `coupled_aux`:
    the coupled state the channel delivers, one state (`coupled_x` `(N, dim)`) or S states
    (`(S, N, dim)`) with `coupling_index` `(N + 1,)` the state read by each party (see
    `delayed_coupling`); `coupling_index` None for one state.
    """

    gradient_x: jax.Array
    coupled_x: jax.Array
    coupled_aux: Any
    coupling_index: jax.Array | None


class DelayedSystem(eqx.Module):
    """`system` with a stale gradient (delay τ_g) and a delayed coupling channel (τ_c).

    Args:
        system: the coupled system (first order or heavy ball).
        gradient_delay: τ_g in steps: an int >= 0 (constant) or a delay distribution over
            {0, …, D_g} steps (random per agent and step); see `as_delay`.
        coupling_delay: τ_c in steps, likewise (random per party and step).
        max_delay: D, the buffer holds D + 1 states; default the largest delay of either
            support. A support longer than D + 1 raises ValueError.

    The delays are in steps: the same `DelayedSystem` solved with step h has τ = d·h (time).
    """

    system: CoupledSystem
    gradient_delay: Delay
    coupling_delay: Delay
    max_delay: int = eqx.field(static=True)

    def __init__(
        self,
        system: CoupledSystem,
        *,
        gradient_delay=0,
        coupling_delay=0,
        max_delay: int | None = None,
    ):
        if not isinstance(system, CoupledSystem):
            raise TypeError(f"system must be a CoupledSystem, got {type(system)}")
        self.system = system
        self.gradient_delay = as_delay(gradient_delay, "gradient_delay")
        self.coupling_delay = as_delay(coupling_delay, "coupling_delay")
        longest = max(self.gradient_delay.max_steps, self.coupling_delay.max_steps)
        if max_delay is None:
            max_delay = longest
        if isinstance(max_delay, bool) or not isinstance(max_delay, (int, np.integer)):
            raise ValueError(f"max_delay must be an int >= 0 steps, got {max_delay!r}")
        if max_delay < longest:
            raise ValueError(
                f"a delay of up to {longest} steps does not fit a buffer of max_delay + 1 = "
                f"{max_delay + 1} states (max_delay={max_delay})"
            )
        self.max_delay = int(max_delay)

    @property
    def momentum(self) -> bool:
        return self.system.momentum

    @property
    def noise(self):
        return self.system.noise

    @property
    def is_random(self) -> bool:
        """True if a delay is random (a `delay_key` is then needed)."""
        return self.gradient_delay.is_random or self.coupling_delay.is_random

    def check_positions(self, x0) -> int:
        return self.system.check_positions(x0)

    def init(self, x0, v0=None) -> AgentState:
        """The state at t0 (and, constant, before it): as `CoupledSystem.init`."""
        return self.system.init(x0, v0)

    def brownian_shape(self, num_agents: int) -> tuple[int, ...]:
        return self.system.brownian_shape(num_agents)

    def diffusion(self, t, state: AgentState, dw: jax.Array) -> AgentState:
        """`σ(x(t)) dW` at the current state, as `CoupledSystem.diffusion`."""
        return self.system.diffusion(t, state, dw)

    def read(self, history: History, state: AgentState, delay_key, step) -> DelayedArgs:
        """The delayed states of step k from the history of (x, aux) and the current state."""
        positions = History(history.states.x, history.head)
        stale = read_stale(positions, state.x, self.gradient_delay, delay_key, step)
        current = AgentState(state.x, None, state.aux)
        coupled, index = read_channel(
            history, current, self.coupling_delay, delay_key, step, state.x.shape[0]
        )
        return DelayedArgs(stale, coupled.x, coupled.aux, index)

    def drift(self, t, state: AgentState, args: DelayedArgs | None = None) -> AgentState:
        """The drift with the delayed states of `args` (a `DelayedArgs`).

        Any other `args` (e.g. None) means no delay: `CoupledSystem.drift` at `state`.
        """
        del t
        if not isinstance(args, DelayedArgs):
            args = DelayedArgs(state.x, state.x, state.aux, None)
        system, f = self.system, self.system.landscape
        rule = system.coupling
        grads = jax.vmap(f.grad)(args.gradient_x)
        losses = None
        if rule.needs_losses:
            value = jax.vmap(f.value)
            losses = value(args.coupled_x) if args.coupling_index is None else (
                jax.vmap(value)(args.coupled_x)
            )  # fmt: skip
        force, aux_dot = delayed_coupling(
            rule, args.coupled_x, args.coupled_aux, losses, args.coupling_index, f.grad
        )
        accel = -system.gradient_scale * grads + force
        if system.momentum:
            return AgentState(state.v, accel - system.damping * state.v, aux_dot)
        return AgentState(accel, None, aux_dot)


# --- the solver ----------------------------------------------------------------------------


class DelayedEulerState(NamedTuple):
    """`DelayedEuler`'s solver state: the `history` of (x, aux) (`AgentState` with v None,
    leaves `(D + 1, N, dim)` for x) and the index `step` of the next step."""

    history: History
    step: Int[Array, ""]


class DelayedEuler(diffrax.AbstractItoSolver):
    """Euler–Maruyama for `DelayedSystem`, the history carried in the solver state.

    Args:
        system: the delayed system whose delays the solver reads (its drift must be the
            terms' drift, e.g. `dynamics.solve.terms(system, brownian)`).
        step_size: h, the buffer's step (time). The solve must use
            `diffrax.ConstantStepSize()` with `dt0 = h`; a step of another length raises
            at run time (`solve_delayed` checks before compiling).
        delay_key: PRNG key of the random delays (required iff a delay is random).

    Each step k: `args = system.read(history, y_k, delay_key, k)` (the states d steps old),
    `y_{k+1} = y_k + drift(t_k, y_k, args) h + σ(x_k) ΔW_k`, then push (x, aux)_{k+1}.
    The `args` of `diffeqsolve` are not used. Memory: (D + 1) copies of (x, aux).
    """

    system: DelayedSystem
    step_size: float = eqx.field(static=True)
    delay_key: jax.Array | None = None

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def __init__(self, system: DelayedSystem, step_size: float, delay_key=None):
        if not isinstance(system, DelayedSystem):
            raise TypeError(f"system must be a DelayedSystem, got {type(system)}")
        h = float(step_size)
        if not math.isfinite(h) or h <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        if system.is_random and delay_key is None:
            raise ValueError("delay_key is required for random delays")
        self.system, self.step_size, self.delay_key = system, h, delay_key

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args) -> DelayedEulerState:
        del terms, t0, t1, args
        past = history_init(AgentState(y0.x, None, y0.aux), self.system.max_delay)
        return DelayedEulerState(past, jnp.zeros((), jnp.int32))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del args, made_jump
        history, k = solver_state
        h = self.step_size
        # The buffer is indexed in steps of h: a step of another length would misread it.
        # The tolerance allows the rounding of t0 + k·h in the time's dtype (float32 times
        # drift by a few ulps of t per step), far below a wrong step length.
        eps = jnp.finfo(jnp.result_type(t0, t1)).eps
        slack = 1e-6 * h + 16 * eps * jnp.maximum(jnp.abs(t0), jnp.abs(t1))
        t1 = eqx.error_if(
            t1,
            jnp.abs((t1 - t0) - h) > slack,
            f"DelayedEuler needs constant steps of its step_size h={h} (ConstantStepSize, "
            "dt0 = h, t1 − t0 a whole number of steps)",
        )
        delayed = self.system.read(history, y0, self.delay_key, k)
        control = terms.contr(t0, t1)
        y1 = (y0**ω + terms.vf_prod(t0, y0, delayed, control) ** ω).ω
        history = history_push(history, AgentState(y1.x, None, y1.aux))
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, DelayedEulerState(history, k + 1), diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        # No history here: the undelayed vector field (used by diffrax only for diagnostics).
        return terms.vf(t0, y0, None)


# --- solve ---------------------------------------------------------------------------------


def solve_delayed(
    system: DelayedSystem,
    x0,
    *,
    t1: float,
    step_size: float,
    key: jax.Array | None = None,
    delay_key: jax.Array | None = None,
    t0: float = 0.0,
    solver: DelayedEuler | None = None,
    saveat: int | Any = 101,
    brownian: str | diffrax.AbstractBrownianPath = "step",
    adaptive: bool = False,
    v0=None,
) -> Solution:
    """Integrate the delayed system from `x0` `(N, dim)` over `[t0, t1]` with `DelayedEuler`.

    As `dynamics.solve.solve` (same `saveat`, `brownian`, `v0`, and the same Brownian
    numbers for the same `key`), with fixed steps h only.

    Args:
        system: the delayed system; its delays are in steps of h.
        x0: initial positions `(N, dim)`; the history before t0 is constant.
        t1: final time; `t1 − t0` must be a whole number of steps h.
        step_size: h > 0 (time), the step and the buffer's step.
        key: PRNG key of the Brownian motion (required if noisy, unless `brownian` is a path).
        delay_key: PRNG key of the random delays (required iff a delay is random).
        solver: None (a `DelayedEuler(system, h, delay_key)`) or a `DelayedEuler` built for
            this `system` with `step_size == h` (its own `delay_key` is used).
        adaptive: must be False (a ValueError otherwise: the buffer needs fixed steps).

    Returns:
        A `Solution` with `x` `(T, N, dim)`; `num_steps` = (t1 − t0)/h.
    """
    if not isinstance(system, DelayedSystem):
        raise TypeError(f"system must be a DelayedSystem, got {type(system)}")
    system.check_positions(x0)
    t0, t1, h = _check_interval(t0, t1, step_size)
    _check_brownian(brownian)
    if adaptive:
        raise ValueError(f"delayed systems need fixed steps, got adaptive={adaptive!r}")
    if solver is None:
        solver = DelayedEuler(system, h, delay_key)
    elif not isinstance(solver, DelayedEuler):
        raise ValueError(
            f"delayed systems are solved with DelayedEuler only, got {type(solver).__name__}"
        )
    elif solver.system is not system and not bool(eqx.tree_equal(solver.system, system)):
        raise ValueError("the DelayedEuler solver was built for another DelayedSystem")
    elif not math.isclose(solver.step_size, h, rel_tol=1e-12):
        raise ValueError(f"the solver's buffer step {solver.step_size} differs from step_size={h}")
    steps = (t1 - t0) / h
    num_steps = round(steps)
    if abs(steps - num_steps) > 1e-6:
        raise ValueError(f"t1 − t0 = {t1 - t0} must be a whole number of steps h={h}")
    noisy = not system.noise.is_zero()
    if noisy and key is None and isinstance(brownian, str):
        raise ValueError("key is required for a noisy system (σ > 0)")
    save = _save_at(saveat, t0, t1)
    state0 = system.init(jnp.asarray(x0), v0)
    # `solve`'s compiled integration, with fixed steps (the tolerances are then unused).
    return _solve(
        system, state0, key, t0, t1, h, solver, save, brownian if noisy else None,
        False, 1e-3, 1e-6, num_steps,
    )  # fmt: skip
