"""Closed forms and Lyapunov solutions for coupled linear SGD dynamics (PAPERS.md §1).

Closed forms are per Hessian eigenvalue `a` of `f = ½ a x²` with additive noise σ, in
continuous time. `linearize` turns any `CoupledSystem` into `dY = M Y dt + B dW` (exact for
quadratic landscapes and linear couplings; the linearization at x* otherwise), and
`stationary_covariance` solves `M P + P Mᵀ + B Bᵀ = 0`. `discrete_stationary_covariance`
solves the Euler map's `P = A P Aᵀ + h B Bᵀ`, `A = I + hM`, which is what a discrete run with
step h converges to.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.flatten_util import ravel_pytree

from .system import CoupledSystem

__all__ = [
    "uncoupled_variance",
    "all_to_all_mean_variance",
    "all_to_all_spread",
    "quorum_mean_variance",
    "quorum_spread",
    "quorum_center_variance",
    "LinearSystem",
    "linearize",
    "stationary_covariance",
    "discrete_stationary_covariance",
    "StationaryMoments",
    "stationary_moments",
    "deviation_bound",
    "delay_stability_threshold",
    "empirical_moments",
    "relative_error",
]


def uncoupled_variance(sigma, eta, a):
    """Var(x) = σ² / (2ηa) for one uncoupled agent."""
    return sigma**2 / (2 * eta * a)


def all_to_all_mean_variance(sigma, eta, a, n_agents):
    """Var(x̄) = σ² / (2ηaN) under `k(x̄ − x_i)` coupling, for any k."""
    return sigma**2 / (2 * eta * a * n_agents)


def all_to_all_spread(sigma, eta, a, gain, n_agents):
    """E e_i² = σ²(N − 1) / (2N(ηa + k)), e_i = x_i − x̄."""
    return sigma**2 * (n_agents - 1) / (2 * n_agents * (eta * a + gain))


def quorum_mean_variance(sigma, eta, a, n_agents, gain, quorum_gain):
    """Var(x̄) = σ²(ηa + N k_z) / (2Nηa(ηa + N k_z + k)) for quorum coupling with g = 0."""
    ea, nkz = eta * a, n_agents * quorum_gain
    return sigma**2 * (ea + nkz) / (2 * n_agents * ea * (ea + nkz + gain))


def quorum_spread(sigma, eta, a, gain, n_agents):
    """E e_i² for quorum coupling with g = 0: the same as all-to-all."""
    return all_to_all_spread(sigma, eta, a, gain, n_agents)


def quorum_center_variance(sigma, eta, a, n_agents, gain, quorum_gain):
    """Var(z) = σ² k_z / (2ηa(ηa + N k_z + k)) for quorum coupling with g = 0."""
    ea = eta * a
    return sigma**2 * quorum_gain / (2 * ea * (ea + n_agents * quorum_gain + gain))


class LinearSystem(NamedTuple):
    """`dY = M (Y − Y*) dt + B dW` on the flattened state Y = (x, v, aux).

    `unravel` maps a flat vector back to an `AgentState`.
    """

    drift: np.ndarray
    diffusion: np.ndarray
    equilibrium: np.ndarray
    unravel: object


def linearize(system: CoupledSystem, n_agents: int) -> LinearSystem:
    """The coupled system linearized at every agent (and aux) at the minimizer x*.

    Uses `jax.jacfwd` of the system's own drift and diffusion, so the matrices describe
    exactly the model that `solve` integrates (exact for quadratics and linear rules).
    """
    if n_agents < 1:
        raise ValueError(f"n_agents must be >= 1, got {n_agents}")
    x_star = jnp.asarray(system.landscape.minimizer())
    x0 = jnp.broadcast_to(x_star, (n_agents, x_star.shape[0]))
    state0 = system.init(x0)
    flat0, unravel = ravel_pytree(state0)
    drift = jax.jacfwd(lambda y: ravel_pytree(system.drift(0.0, unravel(y)))[0])(flat0)
    dw0 = jnp.zeros_like(x0)
    diff = jax.jacfwd(lambda w: ravel_pytree(system.diffusion(0.0, state0, w))[0])(dw0)
    diff = np.asarray(diff).reshape(flat0.shape[0], -1)
    return LinearSystem(np.asarray(drift), diff, np.asarray(flat0), unravel)


def stationary_covariance(drift: np.ndarray, diffusion: np.ndarray) -> np.ndarray:
    """P solving `M P + P Mᵀ + B Bᵀ = 0` (`scipy.linalg.solve_continuous_lyapunov`).

    Raises if M is not Hurwitz (no stationary distribution).
    """
    eig = np.linalg.eigvals(drift)
    if np.max(eig.real) >= 0:
        raise ValueError(
            f"drift matrix is not stable (max Re λ = {np.max(eig.real):.3g}); "
            "no stationary covariance"
        )
    return scipy.linalg.solve_continuous_lyapunov(drift, -diffusion @ diffusion.T)


def discrete_stationary_covariance(drift, diffusion, step_size: float) -> np.ndarray:
    """P solving `P = A P Aᵀ + h B Bᵀ`, `A = I + hM`: the Euler–Maruyama chain's covariance."""
    a = np.eye(drift.shape[0]) + step_size * drift
    rho = np.max(np.abs(np.linalg.eigvals(a)))
    if rho >= 1:
        raise ValueError(f"Euler map with step {step_size} is unstable (spectral radius {rho:.4g})")
    return scipy.linalg.solve_discrete_lyapunov(a, step_size * diffusion @ diffusion.T)


