"""The discrete mirror of `dynamics.solve`: the optimizer form of a coupled system.

`solve_discrete(system, x0, t1=T, step_size=h, key=key)` runs `euler_optimizer(system, h)` on
the gradients of `sde_matched_oracle(system, h)` with `run_agents`, and returns the same
`dynamics.Solution` as `solve`. With the same key, `solve(system, x0, t1=T, step_size=h,
key=key)` (Euler–Maruyama, the default solver) gives the same path to rounding, so comparing
the continuous and the discrete form is two calls. A `dynamics.DelayedSystem` runs the delayed
discrete form (`algorithms.delayed.run_delayed_agents`), the mirror of
`dynamics.delay.solve_delayed`.
"""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dynamics.delay import DelayedSystem
from dynamics.solve import Solution
from dynamics.system import CoupledSystem

from .coupling import HeavyBallState, euler_optimizer
from .delayed import run_delayed_agents
from .oracles import sde_matched_oracle
from .runner import run_agents

__all__ = ["solve_discrete"]


def _grid_steps(name: str, times, t0: float, h: float) -> np.ndarray:
    """Step indices `k = (t − t0)/h` of times that must lie on the step grid."""
    k = (np.asarray(times, dtype=float) - t0) / h
    steps = np.round(k)
    if np.any(np.abs(k - steps) > 1e-6):
        bad = np.asarray(times, dtype=float).ravel()[np.abs(k - steps).ravel() > 1e-6]
        raise ValueError(f"{name} must lie on the step grid t0 + k·h (h={h}), got {bad[0]!r}")
    return steps.astype(int)


