"""The delay_coupling experiment: config validation, its theory against independent oracles,
the multisection, and a tiny end-to-end run whose measurements bracket the closed forms."""

import dataclasses

import jax
import numpy as np
import pytest
from matplotlib.figure import Figure

from dynamics import theory
from dynamics.coupling import MeanField
from dynamics.landscapes import Quadratic
from dynamics.noise import IsotropicNoise
from dynamics.system import CoupledSystem
from experiments import delay_coupling as dc
from experiments.harness.config import ConfigError, apply_overrides
from experiments.harness.contract import Claim

TINY = dict(
    threshold_delay_steps=(1, 2, 4),
    threshold_check_steps=(4,),
    coupling_delay_steps=(8,),
    horizon=24.0,
    bisection_candidates=8,
    bisection_rounds=3,
    variance_delay_steps=(0, 8),
    gain_factors=(0.0, 1.0),
    runs=64,
    burn_in=4.0,
    sample_time=16.0,
)


def test_quick_and_tiny_configs_are_valid_and_registered():
    from experiments.registry import EXPERIMENTS

    assert dc in EXPERIMENTS and dc.NAME == "delay_coupling" and dc.DESCRIPTION
    dataclasses.replace(dc.Config(), **dc.QUICK)
    dataclasses.replace(dc.Config(), **TINY)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(step_size=0.01), "power of two"),
        (dict(threshold_delay=1.0, threshold_delay_steps=(1, 3)), "power of two"),
        (dict(threshold_check_steps=(64,)), "subset"),
        (dict(coupling_delay_steps=(4, 8)), ">= 8"),
        (dict(variance_delay_steps=(8, 0)), "increasing"),
        (dict(variance_delay_steps=(0,)), ">= 2"),
        (dict(gain_factors=(0.5, 2.0)), "include 1"),
        (dict(runs=1), "runs"),
        (dict(agents=1), "agents"),
        (dict(sigma=0.0), "sigma"),
        (dict(gap_slope_range=(1.2, 0.8)), "gap_slope_range"),
        (dict(sample_every=0.01), "whole number"),
        (dict(bisection_rounds=0), "bisection_rounds"),
        (dict(horizon=8.0), "horizon"),
    ],
)
def test_bad_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(dc.Config(), **overrides)


def test_cli_overrides_are_parsed_and_checked():
    config = apply_overrides(dc.Config(), {"variance_delay_steps": "0,16", "runs": "32"})
    assert config.variance_delay_steps == (0, 16) and config.runs == 32
    with pytest.raises(ConfigError, match="power of two"):
        apply_overrides(dc.Config(), {"step_size": "0.01"})


def test_per_agent_variance_without_delay_is_the_full_lyapunov_solution():
    """At τ_c = 0 the decomposition Var(x̄) + E e_i² (deviation noise σ√((N−1)/N)) equals the
    discrete Lyapunov solution of the whole N-agent chain (`theory.stationary_moments`)."""
    config = dataclasses.replace(dc.Config(), agents=5, sigma=0.7, curvature=2.0)
    for gain in (0.0, 1.5, 20.0):
        system = CoupledSystem(
            Quadratic([config.curvature]), MeanField(gain), IsotropicNoise(config.sigma),
            gradient_scale=config.gradient_scale,
        )  # fmt: skip
        m = theory.stationary_moments(system, num_agents=5, step_size=config.step_size)
        ours = dc.per_agent_variance(config, gain, 0)
        np.testing.assert_allclose(ours["var_mean"], m.var_mean[0], rtol=1e-10)
        np.testing.assert_allclose(ours["spread"], m.spread[0], rtol=1e-10)
    u = dc.uncoupled_variance(config)
    a, h = config.decay, config.step_size
    np.testing.assert_allclose(u, config.sigma**2 / (a * (2 - h * a)), rtol=1e-12)


