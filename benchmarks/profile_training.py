"""Where a training step's time goes: `python -m benchmarks.profile_training [N]`.

Runs `bench_training`'s JAX contender (EASGD on N MLPs, MNIST-1D, batch 32; default N = 64)
under `jax.profiler`, reads the trace back with `jax.profiler.ProfileData`, and prints the
time of every compiled operation per agent-step, summed over XLA's worker threads, with
its kind read from the optimized HLO:

- `matmul`: a `dot`, or a fusion that contains one (the forward products and the backward
  products dy·Wᵀ and xᵀ·dy);
- `copy`: a `copy` (e.g. the loop-carried parameters copied at the loop boundary);
- `other`: element-wise and reduction fusions, gathers, scatters, random bits.

The sum over threads can exceed the wall time when XLA runs independent operations side by
side. Not part of `make bench` (nothing here has a goal); it is the tool behind the
README's account of the training goals.
"""

from __future__ import annotations

import collections
import re
import sys
import tempfile
import time
from pathlib import Path

import jax

from .bench_training import flops_per_agent_step, jax_training, num_steps_for

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ (\w[\w-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")  # the computation a fusion or call runs


def hlo_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (kind, source) for the instructions of an HLO module that run as
    operations of their own (those inside fusion bodies are counted with their fusion): kind
    is "matmul", "copy" or "other", source the end of the JAX operation's name (metadata)."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^%?([\w.\-]+) .*\{\s*$", line) or re.match(r"^ENTRY %?([\w.\-]+)", line)
        if header:
            current = header.group(1)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)

    def contains_dot(name: str, seen: frozenset = frozenset()) -> bool:
        for line in bodies.get(name, ()):
            if re.search(r"= \S+ (dot|convolution)\(", line):
                return True
            called = _CALLS.search(line)
            if (
                called
                and called.group(1) not in seen
                and contains_dot(called.group(1), seen | {name})
            ):
                return True
        return False

    fused = {
        called.group(1)
        for lines in bodies.values()
        for line in lines
        if " fusion(" in line and (called := _CALLS.search(line))
    }
    kinds = {}
    for computation, lines in bodies.items():
        if computation in fused:  # its instructions run inside their fusion, not as events
            continue
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            name, opcode = match.group(1), match.group(2)
            called = _CALLS.search(line)
            source = re.search(r'op_name="([^"]*)"', line)
            source = "/".join(source.group(1).split("/")[-3:]) if source else ""
            if opcode in ("dot", "convolution") or (
                opcode == "fusion" and called and contains_dot(called.group(1))
            ):
                kinds[name] = ("matmul", source)
            elif opcode == "copy":
                kinds[name] = ("copy", source)
            else:
                kinds[name] = ("other", source)
    return kinds


def profile(num_agents: int = 64, repeats: int = 3) -> dict:
    """Per-operation time (µs per agent-step, summed over threads) and per-kind totals."""
    num_steps = num_steps_for(num_agents, 2048)
    run = jax_training(num_agents, num_steps)
    jax.block_until_ready(run())  # compile
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            start = time.perf_counter()
            for _ in range(repeats):
                jax.block_until_ready(run())
            wall = time.perf_counter() - start
        trace = next(Path(tmp).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(trace))
    kinds = hlo_kinds(run.compiled_text())
    per_op: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # XLA's worker threads run the operations
                continue
            for event in line.events:
                if event.name in kinds:
                    per_op[event.name] += event.duration_ns
    agent_steps = repeats * num_steps * num_agents
    us = {name: ns / agent_steps / 1e3 for name, ns in per_op.items()}
    totals = collections.Counter()
    for name, t in us.items():
        totals[kinds[name][0]] += t
    return {
        "agents": num_agents,
        "wall_us_per_agent_step": wall / agent_steps * 1e6,
        "us_per_agent_step": us,
        "kinds": kinds,
        "totals": totals,
    }


def main(argv: list[str]) -> int:
    num_agents = int(argv[0]) if argv else 64
    result = profile(num_agents)
    us, kinds, totals = result["us_per_agent_step"], result["kinds"], result["totals"]
    total = sum(totals.values())
    print(
        f"EASGD training step, N = {num_agents}: {result['wall_us_per_agent_step']:.1f} µs per "
        f"agent-step of wall time (under the profiler); per operation kind, summed over threads:"
    )
    for kind in ("matmul", "other", "copy"):
        print(f"  {kind:7s} {totals[kind]:7.1f} µs  ({100 * totals[kind] / total:.0f} %)")
    rate = flops_per_agent_step() / (totals["matmul"] * 1e-6)
    print(
        f"matmul work {flops_per_agent_step() / 1e6:.2f} MFLOP per agent-step: {rate / 1e9:.0f}"
        " GFLOP/s while in matmuls"
    )
    print("largest operations (µs per agent-step, kind, HLO name, JAX operation):")
    for name, t in sorted(us.items(), key=lambda item: -item[1])[:12]:
        kind, source = kinds[name]
        print(f"  {t:7.1f}  {kind:7s} {name:22s} {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
