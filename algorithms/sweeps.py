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
from jax.typing import ArrayLike
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
    start_center: Float[ArrayLike, " dim"] | None = None,
    average_from: float | None = None,
    average_every: float | None = None,
) -> dict[str, np.ndarray]:
    """Final spatial means of `num_runs` independent runs for every (σ, rule setting).

    The system is `CoupledSystem(landscape, rule', IsotropicNoise(σ), gradient_scale)`,
    first order, where `rule' = eqx.tree_at(where, rule, g)` sets the swept field(s) of the
    template `rule` from each entry `g` of `grid` (a pytree with leading axis G). Both σ and
    g are pytree leaves, so one compilation covers the whole (σ, g, run) grid under
    `jax.vmap`. The continuous form is Euler–Maruyama (`dynamics.solve`), the discrete form
    `euler_optimizer` with `sde_matched_oracle` (`run_agents`, divergence recorded); both
    run to time `t1` in steps of `step_size` (time).

    All agents start at `start_center` (default: the minimizer x*), or with
    `start_halfwidth > 0` each agent of each run at a uniform random point of the box
    `start_center ± start_halfwidth` (the same starts for every σ and g). Run r uses the
    r-th of `jax.random.split(key, num_runs)` for every σ and g, so two grid settings (or two
    calls with the same key, N and starts) are compared on common random numbers (paired
    runs). A run succeeds when it did not diverge and `landscape.in_global_basin(x̄(t1))`.

    Per agent: `agent_success` is the fraction of the N agents whose own `x_i(t1)` lies in the
    global basin, `agent_loss` the agents' mean loss `(1/N) Σ_i f(x_i(t1))`. With
    `average_from` (a time t_a < t1) and `average_every` (Δ, a multiple of `step_size`, with
    t_a and t1 multiples of Δ), `time_avg_loss` and `time_avg_agent_success` average those
    two over the times t_a, t_a + Δ, …, t1, the same times in both forms.

    Returns:
        NumPy arrays of shape `(S, G, R)` (σ, grid, runs): `success`, `loss` (f(x̄(t1))),
        `diverged` (bool), `agent_success`, `agent_loss`, and with `average_from` also
        `time_avg_loss` and `time_avg_agent_success`. A diverged run has success 0 and loss
        +inf in every entry.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    times = _average_times(t1, step_size, average_from, average_every)
    steps = round(t1 / step_size)
    every = steps if times is None else round(average_every / step_size)
    first = 0 if times is None else round(average_from / average_every)
    c = landscape.minimizer() if start_center is None else start_center
    if jnp.shape(c) not in ((), (landscape.dim,)):
        raise ValueError(f"start_center must have shape ({landscape.dim},), got {jnp.shape(c)}")
    centre = jnp.broadcast_to(jnp.asarray(c, dtype=float), (num_agents, landscape.dim))
    keys = jax.random.split(key, num_runs)
    template = CoupledSystem(landscape, rule, IsotropicNoise(1.0), gradient_scale=gradient_scale)

    def one(sigma, g, k):
        k_start, k = jax.random.split(k)
        offset = jax.random.uniform(k_start, centre.shape, minval=-1.0, maxval=1.0)
        x0 = centre + start_halfwidth * offset
        system = eqx.tree_at(lambda s: s.noise.sigma, template, sigma)
        system = eqx.tree_at(lambda s: where(s.coupling), system, g)
        if form == "continuous":
            saveat = 1 if times is None else times
            sol = solve(system, x0, t1=t1, step_size=step_size, key=k, saveat=saveat)
            path, diverged = sol.x, ~jnp.all(jnp.isfinite(sol.x))
        else:
            res = run_agents(
                euler_optimizer(system, step_size), x0, sde_matched_oracle(system, step_size),
                num_steps=steps, key=k, record_every=every,
                metrics_fn=lambda state: state.params,
            )  # fmt: skip
            path, diverged = res.metrics[first:], res.diverged_step >= 0
        x = path[-1]
        mean = jnp.mean(x, axis=0)
        per_agent = jax.vmap(jax.vmap(landscape.value))(path)  # (T, N)
        in_basin = jnp.mean(landscape.in_global_basin(path), axis=-1)  # (T,)
        bad = jnp.inf
        out = {
            "success": landscape.in_global_basin(mean) & ~diverged,
            "loss": jnp.where(diverged, bad, landscape.value(mean)),
            "diverged": diverged,
            "agent_success": jnp.where(diverged, 0.0, in_basin[-1]),
            "agent_loss": jnp.where(diverged, bad, jnp.mean(per_agent[-1])),
        }
        if times is not None:
            out["time_avg_loss"] = jnp.where(diverged, bad, jnp.mean(per_agent))
            out["time_avg_agent_success"] = jnp.where(diverged, 0.0, jnp.mean(in_basin))
        return out

    runs = jax.vmap(one, (None, None, 0))
    over_grid = jax.vmap(runs, (None, 0, None))
    over_sigma = jax.vmap(over_grid, (0, None, None))
    # No outer `jax.jit`: `solve` and `run_agents` compile themselves, and the optimizer's
    # constructor checks its (concrete) step size with host logic.
    out = over_sigma(jnp.asarray(sigmas, dtype=float), grid, keys)
    return {name: np.asarray(value) for name, value in out.items()}


def _average_times(t1, step_size, average_from, average_every) -> np.ndarray | None:
    """The times `t_a, t_a + Δ, …, t1` of the time averages, or None without averaging."""
    if average_from is None and average_every is None:
        return None
    if average_from is None or average_every is None:
        raise ValueError("average_from and average_every go together (both or neither)")
    if not 0 <= average_from < t1:
        raise ValueError(f"average_from must lie in [0, t1={t1}), got {average_from!r}")

    def multiple(name, value, of):
        q = value / of
        if not (of > 0 and abs(q - round(q)) <= 1e-6):
            raise ValueError(f"{name}={value!r} must be a positive multiple of {of!r}")

    multiple("average_every", average_every, step_size)
    multiple("t1", t1, average_every)
    if average_from > 0:
        multiple("average_from", average_from, average_every)
    count = round((t1 - average_from) / average_every) + 1
    return average_from + average_every * np.arange(count)


def wilson_interval(successes, n, z: float = 1.96):
    """Wilson score interval `(lo, hi)` for a binomial proportion (element-wise).

    `successes` out of `n` trials; `z = 1.96` gives 95%. The element-wise form of
    `experiments.harness.contract.proportion_interval` (clipped to [0, 1] like it).
    """
    p = np.asarray(successes, dtype=float) / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
