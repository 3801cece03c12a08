"""Gradient-noise models: the diffusion `σ(x)` that multiplies a standard Brownian increment.

Each model maps one agent's state `x` (shape `(dim,)`) and a standard normal (or Brownian)
increment `n` to `σ(x) n` (shape `(dim,)`); it is linear in `n`. The increment's shape is the
model's `brownian_shape(dim)`: `(dim,)` for every model here, but a model may drive the agent
with a Brownian motion of another dimension (`dynamics.network.MinibatchNoise` with
`kind="exact"` uses one Brownian coordinate per training example, `(n,)`), so σ(x) is a
`dim × m` matrix, `m = prod(brownian_shape(dim))`. The same model is the SDE's diffusion and,
divided by `η sqrt(h)`, the discrete gradient noise (see `algorithms.oracles`).
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float

__all__ = [
    "AbstractNoise",
    "IsotropicNoise",
    "DiagonalNoise",
    "CovarianceNoise",
    "StateDependentNoise",
]


class AbstractNoise(eqx.Module):
    """Diffusion `σ(x)`: `apply(x, n) = σ(x) n` for one agent."""

    @abc.abstractmethod
    def apply(self, x: Float[Array, " dim"], n: Float[Array, "*brownian"]) -> Float[Array, " dim"]:
        """`σ(x) n`, shape `(dim,)`; `n` has shape `brownian_shape(dim)`."""

    def brownian_shape(self, dim: int) -> tuple[int, ...]:
        """Shape of one agent's Brownian increment `n` (default `(dim,)`, σ square).

        `CoupledSystem.brownian_shape`, `dynamics.solve`'s Brownian paths, the noise of
        `algorithms.landscape_oracle` / `sde_matched_oracle` and `theory.linearize` all take
        the increment's shape from here.
        """
        return (dim,)

    def check_system(self, landscape, gradient_scale: float) -> None:
        """Raise if this noise cannot drive agents on `landscape` with gradient scale η.

        Called by `CoupledSystem`; the default checks the dimension only.
        """
        del gradient_scale
        self.check_dim(landscape.dim)

    @abc.abstractmethod
    def covariance(self, dim: int) -> np.ndarray:
        """`σσᵀ` as a `(dim, dim)` NumPy array (at x = 0 for state-dependent noise)."""

    def is_zero(self) -> bool:
        """True when the noise vanishes identically (the SDE is an ODE)."""
        return bool(np.all(self.covariance(1 if self._dim is None else self._dim) == 0))

    @property
    def _dim(self) -> int | None:
        return None

    def check_dim(self, dim: int) -> None:
        """Raise if this noise cannot act on `dim`-dimensional agents."""
        if self._dim is not None and self._dim != dim:
            raise ValueError(f"noise has dimension {self._dim} but the landscape has dim={dim}")


class IsotropicNoise(AbstractNoise):
    """Additive isotropic noise `σ I` (σ >= 0); `σ = 0` gives the ODE.

    σ is a pytree leaf, so a sweep over σ can be `jax.vmap`-ed (e.g. with `eqx.tree_at`)
    under one compilation; a traced σ is not validated and counts as nonzero (`is_zero`).
    """

    sigma: jax.Array

    def __init__(self, sigma):
        if not isinstance(sigma, jax.core.Tracer):
            value = np.asarray(sigma, dtype=float)
            if value.ndim or not np.isfinite(value) or value < 0:
                raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        self.sigma = jnp.asarray(sigma, dtype=jnp.result_type(float))

    def apply(self, x, n):
        del x
        return self.sigma * n

    def covariance(self, dim):
        return float(self.sigma) ** 2 * np.eye(dim)

    def is_zero(self):
        if isinstance(self.sigma, jax.core.Tracer):
            return False
        # NumPy, not `==` on the array: inside a `jit` that closes over the system, a jnp
        # comparison of even a concrete σ is staged (a tracer, not a bool).
        return bool(np.all(np.asarray(self.sigma) == 0.0))


class DiagonalNoise(AbstractNoise):
    """Additive noise with per-coordinate intensities `diag(σ_1, …, σ_dim)`, all >= 0."""

    sigmas: Array

    def __init__(self, sigmas: ArrayLike):
        s = np.asarray(sigmas, dtype=float)
        if s.ndim != 1 or np.any(s < 0) or not np.all(np.isfinite(s)):
            raise ValueError(f"sigmas must be a 1-D array of finite values >= 0, got {s}")
        self.sigmas = jnp.asarray(s)

    @property
    def _dim(self):
        return self.sigmas.shape[0]

    def apply(self, x, n):
        del x
        return self.sigmas * n

    def covariance(self, dim):
        self.check_dim(dim)
        return np.diag(np.asarray(self.sigmas) ** 2)


class CovarianceNoise(AbstractNoise):
    """Additive noise with a full covariance `Σ` (symmetric PSD): `σ = chol(Σ)`."""

    factor: Array

    def __init__(self, covariance: ArrayLike):
        c = np.asarray(covariance, dtype=float)
        if c.ndim != 2 or c.shape[0] != c.shape[1] or not np.allclose(c, c.T):
            raise ValueError(
                f"covariance must be a symmetric (dim, dim) matrix, got shape {c.shape}"
            )
        w, v = np.linalg.eigh(c)
        if w.min() < -1e-12 * max(1.0, w.max()):
            raise ValueError(
                f"covariance must be positive semi-definite (min eigenvalue {w.min()})"
            )
        # A symmetric square root also covers singular (PSD, not PD) covariances.
        self.factor = jnp.asarray((v * np.sqrt(np.clip(w, 0, None))) @ v.T)

    @property
    def _dim(self):
        return self.factor.shape[0]

    def apply(self, x, n):
        del x
        return self.factor @ n

    def covariance(self, dim):
        self.check_dim(dim)
        f = np.asarray(self.factor)
        return f @ f.T


class StateDependentNoise(AbstractNoise):
    """Multiplicative noise `σ(x) = diag(sqrt(σ0² + σ1² (x − c)²))`, element-wise.

    A model of minibatch noise that grows away from the center `c` (e.g. the minimizer).
    """

    sigma0: float = eqx.field(static=True)
    sigma1: float = eqx.field(static=True)
    center: float = eqx.field(static=True)

    def __init__(self, sigma0: float, sigma1: float, center: float = 0.0):
        if sigma0 < 0 or sigma1 < 0:
            raise ValueError(f"sigma0 and sigma1 must be >= 0, got {sigma0}, {sigma1}")
        self.sigma0, self.sigma1, self.center = float(sigma0), float(sigma1), float(center)

    def apply(self, x, n):
        return jnp.sqrt(self.sigma0**2 + self.sigma1**2 * (x - self.center) ** 2) * n

    def covariance(self, dim):
        return self.sigma0**2 * np.eye(dim)

    def is_zero(self):
        return self.sigma0 == 0.0 and self.sigma1 == 0.0
