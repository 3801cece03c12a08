"""The discrete form: coupling transforms, named optimizers, oracles and the runner."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algorithms.coupling import CouplingState, coupling, euler_optimizer, heavy_ball
from algorithms.optimizers import eamsgd, easgd, elastic_averaging, momentum_quorum_sgd, quorum_sgd
from algorithms.oracles import landscape_oracle, sde_matched_oracle
from algorithms.runner import run_agents
from dynamics.brownian import step_normal
from dynamics.coupling import MeanField, Quorum, Uncoupled, elastic
from dynamics.landscapes import LogCoshQuadratic, Quadratic, TiltedMultiWell
from dynamics.noise import CovarianceNoise, DiagonalNoise, IsotropicNoise, StateDependentNoise
from dynamics.solve import solve
from dynamics.system import CoupledSystem

RULES = (Uncoupled(), MeanField(1.5), Quorum(1.0, 0.4), Quorum(1.0, 0.4, 0.3), elastic(0.8))
NOISES = (
    IsotropicNoise(0.6),
    DiagonalNoise([0.3, 0.9]),
    CovarianceNoise([[0.5, 0.2], [0.2, 0.3]]),
    StateDependentNoise(0.2, 0.4),
)


CASES = [(rule, damping, NOISES[0]) for rule in RULES for damping in (None, 0.7)]
CASES += [(RULES[3], damping, noise) for noise in NOISES[1:] for damping in (None, 0.7)]


@pytest.mark.parametrize(("rule", "damping", "noise"), CASES)
def test_euler_maruyama_path_equals_optimizer_path(rule, damping, noise, getkey):
    system = CoupledSystem(TiltedMultiWell(2, tilt=0.2), rule, noise, 0.8, damping)
    x0 = jax.random.normal(getkey(), (5, 2))
    h, steps, key = 0.01, 150, getkey()
    sol = solve(system, x0, t1=steps * h, dt=h, key=key, saveat=steps + 1)
    res = run_agents(euler_optimizer(system, h), x0, sde_matched_oracle(system, h),
                     num_steps=steps, key=key)  # fmt: skip
    np.testing.assert_allclose(res.metrics["params"], sol.x, rtol=0, atol=1e-11)
    assert np.abs(sol.x[-1] - x0).max() > 0.05  # the paths moved


def test_uncoupled_agents_are_independent_sgd_runs(getkey):
    # k = 0: every agent follows its own SGD recursion (NumPy reference, same noise numbers).
    f, sigma, h, steps, n = TiltedMultiWell(1), 0.7, 0.02, 100, 6
    x0 = np.linspace(-2, 2, n)[:, None]
    key = getkey()
    res = run_agents(
        optax.chain(coupling(MeanField(0.0), h), optax.sgd(h)), jnp.asarray(x0),
        landscape_oracle(f, IsotropicNoise(sigma)), num_steps=steps, key=key,
    )  # fmt: skip
    x = x0.copy()
    for k in range(steps):
        noise = np.asarray(step_normal(key, k, (n, 1)))
        grad = 0.1 * x + np.pi * np.sin(2 * np.pi * x)  # f = x²/20 + sin²(πx)
        x = x - h * (grad - sigma * noise)
    np.testing.assert_allclose(res.params, x, rtol=1e-10)


def test_optax_transforms_jit_chain_and_state_shapes(getkey):
    n, params = 4, {"w": jnp.ones((4, 3, 2)), "b": jnp.zeros((4, 5))}
    params = jax.tree.map(lambda p: p + jax.random.normal(getkey(), p.shape), params)
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    opt = momentum_quorum_sgd(0.1, gain=1.0, quorum_gain=0.5, momentum=0.9)
    state = opt.init(params)
    coupling_state, (trace_state, _) = state[0], state[1]
    assert isinstance(coupling_state, CouplingState)
    assert jax.tree.map(jnp.shape, coupling_state.aux) == {"w": (3, 2), "b": (5,)}
    assert jax.tree.map(jnp.shape, trace_state.trace) == jax.tree.map(jnp.shape, params)
    updates, state2 = jax.jit(opt.update)(grads, state, params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)
    # First step: trace = g − k(z − x); update = −lr · trace; z moves toward the agents.
    z0 = jax.tree.map(lambda p: p.mean(0), params)
    expect = jax.tree.map(lambda g, x, z: -0.1 * (g - 1.0 * (z[None] - x)), grads, params, z0)
    jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-12), updates, expect)
    del n, state2


def test_easgd_step_matches_the_paper_equations(getkey):
    eta, rho = 0.1, 2.0
    alpha = eta * rho
    x = jax.random.normal(getkey(), (3, 4))
    g = jax.random.normal(getkey(), (3, 4))
    opt = easgd(eta, rho)
    state = opt.init(x)
    center = x.mean(0)
    for _ in range(3):
        updates, state = opt.update(g, state, x)
        new_x = x + updates
        expect_x = x - eta * g - alpha * (x - center[None])
        expect_center = center + alpha * jnp.sum(x - center[None], 0)
        np.testing.assert_allclose(new_x, expect_x, rtol=1e-12)
        np.testing.assert_allclose(state[0].aux, expect_center, rtol=1e-12)
        x, center = new_x, expect_center


def test_eamsgd_elastic_step_only_every_period(getkey):
    x = jax.random.normal(getkey(), (3, 2))
    g = jax.random.normal(getkey(), (3, 2))  # nonzero, so x̄ drifts away from the center
    opt = eamsgd(0.1, rho=1.0, momentum=0.9, period=3)
    state = opt.init(x)
    centers = []
    for _ in range(6):
        updates, state = opt.update(g, state, x)
        x = x + updates
        centers.append(state[1].center)
    # Elastic steps at k = 0 and k = 3 only: the center is constant in between.
    np.testing.assert_array_equal(centers[0], centers[1])
    np.testing.assert_array_equal(centers[1], centers[2])
    assert not np.allclose(centers[2], centers[3])
    with pytest.raises(ValueError, match="period"):
        elastic_averaging(0.1, period=0)


def test_heavy_ball_is_explicit_euler():
    opt = heavy_ball(damping=0.5, step_size=0.1)
    state = opt.init(jnp.zeros(2))
    u = jnp.array([1.0, -2.0])
    step1, state = opt.update(u, state)
    np.testing.assert_array_equal(step1, 0.0)  # x moves with the old velocity (zero)
    np.testing.assert_allclose(state.velocity, -0.1 * u)
    step2, state = opt.update(u, state)
    np.testing.assert_allclose(step2, 0.1 * -0.1 * u)


def test_quorum_with_descending_center_needs_its_gradient():
    with pytest.raises(ValueError, match="aux_gradient_fn"):
        quorum_sgd(0.1, 1.0, 0.5, center_learning_rate=0.1)
    f = Quadratic([1.0])
    opt = quorum_sgd(0.1, 1.0, 0.0, center_learning_rate=0.5, aux_gradient_fn=f.grad)
    x = jnp.full((2, 1), 2.0)
    state = opt.init(x)
    _, state = opt.update(jnp.zeros_like(x), state, x)
    np.testing.assert_allclose(state[0].aux, 2.0 - 0.1 * 0.5 * 2.0)  # z ← z − h η_z ∇f(z)


def test_runner_records_divergence_with_its_step_and_no_nans():
    # GD on ½ a x² diverges when h a > 2: |x| grows by |1 − ha| = 2 per step.
    f = Quadratic([3.0])
    res = run_agents(optax.sgd(1.0), jnp.ones((2, 1)), landscape_oracle(f),
                     num_steps=100, key=jax.random.key(0), record_every=10,
                     divergence_threshold=1e6)  # fmt: skip
    assert int(res.diverged_step) == 19  # 2^20 > 1e6 first after step index 19
    assert np.all(np.isfinite(res.metrics["params"]))
    ok = run_agents(optax.sgd(0.1), jnp.ones((2, 1)), landscape_oracle(f), num_steps=10,
                    key=jax.random.key(0))  # fmt: skip
    assert int(ok.diverged_step) == -1


def test_runner_is_deterministic(getkey):
    system = CoupledSystem(LogCoshQuadratic(2, 0.1), Quorum(1.0, 0.2), IsotropicNoise(0.5))
    x0, key = jax.random.normal(getkey(), (4, 2)), getkey()
    run = lambda: run_agents(euler_optimizer(system, 0.05), x0, sde_matched_oracle(system, 0.05),  # noqa: E731
                             num_steps=40, key=key, record_every=8)  # fmt: skip
    a, b = run(), run()
    np.testing.assert_array_equal(a.metrics["params"], b.metrics["params"])
    assert a.metrics["params"].shape == (6, 4, 2)
    np.testing.assert_array_equal(a.steps, [0, 8, 16, 24, 32, 40])


def test_runner_under_vmap_over_runs(getkey):
    f = LogCoshQuadratic(1, 0.1)
    keys = jax.random.split(getkey(), 3)
    out = jax.vmap(
        lambda k: (
            run_agents(
                easgd(0.1, 1.0),
                jnp.zeros((4, 1)),
                landscape_oracle(f, IsotropicNoise(1.0)),
                num_steps=20,
                key=k,
            ).params
        )  # fmt: skip
    )(keys)
    assert out.shape == (3, 4, 1) and not np.allclose(out[0], out[1])


@pytest.mark.parametrize(
    "call",
    (
        lambda: coupling(MeanField(1.0), step_size=-0.1),
        lambda: coupling(MeanField(1.0), step_size=0.1, gradient_scale=0.0),
        lambda: heavy_ball(-1.0, 0.1),
        lambda: elastic_averaging(1.5),
        lambda: sde_matched_oracle(CoupledSystem(Quadratic([1.0])), 0.0),
        lambda: run_agents(optax.sgd(0.1), jnp.ones((2, 1)), landscape_oracle(Quadratic([1.0])),
                           num_steps=10, key=jax.random.key(0), record_every=3),
        lambda: run_agents(optax.sgd(0.1), {"a": jnp.ones((2, 1)), "b": jnp.ones((3, 1))},
                           landscape_oracle(Quadratic([1.0])), num_steps=1, key=jax.random.key(0)),
        lambda: landscape_oracle(Quadratic([1.0, 1.0]), DiagonalNoise([1.0, 1.0, 1.0])),
    ),
)  # fmt: skip
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_coupling_without_params_raises():
    opt = coupling(MeanField(1.0), 0.1)
    state = opt.init(jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="params"):
        opt.update(jnp.ones((2, 1)), state)