class StationaryMoments(NamedTuple):
    """Per-coordinate stationary moments, each of shape `(dim,)`.

    `var_mean`: Var(x̄_j); `spread`: E (1/N) Σ_i e_ij²; `var_agent`: Var(x_ij) averaged over i;
    `var_aux`: Var(z_j) if the rule's aux state is a `(dim,)` vector, else None.
    """

    var_mean: np.ndarray
    spread: np.ndarray
    var_agent: np.ndarray
    var_aux: np.ndarray | None


def stationary_moments(
    system: CoupledSystem, n_agents: int, step_size: float | None = None
) -> StationaryMoments:
    """Stationary moments of the linearized system (continuous, or Euler with `step_size`)."""
    lin = linearize(system, n_agents)
    if step_size is None:
        cov = stationary_covariance(lin.drift, lin.diffusion)
    else:
        cov = discrete_stationary_covariance(lin.drift, lin.diffusion, step_size)
    dim = system.landscape.dim
    size = n_agents * dim
    # Positions come first in the flattened AgentState; x[i, j] sits at i*dim + j.
    cov_x = cov[:size, :size].reshape(n_agents, dim, n_agents, dim)
    block = np.einsum("ijkj->jik", cov_x)  # (dim, N, N): covariances between agents per coord
    var_agent = np.einsum("jii->j", block) / n_agents
    var_mean = block.sum(axis=(1, 2)) / n_agents**2
    spread = var_agent - var_mean
    var_aux = None
    aux_size = cov.shape[0] - size * (2 if system.momentum else 1)
    if aux_size == dim:
        var_aux = np.diag(cov)[-dim:]
    return StationaryMoments(var_mean, spread, var_agent, var_aux)


def deviation_bound(t, sigma, dim, n_agents, gain, eta, strong_convexity, initial=0.0):
    """Bound on `E (1/N) Σ‖x_i − x̄‖²` for m-strongly convex f (first order, additive σ).

    `σ² n (N − 1)/(2N λ) + max(D0 − that, 0) e^{−2λt}` with `λ = k + ηm`, `D0` the initial
    deviation; `t` in continuous time (array-like).
    """
    lam = gain + eta * strong_convexity
    if lam <= 0:
        raise ValueError(f"need k + ηm > 0 for the bound, got {lam}")
    steady = sigma**2 * dim * (n_agents - 1) / (2 * n_agents * lam)
    return steady + max(initial - steady, 0.0) * np.exp(-2 * lam * np.asarray(t))


def delay_stability_threshold(tau: int) -> float:
    """Largest stable ηa for `x_{k+1} = x_k − ηa x_{k−τ}`: `2 sin(π / (2(2τ + 1)))`."""
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    return 2 * math.sin(math.pi / (2 * (2 * tau + 1)))


def empirical_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From samples `x` of shape `(..., N, dim)` (leading axes pooled as samples):

    returns `(Var(x̄_j), E (1/N) Σ_i e_ij²)`, each `(dim,)`.
    """
    x = np.asarray(x)
    xs = x.reshape(-1, *x.shape[-2:])
    mean = xs.mean(axis=1)
    var_mean = mean.var(axis=0)
    spread = ((xs - mean[:, None]) ** 2).mean(axis=(0, 1))
    return var_mean, spread


def relative_error(measured, predicted) -> np.ndarray:
    """|measured − predicted| / |predicted|, element-wise."""
    measured, predicted = np.asarray(measured), np.asarray(predicted)
    return np.abs(measured - predicted) / np.abs(predicted)
