"""Smoke tests: each continuous-time experiment runs once on a shrunken config."""

import dataclasses

import jax
import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from experiments import (
    broadcast_success,
    convex_bounds,
    easgd_regularization,
    nonconvex_stabilization,
    sde_weak_order,
    smoothing,
    svag_networks,
)
from experiments.harness.contract import Claim

matplotlib.use("Agg")

TINY = {
    nonconvex_stabilization: dict(
        landscapes=("offset", "rastrigin"),
        agent_counts=(4,),
        claim_agents=4,
        gains=(0.0, 10.0),
        sigmas_offset=(1.0,),
        sigmas_rastrigin=(1.2,),
        time=1.0,
        average_from=0.5,
        average_every=0.5,
        runs=4,
    ),
    smoothing: dict(
        agent_counts=(4,),
        gains=(0.0, 10.0),
        runs=4,
        burn_in=0.1,
        sample_time=0.5,
        sde_step_size=0.005,
    ),
    convex_bounds: dict(agent_counts=(2,), plot_agents=2, runs=4, time=2.0, saves=11),
    broadcast_success: dict(
        landscapes=("offset",),
        betas=(3.0,),
        temperatures=(1.0,),
        sigmas_offset=(0.6,),
        time=1.0,
        runs=4,
    ),
    easgd_regularization: dict(
        learning_rates=(0.25,), rhos=(1.0,), num_train=100, num_steps=20, record_every=10, seeds=2
    ),
    sde_weak_order: dict(
        examples=8,
        step_counts=(32, 64),
        display_steps=4,
        amplifications=(1, 2),
        mc_amplification=2,
        paths=64,
        sde_refinement=2,
    ),
    svag_networks: dict(
        num_train=32,
        hidden=(),
        learning_rates=(0.25, 0.5),
        time=1.0,
        records=2,
        amplifications=(2,),
        sde_refinement=2,
        seeds=2,
        coupled=False,
        measure_step_costs=False,
    ),
}
KEYS = {
    nonconvex_stabilization: (
        "success_offset_continuous",
        "agent_success_rastrigin_discrete",
        "claim_runs_time_avg_loss_offset_discrete",
    ),
    smoothing: ("spread_continuous", "spread_discrete", "spread_runs_discrete", "theory_spread"),
    convex_bounds: (
        "distance_easgd_N2",
        "bound_quorum_sgd_N2",
        "deviation_cv_quorum_sgd_sum_N2",
        "stationary_sq_distance_easgd",
        "linear_stationary_sq_distance_momentum_quorum_sgd",
        "diverged_runs_momentum_quorum_sgd",
    ),
    broadcast_success: (
        "success_offset_discrete_leader",
        "success_offset_continuous_uncoupled",
        "runs_success_offset_discrete_plain_quorum",
    ),
    easgd_regularization: (
        "steps",
        "mnist1d_sgd_eta0.25",
        "mnist1d_easgd_eta0.25_rho1",
        "mnist1d_easgd_eta0.25_rho1_worker",
        "mnist1d_easgd_eta0.25_rho1_diverged_step",
    ),
    sde_weak_order: (
        "sgd_loss",
        "sde_loss",
        "sme2_loss",
        "svag_curves",
        "sgd_mc_final_loss",
        "sde_diverged_paths",
        "svag_diverged_step",
    ),
    svag_networks: ("train_loss", "test_acc", "diverged", "wall_seconds", "step_cost_sgd"),
}
MODULES = tuple(TINY)


# End-to-end runs of experiments whose pieces other tests here already run (broadcast:
# the neutral-rules test; convex_bounds: the control-variate, momentum-chain and claims
# tests; nonconvex_stabilization: tests/test_landscapes_offset.py) are in `make test-slow`,
# as is easgd_regularization's (25 s of network compiles; the EASGD optimizer is tested in
# tests/test_algorithms.py, the experiment's bad-dataset path in tests/test_reliability.py).
COVERED_ELSEWHERE = {
    broadcast_success, convex_bounds, nonconvex_stabilization, easgd_regularization,
}  # fmt: skip


