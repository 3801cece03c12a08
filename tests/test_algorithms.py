"""The discrete form: coupling transforms, named optimizers, oracles and the runner."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algorithms.coupling import CouplingState, add_coupling_force, euler_optimizer, heavy_ball
from algorithms.discrete import solve_discrete
from algorithms.optimizers import (
    coupled_sgd,
    eamsgd,
    easgd,
    easgd_center,
    elastic_averaging,
    momentum_quorum_sgd,
    quorum_sgd,
)
from algorithms.oracles import landscape_oracle, sde_matched_oracle
from algorithms.runner import run_agents
from dynamics.broadcast import Leader, LossWeightedGains, SuccessWeightedQuorum
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
    sol = solve(system, x0, t1=steps * h, step_size=h, key=key, saveat=steps + 1)
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
        optax.chain(add_coupling_force(MeanField(0.0), h), optax.sgd(h)), jnp.asarray(x0),
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
        np.testing.assert_allclose(easgd_center(state), expect_center, rtol=1e-12)
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
        centers.append(easgd_center(state))
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
        quorum_sgd(0.1, 1.0, 0.5, center_gradient_scale=0.1)
    f = Quadratic([1.0])
    opt = quorum_sgd(0.1, 1.0, 0.0, center_gradient_scale=0.5, aux_gradient_fn=f.grad)
    x = jnp.full((2, 1), 2.0)
    state = opt.init(x)
    _, state = opt.update(jnp.zeros_like(x), state, x)
    np.testing.assert_allclose(state[0].aux, 2.0 - 0.1 * 0.5 * 2.0)  # z ← z − h η_z ∇f(z)


@pytest.mark.parametrize(
    "call",
    (
        lambda: add_coupling_force(MeanField(1.0), step_size=-0.1),
        lambda: add_coupling_force(MeanField(1.0), step_size=0.1, gradient_scale=0.0),
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
    opt = add_coupling_force(MeanField(1.0), 0.1)
    state = opt.init(jnp.ones((2, 1)))
    with pytest.raises(ValueError, match="params"):
        opt.update(jnp.ones((2, 1)), state)


# --- solve_discrete: the discrete mirror of solve -------------------------------------------

DISCRETE_RULES = RULES + (
    SuccessWeightedQuorum(1.0, 0.3, 2.0),
    LossWeightedGains(0.8, 1.5),
    Leader(1.0, temperature=0.5),
)


@pytest.mark.parametrize("damping", (None, 0.7), ids=("first_order", "heavy_ball"))
@pytest.mark.parametrize("rule", DISCRETE_RULES, ids=lambda r: type(r).__name__)
def test_solve_discrete_equals_euler_maruyama(rule, damping, getkey):
    system = CoupledSystem(TiltedMultiWell(2, tilt=0.2), rule, IsotropicNoise(0.6), 0.8, damping)
    x0 = jax.random.normal(getkey(), (5, 2))
    h, steps, key = 0.01, 120, getkey()
    kwargs = dict(t1=0.5 + steps * h, step_size=h, key=key, t0=0.5, saveat=13)
    sol = solve(system, x0, **kwargs)
    disc = solve_discrete(system, x0, **kwargs)
    np.testing.assert_allclose(disc.ts, sol.ts, rtol=0, atol=1e-12)
    np.testing.assert_allclose(disc.x, sol.x, rtol=0, atol=1e-11)
    if damping is None:
        assert disc.v is None and sol.v is None
    else:
        np.testing.assert_allclose(disc.v, sol.v, rtol=0, atol=1e-11)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-11), disc.aux,
                 sol.aux)  # fmt: skip
    assert int(disc.num_steps) == int(sol.num_steps) == steps
    assert np.abs(sol.x[-1] - x0).max() > 0.05  # the paths moved


def test_solve_discrete_save_times_velocity_start_and_noise_table(getkey):
    system = CoupledSystem(Quadratic([1.0, 2.0]), Quorum(1.0, 0.2), IsotropicNoise(0.5), 1.0, 0.5)
    x0, v0, key = jax.random.normal(getkey(), (3, 2)), jax.random.normal(getkey(), (3, 2)), getkey()
    ts = np.array([0.0, 0.1, 0.25, 1.0])
    sol = solve(system, x0, t1=1.0, step_size=0.05, key=key, saveat=ts, v0=v0)
    disc = solve_discrete(system, x0, t1=1.0, step_size=0.05, key=key, saveat=ts, v0=v0)
    np.testing.assert_allclose(disc.x, sol.x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(disc.v[0], v0)
    table = jnp.stack([step_normal(key, k, (3, 2)) for k in range(20)])
    fed = solve_discrete(system, x0, t1=1.0, step_size=0.05, noise_table=table, saveat=ts, v0=v0)
    np.testing.assert_allclose(fed.x, disc.x, rtol=0, atol=1e-13)  # the same numbers
    with pytest.raises(ValueError, match="step grid"):
        solve_discrete(system, x0, t1=1.0, step_size=0.05, key=key, saveat=[0.0, 0.12])
    with pytest.raises(ValueError, match="rows"):
        solve_discrete(system, x0, t1=1.0, step_size=0.05, noise_table=table[:10])
    with pytest.raises(ValueError, match="key is required"):
        solve_discrete(system, x0, t1=1.0, step_size=0.05)


def test_landscape_oracle_noise_table_gives_those_numbers_and_nan_past_its_end(getkey):
    f, noise, scale = Quadratic([1.0, 3.0]), DiagonalNoise([0.3, 0.9]), 2.0
    table = jax.random.normal(getkey(), (4, 3, 2))
    oracle = landscape_oracle(f, noise, scale, noise_table=table)
    x = jax.random.normal(getkey(), (3, 2))
    losses, grads = jax.jit(oracle)(x, getkey(), jnp.int32(2))
    expect = np.asarray(x) * [1.0, 3.0] - scale * np.asarray(table[2]) * [0.3, 0.9]
    np.testing.assert_allclose(grads, expect, rtol=1e-12)
    np.testing.assert_allclose(losses, jax.vmap(f.value)(x))
    _, past = oracle(x, getkey(), jnp.int32(4))
    assert np.all(np.isnan(past))  # never a silently reused row
    with pytest.raises(ValueError, match="noise_table"):
        landscape_oracle(f, noise, noise_table=jnp.zeros((4, 3, 5)))


# --- schedules: one learning-rate object for the agents and the auxiliary state ---------------


def _iterate(opt, x, g, steps=4):
    state = opt.init(x)
    for _ in range(steps):
        updates, state = opt.update(g(x), state, x)
        x = optax.apply_updates(x, updates)
    return x, state


@pytest.mark.parametrize(
    "make",
    (
        lambda lr: quorum_sgd(lr, 1.0, 0.3),
        lambda lr: momentum_quorum_sgd(lr, 1.0, 0.3, momentum=0.8),
        lambda lr: easgd(lr, 2.0),
        lambda lr: eamsgd(lr, 2.0, momentum=0.8, period=2),
        lambda lr: coupled_sgd(MeanField(1.0), lr, momentum=0.5),
    ),
)
def test_constant_schedule_gives_the_same_iterates_as_the_constant(make, getkey):
    x, target = jax.random.normal(getkey(), (3, 2)), jax.random.normal(getkey(), (3, 2))
    g = lambda p: p - target  # noqa: E731
    run = lambda opt: _iterate(optax.with_extra_args_support(opt), x, g)  # noqa: E731
    xa, sa = run(make(0.1))
    xb, sb = run(make(optax.constant_schedule(0.1)))
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(easgd_center(sa), easgd_center(sb))


def test_decaying_schedule_moves_the_center_with_the_decayed_step(getkey):
    # z_{k+1} = z_k + lr_k k_z Σ_i (x_i − z_k): z uses the same lr_k as the agents at step k.
    schedule = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)
    gain, quorum_gain = 1.0, 0.3
    opt = quorum_sgd(schedule, gain, quorum_gain)
    x, g = jax.random.normal(getkey(), (4, 2)), jax.random.normal(getkey(), (4, 2))
    state = opt.init(x)
    z = x.mean(0)
    for k in range(3):
        lr = schedule(jnp.int32(k))  # as the transform evaluates it, at its int32 count
        updates, state = opt.update(g, state, x)
        expect_x = x - lr * (g - gain * (z[None] - x))
        z = z + lr * quorum_gain * jnp.sum(x - z[None], 0)
        x = x + updates
        # lr_k is a float32 schedule value: the products agree to float32 rounding (a
        # wrong step, e.g. lr_0 reused at k = 1, is off by 50 %)
        np.testing.assert_allclose(x, expect_x, rtol=1e-7)
        np.testing.assert_allclose(easgd_center(state), z, rtol=1e-7)
    # eamsgd: α_k = lr_k ρ on elastic steps.
    opt, x = eamsgd(schedule, rho=1.0, momentum=0.0, period=1), x[:2]
    state = opt.init(x)
    center = x.mean(0)
    for k in range(2):
        updates, state = opt.update(jnp.zeros_like(x), state, x)
        center = center + schedule(jnp.int32(k)) * jnp.sum(x - center[None], 0)
        x = x + updates
        # α_k = lr_k ρ is formed from the float32 schedule value: float32 agreement
        np.testing.assert_allclose(easgd_center(state), center, rtol=1e-7)


def test_easgd_center_for_both_optimizers_and_bad_state(getkey):
    x = jax.random.normal(getkey(), (3, 2))
    for opt in (easgd(0.1, 1.0), easgd(0.1, 1.0, momentum=0.9), eamsgd(0.1, 1.0)):
        np.testing.assert_allclose(easgd_center(opt.init(x)), x.mean(0))
    with pytest.raises(ValueError, match="found 0"):
        easgd_center(optax.sgd(0.1).init(x))


@pytest.mark.parametrize("center_gradient_scale", (0.0, 0.4))
def test_momentum_quorum_sgd_is_semi_implicit_euler_of_heavy_ball(center_gradient_scale, getkey):
    # m ← βm + g − F, x ← x − lr m, z ← z + lr A  equals, with v = −√lr m and h = √lr,
    # v ← v + h(−γv − ∇f + F), x ← x + h v_new, z ← z + h A' with γ = (1 − β)/√lr and the
    # continuous quorum rule Quorum(k, √lr k_z, √lr η_z).
    lr, beta, gain, quorum_gain = 0.04, 0.8, 1.5, 0.3
    f = LogCoshQuadratic(2, 0.3)
    opt = momentum_quorum_sgd(lr, gain, quorum_gain, momentum=beta,
                              center_gradient_scale=center_gradient_scale,
                              aux_gradient_fn=f.grad)  # fmt: skip
    h = np.sqrt(lr)
    system = CoupledSystem(
        f, Quorum(gain, h * quorum_gain, h * center_gradient_scale), damping=(1 - beta) / h
    )
    x = jax.random.normal(getkey(), (4, 2)) * 2
    state_d = opt.init(x)
    y = system.init(x)
    for _ in range(30):
        updates, state_d = opt.update(jax.vmap(f.grad)(x), state_d, x)
        x = x + updates
        d = system.drift(0.0, y)
        v = y.v + h * d.v
        y = type(y)(y.x + h * v, v, y.aux + h * d.aux)
        np.testing.assert_allclose(x, y.x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(easgd_center(state_d), y.aux, rtol=1e-12, atol=1e-12)
    assert np.abs(y.x).max() < 1.0  # the iteration moved toward x* = 0
