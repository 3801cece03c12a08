import jax
import jax.random as jr
import pytest

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
