"""Closed forms and Lyapunov solutions for coupled linear SGD dynamics (docs/papers.md).

Closed forms are per Hessian eigenvalue `a` (`curvature`) of `f = ½ a x²` with additive
noise σ, in continuous time, for the first-order system with gradient scale η
(`gradient_scale`), N agents (`num_agents`), gains k and k_z. Every closed form takes its
arguments by keyword only (a positional swap of two gains would give wrong numbers silently).

`linearize` turns any `CoupledSystem` into `dY = M Y dt + B dW` (exact for quadratic
landscapes and linear couplings; the linearization at x* otherwise), and
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
import scipy.special
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


def uncoupled_variance(*, sigma, gradient_scale, curvature):
    """Var(x) = σ² / (2ηa) for one uncoupled agent."""
    return sigma**2 / (2 * gradient_scale * curvature)


def all_to_all_mean_variance(*, sigma, gradient_scale, curvature, num_agents):
    """Var(x̄) = σ² / (2ηaN) under `k(x̄ − x_i)` coupling, for any k."""
    return sigma**2 / (2 * gradient_scale * curvature * num_agents)


def all_to_all_spread(*, sigma, gradient_scale, curvature, gain, num_agents):
    """E e_i² = σ²(N − 1) / (2N(ηa + k)), e_i = x_i − x̄."""
    return sigma**2 * (num_agents - 1) / (2 * num_agents * (gradient_scale * curvature + gain))


def _quorum_rate(quorum_gain, num_agents, quorum_pull):
    """z's relaxation rate toward x̄: `N k_z` for the sum pull, `k_z` for the mean pull."""
    if quorum_pull == "sum":
        return num_agents * quorum_gain
    if quorum_pull == "mean":
        return quorum_gain
    raise ValueError(f"quorum_pull must be 'sum' or 'mean', got {quorum_pull!r}")


def quorum_mean_variance(
    *, sigma, gradient_scale, curvature, gain, quorum_gain, num_agents, quorum_pull="sum"
):
    """Var(x̄) = σ²(ηa + κ) / (2Nηa(ηa + κ + k)) for quorum coupling with g = 0.

    κ is z's relaxation rate toward x̄: `κ = N k_z` for the sum pull `k_z Σ_i (x_i − z)`
    (default), `κ = k_z` for the mean pull `k_z (x̄ − z)`; with the mean pull Var(x̄) ∝ 1/N.
    Derivation: per coordinate `dx̄ = [−ηa x̄ + k(z − x̄)] dt + (σ/√N) dW`,
    `dz = κ(x̄ − z) dt`; the 2×2 Lyapunov equation gives this and `quorum_center_variance`.
    """
    ea = gradient_scale * curvature
    nkz = _quorum_rate(quorum_gain, num_agents, quorum_pull)
    return sigma**2 * (ea + nkz) / (2 * num_agents * ea * (ea + nkz + gain))


def quorum_spread(*, sigma, gradient_scale, curvature, gain, num_agents):
    """E e_i² for quorum coupling with g = 0: the same as all-to-all."""
    return all_to_all_spread(
        sigma=sigma, gradient_scale=gradient_scale, curvature=curvature, gain=gain,
        num_agents=num_agents,
    )  # fmt: skip


def quorum_center_variance(
    *, sigma, gradient_scale, curvature, gain, quorum_gain, num_agents, quorum_pull="sum"
):
    """Var(z) = σ² κ / (2Nηa(ηa + κ + k)) for quorum coupling with g = 0.

    `κ = N k_z` (sum pull, default; then Var(z) = σ² k_z / (2ηa(ηa + N k_z + k))) or
    `κ = k_z` (mean pull), as in `quorum_mean_variance`.
    """
    ea = gradient_scale * curvature
    if quorum_pull == "sum":
        return sigma**2 * quorum_gain / (2 * ea * (ea + num_agents * quorum_gain + gain))
    kappa = _quorum_rate(quorum_gain, num_agents, quorum_pull)
    return sigma**2 * kappa / (2 * num_agents * ea * (ea + kappa + gain))


class LinearSystem(NamedTuple):
    """`dY = M (Y − Y*) dt + B dW` on the flattened state Y = (x, v, aux).

    `unravel` maps a flat vector back to an `AgentState`.
    """

    drift: np.ndarray
    diffusion: np.ndarray
    equilibrium: np.ndarray
    unravel: object