@pytest.mark.parametrize(
    "module",
    [pytest.param(m, marks=pytest.mark.slow) if m in COVERED_ELSEWHERE else m for m in MODULES],
    ids=lambda m: m.NAME,
)
def test_experiment_runs_on_tiny_config(module):
    with jax.enable_x64(False):
        config = dataclasses.replace(module.Config(), **TINY[module])
        results = module.run(config, jax.random.key(0))
    results = {k: np.asarray(v) for k, v in results.items()}
    for key in KEYS[module]:
        assert key in results, key
    claims = module.claims(results, config)
    assert claims and all(isinstance(c, Claim) for c in claims)
    metrics = module.metrics(results, config)
    assert all(np.ndim(v) == 0 for v in metrics.values())
    figures = module.plot(results, config)
    assert figures and all(isinstance(f, Figure) for f in figures.values())


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
def test_quick_config_is_valid_and_bad_values_raise(module):
    dataclasses.replace(module.Config(), **module.QUICK)
    assert module.NAME and module.DESCRIPTION
    field = next(f.name for f in dataclasses.fields(module.Config) if f.name in BAD)
    with pytest.raises(ValueError):
        dataclasses.replace(module.Config(), **{field: BAD[field]})


BAD = {"runs": 1, "seeds": 1, "paths": 1}


def test_broadcast_neutral_rules_equal_plain_quorum_in_the_experiment():
    """β → 0 in the experiment's own sweep: success-weighted quorum = plain quorum."""
    import jax.numpy as jnp

    from dynamics.broadcast import SuccessWeightedQuorum
    from dynamics.coupling import Quorum

    config = dataclasses.replace(
        broadcast_success.Config(), **TINY[broadcast_success], step_size=0.02
    )
    land = broadcast_success._landscape("multiwell", config)
    args = ((0.6,), "continuous", config, jax.random.key(1))
    a = broadcast_success._sweep(
        land, SuccessWeightedQuorum(3.0, 0.25, 1.0), lambda r: r.beta, jnp.asarray([0.0]), *args
    )
    b = broadcast_success._sweep(
        land, Quorum(3.0, 0.25), lambda r: r.gain, jnp.asarray([3.0]), *args
    )
    np.testing.assert_array_equal(a["loss"], b["loss"])


# --------------------------------------------- intervals of noise_reduction, smoothing, weak order


def test_noise_reduction_slope_se_matches_the_spread_over_replicates():
    """The 1/N slope's propagated s.e. (oracle: the spread of slopes fitted to replicates)."""
    from experiments import noise_reduction

    rng = np.random.default_rng(0)
    ns, rel_se = np.array([1, 4, 16, 64]), np.array([0.02, 0.03, 0.04, 0.05])
    truth = 0.125 / ns
    draws = truth * (1 + rel_se * rng.standard_normal((4000, ns.size)))
    slopes = [noise_reduction._slope(ns, np.stack([d, d * rel_se], -1))[0] for d in draws]
    _, se = noise_reduction._slope(ns, np.stack([truth, truth * rel_se], -1))
    assert abs(np.mean(slopes) + 1) < 0.005
    np.testing.assert_allclose(np.std(slopes), se, rtol=0.08)


def test_weak_order_slope_se_matches_the_spread_over_replicates():
    """The delta-method s.e. of the weak-order slope with correlated points (every h uses the
    same samples); oracle: the spread of slopes over independent replicate sample sets."""
    from experiments import continuous_vs_discrete as cvd

    rng = np.random.default_rng(1)
    hs = np.array([2.0**-4, 2.0**-5, 2.0**-6, 2.0**-7])
    samples = 512

    def replicate():
        common = rng.standard_normal(samples)  # a per-sample error shared by every h
        own = rng.standard_normal((hs.size, samples))
        return cvd._weak_stats(0.3 * hs[:, None] * (1 + 2 * common + own), hs)

    stats = [replicate() for _ in range(2000)]
    slopes = [cvd._slope(s) for s in stats]
    se = np.median([cvd._slope_se(s) for s in stats])
    assert abs(np.mean(slopes) - 1) < 0.02
    np.testing.assert_allclose(np.std(slopes), se, rtol=0.1)
    unresolved = cvd._weak_stats(rng.standard_normal((hs.size, samples)), hs)  # mean ≈ 0
    assert cvd._slope_se(unresolved) == np.inf


def test_smoothing_ratio_se_matches_the_spread_over_replicates():
    """Paired ratio-of-means estimator and its s.e. (oracle: replicates)."""
    rng = np.random.default_rng(2)

    def pair():
        b = rng.gamma(4.0, 0.25, 64)
        return 0.3 * b + 0.05 * rng.standard_normal(64), b

    est = np.array([smoothing._ratio(*pair()) for _ in range(4000)])
    assert abs(est[:, 0].mean() - 0.3) < 0.002
    np.testing.assert_allclose(est[:, 0].std(), np.median(est[:, 1]), rtol=0.08)


