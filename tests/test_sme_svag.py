"""SME-2 (`dynamics.ModifiedLandscape`, `dynamics.sme2`) and SVAG (`algorithms.svag`).

Every check is against an oracle that does not use the code under test: hand-written
derivatives, the quadratic's closed form, closed-form moments of linear chains and SDEs, and
a Monte-Carlo estimate with a tolerance from its sample size.
"""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algorithms import (
    agent_oracle,
    coupled_sgd,
    easgd,
    landscape_oracle,
    quorum_sgd,
    run_agents,
    run_svag,
    svag,
    svag_coefficients,
    svag_learning_rate,
    svag_momentum,
)
from algorithms.svag import SECOND_DRAW
from dynamics import (
    CoupledSystem,
    CovarianceNoise,
    IsotropicNoise,
    LogCoshQuadratic,
    MeanField,
    ModifiedLandscape,
    Quadratic,
    Quorum,
    Rastrigin,
    TiltedMultiWell,
    sme2,
    solve,
    theory,
)

# ---------------------------------------------------------------- SME-2: the modified loss


def _rastrigin_derivatives(x, s=10.0, amp=1.0):
    return x / s + 2 * np.pi * amp * np.sin(2 * np.pi * x), 1 / s + 4 * np.pi**2 * amp * np.cos(
        2 * np.pi * x
    )


def _logcosh_derivatives(x, m=0.2, c=np.array([0.5, -0.5])):
    r = x - c
    return np.tanh(r) + m * r, 1 / np.cosh(r) ** 2 + m


