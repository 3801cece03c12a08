"""`python -m benchmarks [NAME ...]`: run benchmarks, write JSON to benchmarks/results/.

NAME is a module below (`bench_sde`) or its short name (`sde`); none runs them all.

On a machine without an accelerator the process exposes one CPU device per core
(`jax_num_cpu_devices`, set before JAX starts; `COUPLED_SGD_BENCH_CPU_DEVICES=k` chooses k),
so the training benchmarks can also time the agent axis sharded over the cores, the
project's documented way to use a multi-core CPU (docs/scaling.md). Programs that are not
sharded run on the first device as in any other process.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax

BENCHMARKS = (
    "bench_rng",
    "bench_sde",
    "bench_sde_peers",
    "bench_training",
    "bench_async",
    "bench_memory",
    "bench_scaling",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device": dev.device_kind,
        "device_count": jax.device_count(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }


def cpu_devices() -> int:
    """CPU devices to expose: `COUPLED_SGD_BENCH_CPU_DEVICES`, else one per core."""
    value = os.environ.get("COUPLED_SGD_BENCH_CPU_DEVICES", "")
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"COUPLED_SGD_BENCH_CPU_DEVICES must be an integer >= 1, got {value!r}")
    return int(value)


def benchmark_names(argv: list[str]) -> list[str]:
    """The benchmarks to run: every one for no arguments, else those named (`bench_sde` or
    just `sde`). An unknown name raises `SystemExit` listing the known ones, before any runs."""
    if not argv:
        return [n for n in BENCHMARKS if importlib.util.find_spec(f"benchmarks.{n}")]
    names = [a if a in BENCHMARKS else f"bench_{a}" for a in argv]
    unknown = [a for a, n in zip(argv, names) if n not in BENCHMARKS]
    if unknown:
        known = ", ".join(n.removeprefix("bench_") for n in BENCHMARKS)
        raise SystemExit(f"unknown benchmark(s) {', '.join(map(repr, unknown))}; known: {known}")
    return list(dict.fromkeys(names))  # each once, in the order given


def main(argv: list[str]) -> int:
    names = benchmark_names(argv)
    # Before anything starts JAX's backends; it has no effect on accelerator devices.
    jax.config.update("jax_num_cpu_devices", cpu_devices())
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    info = machine()
    started = time.perf_counter()
    for name in names:
        start = time.perf_counter()
        result = importlib.import_module(f"benchmarks.{name}").main()
        result["seconds"] = time.perf_counter() - start  # make bench must stay under 10 min
        result["machine"] = info
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
        summary = {k: v for k, v in result.items() if k not in ("timings", "machine", "seconds")}
        print(f"{name} ({result['seconds']:.0f} s): {json.dumps(summary)}")
    print(f"machine: {info}; {time.perf_counter() - started:.0f} s in all; JSON in {out_dir}")
    from . import plot

    print(plot.main(out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
