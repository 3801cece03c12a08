"""The project's shared type names, defined once.

- `PyTree`: any JAX pytree of arrays (parameters, optimizer states, auxiliary states).
- `GradientField`: a deterministic gradient `∇f`, one agent's parameters -> a pytree of the
  same structure (what a landscape's `grad` is).
- `GradFn`: one agent's stochastic gradient, `(params, key) -> (loss (), grad)`; `key` is that
  agent's key for this step. It is written for one agent and lifted over the agent axis by
  `jax.vmap` (`algorithms.oracles.agent_oracle`).
- `Oracle`: the gradients of all N agents at step k,
  `(params, key, step) -> (losses (N,), grads)`, every leaf of `params` and `grads` with the
  agent axis N first; `step` is the integer step index k, not a time. Runners call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jaxtyping import Array, Float, Int

__all__ = ["GradFn", "GradientField", "Oracle", "PyTree"]

PyTree = Any
GradientField = Callable[[PyTree], PyTree]
GradFn = Callable[[PyTree, jax.Array], tuple[Float[Array, ""], PyTree]]
Oracle = Callable[[PyTree, jax.Array, Int[Array, ""]], tuple[Float[Array, " agents"], PyTree]]