@pytest.mark.parametrize(
    ("landscape", "derivatives"),
    [(Rastrigin(2), _rastrigin_derivatives),
     (LogCoshQuadratic(2, 0.2, center=[0.5, -0.5]), _logcosh_derivatives)],
    ids=["Rastrigin", "LogCoshQuadratic"],
)  # fmt: skip
def test_modified_gradient_equals_hand_written_and_autodiff_gradient(landscape, derivatives):
    # Separable f: ∇f̃ = f' + (lr/2) f'' f' per coordinate, from hand-written f', f''.
    lr = 0.07
    f_mod = ModifiedLandscape(landscape, lr)
    for x in np.array([[0.3, -1.7], [2.2, 0.05], [-0.9, 1.3]]):
        d1, d2 = derivatives(x)
        expected = d1 + 0.5 * lr * d2 * d1
        np.testing.assert_allclose(f_mod.grad(jnp.asarray(x)), expected, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(
            f_mod.grad(jnp.asarray(x)), jax.grad(f_mod.value)(jnp.asarray(x)), rtol=1e-12
        )
        np.testing.assert_allclose(
            f_mod.value(jnp.asarray(x)),
            landscape.value(jnp.asarray(x)) + 0.25 * lr * np.sum(d1**2),
            rtol=1e-13,
        )


def test_modified_quadratic_is_the_quadratic_of_a_plus_half_lr_a_squared():
    a = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    c = np.array([1.0, -1.0, 0.5])
    lr = 0.3
    f_mod = ModifiedLandscape(Quadratic(a, center=c), lr)
    modified = a + 0.5 * lr * a @ a  # ½ xᵀ(A + (lr/2)A²)x
    for x in np.array([[0.2, 0.4, -1.0], [3.0, -2.0, 0.1]]):
        r = x - c
        np.testing.assert_allclose(f_mod.grad(jnp.asarray(x)), modified @ r, rtol=1e-13)
        np.testing.assert_allclose(f_mod.value(jnp.asarray(x)), 0.5 * r @ modified @ r, rtol=1e-13)
    np.testing.assert_allclose(f_mod.hessian(jnp.asarray(c)), modified, rtol=1e-13)
    np.testing.assert_allclose(f_mod.minimizer(), c)
    ev = np.linalg.eigvalsh(modified)
    np.testing.assert_allclose(f_mod.curvature_bounds(), (ev[0], ev[-1]), rtol=1e-12)
    # diagonal form too
    diag = ModifiedLandscape(Quadratic([1.0, 4.0]), 0.1)
    np.testing.assert_allclose(diag.grad(jnp.array([1.0, 1.0])), [1.05, 4.8], rtol=1e-14)


def test_modified_landscape_minimizer_basin_and_unknown_bounds():
    base = TiltedMultiWell(2, tilt=0.2)
    f_mod = ModifiedLandscape(base, 0.05)
    x_star = f_mod.minimizer()
    np.testing.assert_allclose(x_star, base.minimizer())
    # f̃ ≥ f with equality at x*: x* minimizes f̃ too (checked on a grid).
    grid = jnp.asarray(np.stack(np.meshgrid(*[np.linspace(-3, 3, 121)] * 2), -1).reshape(-1, 2))
    assert f_mod.value(x_star) <= jax.vmap(f_mod.value)(grid).min() + 1e-9
    xs = jnp.array([[0.1, -0.2], [1.0, 0.0]])
    np.testing.assert_array_equal(f_mod.in_global_basin(xs), base.in_global_basin(xs))
    with pytest.raises(NotImplementedError, match="third derivative"):
        f_mod.curvature_bounds()


@pytest.mark.parametrize(
    "make",
    [lambda: ModifiedLandscape(Quadratic([1.0]), 0.0),
     lambda: ModifiedLandscape(Quadratic([1.0]), -0.1),
     lambda: ModifiedLandscape(Quadratic([1.0]), float("nan")),
     lambda: sme2(CoupledSystem(Quadratic([1.0])), 0.0),
     lambda: sme2(CoupledSystem(Quadratic([1.0]), damping=0.5), 0.1)],
    ids=["lr=0", "lr<0", "lr=nan", "h=0", "heavy-ball"],
)  # fmt: skip
def test_sme2_bad_arguments_raise(make):
    with pytest.raises(ValueError, match="learning_rate|step_size|damping"):
        make()


def test_sme2_system_uses_lr_equal_h_times_eta_and_runs_with_a_coupling_rule(getkey):
    eta, h = 0.5, 0.02
    system = CoupledSystem(
        TiltedMultiWell(2, tilt=0.2), Quorum(1.0, 0.3), IsotropicNoise(0.4), gradient_scale=eta
    )
    modified = sme2(system, h)
    assert modified.landscape.learning_rate == pytest.approx(h * eta)
    assert modified.coupling is system.coupling and modified.noise is system.noise
    # Drift difference = −η (lr/2) ∇²f ∇f per agent (Hessian from jax.hessian: an
    # independent route), aux drift unchanged.
    x = jax.random.normal(getkey(), (4, 2))
    state = system.init(x)
    d_plain, d_mod = system.drift(0.0, state), modified.drift(0.0, state)
    hess = jax.vmap(jax.hessian(system.landscape.value))(x)
    grads = jax.vmap(system.landscape.grad)(x)
    expected = -eta * 0.5 * h * eta * jnp.einsum("nij,nj->ni", hess, grads)
    np.testing.assert_allclose(d_mod.x - d_plain.x, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_mod.aux, d_plain.aux, rtol=1e-14)
    sol = solve(modified, x, t1=1.0, step_size=h, key=getkey(), saveat=11)
    assert sol.x.shape == (11, 4, 2) and bool(jnp.all(jnp.isfinite(sol.x)))


def test_sme2_ode_mean_under_mean_field_coupling_is_the_modified_exponential():
    # Quadratic f = ½ a x², all-to-all coupling (Σ_i F_i = 0): dx̄/dt = −η a (1 + lr a/2) x̄.
    a, eta, h = 2.0, 0.5, 0.1
    system = CoupledSystem(Quadratic([a]), MeanField(1.5), gradient_scale=eta)
    x0 = jnp.linspace(-1.0, 2.0, 5)[:, None]
    sol = solve(sme2(system, h), x0, t1=2.0, step_size=1e-3, solver=diffrax.Tsit5(), saveat=5)
    predicted = np.exp(-eta * a * (1 + 0.5 * h * eta * a) * np.asarray(sol.ts)) * x0.mean()
    np.testing.assert_allclose(sol.x.mean(axis=(1, 2)), predicted, rtol=1e-9)


def test_sme2_is_weak_order_two_where_the_plain_sde_is_order_one():
    """E x_K² of SGD at T = K·h against the plain SDE and SME-2, closed forms only.

    SGD with lr = hη on f = ½ a x² and additive gradient noise of fixed variance s²
    (Li, Tai & E's regime: σ² = η² h s² shrinks with h): x_{k+1} = ρ x_k + lr s n_k, ρ = 1 − lr a.
    """
    a, s, x0, t_end, eta = 1.0, 1.0, 1.0, 1.0, 0.5
    steps = np.array([0.04, 0.02, 0.01, 0.005])
    err_plain, err_sme2 = [], []
    for h in steps:
        lr, k = h * eta, round(t_end / h)
        rho = 1 - lr * a
        chain = rho ** (2 * k) * x0**2 + lr**2 * s**2 * (1 - rho ** (2 * k)) / (1 - rho**2)

        def ou_second_moment(curv, h=h):  # dX = −η curv X dt + η √h s dW, at t_end
            rate, sig2 = eta * curv, eta**2 * h * s**2
            decay = np.exp(-2 * rate * t_end)
            return decay * x0**2 + sig2 / (2 * rate) * (1 - decay)

        plain, modified = ou_second_moment(a), ou_second_moment(a * (1 + 0.5 * lr * a))
        # the library's models give the same numbers: sme2's mapping and the chain
        system = CoupledSystem(Quadratic([a]), noise=IsotropicNoise(eta * math.sqrt(h) * s),
                               gradient_scale=eta)  # fmt: skip
        start = np.full((1, 1), x0)
        lib_sme2 = theory.linear_moments(sme2(system, h), start, [t_end]).mean_sq_distance[0]
        lib_chain = theory.linear_moments(system, start, [t_end], step_size=h).mean_sq_distance
        np.testing.assert_allclose(lib_sme2, modified, rtol=1e-9)
        np.testing.assert_allclose(lib_chain[0], chain, rtol=1e-9)
        err_plain.append(abs(plain - chain))
        err_sme2.append(abs(modified - chain))
    slope_plain = np.polyfit(np.log(steps), np.log(err_plain), 1)[0]
    slope_sme2 = np.polyfit(np.log(steps), np.log(err_sme2), 1)[0]
    assert abs(slope_plain - 1) < 0.05, slope_plain
    assert abs(slope_sme2 - 2) < 0.05, slope_sme2
    assert err_sme2[-1] < 0.01 * err_plain[-1]


# ------------------------------------------------------------------------------- SVAG


@pytest.mark.parametrize("ell", [1, 1.5, 2, 4, 16, 1000])
def test_svag_coefficients_keep_the_mean_and_multiply_the_covariance_by_l(ell):
    c1, c2 = svag_coefficients(ell)
    assert c1 + c2 == pytest.approx(1.0, abs=1e-14)
    assert c1**2 + c2**2 == pytest.approx(ell, rel=1e-13)
    # Exact identity on fixed draws: g1 = (u, u, −u, −u), g2 = (v, −v, v, −v) with v a row
    # permutation of u have equal sample covariances C, zero sample means and exactly zero
    # cross-covariance, so the sample covariance of c1 g1 + c2 g2 is (c1² + c2²) C = l C.
    u = np.random.default_rng(0).normal(size=(25, 3))
    v = u[np.random.default_rng(1).permutation(25)]
    g1, g2 = np.concatenate([u, u, -u, -u]), np.concatenate([v, -v, v, -v])
    key = jax.random.key(0)  # the stub oracle returns g1 for the runner's key, else g2
    _, combined = svag(lambda p, k, t: (None, g1 if k is key else g2), ell)(None, key, 0)
    np.testing.assert_array_equal(combined, c1 * g1 + c2 * g2)
    cov = u.T @ u / 25
    np.testing.assert_allclose(combined.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(combined.T @ combined / 100, ell * cov, rtol=1e-12)
    if ell == 1:
        assert (c1, c2) == (1.0, 0.0)


def _stub_grad_fn(params, key):
    """A GradFn whose 'gradient' is params plus the key's normals (exactly reproducible)."""
    keys = {"w": jax.random.fold_in(key, 0), "b": jax.random.fold_in(key, 1)}
    noise = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape), params, keys)
    loss = jnp.sum(params["w"] ** 2) + jnp.sum(noise["b"])
    return loss, jax.tree.map(jnp.add, params, noise)


