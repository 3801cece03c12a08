"""Scaling in the number of agents: time per EASGD step for N = 1 … 1024, and the fraction
of the machine's measured matmul FLOP rate that the training step reaches.

The step is `bench_training`'s (MLP 40 → 100 → 100 → 10 on MNIST-1D, batch 32, EASGD),
compiled once per N; its work is counted as `6 × params × batch` FLOPs per agent-step (the
forward and backward matmuls; element-wise work and minibatch gathers are not counted). The
reference rate is a jitted `float32` matmul of two `MATMUL_SIZE²` matrices (2n³ FLOPs).
On several devices the agent axis is sharded over all of them (`bench_training`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .bench_training import flops_per_agent_step, jax_training
from .timing import time_alternating

AGENTS = (1, 4, 16, 64, 256, 1024)
AGENT_STEPS = 2048  # per timed run
MATMUL_SIZE = 2048


def matmul_flops_per_s(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """The measured FLOP rate of one jitted square float32 matmul, 2n³ / median time."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.dot)
    timing = time_alternating({"matmul": lambda: matmul(a, b)}, repeats)["matmul"]
    return 2.0 * size**3 / timing["median_s"]


def main(repeats: int = 3, agents=AGENTS, agent_steps: int = AGENT_STEPS) -> dict:
    peak = matmul_flops_per_s()
    per_agent = flops_per_agent_step()
    rows = []
    for n in agents:
        steps = max(agent_steps // n, 2)
        timing = time_alternating({"jax": jax_training(n, steps)}, repeats)["jax"]
        step_s = timing["median_s"] / steps
        rate = n * per_agent / step_s
        rows.append(
            {
                "agents": n,
                "steps": steps,
                "time_per_step_s": step_s,
                "agent_steps_per_s": n / step_s,
                "flops_per_s": rate,
                "fraction_of_matmul_rate": rate / peak,
            }
        )
        print(f"  scaling N={n}: {step_s * 1e3:.2f} ms/step, {rate / 1e9:.1f} GFLOP/s", flush=True)
    largest = rows[-1]["fraction_of_matmul_rate"]
    return {
        "benchmark": "scaling_time_per_step_vs_agents",
        "devices": jax.device_count(),
        "matmul_size": MATMUL_SIZE,
        "matmul_flops_per_s": peak,
        "flops_per_agent_step": per_agent,
        "rows": rows,
        "fraction_at_largest_n": largest,
        "goal": "none set: reported",
    }