@pytest.mark.parametrize(
    ("values", "verdict"),
    (([0.01, -0.02], "holds"), ([0.2, 0.0], "fails"), ([-0.09, 0.0], "inconclusive")),
)
def test_worst_cell_interval_gives_three_verdicts(values, verdict):
    """Every cell within ±0.1 (2 s.e. = 0.02): holds when all intervals are inside, fails when
    one lies wholly outside, inconclusive when one straddles the tolerance."""
    from experiments import noise_reduction
    from experiments.harness.contract import claim_less

    se = np.full(len(values), 0.01)
    value, interval = noise_reduction._worst_abs(np.array(values), se)
    assert claim_less("c", "", value, 0.1, interval=interval).verdict == verdict
    abs_values = np.abs(values)
    value, interval = smoothing._every_cell(abs_values, abs_values - 2 * se, abs_values + 2 * se)
    assert claim_less("c", "", value, 0.1, interval=interval).verdict == verdict
    value, interval = noise_reduction._worst_abs(np.array([np.nan, 0.0]), se)
    assert interval is None and claim_less("c", "", value, 0.1).verdict == "fails"


# ------------------------------------------------------------------------------- convex_bounds


def test_convex_bounds_control_variate_uses_each_runs_own_noise():
    """On a quadratic of curvature m the simulated deviation *is* the reference chain's, so
    the two agree to rounding (oracle: `solve_runs`); its expectation is the recursion's."""
    import jax.numpy as jnp

    from dynamics import CoupledSystem, IsotropicNoise, Quadratic, solve_runs

    config = dataclasses.replace(convex_bounds.Config(), **{**TINY[convex_bounds], "time": 1.0})
    x0 = convex_bounds._start(config, 3, jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 3)
    ts = np.linspace(0.0, config.time, config.saves)
    for algorithm in ("quorum_sgd", "easgd"):  # the gains k of the reference differ
        system = CoupledSystem(
            Quadratic([config.strong_convexity] * config.dim),
            convex_bounds._rule(config, algorithm),
            IsotropicNoise(config.sigma),
            config.gradient_scale,
        )
        sol = solve_runs(
            system, jnp.asarray(x0), keys, t1=config.time, step_size=config.step_size, saveat=ts
        )
        x = np.asarray(sol.x)
        dev = np.mean(np.sum((x - x.mean(2, keepdims=True)) ** 2, -1), -1)
        ref = convex_bounds._reference_deviation(config, algorithm, x0, keys, 100, 10)
        np.testing.assert_allclose(ref, dev, rtol=1e-10, atol=1e-14)
    lam = config.gain + config.gradient_scale * config.strong_convexity
    r, h = (1 - config.step_size * lam) ** 2, config.step_size
    d = [np.mean(np.sum((x0 - x0.mean(0)) ** 2, -1))]
    for _ in range(100):
        d.append(r * d[-1] + config.sigma**2 * h * config.dim * 2 / 3)
    expected = convex_bounds._reference_expectation(config, "quorum_sgd", x0, np.arange(101))
    np.testing.assert_allclose(expected, d, rtol=1e-12)


def test_convex_bounds_momentum_run_is_the_semi_implicit_chain_of_its_system():
    """The experiment's Optax run (lr = h², β = 1 − γh, quorum gain k_z/h, η_z/h, gradients
    times η) equals, with the same normals, the semi-implicit Euler chain of the continuous
    heavy-ball system it is compared with (oracle: that chain by hand)."""
    import jax.numpy as jnp

    from dynamics.brownian import step_normal
    from dynamics.system import AgentState

    changes = dict(gradient_scale=1.5, center_gradient_scale=0.3, time=0.2, saves=5)
    config = dataclasses.replace(convex_bounds.Config(), **{**TINY[convex_bounds], **changes})
    system = convex_bounds._system(config, "momentum_quorum_sgd")
    assert system.momentum and system.coupling.quorum_pull == "mean"
    x0 = convex_bounds._start(config, 3, jax.random.key(0))
    key = jax.random.key(4)
    x, diverged = convex_bounds._run_momentum(config, system, x0, key[None], 20, 5)
    assert diverged.tolist() == [-1]
    h = config.step_size
    y, ref = system.init(jnp.asarray(x0)), [np.asarray(x0)]
    for k in range(20):
        d = system.drift(0.0, y)
        v = y.v + h * d.v + config.sigma * np.sqrt(h) * step_normal(key, k, x0.shape)
        y = AgentState(y.x + h * v, v, y.aux + h * d.aux)
        if (k + 1) % 5 == 0:
            ref.append(np.asarray(y.x))
    np.testing.assert_allclose(x[0], np.stack(ref), rtol=1e-9, atol=1e-12)


