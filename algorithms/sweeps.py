"""Sweeps of coupled systems on multi-well landscapes: does x̄ end in the global basin?

`basin_success` runs many independent copies of one coupled system (both forms) for every
noise level σ and every setting of a swept rule parameter, all under one compilation, and
reports whether the agents' spatial mean x̄(T) lies in the landscape's global basin.
`wilson_interval` gives the confidence interval of the resulting success rates.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dynamics.coupling import AbstractCoupling
from dynamics.landscapes import AbstractLandscape
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve
from dynamics.system import CoupledSystem
from dynamics.types import PyTree

from .coupling import euler_optimizer
from .oracles import sde_matched_oracle
from .runner import run_agents

__all__ = ["FORMS", "basin_success", "wilson_interval"]

FORMS = ("continuous", "discrete")


def basin_success(
    landscape: AbstractLandscape,
    rule: AbstractCoupling,
    where: Callable[[AbstractCoupling], PyTree],
    grid: PyTree,
    sigmas: Float[Array, " sigmas"],
    *,
    num_agents: int,
    form: str,
    gradient_scale: float,
    t1: float,
    step_size: float,
    num_runs: int,
    key: jax.Array,
    start_halfwidth: float = 0.0,
) -> dict[str, np.ndarray]:
    """Final spatial means of `num_runs` independent runs for every (σ, rule setting).

    The system is `CoupledSystem(landscape, rule', IsotropicNoise(σ), gradient_scale)`,
    first order, where `rule' = eqx.tree_at(where, rule, g)` sets the swept field(s) of the
    template `rule` from each entry `g` of `grid` (a pytree with leading axis G). Both σ and
    g are pytree leaves, so one compilation covers the whole (σ, g, run) grid under
    `jax.vmap`. The continuous form is Euler–Maruyama (`dynamics.solve`), the discrete form
    `euler_optimizer` with `sde_matched_oracle` (`run_agents`, divergence recorded); both
    run to time `t1` in steps of `step_size` (time).

    All agents start at the minimizer, or with `start_halfwidth > 0` each agent of each run at
    a uniform random point of the box `x* ± start_halfwidth` (the same starts for every σ
    and g). A run succeeds when it did not diverge and `landscape.in_global_basin(x̄(t1))`.

    Returns:
        `success`, `loss` (f(x̄(t1)), +inf if diverged) and `diverged` (bool), each a NumPy
        array of shape `(S, G, R)` (σ, grid, runs).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    centre = jnp.broadcast_to(jnp.asarray(landscape.minimizer()), (num_agents, landscape.dim))
    keys = jax.random.split(key, num_runs)
    template = CoupledSystem(landscape, rule, IsotropicNoise(1.0), gradient_scale=gradient_scale)

    def one(sigma, g, k):
        k_start, k = jax.random.split(k)
        offset = jax.random.uniform(k_start, centre.shape, minval=-1.0, maxval=1.0)
        x0 = centre + start_halfwidth * offset
        system = eqx.tree_at(lambda s: s.noise.sigma, template, sigma)
        system = eqx.tree_at(lambda s: where(s.coupling), system, g)
        if form == "continuous":
            sol = solve(system, x0, t1=t1, step_size=step_size, key=k, saveat=1)
            x, diverged = sol.x[-1], ~jnp.all(jnp.isfinite(sol.x[-1]))
        else:
            steps = round(t1 / step_size)
            res = run_agents(
                euler_optimizer(system, step_size), x0, sde_matched_oracle(system, step_size),
                num_steps=steps, key=k, record_every=steps,
            )  # fmt: skip
            x, diverged = res.params, res.diverged_step >= 0
        mean = jnp.mean(x, axis=0)
        ok = landscape.in_global_basin(mean) & ~diverged
        return ok, jnp.where(diverged, jnp.inf, landscape.value(mean)), diverged

    runs = jax.vmap(one, (None, None, 0))
    over_grid = jax.vmap(runs, (None, 0, None))
    over_sigma = jax.vmap(over_grid, (0, None, None))
    # No outer `jax.jit`: `solve` and `run_agents` compile themselves, and the optimizer's
    # constructor checks its (concrete) step size with host logic.
    out = over_sigma(jnp.asarray(sigmas, dtype=float), grid, keys)
    return dict(zip(("success", "loss", "diverged"), (np.asarray(o) for o in out)))


def wilson_interval(successes, n, z: float = 1.96):
    """Wilson score interval `(lo, hi)` for a binomial proportion (element-wise).

    `successes` out of `n` trials; `z = 1.96` gives 95%.
    """
    p = np.asarray(successes, dtype=float) / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return centre - half, centre + half
