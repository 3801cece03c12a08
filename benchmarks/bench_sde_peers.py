"""SDE integration against torchsde: `dynamics.solve` (Diffrax) vs `torchsde.sdeint`.

The system of `benchmarks.bench_sde` (N = 256 agents, d = 100, quadratic f with a diagonal
Hessian, all-to-all coupling `k(x̄ − x_i)`, additive σ), 10⁴ Euler–Maruyama steps of
h = 10⁻³, final state only. torchsde integrates the same drift and diagonal diffusion with
`method="euler"` and its default Brownian motion (a `BrownianInterval`), as a researcher
using it would; it runs with one intra-op thread and with its default, and the faster is
compared (a loaded machine can make PyTorch's thread pool much slower). The comparison
against a hand-written `lax.scan` loop is `bench_sde`.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from dynamics.coupling import MeanField
from dynamics.landscapes import Quadratic
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve
from dynamics.system import CoupledSystem

from .bench_sde import DIM, DT, GAIN, N_AGENTS, SIGMA, STEPS
from .timing import time_alternating

GOAL_SPEEDUP_MIN = 15.0


def diffrax_contender(steps: int):
    hess = np.linspace(0.5, 2.0, DIM)
    system = CoupledSystem(Quadratic(hess), MeanField(GAIN), IsotropicNoise(SIGMA))
    x0 = jnp.ones((N_AGENTS, DIM))
    key, t1 = jr.key(0), steps * DT
    return lambda: solve(system, x0, t1=t1, step_size=DT, key=key, saveat=1).x[-1]


def torchsde_contender(steps: int):
    import torch
    import torchsde

    hess = torch.linspace(0.5, 2.0, DIM)

    class Coupled(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, x):  # drift, (N, d)
            return -hess * x + GAIN * (x.mean(0, keepdim=True) - x)

        def g(self, t, x):  # diagonal diffusion, (N, d)
            return torch.full_like(x, SIGMA)

    sde = Coupled()
    x0 = torch.ones(N_AGENTS, DIM)
    ts = torch.tensor([0.0, steps * DT])

    def run():
        with torch.no_grad():
            return torchsde.sdeint(sde, x0, ts, method="euler", dt=DT)[-1]

    return run


def _with_threads(torch, threads: int, fn):
    def run():
        torch.set_num_threads(threads)
        return fn()

    return run


def main(repeats: int = 3, steps: int = STEPS) -> dict:
    result = {
        "benchmark": "sde_solve_vs_torchsde",
        "agents": N_AGENTS,
        "dim": DIM,
        "steps": steps,
        "goal_speedup_min": GOAL_SPEEDUP_MIN,
    }
    try:
        import torch
        import torchsde
    except ImportError:
        result["torchsde"] = "skipped: torch/torchsde not installed (pip install -e '.[bench]')"
        result["goal_met"] = result["torchsde"]
        return result
    default_threads = torch.get_num_threads()
    contenders = {"diffrax_solve": diffrax_contender(steps)}
    for threads in sorted({1, default_threads}):
        contenders[f"torchsde[{threads}t]"] = _with_threads(
            torch, threads, torchsde_contender(steps)
        )
    # torchsde compiles nothing and one of its runs takes about half a minute: warming it up
    # would spend a minute of `make bench` on runs that are thrown away.
    timings = time_alternating(contenders, repeats, warm_up=("diffrax_solve",))
    torch.set_num_threads(default_threads)
    best_torchsde = min(v["median_s"] for k, v in timings.items() if k.startswith("torchsde"))
    speedup = best_torchsde / timings["diffrax_solve"]["median_s"]
    result.update(
        torchsde=f"torchsde {torchsde.__version__}, torch {torch.__version__}",
        timings=timings,
        speedup_diffrax_over_torchsde=speedup,
        goal_met=bool(speedup >= GOAL_SPEEDUP_MIN),
    )
    return result