def linearize(system: CoupledSystem, *, num_agents: int) -> LinearSystem:
    """The coupled system linearized at every agent (and aux) at the minimizer x*.

    Uses `jax.jacfwd` of the system's own drift and diffusion, so the matrices describe
    exactly the model that `solve` integrates (exact for quadratics and linear rules). Needs
    the landscape's `minimizer()`: a `dynamics.ModelLandscape` (a network) has none and
    raises NotImplementedError, so every function built on this one (`stationary_moments`,
    `euler_map`, `linear_moments`) does not apply to networks.
    """
    if num_agents < 1:
        raise ValueError(f"num_agents must be >= 1, got {num_agents}")
    x_star = jnp.asarray(system.landscape.minimizer())
    x0 = jnp.broadcast_to(x_star, (num_agents, x_star.shape[0]))
    state0 = system.init(x0)
    flat0, unravel = ravel_pytree(state0)
    drift = jax.jacfwd(lambda y: ravel_pytree(system.drift(0.0, unravel(y)))[0])(flat0)
    dw0 = jnp.zeros(system.brownian_shape(num_agents), x0.dtype)
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


def discrete_stationary_covariance(drift, diffusion, *, step_size: float) -> np.ndarray:
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
    system: CoupledSystem,
    *,
    num_agents: int,
    step_size: float | None = None,
    scheme: str = "explicit",
) -> StationaryMoments:
    """Stationary moments of the linearized system of `num_agents` agents.

    Continuous time (`step_size=None`), or the Euler chain with step h = `step_size` (time),
    which is what `algorithms.solve_discrete` with that step converges to;
    `scheme="semi_implicit"` gives instead the chain of Optax momentum (`euler_map`).
    """
    n_agents = num_agents
    lin = linearize(system, num_agents=n_agents)
    if step_size is None:
        cov = stationary_covariance(lin.drift, lin.diffusion)
    elif scheme == "explicit":
        cov = discrete_stationary_covariance(lin.drift, lin.diffusion, step_size=step_size)
    else:
        a, q = _euler_map(lin, system, n_agents, step_size, scheme)
        cov = _chain_covariance(a, q, step_size)
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


def deviation_bound(
    t,
    *,
    sigma,
    dim,
    num_agents,
    gain,
    gradient_scale,
    strong_convexity,
    initial_deviation=0.0,
    step_size=None,
    smoothness=None,
):
    """Bound on `E (1/N) Σ‖x_i − x̄‖²` for m-strongly convex f (first order, additive σ).

    Continuous time (`step_size=None`): `σ² n (N − 1)/(2N λ) + max(D0 − that, 0) e^{−2λt}`
    with `λ = k + ηm`, `D0` the initial deviation (`initial_deviation`); `t` in continuous
    time (array-like). It holds for all-to-all and for quorum coupling (z cancels from the
    deviations `e_i = x_i − x̄`: `de_i = [−η(∇f(x_i) − mean_j ∇f(x_j)) − k e_i] dt + noise`).

    The Euler chain with step h (`step_size=h`, needs `smoothness` L; what a discrete run,
    or Euler–Maruyama, with that step does): `e_i ← e_i − h[η(g_i − ḡ) + k e_i] + σ√h (n_i −
    n̄)` with `g_i = ∇f(x_i)`. Since `Σ_i (g_i − ḡ)·e_i >= m Σ‖e_i‖²` and
    `Σ_i ‖g_i − ḡ‖² <= L² Σ‖e_i‖²`, `E D_{k+1} <= c E D_k + σ² h n (N − 1)/N` with
    `c = (1 − hk)² − 2(1 − hk) hηm + h²η²L²` (needs `hk <= 1` and `c < 1`), so
    `E D(t) <= s_h + max(D0 − s_h, 0) c^{t/h}`, `s_h = σ² h n (N − 1)/(N (1 − c))`; as h → 0
    it tends to the continuous bound (from above: `s_h = s (1 + O(h))`).
    """
    lam = gain + gradient_scale * strong_convexity
    if lam <= 0:
        raise ValueError(f"need k + ηm > 0 for the bound, got {lam}")
    if step_size is None:
        steady = sigma**2 * dim * (num_agents - 1) / (2 * num_agents * lam)
        return steady + max(initial_deviation - steady, 0.0) * np.exp(-2 * lam * np.asarray(t))
    h = float(step_size)
    if not h > 0 or smoothness is None or not smoothness >= strong_convexity:
        raise ValueError(
            f"the chain's bound needs step_size > 0 and smoothness L >= m, got h={step_size}, "
            f"L={smoothness}"
        )
    if h * gain > 1:
        raise ValueError(f"the chain's bound needs step_size·gain <= 1, got {h * gain}")
    keep = 1 - h * gain
    c = keep**2 - 2 * keep * h * gradient_scale * strong_convexity
    c += (h * gradient_scale * smoothness) ** 2
    if not 0 <= c < 1:
        raise ValueError(f"the chain does not contract deviations (factor {c:.4g}): h too large")
    steady = sigma**2 * h * dim * (num_agents - 1) / (num_agents * (1 - c))
    return steady + max(initial_deviation - steady, 0.0) * c ** (np.asarray(t, dtype=float) / h)