def test_svag_oracle_combines_each_agents_two_draws(getkey):
    n, ell, key, step = 5, 3.0, getkey(), 7
    params = {"w": jax.random.normal(getkey(), (n, 2, 3)), "b": jax.random.normal(getkey(), (n, 4))}
    oracle = agent_oracle(_stub_grad_fn)
    losses, grads = svag(oracle, ell)(params, key, step)
    c1, c2 = svag_coefficients(ell)
    second = jax.random.fold_in(key, SECOND_DRAW)
    for i in range(n):  # agent i's own two draws, keys as agent_oracle derives them
        p_i = jax.tree.map(lambda x, i=i: x[i], params)
        loss1, g1 = _stub_grad_fn(p_i, jax.random.fold_in(jax.random.fold_in(key, step), i))
        _, g2 = _stub_grad_fn(p_i, jax.random.fold_in(jax.random.fold_in(second, step), i))
        assert losses[i] == loss1  # draw 1's loss, not amplified
        for name in ("w", "b"):
            np.testing.assert_allclose(
                grads[name][i], c1 * g1[name] + c2 * g2[name], rtol=1e-13, atol=1e-13
            )


def test_svag_mean_and_covariance_monte_carlo(getkey):
    # 40,000 agents at fixed params, one step: the amplified gradient noise has mean 0 and
    # covariance l Σ. Sample covariance entries of n Gaussian draws have s.e.
    # √((S_ii S_jj + S_ij²)/n); the mean has s.e. √(S_jj/n). Tolerance: 5 s.e.
    n, ell = 40_000, 6.0
    sigma = np.array([[0.5, 0.2], [0.2, 0.3]])
    f = Quadratic([1.0, 2.0])
    oracle = svag(landscape_oracle(f, CovarianceNoise(sigma)), ell)
    x = jnp.tile(jnp.array([[0.3, -0.4]]), (n, 1))
    _, grads = jax.jit(oracle)(x, getkey(), 3)
    noise = np.asarray(grads - jax.vmap(f.grad)(x))
    target = ell * sigma
    se_cov = np.sqrt((np.outer(np.diag(target), np.diag(target)) + target**2) / n)
    assert np.all(np.abs(np.cov(noise.T) - target) < 5 * se_cov), (np.cov(noise.T), target)
    assert np.all(np.abs(noise.mean(0)) < 5 * np.sqrt(np.diag(target) / n))
    # and the unamplified oracle has covariance Σ: the factor really is l
    assert np.all(np.abs(np.cov(noise.T) / ell - sigma) < 5 * se_cov / ell)


