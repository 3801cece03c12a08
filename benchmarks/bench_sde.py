"""SDE integration: `dynamics.solve` (Diffrax) against hand-written Euler–Maruyama loops.

The system: N = 256 agents, d = 100, quadratic f with a diagonal Hessian, all-to-all coupling
`k(x̄ − x_i)`, additive σ; 10⁴ Euler–Maruyama steps, final state only. Contenders:

- `lax_scan`: a hand-written `lax.scan` that draws step k's normals as
  `normal(fold_in(key, k))`, as `solve` does, so the two compute the same path (checked);
- `torch_loop[Nt]`: the same Euler–Maruyama loop hand-written in PyTorch (`torch.randn`
  per step, no autograd), with one intra-op thread and with PyTorch's default; the faster
  is compared. (torchsde is `bench_sde_peers`.)
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
GOAL_RATIO_OVER_SCAN_MAX = 1.15  # solve / lax_scan
GOAL_SPEEDUP_OVER_TORCH_MIN = 1.5  # best torch_loop / solve


def torch_loop_contender(steps: int):
    """The Euler–Maruyama loop of this system hand-written in PyTorch (float32, no grad)."""
    import torch

    hess = torch.linspace(0.5, 2.0, DIM)
    x0 = torch.ones(N_AGENTS, DIM)
    scale = SIGMA * DT**0.5
    generator = torch.Generator().manual_seed(0)

    def run():
        with torch.no_grad():
            x = x0.clone()
            for _ in range(steps):
                drift = -hess * x + GAIN * (x.mean(0, keepdim=True) - x)
                noise = torch.randn(x.shape, generator=generator)
                x = x + DT * drift + scale * noise
            return x

    return run


def step_components(steps: int, repeats: int, torch=None) -> dict:
    """Microseconds per step of the pieces of an Euler–Maruyama step (N·d numbers per step):
    threefry bits alone, standard normals (bits + the inverse-erf transform), the drift
    alone (no random numbers), and PyTorch's `randn` alone (one thread)."""
    shape = (N_AGENTS, DIM)
    h = jnp.linspace(0.5, 2.0, DIM)

    def scan_of(draw):
        @jax.jit
        def run(key):
            def step(x, k):
                return x + draw(jr.fold_in(key, k), x), None

            return jax.lax.scan(step, jnp.ones(shape), jnp.arange(steps, dtype=jnp.int32))[0]

        return lambda: run(jr.key(1))

    contenders = {
        "threefry_bits": scan_of(lambda k, x: jr.bits(k, shape).astype(jnp.float32)),
        "normals": scan_of(lambda k, x: jr.normal(k, shape)),
        "drift_only": scan_of(lambda k, x: DT * (-h * x + GAIN * (x.mean(0) - x))),
    }
    if torch is not None:
        generator = torch.Generator().manual_seed(0)

        def randn():
            torch.set_num_threads(1)
            for _ in range(steps):
                out = torch.randn(shape, generator=generator)
            return out

        contenders["torch_randn[1t]"] = randn
    timings = time_alternating(contenders, repeats)
    return {k: 1e6 * v["median_s"] / steps for k, v in timings.items()}


def _with_threads(torch, threads: int, fn):
    def run():
        torch.set_num_threads(threads)
        return fn()

    return run


def main(repeats: int = 5, steps: int = STEPS) -> dict:
    hess = np.linspace(0.5, 2.0, DIM)
    system = CoupledSystem(Quadratic(hess), MeanField(GAIN), IsotropicNoise(SIGMA))
    x0 = jnp.ones((N_AGENTS, DIM))
    key = jr.key(0)
    t1 = steps * DT

    def diffrax_solve():
        return solve(system, x0, t1=t1, step_size=DT, key=key, saveat=1).x[-1]

    h = jnp.asarray(hess)

    @jax.jit
    def scan_loop(x0, key):
        def step(x, k):
            drift = -h[None] * x + GAIN * (x.mean(0)[None] - x)
            noise = jr.normal(jr.fold_in(key, k), x.shape)
            return x + DT * drift + SIGMA * jnp.sqrt(DT) * noise, None

        return jax.lax.scan(step, x0, jnp.arange(steps, dtype=jnp.int32))[0]

    max_diff = float(jnp.abs(diffrax_solve() - scan_loop(x0, key)).max())
    contenders = {"diffrax_solve": diffrax_solve, "lax_scan": lambda: scan_loop(x0, key)}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        default_threads = torch.get_num_threads()
        for threads in sorted({1, default_threads}):
            contenders[f"torch_loop[{threads}t]"] = _with_threads(
                torch, threads, torch_loop_contender(steps)
            )
    timings = time_alternating(contenders, repeats)
    ratio = timings["diffrax_solve"]["median_s"] / timings["lax_scan"]["median_s"]
    components = step_components(min(steps, 2000), repeats, torch)
    if torch is not None:
        torch.set_num_threads(default_threads)
    result = {
        "benchmark": "sde_solve_vs_lax_scan",
        "agents": N_AGENTS,
        "dim": DIM,
        "steps": steps,
        "timings": timings,
        "ratio_diffrax_over_scan": ratio,
        "goal_ratio_max": GOAL_RATIO_OVER_SCAN_MAX,
        "goal_met": ratio <= GOAL_RATIO_OVER_SCAN_MAX,
        "max_abs_diff_between_paths": max_diff,
        "us_per_step": {k: 1e6 * v["median_s"] / steps for k, v in timings.items()},
        "us_per_step_components": components,
        "goal_speedup_over_torch_loop_min": GOAL_SPEEDUP_OVER_TORCH_MIN,
    }
    if torch is None:
        result["torch_loop"] = "skipped: torch not installed (pip install -e '.[bench]')"
        result["goal_met_torch_loop"] = result["torch_loop"]
    else:
        torch.set_num_threads(default_threads)
        best = min(v["median_s"] for k, v in timings.items() if k.startswith("torch_loop"))
        speedup = best / timings["diffrax_solve"]["median_s"]
        result["torch_loop"] = f"torch {torch.__version__}, threads {sorted({1, default_threads})}"
        result["speedup_diffrax_over_torch_loop"] = speedup
        result["goal_met_torch_loop"] = bool(speedup >= GOAL_SPEEDUP_OVER_TORCH_MIN)
    return result