def delay_stability_threshold(*, staleness: int) -> float:
    """Largest stable ηa for `x_{k+1} = x_k − ηa x_{k−τ}`: `2 sin(π / (2(2τ + 1)))`.

    `staleness` is the constant delay τ >= 0 in steps; ηa is the learning rate times the
    curvature (per step).
    """
    tau = staleness
    if tau < 0:
        raise ValueError(f"staleness (τ) must be >= 0, got {tau}")
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


# ---------------------------------------------------------------------------------------------
# Strongly convex f: the spatial mean's distance to x* (docs/papers.md, claim 4)
# ---------------------------------------------------------------------------------------------


def _check_convexity(eta, strong_convexity, smoothness):
    if not eta > 0 or not strong_convexity > 0 or not smoothness >= strong_convexity:
        raise ValueError(
            f"need η > 0 and 0 < m <= L, got η={eta}, m={strong_convexity}, L={smoothness}"
        )


def _deviation_sup(sigma, dim, n_agents, gain, eta, strong_convexity, initial_deviation):
    """`sup_t E D(t)` from `deviation_bound`: the larger of D0 and the stationary value."""
    steady = deviation_bound(
        np.inf, sigma=sigma, dim=dim, num_agents=n_agents, gain=gain, gradient_scale=eta,
        strong_convexity=strong_convexity,
    )  # fmt: skip
    return max(float(initial_deviation), float(steady))


def mean_distance_limit(
    *, sigma, dim, num_agents, gain, gradient_scale, strong_convexity, smoothness
):
    """Asymptotic bound on `E‖x̄ − x*‖` for first-order coupled SGD on strongly convex f.

    `lim sup_t sqrt(E‖x̄ − x*‖²) <= b + sqrt(b² + nσ²/(2ηmN))`, `b = L s / (2m)`, with
    `s² = σ² n (N−1)/(2N(k + ηm))` the stationary deviation bound. It holds for all-to-all
    coupling `k(x̄ − x_i)` and for quorum coupling `k(z − x_i)` with
    `dz = [−η_z ∇f(z) + κ (x̄ − z)] dt`, `κ = N k_z` (sum pull) or `κ = k_z` (mean pull)
    (η_z >= 0, so EASGD included); it does not depend on κ.

    Derivation (first order, additive isotropic noise σ, f m-strongly convex and L-smooth,
    ∇f(x*) = 0). Write `u = x̄ − x*`, `w = z − x*`, `D = (1/N) Σ‖x_i − x̄‖²` and
    `δ = mean_i ∇f(x_i) − ∇f(x̄)`, so `‖δ‖ <= L sqrt(D)`. The mean obeys
    `du = [−η ∇f(x̄) − η δ + k(w − u)] dt + (σ/√N) dW̄` (no `k` term for all-to-all). With
    `V = ‖u‖² + ρ‖w‖²`, `ρ = k/κ`, Itô's formula and strong convexity give
    `dE V/dt <= −2ηm E‖u‖² − 2k E‖u − w‖² − 2ρ η_z m E‖w‖² + 2ηL E[‖u‖ sqrt(D)] + nσ²/N`
    (the cross terms `2k u·w` cancel). Cauchy–Schwarz bounds `E[‖u‖ sqrt(D)]` by `y s` with
    `y² = E‖u‖²`; at stationarity `dE V/dt = 0`, so `ηm y² <= ηL s y + nσ²/(2N)`, whose
    positive root is the bound. `E‖x̄ − x*‖ <= y` by Jensen.
    """
    n_agents, eta = num_agents, gradient_scale
    _check_convexity(eta, strong_convexity, smoothness)
    s = math.sqrt(_deviation_sup(sigma, dim, n_agents, gain, eta, strong_convexity, 0.0))
    b = smoothness * s / (2 * strong_convexity)
    return b + math.sqrt(b**2 + dim * sigma**2 / (2 * eta * strong_convexity * n_agents))


