"""The quorum variable's pull normalization (`Quorum(..., quorum_pull="sum" | "mean")`) and the
theory that goes with it: closed forms, Lyapunov moments, the chains of Euler steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from algorithms.optimizers import coupled_sgd, easgd, momentum_quorum_sgd, quorum_sgd
from dynamics import CoupledSystem, IsotropicNoise, Quadratic, theory
from dynamics.coupling import Quorum, elastic
from dynamics.landscapes import LogCoshQuadratic

SIGMA, ETA, A, K, KZ = 0.7, 1.3, 0.9, 1.7, 0.6
Q = dict(sigma=SIGMA, gradient_scale=ETA, curvature=A)


def _numpy_lyapunov(m, bbt):
    """P with `M P + P Mᵀ + B Bᵀ = 0` by the vectorized (Kronecker) linear system."""
    n = m.shape[0]
    eye = np.eye(n)
    vec = np.linalg.solve(np.kron(eye, m) + np.kron(m, eye), -bbt.reshape(-1))
    return vec.reshape(n, n)


def _quorum_matrices(n_agents, kappa):
    """Hand-built drift and noise of `dx_i = [−ηa x_i + k(z − x_i)] dt + σ dW_i`,
    `dz = κ (x̄ − z) dt` on one coordinate, state (x_1, …, x_N, z)."""
    m = np.zeros((n_agents + 1, n_agents + 1))
    m[:n_agents, :n_agents] = -(ETA * A + K) * np.eye(n_agents)
    m[:n_agents, n_agents] = K
    m[n_agents, :n_agents] = kappa / n_agents
    m[n_agents, n_agents] = -kappa
    bbt = np.zeros_like(m)
    bbt[:n_agents, :n_agents] = SIGMA**2 * np.eye(n_agents)
    return m, bbt


# ------------------------------------------------------------------ the rule and its default


def test_default_pull_is_the_sum_bit_for_bit(getkey):
    x = jax.random.normal(getkey(), (5, 3))
    z = jax.random.normal(getkey(), (3,))
    drift = Quorum(K, KZ).aux_drift(x, z, None, None)
    np.testing.assert_array_equal(drift, KZ * jnp.sum(x - z[None], axis=0))
    assert Quorum(K, KZ).quorum_pull == "sum" and elastic(1.0).quorum_pull == "sum"
    mean = Quorum(K, KZ, quorum_pull="mean").aux_drift(x, z, None, None)
    np.testing.assert_allclose(mean, KZ * (x.mean(0) - z), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize(
    "make",
    (
        lambda: Quorum(1.0, 0.5, quorum_pull="Mean"),
        lambda: elastic(1.0, quorum_pull="avg"),
        lambda: quorum_sgd(0.1, 1.0, 0.5, quorum_pull="total"),
        lambda: momentum_quorum_sgd(0.1, 1.0, 0.5, quorum_pull=None),
        lambda: easgd(0.1, 1.0, quorum_pull="means"),
        lambda: theory.quorum_mean_variance(
            **Q, gain=K, quorum_gain=KZ, num_agents=3, quorum_pull="x"
        ),  # fmt: skip
        lambda: theory.mean_distance_bound(
            1.0,
            sigma=1.0,
            dim=1,
            num_agents=2,
            gain=1.0,
            gradient_scale=1.0,
            strong_convexity=1.0,
            smoothness=1.0,
            initial_distance=1.0,
            quorum_gain=1.0,
            quorum_pull="sums",
        ),  # fmt: skip
    ),
)
def test_bad_quorum_pull_raises_naming_it(make):
    with pytest.raises(ValueError, match="quorum_pull"):
        make()


@pytest.mark.parametrize("damping", (None, 0.9), ids=("first_order", "heavy_ball"))
def test_mean_pull_is_the_sum_pull_at_gain_over_n_to_rounding(damping, getkey):
    # With shared noise the two forms are one model: k_z^mean (x̄ − z) = (k_z^mean/N) Σ(x_i − z).
    # Euler–Maruyama by hand on each system's own drift, the same normals for both.
    n, h = 6, 0.02
    f = LogCoshQuadratic(2, 0.4)
    systems = [
        CoupledSystem(f, rule, IsotropicNoise(0.5), ETA, damping)
        for rule in (Quorum(K, KZ, 0.3, quorum_pull="mean"), Quorum(K, KZ / n, 0.3))
    ]
    x0 = jax.random.normal(getkey(), (n, 2)) * 2
    states = [s.init(x0) for s in systems]
    key = getkey()
    for k in range(40):
        dw = np.sqrt(h) * jax.random.normal(jax.random.fold_in(key, k), (n, 2))
        for i, s in enumerate(systems):
            y, d, g = states[i], s.drift(0.0, states[i]), s.diffusion(0.0, states[i], dw)
            states[i] = jax.tree.map(lambda a, b, c: a + h * b + c, y, d, g)
        np.testing.assert_allclose(states[0].x, states[1].x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(states[0].aux, states[1].aux, rtol=1e-12, atol=1e-12)
    assert np.abs(states[0].x - x0).max() > 0.1  # they moved


def test_named_optimizers_mirror_the_pull(getkey):
    n, lr = 4, 0.05
    f = LogCoshQuadratic(2, 0.4)
    x0 = jax.random.normal(getkey(), (n, 2))
    noise = 0.3 * np.asarray(jax.random.normal(getkey(), (25, n, 2)))
    pairs = (
        (quorum_sgd(lr, K, KZ, quorum_pull="mean"), quorum_sgd(lr, K, KZ / n)),
        (
            momentum_quorum_sgd(lr, K, KZ, momentum=0.7, quorum_pull="mean"),
            momentum_quorum_sgd(lr, K, KZ / n, momentum=0.7),
        ),
        (easgd(lr, 0.8, quorum_pull="mean"), coupled_sgd(Quorum(0.8, 0.8 / n), lr)),
        (easgd(lr, 0.8), coupled_sgd(Quorum(0.8, 0.8), lr)),  # the default is EASGD's sum
    )

    def run(opt):
        x, state = x0, opt.init(x0)
        for xi in noise:
            updates, state = opt.update(jax.vmap(f.grad)(x) + xi, state, x)
            x = x + updates
        return np.asarray(x)

    finals = [(run(a), run(b)) for a, b in pairs]
    for a, b in finals:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert np.abs(finals[2][0] - finals[3][0]).max() > 1e-3  # mean and sum differ


# ------------------------------------------------------------------------------- the theory


@pytest.mark.parametrize("n_agents", (1, 5))
@pytest.mark.parametrize("pull", ("sum", "mean"))
def test_stationary_moments_match_closed_form_and_numpy_lyapunov(pull, n_agents):
    system = CoupledSystem(
        Quadratic([A]), Quorum(K, KZ, quorum_pull=pull), IsotropicNoise(SIGMA), ETA
    )
    moments = theory.stationary_moments(system, num_agents=n_agents)
    kappa = KZ * (n_agents if pull == "sum" else 1)
    p = _numpy_lyapunov(*_quorum_matrices(n_agents, kappa))
    var_mean = p[:n_agents, :n_agents].sum() / n_agents**2
    spread = np.trace(p[:n_agents, :n_agents]) / n_agents - var_mean
    np.testing.assert_allclose(moments.var_mean, [var_mean], rtol=1e-10)
    np.testing.assert_allclose(moments.spread, [spread], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(moments.var_aux, [p[-1, -1]], rtol=1e-10)
    closed = dict(**Q, gain=K, quorum_gain=KZ, num_agents=n_agents, quorum_pull=pull)
    np.testing.assert_allclose(var_mean, theory.quorum_mean_variance(**closed), rtol=1e-10)
    np.testing.assert_allclose(p[-1, -1], theory.quorum_center_variance(**closed), rtol=1e-10)


def test_mean_pull_gives_exactly_one_over_n_and_the_sum_does_not():
    def n_var(pull, n):
        return n * theory.quorum_mean_variance(
            **Q, gain=K, quorum_gain=KZ, num_agents=n, quorum_pull=pull
        )

    np.testing.assert_allclose([n_var("mean", n) for n in (1, 4, 16, 64)], n_var("mean", 1))
    sums = [n_var("sum", n) for n in (1, 4, 16, 64)]
    assert np.all(np.diff(sums) > 0)  # z filters x̄ less as N k_z grows: flatter than 1/N


def test_mean_distance_bound_depends_on_the_rate_of_z_only():
    kwargs = dict(
        sigma=0.5, dim=2, num_agents=8, gain=2.0, gradient_scale=1.0, strong_convexity=0.5,
        smoothness=1.5, initial_distance=4.0, initial_deviation=0.3,
    )  # fmt: skip
    ts = np.linspace(0, 10, 11)
    a = theory.mean_distance_bound(ts, **kwargs, quorum_gain=0.25)
    b = theory.mean_distance_bound(ts, **kwargs, quorum_gain=2.0, quorum_pull="mean")
    np.testing.assert_allclose(a, b, rtol=1e-14)
    c = theory.mean_distance_bound(ts, **kwargs, quorum_gain=0.25, quorum_pull="mean")
    assert np.all(c[1:] > a[1:])  # a slower center: a slower guaranteed decay


def _optax_momentum_step_matrix(lr, beta, gain, quorum_gain, curvature, n_agents):
    """The linear map (x, v, z) -> (x', v', z') of one noise-free `momentum_quorum_sgd` step on
    `f = ½ a x²`, `v = −√lr m`, built by applying the optimizer to basis vectors."""
    h = np.sqrt(lr)
    opt = momentum_quorum_sgd(lr, gain, quorum_gain, momentum=beta, quorum_pull="mean")
    size = 2 * n_agents + 1
    out = np.zeros((size, size))
    for j in range(size):
        y = np.eye(size)[j]
        x, v, z = y[:n_agents, None], y[n_agents : 2 * n_agents, None], y[-1:]
        coupling, (_, empty) = opt.init(jnp.asarray(x))  # (CouplingState, (TraceState, _))
        state = (coupling._replace(aux=jnp.asarray(z)), (optax.TraceState(trace=-v / h), empty))
        updates, new = opt.update(curvature * jnp.asarray(x), state, jnp.asarray(x))
        x_new = np.asarray(x + updates)[:, 0]
        v_new = -h * np.asarray(new[1][0].trace)[:, 0]
        out[:, j] = np.concatenate([x_new, v_new, np.asarray(new[0].aux)])
    return out


def test_semi_implicit_map_is_the_optax_momentum_step():
    lr, beta, gain, quorum_gain, curvature, n = 0.04, 0.8, 1.5, 0.3, 0.7, 3
    h = np.sqrt(lr)
    system = CoupledSystem(
        Quadratic([curvature]),
        Quorum(gain, h * quorum_gain, quorum_pull="mean"),
        IsotropicNoise(SIGMA),
        damping=(1 - beta) / h,
    )
    a, q = theory.euler_map(system, num_agents=n, step_size=h, scheme="semi_implicit")
    np.testing.assert_allclose(
        a, _optax_momentum_step_matrix(lr, beta, gain, quorum_gain, curvature, n), atol=1e-12
    )
    # The noise σ√h n_k enters v, and x through x' = x + h v'.
    g = np.zeros((2 * n + 1, n))
    g[:n], g[n : 2 * n] = h * SIGMA * np.sqrt(h) * np.eye(n), SIGMA * np.sqrt(h) * np.eye(n)
    np.testing.assert_allclose(q, g @ g.T, atol=1e-14)
    explicit, _ = theory.euler_map(system, num_agents=n, step_size=h)
    lin = theory.linearize(system, num_agents=n)
    np.testing.assert_allclose(explicit, np.eye(2 * n + 1) + h * lin.drift, atol=1e-14)


@pytest.mark.parametrize("damping", (None, 1.2), ids=("first_order", "heavy_ball"))
def test_linear_moments_match_direct_recursions(damping, getkey):
    """Continuous: against `expm` at every time; chains: against iterating the mean and
    `P ← A P Aᵀ + Q` step by step (not the closed form `P∞ − A^k P∞ A^kᵀ`)."""
    n, h = 3, 0.05
    system = CoupledSystem(
        Quadratic([0.8, 1.4]), Quorum(K, KZ, quorum_pull="mean"), IsotropicNoise(SIGMA), ETA,
        damping,
    )  # fmt: skip
    x0 = np.asarray(jax.random.normal(getkey(), (n, 2))) + 2.0
    ts = np.linspace(0.0, 2.0, 9)
    lin = theory.linearize(system, num_agents=n)
    start = np.asarray(jax.flatten_util.ravel_pytree(system.init(jnp.asarray(x0)))[0])
    size = n * 2
    avg = np.kron(np.full((1, n), 1.0 / n), np.eye(2))
    cen = np.eye(size) - np.kron(np.full((n, n), 1.0 / n), np.eye(2))

    def moments(mu, cov):
        mu, cov = mu[:size], cov[:size, :size]
        mean_sq = np.sum((avg @ mu) ** 2) + np.trace(avg @ cov @ avg.T)
        return mean_sq, (np.sum((cen @ mu) ** 2) + np.trace(cen @ cov @ cen.T)) / n

    p_inf = theory.stationary_covariance(lin.drift, lin.diffusion)
    ref = []
    for t in ts:
        e = scipy.linalg.expm(lin.drift * t)
        ref.append(moments(e @ start, p_inf - e @ p_inf @ e.T))
    got = theory.linear_moments(system, x0, ts)
    np.testing.assert_allclose(got.mean_sq_distance, [r[0] for r in ref], rtol=1e-9)
    np.testing.assert_allclose(got.deviation, [r[1] for r in ref], rtol=1e-9, atol=1e-14)

    schemes = ("explicit",) if damping is None else ("explicit", "semi_implicit")
    for scheme in schemes:
        a, q = theory.euler_map(system, num_agents=n, step_size=h, scheme=scheme)
        mu, cov, ref = start.copy(), np.zeros_like(q), []
        for k in range(int(round(ts[-1] / h)) + 1):
            if np.any(np.isclose(k * h, ts)):
                ref.append(moments(mu, cov))
            mu, cov = a @ mu, a @ cov @ a.T + q
        got = theory.linear_moments(system, x0, ts, step_size=h, scheme=scheme)
        np.testing.assert_allclose(got.mean_sq_distance, [r[0] for r in ref], rtol=1e-9)
        np.testing.assert_allclose(got.deviation, [r[1] for r in ref], rtol=1e-9, atol=1e-14)
        chain = theory.stationary_moments(system, num_agents=n, step_size=h, scheme=scheme)
        p_chain = scipy.linalg.solve_discrete_lyapunov(a, q)[:size, :size]
        np.testing.assert_allclose(chain.var_mean, [p_chain[0::2, 0::2].sum() / n**2, p_chain[
            1::2, 1::2].sum() / n**2], rtol=1e-9)  # fmt: skip
    with pytest.raises(ValueError, match="step grid"):
        theory.linear_moments(system, x0, [0.0, 0.013], step_size=h)
    if damping is None:
        with pytest.raises(ValueError, match="heavy-ball"):
            theory.euler_map(system, num_agents=n, step_size=h, scheme="semi_implicit")