@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "schedule"])
def test_l_equal_one_is_the_wrapped_optimizers_path_bitwise(schedule, getkey):
    f = TiltedMultiWell(2, tilt=0.2)
    oracle = landscape_oracle(f, IsotropicNoise(0.8))
    assert svag(oracle, 1) is oracle
    lr = optax.exponential_decay(0.05, 10, 0.9) if schedule else 0.05
    x0, key = jax.random.normal(getkey(), (4, 2)), getkey()

    def make(rate):
        return quorum_sgd(rate, gain=1.0, quorum_gain=0.3)

    ref = run_agents(make(lr), x0, oracle, num_steps=40, key=key, record_every=10)
    res = run_svag(make, x0, oracle, amplification=1, learning_rate=lr, num_steps=40, key=key,
                   record_every=10)  # fmt: skip
    np.testing.assert_array_equal(res.metrics["params"], ref.metrics["params"])
    np.testing.assert_array_equal(res.steps, ref.steps)


@pytest.mark.parametrize(
    "make",
    [lambda lr: quorum_sgd(lr, gain=1.0, quorum_gain=0.3),
     lambda lr: easgd(lr, rho=0.8),
     lambda lr: coupled_sgd(MeanField(1.5), lr),
     lambda lr: coupled_sgd(Quorum(1.0, 0.3), lr, momentum=0.9)],
    ids=["quorum_sgd", "easgd", "coupled_sgd", "momentum"],
)  # fmt: skip
def test_svag_runs_every_coupling_rule_with_records_at_the_same_times(make, getkey):
    f = TiltedMultiWell(2, tilt=0.2)
    oracle = landscape_oracle(f, IsotropicNoise(0.8))
    x0, key = jax.random.normal(getkey(), (4, 2)), getkey()
    ell, lr = 4, 0.05
    res = run_svag(make, x0, oracle, amplification=ell, learning_rate=lr, num_steps=40,
                   key=key, record_every=10)  # fmt: skip
    ref = run_svag(make, x0, oracle, amplification=1, learning_rate=lr, num_steps=40,
                   key=key, record_every=10)  # fmt: skip
    np.testing.assert_array_equal(res.steps, ell * ref.steps)  # t = k'·lr/l = k·lr
    assert res.metrics["params"].shape == ref.metrics["params"].shape == (5, 4, 2)
    assert int(res.diverged_step) == -1 and bool(jnp.all(jnp.isfinite(res.metrics["params"])))
    assert not np.allclose(res.metrics["params"][-1], ref.metrics["params"][-1])