def mean_distance_bound(
    t,
    *,
    sigma,
    dim,
    num_agents,
    gain,
    gradient_scale,
    strong_convexity,
    smoothness,
    initial_distance,
    initial_deviation=0.0,
    quorum_gain=None,
    center_gradient_scale=0.0,
    quorum_pull="sum",
):
    """Bound on `E‖x̄(t) − x*‖` at every time t for first-order coupled SGD, f strongly convex.

    Assumptions: f is m-strongly convex and L-smooth; first-order dynamics with additive
    isotropic noise σ on every agent; agents coupled all-to-all, `k(x̄ − x_i)`
    (`quorum_gain=None`), or through a quorum variable z that starts at x̄(0),
    `k(z − x_i)`, `dz = [−η_z ∇f(z) + κ (x̄ − z)] dt` with `κ = N k_z` for the sum pull
    `k_z Σ_i (x_i − z)` (`quorum_pull="sum"`; EASGD: η_z = 0, k = k_z = ρ) or `κ = k_z` for
    the mean pull `k_z (x̄ − z)` (`quorum_pull="mean"`).
    `t` is continuous time (array-like); `initial_distance = ‖x̄(0) − x*‖`,
    `initial_deviation = D(0)`. Not covered: momentum (see `linear_moments` for the
    linearized prediction instead) and state-dependent noise.

    All-to-all: `E‖x̄ − x*‖ <= e^{−ηmt} ‖x̄0 − x*‖ + (L/m) s̄ + sqrt(nσ²/(2ηmN))`, with
    `s̄² = max(D0, σ²n(N−1)/(2N(k+ηm)))` bounding E D(t) at all times (`deviation_bound`).
    Proof: `y = sqrt(E‖x̄ − x*‖²)` satisfies `y' <= −ηm y + ηL s̄ + nσ²/(2Ny)` (see
    `mean_distance_limit`); the right-hand side is a supersolution of that inequality, so
    it stays above y (comparison lemma), and `E‖·‖ <= y`.

    Quorum: with `V = ‖u‖² + ρ‖w‖²` as in `mean_distance_limit` (`ρ = k/κ`, which is
    `k/(k_z N)` for the sum pull), Young's inequality
    `2ηL s̄ y <= ηm y² + ηL² s̄²/m` and `‖w‖² <= 2‖u‖² + 2‖u − w‖²` give
    `dE V/dt <= −λ E V + ηL²s̄²/m + nσ²/N` with
    `λ = max(min(ηm/(1+2ρ), κ), min(ηm, 2η_z m))`, hence
    `E‖x̄ − x*‖² <= E V(t) <= e^{−λt} (1+ρ) ‖x̄0 − x*‖² + (1 − e^{−λt})(ηL²s̄²/m + nσ²/N)/λ`.
    This is looser than the all-to-all form (Young's inequality costs a factor 2 in the
    noise term); its limit lies above `mean_distance_limit`.

    Returns:
        The bound, a NumPy array shaped like `t`.
    """
    n_agents, eta, center_eta = num_agents, gradient_scale, center_gradient_scale
    _check_convexity(eta, strong_convexity, smoothness)
    t = np.asarray(t, dtype=float)
    m, big_l = strong_convexity, smoothness
    s_bar_sq = _deviation_sup(sigma, dim, n_agents, gain, eta, m, initial_deviation)
    noise = dim * sigma**2 / n_agents
    if quorum_gain is None:
        return (
            np.exp(-eta * m * t) * initial_distance
            + big_l * math.sqrt(s_bar_sq) / m
            + math.sqrt(noise / (2 * eta * m))
        )
    if quorum_gain <= 0:
        raise ValueError(f"quorum_gain (k_z) must be > 0 for the quorum bound, got {quorum_gain}")
    kappa = _quorum_rate(quorum_gain, n_agents, quorum_pull)
    rho = gain / kappa
    rate = max(
        min(eta * m / (1 + 2 * rho), kappa),
        min(eta * m, 2 * center_eta * m),
    )
    forcing = eta * big_l**2 * s_bar_sq / m + noise
    decay = np.exp(-rate * t)
    v = decay * (1 + rho) * initial_distance**2 + (1 - decay) * forcing / rate
    return np.sqrt(v)


class LinearMoments(NamedTuple):
    """Moments of the linearized system over time (arrays shaped like `ts`).

    `mean_sq_distance`: E‖x̄ − x*‖²; `deviation`: E (1/N) Σ‖x_i − x̄‖².
    """

    mean_sq_distance: np.ndarray
    deviation: np.ndarray


SCHEMES = ("explicit", "semi_implicit")


def euler_map(
    system: CoupledSystem, *, num_agents: int, step_size: float, scheme: str = "explicit"
) -> tuple[np.ndarray, np.ndarray]:
    """`(A, Q)` of one step of the linearized system's discrete chain `Y ← A Y + ξ`, Cov ξ = Q.

    `scheme="explicit"`: Euler–Maruyama, `A = I + hM`, `Q = h B Bᵀ` (what `dynamics.solve`
    and `algorithms.solve_discrete` run). `scheme="semi_implicit"` (heavy-ball systems only):
    v and aux take the explicit step and x moves with the *new* velocity,
    `x ← x + h v_new`, so the x rows are `[I 0 0] + h (v rows of I + hM)` and the noise
    `√h B_v n` reaches x as `h √h B_v n`. That is what Optax's `sgd(lr, momentum=β)` does
    (`algorithms.optimizers.coupled_sgd`: h = √lr, γ = (1 − β)/√lr).
    """
    lin = linearize(system, num_agents=num_agents)
    return _euler_map(lin, system, num_agents, step_size, scheme)


