"""Memory of simulated asynchrony against the number of workers W and the delay bound τ_max.

For the worker pool (`run_pool`, one snapshot per worker: O(W × params)) and the delayed
iterate recursion (`delayed_sgd`, a ring buffer of τ_max + 1 iterates: O(τ_max × params)),
each at several sizes, the compiled program's memory is read from XLA's buffer assignment
(`jax.jit(f).lower(...).compile().memory_analysis()`): the peak is taken as
temporaries + arguments + outputs − aliased bytes. A least-squares line
`bytes = base + slope × size` is fitted and the slope is expressed in copies of the
parameters (`slope / (params × 4 bytes)`): the model predicts one copy per worker (per slot).

Model: the MLP 40 → 100 → 100 → 10 on MNIST-1D of `bench_async` (15,210 float32 params).
The delay SDE (`dynamics.solve_delayed`: `DelayedEuler` keeps D + 1 states in its solver
state, O(D × state)) is measured the same way against its delay D in steps, with N = 64
agents in d = 100 on a quadratic, mean-field coupling read D steps late; its unit is one
copy of the positions (N·d float32).
Nothing is run, only compiled, so this benchmark takes seconds.
"""

from __future__ import annotations

import jax
import numpy as np

from algorithms.asynchrony import compute_time, constant_rate, delayed_sgd, run_pool, uniform_delay

SIZES = (1, 4, 16, 64, 256)
HIDDEN = (100, 100)
BATCH = 64
UPDATES = 10
COPIES_MAX = 2.0  # goal: at most this many parameter copies per worker (per delay slot)
R2_MIN = 0.999  # goal: memory is linear in W (in τ_max)


def _grad_fn_and_params():
    from .bench_async import _setup

    return _setup(BATCH, HIDDEN)


def _compiled_bytes(fn, *args) -> dict:
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    peak = (
        stats.temp_size_in_bytes
        + stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return {
        "peak_bytes": int(peak),
        "temp_bytes": int(stats.temp_size_in_bytes),
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
    }


def _fit(sizes, peaks, param_bytes: int) -> dict:
    sizes, peaks = np.asarray(sizes, float), np.asarray(peaks, float)
    slope, base = np.polyfit(sizes, peaks, 1)
    predicted = base + slope * sizes
    r2 = 1 - np.sum((peaks - predicted) ** 2) / max(np.sum((peaks - peaks.mean()) ** 2), 1e-30)
    copies = slope / param_bytes
    return {
        "base_bytes": float(base),
        "slope_bytes": float(slope),
        "copies_of_params_per_unit": float(copies),
        "r2_linear": float(r2),
        "goal_met": bool(r2 >= R2_MIN and copies <= COPIES_MAX),
    }


def _sdde_bytes(delay_steps: int, num_agents: int = 64, dim: int = 100) -> dict:
    import jax.numpy as jnp

    from dynamics import CoupledSystem, DelayedSystem, IsotropicNoise, MeanField, Quadratic
    from dynamics.delay import solve_delayed

    system = DelayedSystem(
        CoupledSystem(Quadratic(np.linspace(0.5, 2.0, dim)), MeanField(1.0), IsotropicNoise(0.1)),
        coupling_delay=delay_steps,
    )

    def run(x0, key):
        return solve_delayed(system, x0, t1=0.1, step_size=0.01, key=key, saveat=1).x

    return _compiled_bytes(run, jnp.zeros((num_agents, dim), jnp.float32), jax.random.key(0))


def main(sizes=SIZES) -> dict:
    grad_fn, params = _grad_fn_and_params()
    num_params = int(sum(p.size for p in jax.tree.leaves(params)))
    param_bytes = int(sum(p.nbytes for p in jax.tree.leaves(params)))
    key = jax.random.key(0)

    def pool(workers):
        times = compute_time("exponential", workers)

        def run(params, key):
            return run_pool(
                grad_fn, constant_rate(0.05), params, key, times=times, num_arrivals=1,
                num_steps=UPDATES,
            ).params  # fmt: skip

        return _compiled_bytes(run, params, key)

    def delayed(tau_max):
        def run(params, key):
            return delayed_sgd(grad_fn, params, uniform_delay(tau_max), 0.05, UPDATES, key).params

        return _compiled_bytes(run, params, key)

    result = {
        "benchmark": "async_memory_vs_workers_and_delay",
        "model": f"MLP{(40, *HIDDEN, 10)}, {num_params} float32 params ({param_bytes} bytes)",
        "sizes": list(sizes),
        "goal": f"memory linear in W and τ_max (R² >= {R2_MIN}) with at most {COPIES_MAX} "
        "parameter copies per worker / delay slot",
    }
    state_bytes = 64 * 100 * 4  # the SDDE's positions, N·d float32
    for name, measure, unit in (
        ("pool_workers", pool, param_bytes),
        ("delay_tau_max", delayed, param_bytes),
        ("sdde_delay", _sdde_bytes, state_bytes),
    ):
        rows = [measure(int(s)) for s in sizes]
        fit = _fit(sizes, [r["peak_bytes"] for r in rows], unit)
        model = [fit["base_bytes"] + unit * s for s in sizes]  # one copy per unit
        result[name] = {"measured": rows, "model_one_copy_bytes": model, **fit}
    keys = ("pool_workers", "delay_tau_max", "sdde_delay")
    result["goal_met"] = {k: result[k]["goal_met"] for k in keys}
    return result