def test_svag_stationary_variance_closed_form_simulation_and_sde_limit(getkey):
    """1-D quadratic, additive gradient noise s²: x_{k+1} = (1 − (η/l) a) x_k + (η/l) ξ_k,
    Var ξ = l s², so Var_∞(l) = (η/l)² l s² / (1 − (1 − ηa/l)²) → η s²/(2a) (the SDE's)."""
    a, s, eta = 1.0, 1.0, 0.5

    def closed_form(ell):
        q = eta / ell
        return q**2 * ell * s**2 / (1 - (1 - q * a) ** 2)

    limit = eta * s**2 / (2 * a)
    ells = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    errors = np.array([closed_form(e) - limit for e in ells])
    assert np.all(errors > 0)
    slope = np.polyfit(np.log(ells[3:]), np.log(errors[3:]), 1)[0]
    assert abs(slope + 1) < 0.02, slope  # the error falls like 1/l
    # exactly l·(Var_∞(l) − Var_∞) = η² s² a / (2(2a − ηa²/l)) → η² s²/4
    np.testing.assert_allclose(
        errors * ells, eta**2 * s**2 * a / (2 * (2 * a - eta * a**2 / ells)), rtol=1e-9
    )
    np.testing.assert_allclose((errors * ells)[ells >= 16], eta**2 * s**2 / 4, rtol=0.02)

    # The library's SVAG chain: N independent agents from x = 0, K SGD steps of time
    # (K·l SVAG steps); sample variance against Var_k = Var_∞(l)(1 − ρ^{2k}), 5 s.e.
    n, num_steps = 20_000, 24
    oracle = landscape_oracle(Quadratic([a]), IsotropicNoise(s))
    x0 = jnp.zeros((n, 1))
    for ell in (1, 4):
        res = run_svag(optax.sgd, x0, oracle, amplification=ell, learning_rate=eta,
                       num_steps=num_steps, key=getkey(), record_every=num_steps)  # fmt: skip
        rho = 1 - eta * a / ell
        predicted = closed_form(ell) * (1 - rho ** (2 * num_steps * ell))
        measured = float(jnp.var(res.metrics["params"][-1]))
        se = predicted * math.sqrt(2 / n)
        assert abs(measured - predicted) < 5 * se, (ell, measured, predicted)
        if ell == 1:  # plain SGD is measurably not the SDE here
            assert measured - limit > 10 * se


def _momentum_chain_covariance(lr, beta, a, noise_var):
    """Stationary Cov of (x, m) for m ← β m + a x + ξ, x ← x − lr m (Var ξ = noise_var)."""
    trans = np.array([[1 - lr * a, -lr * beta], [a, beta]])
    kick = np.array([-lr, 1.0])
    q = noise_var * np.outer(kick, kick)
    vec = np.linalg.solve(np.eye(4) - np.kron(trans, trans), q.ravel())
    return vec.reshape(2, 2)