def _euler_map(lin, system, num_agents, step_size, scheme):
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    h = float(step_size)
    n = lin.drift.shape[0]
    a = np.eye(n) + h * lin.drift
    g = math.sqrt(h) * lin.diffusion
    if scheme == "semi_implicit":
        if not system.momentum:
            raise ValueError("scheme='semi_implicit' needs a heavy-ball system (damping=γ)")
        size = num_agents * system.landscape.dim
        x_rows, v_rows = slice(0, size), slice(size, 2 * size)
        a[x_rows] = np.eye(n)[x_rows] + h * a[v_rows]
        g = g.copy()
        g[x_rows] = h * g[v_rows]
    return a, g @ g.T


def _chain_covariance(a, q, step_size):
    """P solving `P = A P Aᵀ + Q`; raises if the chain is unstable."""
    rho = np.max(np.abs(np.linalg.eigvals(a)))
    if rho >= 1:
        raise ValueError(f"chain with step {step_size} is unstable (spectral radius {rho:.4g})")
    return scipy.linalg.solve_discrete_lyapunov(a, q)


def _projections(n_agents, dim):
    size = n_agents * dim
    averaging = np.kron(np.full((1, n_agents), 1.0 / n_agents), np.eye(dim))  # (dim, size)
    centring = np.eye(size) - np.kron(np.full((n_agents, n_agents), 1.0 / n_agents), np.eye(dim))
    return averaging, centring


def linear_moments(
    system: CoupledSystem, x0, ts, *, step_size: float | None = None, scheme: str = "explicit"
) -> LinearMoments:
    """E‖x̄(t) − x*‖² and E D(t) of the system linearized at x*, from deterministic `x0`.

    The linearization `dY = M (Y − Y*) dt + B dW` (`linearize`) is solved exactly: the mean
    is `Y* + e^{Mt}(Y0 − Y*)` and the covariance `P(t) = P∞ − e^{Mt} P∞ e^{Mᵀt}` (P(0) = 0).
    With `step_size=h` the same for the discrete chain of `euler_map(scheme=…)` instead:
    mean `Y* + A^k (Y0 − Y*)` and `P_k = P∞ − A^k P∞ (A^k)ᵀ` with `P∞ = A P∞ Aᵀ + Q`, at
    `k = t/h` (every time must lie on the step grid): what a discrete run with that step
    has, to rounding, on a quadratic.
    Velocities start at zero and the auxiliary state at the rule's `init`. This is a
    *prediction*, not a bound: exact for quadratic f and linear rules, and for other f only
    near x* (far from x* the curvature differs from ∇²f(x*)).

    Args:
        system: a coupled system with a linear rule (any damping).
        x0: initial positions `(N, dim)`.
        ts: increasing times (continuous time), array-like `(T,)`.
        step_size: None (continuous time) or the step h of the discrete chain.
        scheme: "explicit" or "semi_implicit" (with `step_size`), see `euler_map`.
    """
    x0 = np.asarray(x0, dtype=float)
    ts = np.asarray(ts, dtype=float)
    if ts.ndim != 1 or np.any(np.diff(ts) < 0) or (ts.size and ts[0] < 0):
        raise ValueError(f"ts must be an increasing 1-D array of times >= 0, got {ts}")
    n_agents, dim = x0.shape
    lin = linearize(system, num_agents=n_agents)
    flat0, _ = ravel_pytree(system.init(jnp.asarray(x0)))
    start = np.asarray(flat0) - lin.equilibrium
    n = lin.drift.shape[0]
    if step_size is None:
        p_inf = stationary_covariance(lin.drift, lin.diffusion)

        def propagator(dt):
            return scipy.linalg.expm(lin.drift * dt)

        increments = np.diff(np.concatenate([[0.0], ts]))
    else:
        a, q = _euler_map(lin, system, n_agents, step_size, scheme)
        p_inf = _chain_covariance(a, q, step_size)
        k = ts / step_size
        steps = np.round(k).astype(int)
        if np.any(np.abs(k - steps) > 1e-6):
            raise ValueError(f"times must lie on the step grid k·h (h={step_size}), got {ts}")

        def propagator(dk):
            return np.linalg.matrix_power(a, int(dk))

        increments = np.diff(np.concatenate([[0], steps]))
    size = n_agents * dim
    averaging, centring = _projections(n_agents, dim)
    # Positions come first in the flattened state; x[i, j] at i*dim + j. Only the position
    # rows of the propagator e^{Mt} (or A^k) are needed; powers of one matrix commute, so
    # rows(t + Δ) = rows(t) · e^{MΔ}, and equal increments reuse one propagator.
    p_xx = p_inf[:size, :size]
    stationary_mean = np.trace(averaging @ p_xx @ averaging.T)
    stationary_dev = np.trace(centring @ p_xx)  # the centring C is a projection: C P C ~ C P
    cache: dict[float, np.ndarray] = {}
    rows = np.eye(n)[:size]
    mean_sq, deviation = [], []
    for inc in increments:
        key = round(float(inc), 10)
        if key not in cache:
            cache[key] = propagator(inc)
        rows = rows @ cache[key]
        mu = rows @ start
        rows_p = rows @ p_inf  # (size, n)
        avg_rows = averaging @ rows
        transient_mean = np.sum((averaging @ rows_p) * avg_rows)
        transient_dev = np.sum((centring @ rows_p) * rows)
        mean_sq.append(np.sum((averaging @ mu) ** 2) + stationary_mean - transient_mean)
        dev = np.sum((centring @ mu) ** 2) + stationary_dev - transient_dev
        deviation.append(dev / n_agents)
    return LinearMoments(np.asarray(mean_sq), np.asarray(deviation))


