"""The unrolled threefry lowering (`dynamics.rng`) draws exactly JAX's default bits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np

import dynamics
from dynamics import rng

REPO = Path(__file__).resolve().parents[1]

# Draws of every kind the library makes (normal, integers, uniform, permutations, split,
# fold_in), under jit, vmap and scan, in float32 and float64 (x64 is set by conftest).
PROGRAM = """
import sys
import jax, jax.numpy as jnp, jax.random as jr, numpy as np
jax.config.update("jax_enable_x64", True)
{setup}
def draws(seed):
    key = jr.key(seed)
    k1, k2, k3 = jr.split(key, 3)
    out = [
        jr.normal(k1, (7, 5)),
        jr.normal(k1, (3,), jnp.float32),
        jr.randint(k2, (33,), 0, 1000),
        jr.uniform(jr.fold_in(k3, 12345), (4, 4)),
        jr.permutation(k3, 50),
        jr.bits(jr.fold_in(key, 2**31 - 1), (9,)),
        jax.vmap(lambda k: jr.normal(k, (6,)))(jr.split(k2, 4)),
    ]
    def step(c, k):
        return c + jr.normal(jr.fold_in(key, k), c.shape), None
    out.append(jax.lax.scan(step, jnp.zeros((3, 2)), jnp.arange(17))[0])
    return out
arrays = jax.jit(draws)(3) + jax.jit(draws)(11)
np.savez({out!r}, *[np.asarray(a) for a in arrays])
"""


def _draw_in_subprocess(tmp_path, name, env_value, setup):
    path = tmp_path / f"{name}.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env["COUPLED_SGD_ROLLED_THREEFRY"] = env_value
    code = PROGRAM.format(setup=setup, out=str(path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    return _load(path)


def _load(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))]


def test_unrolled_lowering_is_active_on_import():
    assert jax.__version__ and dynamics.rng is rng
    # The test process imported dynamics without the opt-out variable.
    if os.environ.get("COUPLED_SGD_ROLLED_THREEFRY", "") in ("", "0"):
        assert rng.unrolled_threefry_active()
        assert rng.use_unrolled_threefry()  # idempotent


def test_unrolled_draws_are_bit_identical_to_jax_default(tmp_path):
    # With the opt-out variable the library leaves JAX's default (rolled) lowering in place;
    # the assertion in `setup` fails the subprocess (check=True) if the opt-out is ignored.
    # The same program then runs here, where `dynamics` is imported (the unrolled lowering).
    assert rng.unrolled_threefry_active()
    rolled = "import dynamics; assert not dynamics.rng.unrolled_threefry_active()"
    default = _draw_in_subprocess(tmp_path, "rolled", "1", rolled)
    path = tmp_path / "unrolled.npz"
    exec(compile(PROGRAM.format(setup="", out=str(path)), "draws", "exec"), {"__name__": "draws"})
    unrolled = _load(path)
    assert len(default) == len(unrolled) == 16
    for a, b in zip(default, unrolled):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_in_process_draws_match_numpy_threefry():
    # An independent oracle for the in-process (unrolled) lowering: Threefry-2x32 with 20
    # rounds written in NumPy (Salmon et al. 2011), applied to the key and counter words
    # that `jax.random.bits` feeds it for a tiny draw.
    def rotl(v, r):
        return ((v << np.uint32(r)) | (v >> np.uint32(32 - r))).astype(np.uint32)

    def threefry2x32(k0, k1, x0, x1):
        rot = [(13, 15, 26, 6), (17, 29, 16, 24)]
        ks = [np.uint32(k0), np.uint32(k1), np.uint32(k0) ^ np.uint32(k1) ^ np.uint32(0x1BD11BDA)]
        x0, x1 = np.uint32(x0) + ks[0], np.uint32(x1) + ks[1]
        for i in range(5):
            for r in rot[i % 2]:
                x0 = np.uint32(x0 + x1)
                x1 = rotl(x1, r) ^ x0
            x0 = np.uint32(x0 + ks[(i + 1) % 3])
            x1 = np.uint32(x1 + ks[(i + 2) % 3] + np.uint32(i + 1))
        return x0, x1

    # Known-answer vectors of Random123 (key, counter -> output) pin the NumPy oracle itself.
    known = {
        (0, 0, 0, 0): (0x6B200159, 0x99BA4EFE),
        (0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3): (0xC4923A9C, 0x483DF7A0),
    }
    with np.errstate(over="ignore"):
        for (k0, k1, c0, c1), answer in known.items():
            expect = threefry2x32(k0, k1, c0, c1)
            assert (int(expect[0]), int(expect[1])) == answer
            got = jax.jit(
                lambda a, b, c, d: jex_random.threefry_2x32(jnp.stack([a, b]), jnp.stack([c, d]))
            )(*(jnp.uint32(v) for v in (k0, k1, c0, c1)))
            assert [int(v) for v in np.asarray(got)] == [int(v) for v in expect]
