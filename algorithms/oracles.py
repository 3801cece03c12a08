"""Gradient oracles: `oracle(params, key, step) -> (losses (N,), grads)` for all agents.

`step` is the integer step index k (not a time). Oracles for landscapes add synthetic
Gaussian gradient noise; minibatch oracles for networks live in `experiments.tasks`.
"""

from __future__ import annotations

import math

import diffrax
import jax

from dynamics.brownian import step_normal
from dynamics.landscapes import AbstractLandscape
from dynamics.noise import AbstractNoise, IsotropicNoise
from dynamics.system import CoupledSystem

__all__ = ["landscape_oracle", "sde_matched_oracle"]


def landscape_oracle(
    landscape: AbstractLandscape,
    noise: AbstractNoise | None = None,
    scale=1.0,
    brownian: diffrax.AbstractBrownianPath | None = None,
    step_size: float | None = None,
):
    """Noisy gradients `g_i = ∇f(x_i) − scale · σ(x_i) n_{k,i}` for params `(N, dim)`.

    `n_k = step_normal(key, k, (N, dim))` are the same standard normals as the k-th
    increment of `dynamics.brownian.StepBrownianPath`; the minus sign (the noise is
    symmetric) makes a gradient step `−h η g` add `+σ sqrt(h) n_k` when
    `scale = 1 / (η sqrt(h))`, as Euler–Maruyama does.

    With `brownian` (a path of shape `(N, dim)`) and `step_size` h, the normals are instead
    `n_k = (W((k+1)h) − W(kh)) / sqrt(h)`: the increments of that path on the step grid,
    which couples runs at different step sizes to one Brownian path (and ignores `key`).
    """
    if brownian is not None and (step_size is None or step_size <= 0):
        raise ValueError(f"a brownian path needs step_size > 0, got {step_size!r}")
    noise = IsotropicNoise(0.0) if noise is None else noise
    noise.check_dim(landscape.dim)
    scale = float(scale)
    noiseless = noise.is_zero()

    def oracle(params, key, step):
        losses = jax.vmap(landscape.value)(params)
        grads = jax.vmap(landscape.grad)(params)
        if noiseless:
            return losses, grads
        if brownian is None:
            n = step_normal(key, step, params.shape, params.dtype)
        else:
            t = step * step_size
            n = brownian.evaluate(t, t + step_size) / math.sqrt(step_size)
        return losses, grads - scale * jax.vmap(noise.apply)(params, n)

    return oracle


def sde_matched_oracle(
    system: CoupledSystem, step_size: float, brownian: diffrax.AbstractBrownianPath | None = None
):
    """The oracle whose Euler step h reproduces `system`'s Euler–Maruyama path.

    Gradient noise covariance is `σσᵀ / (η² h)`, i.e. the SDE noise σ corresponds to
    discrete SGD with step `hη` and gradient-noise covariance `Σ = σσᵀ/(η² h)` (PAPERS.md §1).
    With `brownian`, the noise is that path's increments (see `landscape_oracle`).
    """
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    scale = 1.0 / (system.learning_rate * math.sqrt(step_size))
    return landscape_oracle(system.landscape, system.noise, scale, brownian, step_size)
