"""The continuous model: landscapes, noise, coupled systems, solve, and theory."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynamics import theory
from dynamics.brownian import step_normal
from dynamics.coupling import MeanField, Quorum, Uncoupled, elastic
from dynamics.landscapes import LogCoshQuadratic, Quadratic, Rastrigin, TiltedMultiWell
from dynamics.noise import CovarianceNoise, DiagonalNoise, IsotropicNoise, StateDependentNoise
from dynamics.solve import solve, solve_runs
from dynamics.system import CoupledSystem

LANDSCAPES = (
    Quadratic([1.0, 3.0]),
    Quadratic([[2.0, 0.5], [0.5, 1.0]], center=[1.0, -1.0]),
    TiltedMultiWell(2, tilt=0.3),
    Rastrigin(2),
    LogCoshQuadratic(2, 0.2, center=[0.5, -0.5]),
)


@pytest.mark.parametrize("landscape", LANDSCAPES, ids=lambda f: type(f).__name__)
def test_gradient_matches_autodiff(landscape, getkey):
    x = jax.random.normal(getkey(), (2,)) * 2
    np.testing.assert_allclose(
        landscape.grad(x), jax.grad(landscape.value)(x), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("landscape", LANDSCAPES, ids=lambda f: type(f).__name__)
def test_minimizer_is_global_on_a_grid(landscape):
    x_star = landscape.minimizer()
    grid = np.stack(np.meshgrid(*[np.linspace(-4, 4, 161)] * 2), -1).reshape(-1, 2)
    values = jax.vmap(landscape.value)(jnp.asarray(grid))
    assert landscape.value(x_star) <= values.min() + 1e-6
    np.testing.assert_allclose(landscape.grad(x_star), 0.0, atol=1e-3)


@pytest.mark.parametrize("landscape", LANDSCAPES, ids=lambda f: type(f).__name__)
def test_hessian_eigenvalues_within_curvature_bounds(landscape, getkey):
    m, big_l = landscape.curvature_bounds()
    xs = jax.random.normal(getkey(), (200, 2)) * 3
    eig = jax.vmap(lambda x: jnp.linalg.eigvalsh(jax.hessian(landscape.value)(x)))(xs)
    assert eig.min() >= m - 1e-9 and eig.max() <= big_l + 1e-9


def test_multiwell_global_basin():
    f = TiltedMultiWell(1)
    lo, hi = f.basin_1d()
    np.testing.assert_allclose([lo, hi], [-0.5, 0.5], atol=0.02)  # local maxima near ±1/2
    assert bool(f.in_global_basin(jnp.array([0.3]))) and not bool(
        f.in_global_basin(jnp.array([1.0]))
    )
    g = Rastrigin(2)
    assert bool(g.in_global_basin(jnp.array([0.2, -0.2])))
    assert not bool(g.in_global_basin(jnp.array([0.2, 1.1])))


@pytest.mark.parametrize(
    "noise",
    (IsotropicNoise(0.7), DiagonalNoise([0.3, 1.2]), CovarianceNoise([[1.0, 0.6], [0.6, 0.5]])),
    ids=lambda n: type(n).__name__,
)
def test_noise_increment_covariance(noise, getkey):
    n = jax.random.normal(getkey(), (200_000, 2))
    samples = jax.vmap(noise.apply)(jnp.zeros((200_000, 2)), n)
    np.testing.assert_allclose(np.cov(samples.T), noise.covariance(2), atol=0.02)


def test_state_dependent_noise_scales_with_distance():
    noise = StateDependentNoise(0.1, 0.5)
    out = noise.apply(jnp.array([0.0, 2.0]), jnp.ones(2))
    np.testing.assert_allclose(out, [0.1, np.sqrt(0.01 + 1.0)])


SIGMA, ETA, A, N, K, KZ = 0.5, 0.7, 2.0, 4, 1.3, 0.4
Q = {"sigma": SIGMA, "gradient_scale": ETA, "curvature": A}  # the single-agent parameters


def test_lyapunov_matches_closed_forms():
    f = Quadratic([A])
    m = theory.stationary_moments(
        CoupledSystem(f, MeanField(K), IsotropicNoise(SIGMA), ETA), num_agents=N
    )
    np.testing.assert_allclose(
        m.var_mean, theory.all_to_all_mean_variance(**Q, num_agents=N), rtol=1e-10
    )
    np.testing.assert_allclose(
        m.spread, theory.all_to_all_spread(**Q, gain=K, num_agents=N), rtol=1e-10
    )
    m = theory.stationary_moments(
        CoupledSystem(f, Quorum(K, KZ), IsotropicNoise(SIGMA), ETA), num_agents=N
    )
    np.testing.assert_allclose(
        m.var_mean,
        theory.quorum_mean_variance(**Q, gain=K, quorum_gain=KZ, num_agents=N),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        m.spread, theory.quorum_spread(**Q, gain=K, num_agents=N), rtol=1e-10
    )
    np.testing.assert_allclose(
        m.var_aux,
        theory.quorum_center_variance(**Q, gain=K, quorum_gain=KZ, num_agents=N),
        rtol=1e-10,
    )
    m = theory.stationary_moments(
        CoupledSystem(f, Uncoupled(), IsotropicNoise(SIGMA), ETA), num_agents=1
    )
    np.testing.assert_allclose(m.var_agent, theory.uncoupled_variance(**Q), rtol=1e-10)


def test_lyapunov_momentum_matches_heavy_ball_closed_form():
    # Heavy ball dx = v dt, dv = (−γv − ηa x) dt + σ dW: Var(x) = σ²/(2γηa) per agent when
    # uncoupled, and the mean of N all-to-all agents has Var(x̄) = σ²/(2γηaN).
    gamma = 0.8
    f = Quadratic([A])
    m = theory.stationary_moments(
        CoupledSystem(f, Uncoupled(), IsotropicNoise(SIGMA), ETA, gamma), num_agents=1
    )
    np.testing.assert_allclose(m.var_agent, SIGMA**2 / (2 * gamma * ETA * A), rtol=1e-10)
    m = theory.stationary_moments(
        CoupledSystem(f, MeanField(K), IsotropicNoise(SIGMA), ETA, gamma), num_agents=N
    )
    np.testing.assert_allclose(m.var_mean, SIGMA**2 / (2 * gamma * ETA * A * N), rtol=1e-10)


def _time_averaged_moments(system, num_agents, key, runs=200, t_burn=5.0, t_sample=40.0, dt=0.01):
    ts = np.arange(t_burn, t_burn + t_sample + 1e-9, 0.25)
    sol = solve_runs(
        system, jnp.zeros((num_agents, 1)), jax.random.split(key, runs),
        t1=ts[-1], step_size=dt, saveat=ts, solver=diffrax.Heun(),
    )  # fmt: skip
    x = np.asarray(sol.x[..., 0])  # (R, T, N)
    mean = x.mean(-1)
    per_run_var = (mean**2).mean(-1)
    per_run_spread = ((x - mean[..., None]) ** 2).mean((-2, -1))
    se = lambda v: v.std(ddof=1) / np.sqrt(len(v))  # noqa: E731
    return (per_run_var.mean(), se(per_run_var)), (per_run_spread.mean(), se(per_run_spread))


@pytest.mark.parametrize("damping", (None, 1.5), ids=("first_order", "heavy_ball"))
@pytest.mark.parametrize("rule", (MeanField(K), Quorum(K, KZ)), ids=("all_to_all", "quorum"))
def test_simulated_stationary_moments_match_lyapunov(rule, damping, getkey):
    # Tolerance: 4 standard errors of the across-run mean (runs are independent).
    system = CoupledSystem(Quadratic([A]), rule, IsotropicNoise(SIGMA), ETA, damping)
    (var, var_se), (spread, spread_se) = _time_averaged_moments(system, N, getkey())
    m = theory.stationary_moments(system, num_agents=N)
    assert abs(var - m.var_mean[0]) < 4 * var_se + 0.01 * m.var_mean[0]
    assert abs(spread - m.spread[0]) < 4 * spread_se + 0.01 * m.spread[0]
    # The estimate is sharp enough to tell the coupled mean from an uncoupled agent.
    assert 4 * var_se < 0.3 * abs(theory.uncoupled_variance(**Q) - m.var_mean[0])


def test_solve_is_deterministic_and_runs_differ(getkey):
    system = CoupledSystem(TiltedMultiWell(1), Quorum(1.0, 0.5), IsotropicNoise(0.5))
    x0, key = jnp.zeros((3, 1)), getkey()
    a = solve(system, x0, t1=1.0, step_size=0.01, key=key)
    b = solve(system, x0, t1=1.0, step_size=0.01, key=key)
    np.testing.assert_array_equal(a.x, b.x)
    keys = jax.random.split(key, 4)
    runs = solve_runs(system, x0, keys, t1=1.0, step_size=0.01, saveat=5)
    assert runs.x.shape == (4, 5, 3, 1) and runs.aux.shape == (4, 5, 1)
    one = solve(system, x0, t1=1.0, step_size=0.01, key=keys[2], saveat=5)
    np.testing.assert_allclose(runs.x[2], one.x, rtol=1e-12)
    assert not np.allclose(runs.x[0], runs.x[1])


def test_zero_noise_is_the_ode(getkey):
    # σ = 0: Tsit5 with adaptive steps and Euler with tiny steps agree (ODE, no key needed).
    system = CoupledSystem(LogCoshQuadratic(2, 0.1), Quorum(1.0, 0.3, 0.2))
    x0 = jax.random.normal(getkey(), (5, 2))
    fine = solve(system, x0, t1=2.0, step_size=1e-4, saveat=3)
    ode = solve(system, x0, t1=2.0, step_size=0.1, saveat=3, solver=diffrax.Tsit5(), adaptive=True,
                rtol=1e-8, atol=1e-10)  # fmt: skip
    np.testing.assert_allclose(ode.x, fine.x, atol=1e-3)
    assert ode.num_steps < 200


def test_euler_maruyama_strong_order_one_for_additive_noise(getkey):
    # Same Brownian tree at every dt; error against a fine Heun solution regressed on dt = 2^-k.
    system = CoupledSystem(LogCoshQuadratic(1, 0.2), Quorum(2.0, 0.5), IsotropicNoise(0.5))
    x0 = jnp.linspace(-1, 1, 4)[:, None]
    keys = jax.random.split(getkey(), 64)
    ref_dt = 2.0**-11

    dts = 2.0 ** -np.arange(4, 8)

    def errors(k):  # the fine reference once per path, then every coarse dt on the same path
        tree = diffrax.VirtualBrownianTree(0.0, 1.0, tol=ref_dt, shape=x0.shape, key=k)
        fine = solve(system, x0, t1=1.0, step_size=ref_dt, brownian=tree, saveat=1,
                     solver=diffrax.Heun()).x[-1]  # fmt: skip
        coarse = [solve(system, x0, t1=1.0, step_size=dt, brownian=tree, saveat=1).x[-1]
                  for dt in dts]  # fmt: skip
        return jnp.stack([jnp.sqrt(jnp.mean((c - fine) ** 2)) for c in coarse])

    errors = np.asarray(jnp.mean(jax.vmap(errors)(keys), axis=0))
    order = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    assert 0.8 < order < 1.25


def test_adaptive_heun_with_brownian_tree(getkey):
    system = CoupledSystem(Rastrigin(2), MeanField(1.0), IsotropicNoise(0.2))
    x0 = jax.random.normal(getkey(), (3, 2))
    sol = solve(system, x0, t1=1.0, step_size=0.05, key=getkey(), solver=diffrax.Heun(),
                adaptive=True, brownian="tree", saveat=2, rtol=1e-2, atol=1e-2)  # fmt: skip
    assert np.all(np.isfinite(sol.x)) and int(sol.num_steps) > 20  # the controller refined dt


def test_strong_mean_coupling_is_synchronous_averaged_sgd(getkey):
    # k → ∞ collapses the agents onto x̄, which follows dx̄ = −η∇f(x̄) dt + (σ/N) Σ_i dW_i.
    f, sigma, n, dt, steps = LogCoshQuadratic(1, 0.1), 0.5, 8, 1e-3, 3000
    x0 = jnp.linspace(-1, 5, n)[:, None]  # asymmetric, so mean_i ∇f(x_i) ≠ ∇f(x̄)
    key = getkey()

    # NumPy reference: averaged SGD driven by the mean of the agents' increments n_k (the
    # same draws as `solve`'s, taken for all steps at once).
    dws = np.asarray(jax.vmap(lambda i: step_normal(key, i, (n, 1)))(jnp.arange(steps)))
    dws = dws.mean(axis=(1, 2)) * np.sqrt(dt)
    grad = jax.jit(lambda x: f.grad(x))
    ref = np.empty(steps + 1)
    ref[0] = float(x0.mean())
    for i in range(steps):
        ref[i + 1] = ref[i] - dt * float(grad(jnp.array([ref[i]]))[0]) + sigma * dws[i]

    def gap(k):
        system = CoupledSystem(f, MeanField(k), IsotropicNoise(sigma))
        sol = solve(system, x0, t1=steps * dt, step_size=dt, key=key, saveat=steps + 1)
        xbar = np.asarray(sol.x.mean(1)[:, 0])
        return np.abs(xbar - ref)[steps // 3 :].max()

    assert gap(500.0) < 0.01
    assert gap(0.0) > 0.1  # uncoupled agents do not follow averaged SGD


@pytest.mark.parametrize(
    "make",
    (
        lambda: MeanField(-1.0),
        lambda: Quorum(1.0, -0.5),
        lambda: IsotropicNoise(-0.1),
        lambda: DiagonalNoise([0.1, -0.2]),
        lambda: CoupledSystem(Quadratic([1.0]), gradient_scale=0.0),
        lambda: CoupledSystem(Quadratic([1.0]), damping=-1.0),
        lambda: CoupledSystem(Quadratic([1.0, 2.0]), noise=DiagonalNoise([0.1, 0.1, 0.1])),
        lambda: Quadratic([[1.0, 2.0], [0.0, 1.0]]),
        lambda: TiltedMultiWell(0),
        lambda: LogCoshQuadratic(1, -0.1),
    ),
)
def test_bad_construction_raises(make):
    with pytest.raises(ValueError):
        make()


def test_bad_solve_arguments_raise(getkey):
    system = CoupledSystem(Quadratic([1.0, 2.0]), MeanField(1.0), IsotropicNoise(0.1))
    key = getkey()
    with pytest.raises(ValueError, match="N >= 1"):
        solve(system, jnp.zeros((0, 2)), t1=1.0, step_size=0.1, key=key)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        solve(system, jnp.zeros((3, 3)), t1=1.0, step_size=0.1, key=key)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        solve(system, jnp.zeros((3, 2)), t1=1.0, step_size=-0.1, key=key)
    with pytest.raises(ValueError, match="t1 > t0"):
        solve(system, jnp.zeros((3, 2)), t1=0.0, step_size=0.1, key=key)
    with pytest.raises(ValueError, match="key is required"):
        solve(system, jnp.zeros((3, 2)), t1=1.0, step_size=0.1)
    with pytest.raises(ValueError, match="brownian='tree'"):
        solve(system, jnp.zeros((3, 2)), t1=1.0, step_size=0.1, key=key, adaptive=True)


def test_elastic_is_quorum_with_equal_gains():
    rule = elastic(0.7)
    assert (rule.gain, rule.quorum_gain, rule.center_gradient_scale) == (0.7, 0.7, 0.0)


def test_deviation_bound_and_delay_threshold():
    b = theory.deviation_bound(
        np.array([0.0, 100.0]), sigma=0.5, dim=2, num_agents=4, gain=1.0, gradient_scale=1.0,
        strong_convexity=0.1, initial_deviation=3.0,
    )  # fmt: skip
    steady = 0.25 * 2 * 3 / (2 * 4 * 1.1)
    np.testing.assert_allclose(b, [3.0, steady])
    np.testing.assert_allclose(theory.delay_stability_threshold(staleness=0), 2.0)
    np.testing.assert_allclose(theory.delay_stability_threshold(staleness=1), 2 * np.sin(np.pi / 6))


def test_single_save_time_is_the_final_state_of_a_dense_save(getkey):
    # saveat=1 and saveat=[t1] are saved as `SaveAt(t1=True)`; the value must be the last of
    # the equally spaced saves (same steps, same noise).
    system = CoupledSystem(Quadratic([1.0, 2.0]), MeanField(0.5), IsotropicNoise(0.3))
    x0, key = jnp.ones((3, 2)), getkey()
    dense = solve(system, x0, t1=0.5, step_size=0.01, key=key, saveat=11)
    for saveat in (1, [0.5]):
        last = solve(system, x0, t1=0.5, step_size=0.01, key=key, saveat=saveat)
        assert last.x.shape == (1, 3, 2) and float(last.ts[0]) == 0.5
        np.testing.assert_allclose(last.x[0], dense.x[-1], rtol=0, atol=1e-12)


def test_zero_noise_is_an_ode_inside_jit():
    # A system closed over by `jit` keeps σ concrete: `is_zero` must still see σ = 0 (no
    # key needed), rather than staging the comparison into a tracer.
    ode = CoupledSystem(Quadratic([1.0]), MeanField(2.0), IsotropicNoise(0.0))
    x0 = jnp.ones((3, 1))
    inside = jax.jit(lambda: solve(ode, x0, t1=1.0, step_size=0.125, saveat=3).x)()
    outside = solve(ode, x0, t1=1.0, step_size=0.125, saveat=3).x
    np.testing.assert_allclose(inside, outside, rtol=1e-12)
