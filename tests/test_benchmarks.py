"""The benchmark tools' own logic (timings live in `make bench`, never in tests)."""

import jax
import jax.numpy as jnp

from benchmarks.profile_training import hlo_kinds


def test_hlo_kinds_finds_matmuls_inside_fusions_and_names_their_jax_operation():
    def f(w, x):
        return jnp.tanh(x @ w).sum() + jnp.sum(w * 2.0)

    w, x = jnp.ones((16, 8)), jnp.ones((4, 16))
    compiled = jax.jit(jax.grad(f)).lower(w, x).compile().as_text()
    kinds = hlo_kinds(compiled)
    matmuls = [source for kind, source in kinds.values() if kind == "matmul"]
    # Forward x·w and the backward xᵀ·dy: two products, however XLA fuses them.
    assert len(matmuls) == 2, kinds
    assert any("transpose" in source for source in matmuls)
    assert {kind for kind, _ in kinds.values()} <= {"matmul", "copy", "other"}
    assert any(kind == "other" for kind, _ in kinds.values())  # tanh, sums, the scaling
