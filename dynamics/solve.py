"""Integrate a coupled system with Diffrax: `solve` and its batched form `solve_runs`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from .brownian import StepBrownianPath
from .system import CoupledSystem

__all__ = ["Solution", "solve", "solve_runs", "terms"]


class Solution(NamedTuple):
    """A solved trajectory at the save times (from `solve` or `algorithms.solve_discrete`).

    `ts` `(T,)` in continuous time; `x` `(T, N, dim)`; `v` `(T, N, dim)` or None (first
    order); `aux` the auxiliary state with a leading `T` axis; `num_steps` the solver or
    optimizer steps taken. Under `solve_runs` every field gains a leading runs axis `R`.
    """

    ts: jax.Array
    x: jax.Array
    v: jax.Array | None
    aux: Any
    num_steps: jax.Array


def terms(system: CoupledSystem, brownian: diffrax.AbstractBrownianPath | None):
    """The Diffrax terms of `system`: `ODETerm(drift)`, plus `ControlTerm(σ, W)` if noisy."""
    drift = diffrax.ODETerm(system.drift)
    if brownian is None:
        return drift

    def diffusion(t, y, args):
        del args
        # The operator maps dW (shape `brownian_shape(N)`, not necessarily the state's) to
        # the state's increment.
        structure = jax.ShapeDtypeStruct(system.brownian_shape(y.x.shape[0]), y.x.dtype)
        return lx.FunctionLinearOperator(lambda dw: system.diffusion(t, y, dw), structure)

    return diffrax.MultiTerm(drift, diffrax.ControlTerm(diffusion, brownian))


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except TypeError as e:  # a tracer: these must be concrete Python numbers
        raise TypeError(f"{name} must be a concrete number, got {value!r}") from e
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v


def solve(
    system: CoupledSystem,
    x0,
    *,
    t1: float,
    step_size: float,
    key: jax.Array | None = None,
    t0: float = 0.0,
    solver: diffrax.AbstractSolver | None = None,
    saveat: int | Any = 101,
    brownian: str | diffrax.AbstractBrownianPath = "step",
    adaptive: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    max_steps: int | None = None,
    v0=None,
) -> Solution:
    """Integrate `system` from `x0` `(N, dim)` over continuous time `[t0, t1]`.

    Args:
        system: the coupled system (drift and diffusion).
        x0: initial positions, shape `(N, dim)`.
        t1: final time (continuous time, not steps); `t1 > t0`.
        step_size: h > 0, the (initial, if `adaptive`) step in time units; the step count is
            `ceil((t1 − t0) / h)`.
        key: PRNG key for the Brownian motion; required unless the noise is zero (ODE).
        solver: any Diffrax solver; default `diffrax.Euler()` (Euler–Maruyama for SDEs).
            Solvers that need space-time Lévy area (SRA1, ShARK, …) get it automatically.
        saveat: number of equally spaced save times, an array of times, or a `diffrax.SaveAt`.
        brownian: "step" (`StepBrownianPath`, fast, fixed steps only, shares its numbers with
            the discrete form), "tree" (`diffrax.VirtualBrownianTree` with tolerance h/8,
            for adaptive steps), or a Brownian path of shape `system.brownian_shape(N)`
            (`(N, dim)` unless the noise says otherwise) to use as given (e.g. one tree
            shared by solves at several step sizes).
        adaptive: use a PID step-size controller (`rtol`, `atol`); the solver must give an
            error estimate (e.g. Heun) and `brownian` must be "tree" when noisy.
        max_steps: cap on solver steps; default: exact for fixed steps, 64× that if adaptive.
        v0: initial velocities for the heavy-ball form (default zeros).

    Returns:
        A `Solution` with `x` of shape `(T, N, dim)`.
    """
    system.check_positions(x0)
    t0, t1, h = _check_interval(t0, t1, step_size)
    _check_brownian(brownian)
    noisy = not system.noise.is_zero()
    if noisy and key is None and isinstance(brownian, str):
        raise ValueError("key is required for a noisy system (σ > 0)")
    if adaptive and noisy and isinstance(brownian, str) and brownian == "step":
        raise ValueError("adaptive steps need brownian='tree' (StepBrownianPath is fixed-step)")
    solver = diffrax.Euler() if solver is None else solver
    n_steps = math.ceil((t1 - t0) / h - 1e-9)
    if max_steps is None:
        max_steps = n_steps if not adaptive else 64 * n_steps
    save = _save_at(saveat, t0, t1)
    state0 = system.init(jnp.asarray(x0), v0)
    return _solve(
        system, state0, key, t0, t1, h, solver, save, brownian if noisy else None,
        adaptive, rtol, atol, max_steps,
    )  # fmt: skip


def _check_interval(t0, t1, step_size) -> tuple[float, float, float]:
    """`(t0, t1, h)` as floats, with `h > 0` and `t1 > t0` checked (ValueError otherwise)."""
    t0, t1 = float(t0), float(t1)
    h = _positive("step_size", step_size)
    if not t1 > t0:
        raise ValueError(f"need t1 > t0, got t0={t0}, t1={t1}")
    return t0, t1, h


def _check_brownian(brownian) -> None:
    """`brownian` must be "step", "tree" or a `diffrax.AbstractBrownianPath`."""
    if isinstance(brownian, diffrax.AbstractBrownianPath):
        return
    if brownian not in ("step", "tree"):
        raise ValueError(f"brownian must be 'step', 'tree' or a Brownian path, got {brownian!r}")


def _save_at(saveat: int | Any, t0: float, t1: float) -> diffrax.SaveAt:
    """The `diffrax.SaveAt` of `solve`'s `saveat` argument.

    `saveat` is a number of equally spaced save times in `[t0, t1]` (1: only `t1`), an
    increasing array of times within `[t0, t1]`, or a `diffrax.SaveAt` (returned as given).
    """
    if isinstance(saveat, diffrax.SaveAt):
        return saveat
    if isinstance(saveat, (int, np.integer)):
        if saveat < 1:
            raise ValueError(f"saveat must be >= 1 save times, got {saveat}")
        ts = np.linspace(t0, t1, int(saveat)) if saveat > 1 else np.asarray([t1])
    else:
        ts = np.asarray(saveat, dtype=float)
        if ts.ndim != 1 or np.any(ts < t0) or np.any(ts > t1) or np.any(np.diff(ts) < 0):
            raise ValueError(f"save times must be increasing and within [t0, t1], got {ts}")
    if ts.tolist() == [t1]:
        # The final state only: `SaveAt(t1=True)` gives the same value as `ts=[t1]` without
        # the interpolation bookkeeping of a save-times array (a few % faster per step).
        return diffrax.SaveAt(t1=True)
    return diffrax.SaveAt(ts=ts)


def _levy_area(solver):
    """The cheapest concrete Lévy-area type that `solver` accepts."""
    needed = getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement)
    for levy in (diffrax.BrownianIncrement, diffrax.SpaceTimeLevyArea):
        if issubclass(levy, needed):
            return levy
    raise ValueError(f"solver {type(solver).__name__} needs {needed.__name__}, not supported")


def _brownian_path(system, num_agents: int, brownian, key, t0: float, t1: float, h: float, levy):
    """The Brownian path of `solve`'s `brownian` argument, of shape `system.brownian_shape(N)`.

    "step": a `StepBrownianPath` on the grid `t0 + k h`; "tree": a `VirtualBrownianTree`
    with tolerance h/8; a path: itself; None (no noise): None. `levy` is the Lévy-area type.
    """
    shape = system.brownian_shape(num_agents)
    if isinstance(brownian, diffrax.AbstractBrownianPath):
        return brownian
    if isinstance(brownian, str) and brownian == "step":
        return StepBrownianPath(shape=shape, key=key, origin=t0, step_size=h, levy_area=levy)
    if isinstance(brownian, str) and brownian == "tree":
        return diffrax.VirtualBrownianTree(t0, t1, tol=h / 8, shape=shape, key=key, levy_area=levy)
    return None


@eqx.filter_jit
def _solve(system, state0, key, t0, t1, h, solver, save, brownian, adaptive, rtol, atol, max_steps):
    path = _brownian_path(system, state0.x.shape[0], brownian, key, t0, t1, h, _levy_area(solver))
    controller = (
        diffrax.PIDController(rtol=rtol, atol=atol) if adaptive else diffrax.ConstantStepSize()
    )
    sol = diffrax.diffeqsolve(
        terms(system, path),
        solver,
        t0,
        t1,
        h,
        state0,
        saveat=save,
        stepsize_controller=controller,
        max_steps=max_steps,
        # Forward-mode: no reverse-mode tape, so the loop is a plain while loop (fast).
        adjoint=diffrax.ForwardMode(),
    )
    y = sol.ys
    return Solution(sol.ts, y.x, y.v, y.aux, sol.stats["num_steps"])


def solve_runs(system: CoupledSystem, x0, keys: jax.Array, **kwargs) -> Solution:
    """`solve` for R independent runs (one key each, `keys` of shape `(R,)`), vmapped.

    `x0` is `(N, dim)` (shared by all runs) or `(R, N, dim)`. Every field of the returned
    `Solution` has a leading runs axis `R`.
    """
    x0 = jnp.asarray(x0)
    if x0.ndim == 3:
        if x0.shape[0] != keys.shape[0]:
            raise ValueError(f"x0 has {x0.shape[0]} runs but keys has {keys.shape[0]}")
        system.check_positions(x0[0])
        return jax.vmap(lambda x, k: solve(system, x, key=k, **kwargs))(x0, keys)
    system.check_positions(x0)
    return jax.vmap(lambda k: solve(system, x0, key=k, **kwargs))(keys)
