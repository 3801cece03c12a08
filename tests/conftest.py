"""Suite-wide set-up: float64 and strict rank promotion, XLA's quick-compile settings, `getkey`.

About four fifths of the suite's time on a CPU is XLA compiling its several hundred small
programs (many tests compile their own solve, optimizer loop or experiment), not running
them. XLA's CPU backend compiles them a good third faster with its legacy fusion emitters
and without LLVM's optimization passes (`QUICK_COMPILE_FLAGS`); what the tests check (two
forms of a rule agreeing to round-off, closed forms, NumPy references, determinism) holds
under either setting, since both sides of every comparison are compiled alike. The flags are
used only where this XLA accepts them (an unknown flag aborts the process, so they are tried
once in a subprocess), and `COUPLED_SGD_TEST_XLA_DEFAULTS=1` runs the suite with XLA's
defaults. Subprocesses the tests start (sharding, multi-process) inherit them.
"""

import os
import subprocess
import sys

QUICK_COMPILE_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")
_CHECKED = "COUPLED_SGD_TEST_XLA_FLAGS_CHECKED"  # set once per run: xdist workers inherit it


def _xla_accepts(flags: str) -> bool:
    probe = "import jax; jax.devices()"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
    return done.returncode == 0


def _quick_compile_flags() -> None:
    """Add `QUICK_COMPILE_FLAGS` to XLA_FLAGS (before any backend starts) where accepted."""
    if os.environ.get(_CHECKED) or os.environ.get("COUPLED_SGD_TEST_XLA_DEFAULTS") == "1":
        return
    os.environ[_CHECKED] = "1"
    current = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in current}
    extra = [f for f in QUICK_COMPILE_FLAGS if f.split("=")[0] not in names]
    if extra and _xla_accepts(" ".join(current + extra)):
        os.environ["XLA_FLAGS"] = " ".join(current + extra)


_quick_compile_flags()

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402

# Oracle comparisons need float64; strict promotion catches silent dtype mixing.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_report_header(config):
    return f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(XLA defaults)'}"


@pytest.fixture
def getkey():
    """A fresh, deterministic PRNG key per call within a test."""
    counter = iter(range(1_000_000))

    def _getkey():
        return jr.key(next(counter))

    return _getkey
