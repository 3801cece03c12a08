"""Gradient oracles: `oracle(params, key, step) -> (losses (N,), grads)` for all agents.

`step` is the integer step index k (not a time). Oracles for landscapes add synthetic
Gaussian gradient noise; minibatch oracles for networks live in `experiments.tasks`.
"""

from __future__ import annotations

import math

import jax

from dynamics.brownian import step_normal
from dynamics.landscapes import AbstractLandscape
from dynamics.noise import AbstractNoise, IsotropicNoise
from dynamics.system import CoupledSystem

__all__ = ["landscape_oracle", "sde_matched_oracle"]


def landscape_oracle(landscape: AbstractLandscape, noise: AbstractNoise | None = None, scale=1.0):
    """Noisy gradients `g_i = ∇f(x_i) − scale · σ(x_i) n_{k,i}` for params `(N, dim)`.

    `n_k = step_normal(key, k, (N, dim))` are the same standard normals as the k-th
    increment of `dynamics.brownian.StepBrownianPath`; the minus sign (the noise is
    symmetric) makes a gradient step `−h η g` add `+σ sqrt(h) n_k` when
    `scale = 1 / (η sqrt(h))`, as Euler–Maruyama does.
    """
    noise = IsotropicNoise(0.0) if noise is None else noise
    noise.check_dim(landscape.dim)
    scale = float(scale)
    noiseless = noise.is_zero()

    def oracle(params, key, step):
        losses = jax.vmap(landscape.value)(params)
        grads = jax.vmap(landscape.grad)(params)
        if noiseless:
            return losses, grads
        n = step_normal(key, step, params.shape, params.dtype)
        return losses, grads - scale * jax.vmap(noise.apply)(params, n)

    return oracle


def sde_matched_oracle(system: CoupledSystem, step_size: float):
    """The oracle whose Euler step h reproduces `system`'s Euler–Maruyama path.

    Gradient noise covariance is `σσᵀ / (η² h)`, i.e. the SDE noise σ corresponds to
    discrete SGD with step `hη` and gradient-noise covariance `Σ = σσᵀ/(η² h)` (PAPERS.md §1).
    """
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    scale = 1.0 / (system.learning_rate * math.sqrt(step_size))
    return landscape_oracle(system.landscape, system.noise, scale)
