"""SDE integration: `dynamics.solve` (Diffrax) against a hand-written `lax.scan` Euler–Maruyama.

The system: N = 256 agents, d = 100, quadratic f with a diagonal Hessian, all-to-all coupling
`k(x̄ − x_i)`, additive σ; 10⁴ Euler–Maruyama steps, final state only. Both draw step k's
normals as `normal(fold_in(key, k))`, so they compute the same path (checked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from dynamics.coupling import MeanField
from dynamics.landscapes import Quadratic
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve
from dynamics.system import CoupledSystem

from .timing import time_alternating

N_AGENTS, DIM, STEPS, DT, GAIN, SIGMA = 256, 100, 10_000, 1e-3, 1.0, 0.3


def main(repeats: int = 5, steps: int = STEPS) -> dict:
    hess = np.linspace(0.5, 2.0, DIM)
    system = CoupledSystem(Quadratic(hess), MeanField(GAIN), IsotropicNoise(SIGMA))
    x0 = jnp.ones((N_AGENTS, DIM))
    key = jr.key(0)
    t1 = steps * DT

    def diffrax_solve():
        return solve(system, x0, t1=t1, dt=DT, key=key, saveat=[t1]).x[-1]

    h = jnp.asarray(hess)

    @jax.jit
    def scan_loop(x0, key):
        def step(x, k):
            drift = -h[None] * x + GAIN * (x.mean(0)[None] - x)
            noise = jr.normal(jr.fold_in(key, k), x.shape)
            return x + DT * drift + SIGMA * jnp.sqrt(DT) * noise, None

        return jax.lax.scan(step, x0, jnp.arange(steps, dtype=jnp.int32))[0]

    max_diff = float(jnp.abs(diffrax_solve() - scan_loop(x0, key)).max())
    timings = time_alternating(
        {"diffrax_solve": diffrax_solve, "lax_scan": lambda: scan_loop(x0, key)}, repeats
    )
    ratio = timings["diffrax_solve"]["median_s"] / timings["lax_scan"]["median_s"]
    return {
        "benchmark": "sde_solve_vs_lax_scan",
        "agents": N_AGENTS,
        "dim": DIM,
        "steps": steps,
        "timings": timings,
        "ratio_diffrax_over_scan": ratio,
        "goal_ratio_max": 1.3,
        "goal_met": ratio <= 1.3,
        "max_abs_diff_between_paths": max_diff,
    }
