"""Scaling in the number of agents: time per EASGD step for N = 1 … 1024, and the fractions
of the machine's measured matmul FLOP rate and copy bandwidth that the training step reaches.

Bandwidth bound. At large N the step is memory-bound: parameters, gradients and activations
of all agents leave the caches. The least a step must move is each agent's parameters read
once and written once plus the EASGD center read and written once (`2 × 4 × (N + 1) × P`
bytes in float32; the minibatch inputs are small beside them). The machine's bandwidth is
that of a jitted copy `y = x + 1` of a `BANDWIDTH_BYTES` float32 array (read + write). The
bound time is bytes / bandwidth, and the reported fraction is bound time / measured time.

The step is `bench_training`'s (MLP 40 → 100 → 100 → 10 on MNIST-1D, batch 32, EASGD),
compiled once per N; its work is counted as `6 × params × batch` FLOPs per agent-step (the
forward and backward matmuls; element-wise work and minibatch gathers are not counted). The
reference rate is a jitted `float32` matmul of two `MATMUL_SIZE²` matrices (2n³ FLOPs).
When there are several local devices (on a CPU-only machine, `python -m benchmarks` makes
one per core) and their number D divides N, the agent axis is sharded over them
(`bench_training.shardable_devices`); each row records its D.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .bench_training import (
    flops_per_agent_step,
    jax_training,
    params_per_agent,
    shardable_devices,
)
from .timing import time_alternating

AGENTS = (1, 4, 16, 64, 256, 1024)
AGENT_STEPS = 2048  # per timed run
MATMUL_SIZE = 2048
BANDWIDTH_BYTES = 256 * 2**20
GOAL_BANDWIDTH_FRACTION = 0.5  # at the largest N


def copy_bandwidth(num_bytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Bytes per second moved by a jitted `x + 1` over a float32 array (read + write)."""
    x = jnp.zeros(num_bytes // 4, jnp.float32)
    add = jax.jit(lambda a: a + 1.0)
    timing = time_alternating({"copy": lambda: add(x)}, repeats)["copy"]
    return 2.0 * num_bytes / timing["median_s"]


def bytes_per_step(num_agents: int) -> float:
    """The least bytes an EASGD step must move: every agent's and the center's parameters
    read and written once (float32)."""
    return 2.0 * 4.0 * (num_agents + 1) * params_per_agent()


def matmul_flops_per_s(size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """The measured FLOP rate of one jitted square float32 matmul, 2n³ / median time."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.dot)
    timing = time_alternating({"matmul": lambda: matmul(a, b)}, repeats)["matmul"]
    return 2.0 * size**3 / timing["median_s"]


def main(repeats: int = 3, agents=AGENTS, agent_steps: int = AGENT_STEPS) -> dict:
    peak = matmul_flops_per_s()
    bandwidth = copy_bandwidth()
    per_agent = flops_per_agent_step()
    rows = []
    for n in agents:
        steps = max(agent_steps // n, 2)
        devices = shardable_devices(n)
        run = jax_training(n, steps, devices=devices)
        timing = time_alternating({"jax": run}, repeats)["jax"]
        step_s = timing["median_s"] / steps
        rate = n * per_agent / step_s
        rows.append(
            {
                "agents": n,
                "devices": devices,
                "steps": steps,
                "time_per_step_s": step_s,
                "agent_steps_per_s": n / step_s,
                "flops_per_s": rate,
                "fraction_of_matmul_rate": rate / peak,
                "bytes_per_step_bound": bytes_per_step(n),
                "fraction_of_bandwidth_bound": bytes_per_step(n) / bandwidth / step_s,
            }
        )
        print(f"  scaling N={n}: {step_s * 1e3:.2f} ms/step, {rate / 1e9:.1f} GFLOP/s", flush=True)
    largest = rows[-1]["fraction_of_matmul_rate"]
    bound = rows[-1]["fraction_of_bandwidth_bound"]
    return {
        "benchmark": "scaling_time_per_step_vs_agents",
        "devices": jax.device_count(),
        "matmul_size": MATMUL_SIZE,
        "matmul_flops_per_s": peak,
        "flops_per_agent_step": per_agent,
        "rows": rows,
        "fraction_at_largest_n": largest,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "bandwidth_fraction_at_largest_n": bound,
        "goal_bandwidth_fraction_min": GOAL_BANDWIDTH_FRACTION,
        "goal_met": bool(bound >= GOAL_BANDWIDTH_FRACTION),
    }
