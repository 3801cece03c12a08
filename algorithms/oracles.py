"""Gradient oracles: `oracle(params, key, step) -> (losses (N,), grads)` for all agents.

`step` is the integer step index k (not a time). Oracles for landscapes add synthetic
Gaussian gradient noise; `model_minibatch_oracle` draws real minibatches of a
`dynamics.ModelLandscape` (the SGD that `dynamics.MinibatchNoise` models); minibatch oracles on
Flax models and their pytrees live in `experiments.tasks`.
"""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dynamics.brownian import step_normal
from dynamics.landscapes import AbstractLandscape
from dynamics.network import ModelLandscape
from dynamics.noise import AbstractNoise, IsotropicNoise
from dynamics.system import CoupledSystem
from dynamics.types import GradFn, Oracle

__all__ = ["agent_oracle", "landscape_oracle", "model_minibatch_oracle", "sde_matched_oracle"]


def landscape_oracle(
    landscape: AbstractLandscape,
    noise: AbstractNoise | None = None,
    scale=1.0,
    brownian: diffrax.AbstractBrownianPath | None = None,
    step_size: float | None = None,
    noise_table: Float[Array, "steps agents dim"] | None = None,
    t0: float = 0.0,
) -> Oracle:
    """Noisy gradients `g_i = ∇f(x_i) − scale · σ(x_i) n_{k,i}` for params `(N, dim)`.

    By default `n_k = step_normal(key, k, (N, *noise.brownian_shape(dim)))` (`(N, dim)` for
    the square noise models) are the same standard normals as the k-th increment of
    `dynamics.brownian.StepBrownianPath`; the minus sign (the noise is
    symmetric) makes a gradient step `−h η g` add `+σ sqrt(h) n_k` when
    `scale = 1 / (η sqrt(h))`, as Euler–Maruyama does. At most one of the two other sources
    may be given instead (both ignore `key`):

    - `brownian` (a path of that shape) with `step_size` h: `n_k = (W(t0 + (k+1)h) −
      W(t0 + kh)) / sqrt(h)`, the increments of that path on the step grid, which couples runs
      at different step sizes to one Brownian path;
    - `noise_table` `(K, N, *noise.brownian_shape(dim))`: `n_k = noise_table[k]`, given
      numbers (e.g. recorded from another run). A step k outside `[0, K)` gets NaN noise
      (never a clamped row), so a run that needs more rows than given diverges visibly
      instead of reusing the last one.
    """
    if brownian is not None and noise_table is not None:
        raise ValueError("give at most one of brownian and noise_table")
    if brownian is not None and (step_size is None or step_size <= 0):
        raise ValueError(f"a brownian path needs step_size > 0, got {step_size!r}")
    noise = IsotropicNoise(0.0) if noise is None else noise
    noise.check_dim(landscape.dim)
    # One agent's standard normal n_k has the noise's Brownian shape ((dim,) unless the
    # noise says otherwise, e.g. (n,) for the exact minibatch noise of n examples).
    agent_shape = tuple(noise.brownian_shape(landscape.dim))
    if noise_table is not None:
        shape = np.shape(noise_table)
        if len(shape) != 2 + len(agent_shape) or shape[2:] != agent_shape or shape[0] < 1:
            want = ", ".join(map(str, agent_shape))
            raise ValueError(f"noise_table must have shape (steps, N, {want}), got {shape}")
    scale = float(scale)
    noiseless = noise.is_zero()

    def oracle(params, key, step):
        losses = jax.vmap(landscape.value)(params)
        grads = jax.vmap(landscape.grad)(params)
        if noiseless:
            return losses, grads
        if brownian is not None:
            t = t0 + step * step_size
            n = brownian.evaluate(t, t + step_size) / math.sqrt(step_size)
        elif noise_table is not None:
            table = jnp.asarray(noise_table, params.dtype)
            if table.shape[1:] != (params.shape[0], *agent_shape):
                raise ValueError(
                    f"noise_table rows have shape {table.shape[1:]}, need "
                    f"{(params.shape[0], *agent_shape)} for params {params.shape}"
                )
            n = jnp.take(table, step, axis=0, mode="fill", fill_value=jnp.nan)
        else:
            n = step_normal(key, step, (params.shape[0], *agent_shape), params.dtype)
        return losses, grads - scale * jax.vmap(noise.apply)(params, n)

    return oracle