__all__ += [
    "mean_distance_limit",
    "mean_distance_bound",
    "LinearMoments",
    "linear_moments",
    "SCHEMES",
    "euler_map",
]


# ---------------------------------------------------------------------------------------------
# Linear systems with delays (docs/papers.md, "Delays in continuous time")
#
# Continuous time t; a delay τ (`delay`) is in time units, a step h (`step_size`) in time, and
# a delay of d steps is τ = d·h. Rates (`decay` a, `gain` b) are per unit time; the discrete
# chain multiplies them by h. The scalar delayed-feedback equation is
#
#     x'(t) = −a x(t) − b x(t − τ),      characteristic equation  λ + a + b e^{−λτ} = 0,
#
# and its Euler chain with step h and d = τ/h is x_{k+1} = (1 − ha) x_k − hb x_{k−d}.


def _finite(name, value):
    """`value` as a float array; raises naming `name` if any entry is not finite."""
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


def _nonnegative(name, value):
    arr = _finite(name, value)
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return arr


def _scalar(name, value) -> float:
    arr = _finite(name, value)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    return float(arr)


def _delay_steps(delay, step_size) -> int:
    """d = τ/h for a scalar delay τ >= 0 and step h > 0; raises unless d is an integer."""
    tau = _scalar("delay (τ)", delay)
    h = _scalar("step_size (h)", step_size)
    if tau < 0:
        raise ValueError(f"delay (τ) must be >= 0, got {delay!r}")
    if not h > 0:
        raise ValueError(f"step_size (h) must be > 0, got {step_size!r}")
    d = tau / h
    # A relative tolerance: τ = 0.3 with h = 0.1 gives d = 2.9999999999999996 in floating point.
    if abs(d - round(d)) > 1e-9 * max(1.0, d):
        raise ValueError(
            f"delay (τ = {delay!r}) must be a whole number of steps (h = {step_size!r}); "
            f"τ/h = {d!r}"
        )
    return int(round(d))


def continuous_delay_threshold(*, delay):
    """Largest stable rate a for `x'(t) = −a x(t − τ)`: `π / (2τ)` (stable iff 0 < aτ < π/2).

    `delay` τ >= 0 is in time units (array-like, broadcasts); the result is a rate (1/time),
    `inf` at τ = 0 (then every a > 0 is stable). It is the h → 0 limit of
    `discrete_delay_threshold_time`, and `max_stable_delay(decay=0, gain=a)` read the other way.
    """
    tau = _nonnegative("delay (τ)", delay)
    with np.errstate(divide="ignore"):
        out = np.where(tau > 0, np.pi / (2 * np.where(tau > 0, tau, 1.0)), np.inf)
    return out[()]


def discrete_delay_threshold_time(*, delay, step_size) -> float:
    """Largest stable rate a for `x_{k+1} = x_k − h a x_{k−d}`, d = τ/h: `2 sin(π/(2(2d+1))) / h`.

    This is `delay_stability_threshold(staleness=d)` (a threshold on the per-step product ha)
    divided by the step h, so that it is a rate (1/time) comparable with the continuous
    `continuous_delay_threshold(delay=τ) = π/(2τ)`. With τ (time) fixed it rises to that limit
    as h → 0, from below, with error `π h / (4τ²) + O(h²)`. `delay` τ >= 0 and `step_size`
    h > 0 are scalars in time units, and τ must be a whole number d of steps.
    """
    d = _delay_steps(delay, step_size)
    return delay_stability_threshold(staleness=d) / float(step_size)