def test_svag_momentum_keeps_the_heavy_ball_sde(getkey):
    # Heavy-ball SDE of momentum SGD (coupled_sgd's mapping): γ = (1 − β)/√lr, σ² = √lr s²;
    # stationary Var(x) = σ²/(2γa) and Var(v) = σ²/(2γ), with v = −√lr m.
    a, s, lr, beta = 1.0, 1.0, 0.04, 0.8
    gamma, sig2 = (1 - beta) / math.sqrt(lr), math.sqrt(lr) * s**2
    var_x, var_v = sig2 / (2 * gamma * a), sig2 / (2 * gamma)
    ells = np.array([4, 8, 16, 32, 64])
    errors = []
    for ell in ells:
        lr_l, beta_l = svag_momentum(lr, beta, ell)
        cov = _momentum_chain_covariance(lr_l, beta_l, a, ell * s**2)
        errors.append([cov[0, 0] / var_x - 1, lr_l * cov[1, 1] / var_v - 1])
    errors = np.abs(np.array(errors))
    assert errors[-1].max() < 0.01
    slope_x, slope_v = (np.polyfit(np.log(ells), np.log(errors[:, j]), 1)[0] for j in (0, 1))
    assert slope_x < -0.9 and abs(slope_v + 1) < 0.1, (slope_x, slope_v)  # at least 1/l
    # lr/l at a fixed β instead converges to the overdamped limit: Var(v) stays off
    cov = _momentum_chain_covariance(lr / 64, beta, a, 64 * s**2)
    assert lr / 64 * cov[1, 1] / var_v - 1 > 0.1
    assert svag_momentum(lr, beta, 1) == (lr, beta)
    # the chain model is what optax.sgd(momentum) with the svag oracle runs (simulated, 5 s.e.)
    ell, n = 4, 20_000
    lr_l, beta_l = svag_momentum(lr, beta, ell)
    oracle = svag(landscape_oracle(Quadratic([a]), IsotropicNoise(s)), ell)
    res = run_agents(optax.sgd(lr_l, momentum=beta_l), jnp.zeros((n, 1)), oracle,
                     num_steps=2400, key=getkey(), record_every=2400)  # fmt: skip
    predicted = _momentum_chain_covariance(lr_l, beta_l, a, ell * s**2)[0, 0]
    measured = float(jnp.var(res.metrics["params"][-1]))
    assert abs(measured / predicted - 1) < 5 * math.sqrt(2 / n), (measured, predicted)


def test_svag_learning_rate_for_constants_and_schedules():
    assert svag_learning_rate(0.3, 4) == pytest.approx(0.075)
    schedule = optax.linear_schedule(1.0, 0.0, 100)
    stretched = svag_learning_rate(schedule, 4)
    # SVAG step k' = 4k sits at SGD step k: the rate there, divided by l
    np.testing.assert_allclose(stretched(jnp.asarray(200)), schedule(50) / 4, rtol=1e-12)
    assert svag_learning_rate(schedule, 1) is schedule


@pytest.mark.parametrize(
    ("call", "match"),
    [(lambda o: svag(o, 0.5), "amplification"),
     (lambda o: svag(o, float("inf")), "amplification"),
     (lambda o: svag(o, True), "amplification"),
     (lambda o: svag_learning_rate(0.0, 2), "learning_rate"),
     (lambda o: svag_learning_rate(-1.0, 2), "learning_rate"),
     (lambda o: svag_momentum(0.1, 1.0, 2), "momentum"),
     (lambda o: run_svag(optax.sgd, jnp.zeros((2, 1)), o, amplification=1.5,
                         learning_rate=0.1, num_steps=4, key=jax.random.key(0)),
      "record_every"),
     (lambda o: run_svag(optax.sgd, jnp.zeros((2, 1)), o, amplification=2,
                         learning_rate=-0.1, num_steps=4, key=jax.random.key(0)),
      "learning_rate")],
)  # fmt: skip
def test_svag_bad_arguments_raise(call, match):
    oracle = landscape_oracle(Quadratic([1.0]), IsotropicNoise(1.0))
    with pytest.raises(ValueError, match=match):
        call(oracle)
