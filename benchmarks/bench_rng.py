"""Random-number draws: `dynamics.rng`'s unrolled threefry lowering against JAX's default.

The draws of an Euler–Maruyama step of `bench_sde` (N·d = 25,600 float32 numbers per step,
keyed by `fold_in(key, k)`): threefry bits alone and standard normals, in a `lax.scan` of
`STEPS` steps. This process has imported `dynamics` (the unrolled lowering); the same program
runs in a subprocess with `COUPLED_SGD_ROLLED_THREEFRY=1` (JAX's default, rolled lowering).
Both print the microseconds per step and a checksum of the bits, which must be equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SHAPE = (256, 100)
STEPS = 2000
REPEATS = 5

PROGRAM = f"""
import json, statistics, time
import jax, jax.numpy as jnp, jax.random as jr
import dynamics

def scan_of(draw):
    @jax.jit
    def run(key):
        def step(x, k):
            return x + draw(jr.fold_in(key, k)), None
        return jax.lax.scan(step, jnp.zeros({SHAPE}), jnp.arange({STEPS}, dtype=jnp.int32))[0]
    return run

runs = {{
    "bits": scan_of(lambda k: jr.bits(k, {SHAPE}).astype(jnp.float32)),
    "normals": scan_of(lambda k: jr.normal(k, {SHAPE})),
}}
out = {{"unrolled": dynamics.rng.unrolled_threefry_active()}}
key = jr.key(3)
for name, run in runs.items():
    first = run(key).block_until_ready()
    times = []
    for _ in range({REPEATS}):
        start = time.perf_counter()
        run(key).block_until_ready()
        times.append(time.perf_counter() - start)
    out[name + "_us_per_step"] = 1e6 * statistics.median(times) / {STEPS}
    out[name + "_checksum"] = float(jnp.sum(first.astype(jnp.float64)))
print(json.dumps(out))
"""


def _run(rolled: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env["COUPLED_SGD_ROLLED_THREEFRY"] = "1" if rolled else ""
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> dict:
    # Both in subprocesses, alternately, so neither inherits the other's compiled programs.
    unrolled, rolled = _run(rolled=False), _run(rolled=True)
    if not unrolled["unrolled"] or rolled["unrolled"]:
        raise RuntimeError("the lowering switch did not take effect")
    same = all(unrolled[k] == rolled[k] for k in ("bits_checksum", "normals_checksum"))
    return {
        "benchmark": "threefry_unrolled_vs_default",
        "numbers_per_step": SHAPE[0] * SHAPE[1],
        "steps": STEPS,
        "unrolled": unrolled,
        "rolled": rolled,
        "speedup_bits": rolled["bits_us_per_step"] / unrolled["bits_us_per_step"],
        "speedup_normals": rolled["normals_us_per_step"] / unrolled["normals_us_per_step"],
        "same_numbers": bool(same),
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