def test_convex_bounds_slope_interval_matches_the_spread_over_replicates():
    """The delta-method s.e. of the fitted slope (oracle: slopes fitted to replicates)."""
    rng = np.random.default_rng(3)
    ns, rel_se = np.array([1, 4, 16, 64]), np.array([0.03, 0.02, 0.04, 0.05])
    truth = 0.1 / ns
    draws = truth * (1 + rel_se * rng.standard_normal((4000, ns.size)))

    def fit(v):
        results = {"agent_counts": ns, "stationary_sq_distance_x": np.stack([v, v * rel_se], -1)}
        return convex_bounds._slope(results, "x")

    slopes = np.array([fit(d)[0] for d in draws])
    slope, (lo, hi) = fit(truth)
    assert abs(slope + 1) < 1e-12 and abs(slopes.mean() + 1) < 0.005
    np.testing.assert_allclose(np.std(slopes), (hi - lo) / (2 * convex_bounds.Z), rtol=0.08)


@pytest.mark.parametrize(
    "bad",
    (
        dict(sum_quorum_gain=0.0),
        dict(quorum_gain=-1.0),
        dict(slope_tolerance=0.0),
        dict(damping=200.0),  # β = 1 − γh <= 0
        dict(time=30.005),  # off the step grid
        dict(agent_counts=(4, 4), plot_agents=4),
    ),
)
def test_convex_bounds_bad_config_raises(bad):
    with pytest.raises(ValueError):
        convex_bounds.Config(**bad)


def _convex_bounds_results(ns=(1, 4), ratio=0.5):
    """A minimal results dict for convex_bounds' metrics and claims: every simulated curve at
    `ratio` times its bound, slopes exactly −1 (mean pull) or on the theory (sum pull)."""
    ns = np.asarray(ns)
    out = {"agent_counts": ns, "ts": np.linspace(0, 1, 5)}
    curve = np.stack([np.full(5, ratio), np.full(5, 0.01 * ratio)], -1)
    for a in convex_bounds.ALGORITHMS:
        v = 0.1 / ns
        out[f"stationary_sq_distance_{a}"] = np.stack([v, 0.01 * v], -1)
        out[f"linear_stationary_sq_distance_{a}"] = v
        out[f"diverged_runs_{a}"] = np.zeros(ns.size, int)
        for n in ns:
            tag = f"{a}_N{n}"
            out[f"chain_vs_continuous_{tag}"] = np.asarray(0.0)
            for name in ("distance", "deviation_cv"):
                out[f"{name}_{tag}"] = curve.copy()
            out[f"bound_{tag}"] = out[f"deviation_bound_{tag}"] = np.ones(5)
    return out


def test_convex_bounds_claims_hold_and_a_diverged_run_fails_them_without_raising():
    config = convex_bounds.Config()
    results = _convex_bounds_results()
    verdicts = {c.id: c.verdict for c in convex_bounds.claims(results, config)}
    assert len(verdicts) == 7 and set(verdicts.values()) == {"holds"}, verdicts
    for key in ("distance_easgd_N4", "stationary_sq_distance_momentum_quorum_sgd"):
        bad = _convex_bounds_results()
        bad[key] = bad[key].copy()
        bad[key][-1, 0] = np.nan  # what a diverged run does to a mean
        claims = convex_bounds.claims(bad, config)
        assert "fails" in {c.verdict for c in claims}
        assert all(c.verdict == "fails" for c in claims if not np.isfinite(c.value))
    over = _convex_bounds_results(ratio=1.5)
    verdicts = {c.id: c.verdict for c in convex_bounds.claims(over, config)}
    assert verdicts["mean_distance_under_bound"] == verdicts["deviation_under_bound"] == "fails"
    only_one = convex_bounds.claims(_convex_bounds_results(ns=(1,)), config)
    assert [c.id for c in only_one] == [
        "mean_distance_under_bound",
        "momentum_matches_linearized_prediction",
    ]
