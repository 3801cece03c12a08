import os
from pathlib import Path

import jax
import jax.random as jr
import pytest

# Compiled programs go to JAX's persistent cache, shared by the two test workers and the
# subprocesses the tests start (they inherit the variable): a rerun on the same machine
# skips most compilation. Entries are keyed by the program and the JAX version.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "xla")
)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
# Least recently used entries go beyond 512 MiB (JAX needs `filelock` for this: test extra).
jax.config.update("jax_compilation_cache_max_size", 512 * 2**20)

# Oracle comparisons need float64; strict promotion catches silent dtype mixing.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A fresh, deterministic PRNG key per call within a test."""
    counter = iter(range(1_000_000))

    def _getkey():
        return jr.key(next(counter))

    return _getkey