def test_boundaries_agree_with_the_library_predicates():
    config = dc.Config()
    a, h = config.decay, config.step_size
    for d in (8, 32):
        tau = d * h
        k_hayes = dc.hayes_k_star(a, tau)
        assert theory.delayed_coupling_stable(decay=a, gain=0.999 * k_hayes, delay=tau)
        assert not theory.delayed_coupling_stable(decay=a, gain=1.001 * k_hayes, delay=tau)
        root = theory.delayed_feedback_root(decay=a, gain=k_hayes, delay=tau)
        assert abs(root.real) < 1e-8
        k_chain = dc.chain_k_star(config, d)
        assert k_chain < k_hayes  # the chain tolerates slightly less
        assert theory.delayed_euler_stable(decay=a, gain=0.999 * k_chain, delay=tau, step_size=h)
        assert not theory.delayed_euler_stable(
            decay=a, gain=1.001 * k_chain, delay=tau, step_size=h
        )
    k_star, k_opt, best = dc.best_gain(config, 0)
    assert k_star == 2 / h - a and k_opt == pytest.approx(1 / h - a, rel=1e-5)
    assert best == pytest.approx(dc.per_agent_variance(config, k_opt, 0)["total"])


def test_multisection_brackets_a_step_and_detects_missing_brackets():
    def step(values):
        return values > 0.3, None

    est, width, values, _, nonmono, ok = dc._multisection(step, 0.0, 1.0, 8, 4)
    assert ok and nonmono == 0 and abs(est - 0.3) <= width / 2
    assert width == pytest.approx(1 / 9**4, rel=1e-9) and values.shape == (8,)
    est, _, _, _, _, ok = dc._multisection(step, 0.0, 0.25, 8, 2)
    assert not ok and np.isnan(est)


def test_unstable_compares_the_late_and_mid_windows():
    k = np.arange(201)
    amplitude = np.stack([0.99**k, 1.01**k, np.where(k > 150, 1e7, 1.0), np.full(201, 1.0)])
    amplitude[3, 120] = np.nan
    assert dc._unstable(amplitude, 10).tolist() == [False, True, True, True]


@pytest.mark.slow  # ~15 s on two cores: the unit tests above cover the parts
def test_tiny_run_brackets_the_closed_forms(getkey):
    config = dataclasses.replace(dc.Config(), **TINY)
    with jax.enable_x64(False):  # as the CLI runs it: float32
        results = dc.run(config, getkey())
    assert all(isinstance(v, np.ndarray) for v in results.values())
    # each closed form lies inside the final bisection bracket
    gap = np.abs(results["threshold_measured"] - results["threshold_euler"])
    assert np.all(gap <= results["threshold_width"] / 2 + 1e-6)
    gap = np.abs(results["k_star_measured"] - results["k_star_chain"])
    assert np.all(gap <= results["k_star_width"] / 2 + 1e-5)
    assert results["threshold_bracketed"].all() and results["k_star_bracketed"].all()
    assert int(results["threshold_nonmonotone"].sum() + results["k_star_nonmonotone"].sum()) == 0
    # the two forms are one path (float32 rounding)
    assert np.nanmax(results["variance_path_error"]) < 1e-5
    assert np.nanmax(results["threshold_path_error"]) < 1e-5
    assert np.nanmax(results["k_star_path_error"]) < 1e-5
    metrics = dc.metrics(results, config)
    assert all(np.ndim(v) == 0 for v in metrics.values())
    assert metrics["variance_z_max"] < 4.5  # Monte Carlo noise, no bias
    claims = {c.id: c for c in dc.claims(results, config)}
    assert all(isinstance(c, Claim) for c in claims.values()) and len(claims) == 8
    for cid in ("k_star_near_hayes", "forms_agree", "threshold_rises_to_continuous_limit"):
        assert claims[cid].holds, claims[cid]
    assert claims["per_agent_variance_matches_lyapunov"].verdict != "fails"
    figures = dc.plot(results, config)
    assert figures and all(isinstance(f, Figure) for f in figures.values())
