"""Broadcast coupling rules (dynamics.broadcast): both forms, reductions, jit, weights."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.coupling import add_coupling_force, euler_optimizer
from algorithms.optimizers import coupled_sgd
from algorithms.oracles import landscape_oracle, sde_matched_oracle
from algorithms.runner import run_agents
from dynamics.broadcast import Leader, LossWeightedGains, SuccessWeightedQuorum, success_weights
from dynamics.coupling import MeanField, Quorum
from dynamics.landscapes import Rastrigin, TiltedMultiWell
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve
from dynamics.system import CoupledSystem

N_AGENTS = 5
STEP = 0.01
STEPS = 300

RULES = (
    ("success_weighted_quorum", lambda: SuccessWeightedQuorum(1.0, 0.3, beta=2.0)),
    ("loss_weighted_gains_mean", lambda: LossWeightedGains(1.0, beta=2.0)),
    ("loss_weighted_gains_quorum", lambda: LossWeightedGains(1.0, beta=2.0, quorum_gain=0.3)),
    ("leader_hard", lambda: Leader(1.0)),
    ("leader_soft", lambda: Leader(1.0, temperature=0.5)),
)
DAMPINGS = (None, 2.0)
# (broadcast rule at its neutral setting, the plain rule it must reproduce bit for bit)
REDUCTIONS = (
    ("swq_beta0_is_quorum", lambda: SuccessWeightedQuorum(1.0, 0.3, 0.0), lambda: Quorum(1.0, 0.3)),
    ("lwg_beta0_is_mean_field", lambda: LossWeightedGains(1.0, 0.0), lambda: MeanField(1.0)),
    (
        "lwg_beta0_is_quorum",
        lambda: LossWeightedGains(1.0, 0.0, quorum_gain=0.3),
        lambda: Quorum(1.0, 0.3),
    ),
)


def _x0():
    return jnp.linspace(-2.3, 1.9, N_AGENTS)[:, None]


def _system(rule, damping=None, sigma=0.7, landscape=None):
    landscape = TiltedMultiWell(1, tilt=0.2) if landscape is None else landscape
    return CoupledSystem(
        landscape, rule, IsotropicNoise(sigma), gradient_scale=0.5, damping=damping
    )


def _both_forms(system, x0, key):
    """(Euler–Maruyama path, optimizer path), each `(STEPS + 1, N, dim)`."""
    sol = solve(system, x0, t1=STEPS * STEP, step_size=STEP, key=key, saveat=STEPS + 1)
    res = run_agents(
        euler_optimizer(system, STEP),
        x0,
        sde_matched_oracle(system, STEP),
        num_steps=STEPS,
        key=key,
    )
    assert int(res.diverged_step) == -1
    return np.asarray(sol.x), np.asarray(res.metrics["params"])


@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("name,make", RULES)
def test_sde_path_equals_optimizer_path(name, make, damping, getkey):
    del name
    sde, opt = _both_forms(_system(make(), damping), _x0(), getkey())
    assert np.all(np.isfinite(sde))
    np.testing.assert_allclose(sde, opt, rtol=0, atol=1e-10)


@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("name,make,make_plain", REDUCTIONS)
def test_neutral_setting_reproduces_plain_rule_exactly(name, make, make_plain, damping, getkey):
    del name
    key = getkey()
    sde, opt = _both_forms(_system(make(), damping), _x0(), key)
    sde_plain, opt_plain = _both_forms(_system(make_plain(), damping), _x0(), key)
    np.testing.assert_array_equal(sde, sde_plain)
    np.testing.assert_array_equal(opt, opt_plain)


def test_soft_leader_with_equal_losses_is_mean_field_exactly(getkey):
    x = jax.random.normal(getkey(), (N_AGENTS, 3))
    losses = jnp.full((N_AGENTS,), 0.7)
    for temperature in (0.01, 1.0, 100.0):
        got = Leader(1.3, temperature).force(x, None, losses)
        np.testing.assert_array_equal(got, MeanField(1.3).force(x, None, None))


def test_hot_leader_path_approaches_mean_field(getkey):
    key = getkey()
    sde_hot, _ = _both_forms(_system(Leader(1.0, temperature=1e6)), _x0(), key)
    sde_mf, _ = _both_forms(_system(MeanField(1.0)), _x0(), key)
    np.testing.assert_allclose(sde_hot, sde_mf, rtol=0, atol=1e-4)


def test_cold_soft_leader_approaches_hard_leader(getkey):
    x = jax.random.normal(getkey(), (N_AGENTS, 2))
    losses = jnp.array([0.5, 0.1, 0.9, 0.3, 0.2])
    cold = Leader(1.0, temperature=1e-4).force(x, None, losses)
    hard = Leader(1.0).force(x, None, losses)
    np.testing.assert_allclose(cold, hard, rtol=0, atol=1e-12)
    # The leader (agent 1) feels no pull; every other agent is pulled toward it.
    np.testing.assert_array_equal(hard[1], np.zeros(2))
    np.testing.assert_allclose(hard, x[1][None] - x, rtol=0, atol=1e-15)


def test_success_weights():
    losses = jnp.array([3.0, 1.0, 2.0, 1.0])
    np.testing.assert_array_equal(success_weights(losses, 0.0), np.ones(4))
    r = success_weights(losses, 1.5)
    np.testing.assert_allclose(r.mean(), 1.0, rtol=1e-14)
    np.testing.assert_allclose(r / 4, jax.nn.softmax(-1.5 * losses), rtol=1e-13)
    assert r[1] == r[3] > r[2] > r[0]
    # Very large β concentrates on the best agents; no overflow for either sign.
    np.testing.assert_allclose(success_weights(losses, 1e4), [0, 2, 0, 2], atol=1e-12)
    np.testing.assert_allclose(success_weights(losses, -1e4), [4, 0, 0, 0], atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        success_weights(jnp.ones((2, 2)), 1.0)


def test_success_weighted_center_moves_toward_best_agent():
    x = jnp.array([[0.0, 0.0], [2.0, 1.0], [4.0, -1.0]])
    losses = jnp.array([5.0, 0.0, 3.0])
    rule = SuccessWeightedQuorum(0.5, 0.2, beta=1e3)
    z = jnp.array([1.0, 1.0])
    np.testing.assert_allclose(rule.aux_drift(x, z, losses, None), 0.2 * 3 * (x[1] - z), atol=1e-12)
    np.testing.assert_allclose(rule.force(x, z, losses), 0.5 * (z[None] - x), atol=1e-15)


def test_loss_weighted_gains_pull_worse_agents_harder():
    rule = LossWeightedGains(2.0, beta=1.0)
    losses = jnp.array([0.0, 1.0, 3.0])
    k = rule.gains(losses)
    np.testing.assert_allclose(k.mean(), 2.0, rtol=1e-14)
    assert k[0] < k[1] < k[2] < 2.0 * 3
    x = jnp.array([[1.0], [2.0], [6.0]])
    np.testing.assert_allclose(rule.force(x, None, losses), k[:, None] * (3.0 - x), rtol=1e-14)


@pytest.mark.parametrize("name,make", RULES)
def test_rules_under_jit_match_eager(name, make, getkey):
    del name
    rule = make()
    x = jax.random.normal(getkey(), (N_AGENTS, 3))
    losses = jax.random.uniform(getkey(), (N_AGENTS,))
    aux = rule.init(x)
    eager = (rule.force(x, aux, losses), rule.aux_drift(x, aux, losses, None))
    jitted = eqx.filter_jit(lambda r, x, a, ls: (r.force(x, a, ls), r.aux_drift(x, a, ls, None)))(
        rule, x, aux, losses
    )
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_beta_sweep_under_vmap_matches_loop(getkey):
    x = jax.random.normal(getkey(), (N_AGENTS, 2))
    losses = jax.random.uniform(getkey(), (N_AGENTS,))
    z = x.mean(0)
    betas = jnp.array([0.0, 0.5, 3.0])

    def drift(beta):
        # β is a pytree leaf: swap in the traced value (no recompilation per β).
        rule = eqx.tree_at(lambda r: r.beta, SuccessWeightedQuorum(1.0, 0.3, 0.0), beta)
        return rule.aux_drift(x, z, losses, None)

    swept = jax.vmap(drift)(betas)
    for i, b in enumerate([0.0, 0.5, 3.0]):
        ref = SuccessWeightedQuorum(1.0, 0.3, b).aux_drift(x, z, losses, None)
        np.testing.assert_allclose(swept[i], ref, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name,make", RULES)
def test_named_optimizer_with_minibatch_style_losses(name, make, getkey):
    """`coupled_sgd(rule, lr)` receives the oracle's losses through the runner."""
    del name
    f = Rastrigin(2)
    x0 = jax.random.uniform(getkey(), (4, 2), minval=-2, maxval=2)
    res = run_agents(
        coupled_sgd(make(), 0.01),
        x0,
        landscape_oracle(f, IsotropicNoise(0.5), scale=5.0),
        num_steps=200,
        key=getkey(),
        record_every=50,
    )
    assert int(res.diverged_step) == -1
    assert np.all(np.isfinite(res.params))


def test_missing_losses_and_bad_arguments_raise():
    x = jnp.zeros((3, 1))
    with pytest.raises(ValueError, match="losses"):
        add_coupling_force(Leader(1.0), 0.1).update(
            x, add_coupling_force(Leader(1.0), 0.1).init(x), x
        )
    for make in (
        lambda: SuccessWeightedQuorum(1.0, 1.0, -1.0),
        lambda: SuccessWeightedQuorum(-1.0, 1.0, 1.0),
        lambda: LossWeightedGains(1.0, -0.5),
        lambda: LossWeightedGains(1.0, 0.5, quorum_gain=-1.0),
        lambda: Leader(1.0, temperature=-1.0),
        lambda: Leader(float("nan")),
    ):
        with pytest.raises(ValueError):
            make()
    assert all(r().needs_losses for _, r in RULES)