def sde_matched_oracle(
    system: CoupledSystem,
    step_size: float,
    brownian: diffrax.AbstractBrownianPath | None = None,
    noise_table: Float[Array, "steps agents dim"] | None = None,
    t0: float = 0.0,
) -> Oracle:
    """The oracle whose Euler step h reproduces `system`'s Euler–Maruyama path.

    Gradient noise covariance is `σσᵀ / (η² h)`, i.e. the SDE noise σ corresponds to
    discrete SGD with learning rate `hη` and gradient-noise covariance `Σ = σσᵀ/(η² h)`
    (docs/papers.md). `brownian`, `noise_table` and `t0` (the time of step 0, for `brownian`)
    choose the noise as in `landscape_oracle`; `noise_table` holds the standard normals
    `n_k` (the Brownian increments divided by sqrt(h)).
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    scale = 1.0 / (system.gradient_scale * math.sqrt(step_size))
    return landscape_oracle(
        system.landscape, system.noise, scale, brownian, step_size, noise_table=noise_table, t0=t0
    )


def agent_oracle(grad_fn: GradFn) -> Oracle:
    """The oracle of N agents, each running the single-agent `grad_fn` on its own params.

    `oracle(params, key, k) = vmap(grad_fn)(params, keys)` with agent i's key
    `fold_in(fold_in(key, k), i)` at step k: agent i's random stream depends on (key, k, i)
    only, not on N. Every leaf of `params` has the agent axis N first.

    Args:
      grad_fn: `(params, key) -> (loss (), grad)` for one agent (`dynamics.types.GradFn`).

    Returns:
      `oracle(params, key, step) -> (losses (N,), grads)`.
    """

    def oracle(params, key, step):
        num_agents = jax.tree.leaves(params)[0].shape[0]
        step_key = jax.random.fold_in(key, step)
        keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(
            jnp.arange(num_agents, dtype=jnp.uint32)
        )
        return jax.vmap(grad_fn)(params, keys)

    return oracle


def model_minibatch_oracle(
    landscape: ModelLandscape, batch_size: int, *, replacement: bool = True
) -> Oracle:
    """Real minibatch SGD gradients on a `ModelLandscape`, for params `(N, dim)`.

    At step k agent i draws B example indices with the key `fold_in(fold_in(key, k), i)` (the
    `agent_oracle` convention: its batches do not depend on N) and returns the minibatch loss
    `(1/B) Σ_{j ∈ batch} ℓ_j(θ_i)` and its gradient `(dim,)`. Indices are uniform over the n
    examples, drawn *with replacement* (`jax.random.randint`) by default, or *without*
    (`jax.random.choice(..., replace=False)`). Either way the gradient is unbiased,
    `E g = ∇f(θ)`, with covariance `Σ(θ) = c_B C(θ)/B` (`c_B = 1` with replacement,
    `(n − B)/(n − 1)` without): what `dynamics.MinibatchNoise(landscape, B, lr,
    replacement=…)` puts in the SDE. Driving `euler_optimizer(system, h)` with this oracle
    is SGD with learning rate `lr = h·η`, to compare with `solve(system, …)`.
    Cost per agent and step: one gradient on B examples.
    """
    if not isinstance(landscape, ModelLandscape):
        raise TypeError(f"landscape must be a ModelLandscape, got {type(landscape)}")
    n = landscape.num_examples
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be an integer in [1, n={n}], got {batch_size!r}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, n={n}], got {batch_size!r}")
    batch = int(batch_size)
    value_and_grad = jax.value_and_grad(landscape.batch_loss)

    def grad_fn(params, key):
        if replacement:
            indices = jax.random.randint(key, (batch,), 0, n)
        else:
            indices = jax.random.choice(key, n, (batch,), replace=False)
        return value_and_grad(params, indices)

    return agent_oracle(grad_fn)