def max_stable_delay(*, decay, gain):
    """The delay τ* (time) below which `x'(t) = −a x(t) − b x(t − τ)` is stable (Hayes, 1950).

    `decay` a (the undelayed rate, e.g. η·curvature) and `gain` b (the delayed rate, e.g. the
    coupling gain k) are real rates (1/time), array-like, broadcast together. The equation is
    asymptotically stable exactly for 0 <= τ < τ*, with

    - τ* = inf when a + b > 0 and b <= a (the undelayed decay dominates: every delay is stable);
    - τ* = arccos(−a/b) / √(b² − a²) when b > |a|;
    - τ* = 0 when a + b <= 0 (unstable even without delay; no τ is stable).

    At τ = τ* a pair of characteristic roots ±iω, ω = √(b² − a²), crosses the imaginary axis.
    """
    a = _finite("decay (a)", decay)
    b = _finite("gain (b)", gain)
    a, b = np.broadcast_arrays(a, b)
    crossing = b > np.abs(a)
    # Placeholders keep arccos and the square root inside their domains off the crossing branch.
    bb = np.where(crossing, b, 1.0)
    aa = np.where(crossing, a, 0.0)
    tau = np.arccos(-aa / bb) / np.sqrt(bb**2 - aa**2)
    out = np.where(crossing, tau, np.where(a + b > 0, np.inf, 0.0))
    return out[()]


def delayed_coupling_stable(*, decay, gain, delay):
    """Whether `x'(t) = −a x(t) − b x(t − τ)` is asymptotically stable: `τ < max_stable_delay`.

    Arguments are array-like and broadcast (`decay` a and `gain` b in 1/time, `delay` τ >= 0
    in time); returns a bool array of the broadcast shape (a bool for scalars), e.g. the
    (k, τ) stability region on a grid `gain=k[:, None], delay=τ[None, :]`.

    **Delayed all-to-all coupling.** N agents on f = ½ a x² with gradient scale η and the
    mean-field force evaluated on the delayed state, `F_i = k (x̄(t − τ) − x_i(t − τ))`, and an
    undelayed gradient: `x_i' = −ηa x_i + k (x̄ − x_i)(t − τ)`. The mean obeys `x̄' = −ηa x̄`
    (the coupling sums to zero over agents, delayed or not) and each deviation e_i = x_i − x̄
    obeys `e_i' = −ηa e_i − k e_i(t − τ)`, this equation with a = ηa, b = k. So the agents
    synchronize iff `delayed_coupling_stable(decay=ηa, gain=k, delay=τ)`, and the whole
    system is stable iff that holds and ηa > 0 (the mean). A negative curvature (ηa < 0) can
    be beaten by the coupling only when k > |ηa| and τ < τ*.
    """
    tau = _nonnegative("delay (τ)", delay)
    out = tau < max_stable_delay(decay=decay, gain=gain)
    return np.asarray(out)[()]


def delayed_feedback_root(*, decay, gain, delay):
    """The rightmost root λ of `λ + a + b e^{−λτ} = 0`: `λ = W₀(−bτ e^{aτ}) / τ − a`.

    W₀ is the principal branch of the Lambert W function (`scipy.special.lambertw`); for real
    a, b and τ > 0 it gives the root of largest real part (Shinozaki & Mori, 2006), so Re λ is
    the decay rate (1/time) of `x'(t) = −a x(t) − b x(t − τ)`: negative iff the equation is
    stable, zero at τ = `max_stable_delay`. At τ = 0 the root is −a − b. Arguments are
    array-like and broadcast (`decay` a and `gain` b in 1/time, `delay` τ >= 0 in time);
    returns a complex array of the broadcast shape. aτ must stay below about 700 (e^{aτ}
    must be finite in float64).
    """
    a = _finite("decay (a)", decay)
    b = _finite("gain (b)", gain)
    tau = _nonnegative("delay (τ)", delay)
    a, b, tau = np.broadcast_arrays(a, b, tau)
    with np.errstate(over="ignore"):
        z = -b * tau * np.exp(a * tau)
    if not np.all(np.isfinite(z)):
        raise ValueError(f"decay·delay (aτ) too large for float64: max aτ = {np.max(a * tau):.4g}")
    # The iteration tolerance of lambertw is relative to the step; 1e-15 gives full precision
    # (its default 1e-8 leaves residuals near 1e-9 close to the branch point −1/e).
    w = scipy.special.lambertw(z, 0, tol=1e-15)
    positive = tau > 0
    safe_tau = np.where(positive, tau, 1.0)
    out = np.where(positive, w / safe_tau - a, -(a + b) + 0j)
    return out[()]


def _delayed_euler_matrix(a, b, d, h):
    """Companion matrix of `x_{k+1} = (1 − ha) x_k − hb x_{k−d}` on `(x_k, …, x_{k−d})`."""
    c = np.zeros((d + 1, d + 1))
    c[0, 0] = 1 - h * a
    c[0, d] -= h * b  # d = 0 adds the delayed term to the same entry
    c[np.arange(1, d + 1), np.arange(d)] = 1.0  # shift the history by one step
    return c


