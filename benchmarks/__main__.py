"""`python -m benchmarks [NAME ...]`: run benchmarks, write JSON to benchmarks/results/."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import sys
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


def main(argv: list[str]) -> int:
    names = argv or [n for n in BENCHMARKS if importlib.util.find_spec(f"benchmarks.{n}")]
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    info = machine()
    for name in names:
        result = importlib.import_module(f"benchmarks.{name}").main()
        result["machine"] = info
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
        summary = {k: v for k, v in result.items() if k not in ("timings", "machine")}
        print(f"{name}: {json.dumps(summary)}")
    print(f"machine: {info}; JSON in {out_dir}")
    from . import plot

    print(plot.main(out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