def solve_discrete(
    system: CoupledSystem | DelayedSystem,
    x0: Float[Array, "agents dim"],
    *,
    t1: float,
    step_size: float,
    key: jax.Array | None = None,
    t0: float = 0.0,
    saveat: int | Float[Array, " times"] | None = None,
    v0: Float[Array, "agents dim"] | None = None,
    brownian: diffrax.AbstractBrownianPath | None = None,
    noise_table: Float[Array, "steps agents dim"] | None = None,
    delay_key: jax.Array | None = None,
) -> Solution:
    """Run the discrete form of `system` from `x0` `(N, dim)` over `[t0, t1]` in steps of h.

    Step k (time `t0 + k h`) is one update of `euler_optimizer(system, h)` with gradients
    `∇f(x) + ξ_k` from `sde_matched_oracle(system, h)`, run by `run_agents`: the explicit
    Euler step of the drift with the noise `σ sqrt(h) n_k` of the k-th Brownian increment.

    A `dynamics.DelayedSystem` runs the delayed discrete form: `euler_optimizer(system, h,
    delay_key=…)` (the delayed coupling channel) driven by `algorithms.delayed.
    run_delayed_agents` (the oracle at the stale parameters x_{k−d_g} with step k's noise);
    with the same keys it equals `dynamics.delay.solve_delayed`'s path to rounding.

    Args:
        system: the coupled system (first order or heavy ball), or a `DelayedSystem`.
        x0: initial positions, shape `(N, dim)`.
        t1: final time (continuous time); `t1 − t0` must be a whole number of steps.
        step_size: h > 0, the time advanced per step.
        key: PRNG key of the noise (the same numbers as `solve`'s `StepBrownianPath` with this
            key); required for a noisy system unless `brownian` or `noise_table` is given.
        t0: initial time.
        saveat: number of equally spaced save times in `[t0, t1]`, or an increasing array of
            save times; every save time must lie on the step grid `t0 + k h`. Default: every
            step, `t0, t0 + h, …, t1`.
        v0: initial velocities for the heavy-ball form (default zeros).
        brownian: a Brownian path of shape `system.brownian_shape(N)` (`(N, dim)` unless the
            noise says otherwise) whose increments on the step grid are the noise (as
            `solve(..., brownian=path)` uses it).
        noise_table: `(K, *system.brownian_shape(N))` standard normals `n_k`, K >= the
            number of steps.
        delay_key: PRNG key of random delays of a `DelayedSystem` (required iff random).

    Returns:
        A `Solution`: `ts` `(T,)`, `x` `(T, N, dim)`, `v` `(T, N, dim)` (heavy ball) or None,
        `aux` with a leading `T` axis, and `num_steps` the optimizer steps taken.
    """
    system.check_positions(x0)
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if not t1 > t0:
        raise ValueError(f"need t1 > t0, got t0={t0}, t1={t1}")
    h = float(step_size)
    (num_steps,) = _grid_steps("t1", [t1], t0, h)
    if num_steps < 1:
        raise ValueError(f"t1 − t0 = {t1 - t0} is less than one step h={h}")
    if saveat is None:
        saveat = int(num_steps) + 1
    if isinstance(saveat, (int, np.integer)):
        if saveat < 1:
            raise ValueError(f"saveat must be >= 1 save times, got {saveat}")
        times = np.linspace(t0, t1, int(saveat)) if saveat > 1 else np.asarray([t1])
    else:
        times = np.asarray(saveat, dtype=float)
        if times.ndim != 1 or np.any(np.diff(times) < 0):
            raise ValueError(f"save times must be an increasing 1-D array, got {times}")
    save_steps = _grid_steps("save times", times, t0, h)
    if np.any(save_steps < 0) or np.any(save_steps > num_steps):
        raise ValueError(f"save times must lie within [t0, t1] = [{t0}, {t1}], got {times}")
    noisy = not system.noise.is_zero()
    if noisy and key is None and brownian is None and noise_table is None:
        raise ValueError("key is required for a noisy system (σ > 0)")
    if key is None:
        key = jax.random.key(0)  # unused: the noise is zero or comes from a path or table
    if noise_table is not None and np.shape(noise_table)[0] < num_steps:
        raise ValueError(
            f"noise_table has {np.shape(noise_table)[0]} rows, the run needs {num_steps}"
        )
    # Record on the coarsest grid that holds every save time, then pick the save times.
    record_every = int(np.gcd.reduce(np.append(save_steps, num_steps)))

    delayed = isinstance(system, DelayedSystem)
    if delayed and system.is_random and delay_key is None:
        raise ValueError("delay_key is required for random delays")
    optimizer = euler_optimizer(system, h, delay_key=delay_key)
    base = system.system if delayed else system
    oracle = sde_matched_oracle(base, h, brownian=brownian, noise_table=noise_table, t0=t0)
    x0 = jnp.asarray(x0)
    state0 = base.init(x0, v0)
    opt_state = optimizer.init(x0)
    if base.momentum:
        opt_state = (opt_state[0], HeavyBallState(velocity=state0.v))

    def record(params, opt_state):
        velocity = opt_state[1].velocity if base.momentum else None
        return {"x": params, "v": velocity, "aux": opt_state[0].aux}

    if delayed:
        res = run_delayed_agents(
            optimizer, x0, oracle, num_steps=int(num_steps), key=key,
            gradient_delay=system.gradient_delay, delay_key=delay_key,
            record_every=record_every, opt_state=opt_state,
            metrics_fn=lambda state: record(state.params, state.opt_state),
        )  # fmt: skip
    else:
        res = run_agents(
            optimizer, x0, oracle, num_steps=int(num_steps), key=key, record_every=record_every,
            metrics_fn=lambda params, opt_state, losses: record(params, opt_state),
            opt_state=opt_state,
        )  # fmt: skip
    pick = jnp.asarray(save_steps // record_every)
    saved = jax.tree.map(lambda leaf: leaf[pick], res.metrics)
    return Solution(
        ts=jnp.asarray(t0 + save_steps * h, dtype=x0.dtype),
        x=saved["x"],
        v=saved["v"],
        aux=saved["aux"],
        num_steps=jnp.asarray(num_steps),
    )