def delayed_euler_spectral_radius(*, decay, gain, delay, step_size) -> float:
    """Spectral radius of the Euler chain `x_{k+1} = (1 − ha) x_k − hb x_{k−d}`, d = τ/h.

    The chain is the Euler step h of `x'(t) = −a x(t) − b x(t − τ)`; it is stable iff the
    radius is < 1 (`delayed_euler_stable`). Its state `(x_k, x_{k−1}, …, x_{k−d})` has d + 1
    entries, so the companion matrix is `(d + 1, d + 1)`. Scalars: `decay` a and `gain` b
    (1/time), `delay` τ >= 0 and `step_size` h > 0 (time), τ a whole number of steps. With
    a = 0 the chain is stable iff 0 < hb < `delay_stability_threshold(staleness=d)`; as h → 0
    with τ fixed its stability boundary tends to that of the continuous equation
    (`max_stable_delay`).
    """
    d = _delay_steps(delay, step_size)
    a = _scalar("decay (a)", decay)
    b = _scalar("gain (b)", gain)
    c = _delayed_euler_matrix(a, b, d, float(step_size))
    return float(np.max(np.abs(np.linalg.eigvals(c))))


def delayed_euler_stable(*, decay, gain, delay, step_size) -> bool:
    """Whether the Euler chain of `delayed_euler_spectral_radius` is stable (radius < 1)."""
    radius = delayed_euler_spectral_radius(decay=decay, gain=gain, delay=delay, step_size=step_size)
    return radius < 1


def delayed_ou_variance(*, gain, delay, sigma):
    """Stationary Var(x) of `dx = −b x(t − τ) dt + σ dW` (Küchler & Mensch, 1992).

    `σ² (1 + sin(bτ)) / (2b cos(bτ))` for 0 < bτ < π/2, and σ²/(2b) at τ = 0 (its limit).
    `gain` b > 0 (1/time), `delay` τ >= 0 (time), `sigma` σ >= 0 (per √time); array-like,
    broadcast. Raises outside the stable region (b <= 0 or bτ >= π/2: no stationary law).
    """
    b = _finite("gain (b)", gain)
    tau = _nonnegative("delay (τ)", delay)
    s = _nonnegative("sigma (σ)", sigma)
    if np.any(b <= 0):
        raise ValueError(f"gain (b) must be > 0 for a stationary variance, got {gain!r}")
    if np.any(b * tau >= np.pi / 2):
        raise ValueError(
            f"gain·delay (bτ) must be < π/2 for a stationary variance, got b = {gain!r}, "
            f"τ = {delay!r}"
        )
    bt = b * tau
    return (s**2 * (1 + np.sin(bt)) / (2 * b * np.cos(bt)))[()]


def delayed_euler_variance(*, decay, gain, delay, sigma, step_size) -> float:
    """Stationary Var(x) of the Euler–Maruyama chain of `dx = [−a x − b x(t − τ)] dt + σ dW`.

    The chain `x_{k+1} = (1 − ha) x_k − hb x_{k−d} + σ √h n_k`, d = τ/h, n_k standard normal,
    in companion form `s_{k+1} = C s_k + σ √h n_k e₀` on `s_k = (x_k, …, x_{k−d})`; the
    stationary covariance solves the discrete Lyapunov equation `P = C P Cᵀ + σ² h e₀ e₀ᵀ` and
    the result is P[0, 0]. This is what a discrete run with step h converges to; as h → 0
    (τ fixed) it tends to the stationary variance of the continuous delayed OU process, with
    error O(h) (at a = 0, `delayed_ou_variance`). Scalars: `decay` a and `gain` b (1/time),
    `delay` τ >= 0 and `step_size` h > 0 (time), τ a whole number of steps, `sigma` σ >= 0
    (per √time). Raises if the chain is unstable (no stationary variance).
    """
    d = _delay_steps(delay, step_size)
    a = _scalar("decay (a)", decay)
    b = _scalar("gain (b)", gain)
    s = _scalar("sigma (σ)", sigma)
    if s < 0:
        raise ValueError(f"sigma (σ) must be >= 0, got {sigma!r}")
    h = float(step_size)
    c = _delayed_euler_matrix(a, b, d, h)
    q = np.zeros_like(c)
    q[0, 0] = s**2 * h
    return float(_chain_covariance(c, q, h)[0, 0])


__all__ += [
    "continuous_delay_threshold",
    "discrete_delay_threshold_time",
    "max_stable_delay",
    "delayed_coupling_stable",
    "delayed_feedback_root",
    "delayed_euler_spectral_radius",
    "delayed_euler_stable",
    "delayed_ou_variance",
    "delayed_euler_variance",
]
