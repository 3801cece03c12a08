"""The statistics and divergence handling of experiments/svag_networks.py (no training)."""

import dataclasses
import math

import numpy as np
import pytest

from experiments import svag_networks as sn


def test_abs_interval_folds_at_zero():
    assert sn.abs_interval(0.1, (-0.05, 0.25)) == (0.1, (0.0, 0.25))
    for mean, iv in ((-0.2, (-0.3, -0.1)), (0.2, (0.1, 0.3))):
        value, (lo, hi) = sn.abs_interval(mean, iv)
        assert (value, lo, hi) == pytest.approx((0.2, 0.1, 0.3))
    value, iv = sn.abs_interval(math.nan, None)
    assert math.isnan(value) and iv is None


def test_worst_abs_gap_takes_the_worst_time_end_by_end():
    diffs = np.array([[0.01, 0.03, 0.02, 0.02], [-0.1, -0.12, -0.11, -0.09]])
    value, (lo, hi) = sn.worst_abs_gap(diffs)
    assert value == pytest.approx(0.105)
    assert 0.09 < lo < 0.105 < hi < 0.12
    value, iv = sn.worst_abs_gap(np.array([[0.0, math.nan], [0.0, 0.0]]))
    assert math.isnan(value) and iv is None


def test_gap_difference_is_conservative():
    value, iv = sn.gap_difference((0.3, (0.2, 0.4)), (0.05, (0.0, 0.1)))
    assert value == pytest.approx(0.25) and iv == pytest.approx((0.1, 0.4))
    assert math.isnan(sn.gap_difference((math.nan, None), (0.05, (0.0, 0.1)))[0])


def _fake_results(config, gap_small, gap_large, diverged=None):
    names = sn.methods(config)
    etas = config.learning_rates
    rng = np.random.default_rng(0)
    shape = (len(etas), len(names), config.records + 1, config.seeds)
    loss = 2.0 + 0.001 * rng.normal(size=shape)
    loss[0, 0] += gap_small  # SGD above every other method at the smallest η
    loss[-1, 0] += gap_large
    div = np.full((len(etas), len(names)), -1)
    div[:, -1] = 0  # the SDE entry counts diverged paths
    if diverged is not None:
        div[diverged] = 3
    return {
        "train_loss": loss,
        "test_acc": np.full(shape, 0.5),
        "diverged": div,
        "wall_seconds": np.zeros((len(etas), len(names))),
        "records_fraction": np.linspace(0, 1, config.records + 1),
        "step_cost_sgd": np.asarray(1e-3),
        "step_cost_sde_exact": np.asarray(3e-2),
        "step_cost_sde_diagonal": np.asarray(0.5),
    }


def _claims(results, config):
    return {c.id: c for c in sn.claims(results, config)}


def test_claims_hold_fail_and_divergence_fails():
    config = dataclasses.replace(sn.Config(), coupled=False, seeds=4)
    ok = _claims(_fake_results(config, 0.0, 0.2), config)
    assert ok["sgd_matches_svag_small_eta"].verdict == "holds"
    assert ok["sgd_matches_sde_small_eta"].verdict == "holds"
    assert ok["gap_grows_with_eta"].verdict == "holds"
    bad = _claims(_fake_results(config, 0.2, 0.0), config)
    assert bad["sgd_matches_svag_small_eta"].verdict == "fails"
    assert bad["gap_grows_with_eta"].verdict == "fails"
    # a diverged SDE (paths counted) and a diverged SVAG-8 run (its step recorded) fail
    sde = _claims(_fake_results(config, 0.0, 0.2, diverged=(0, -1)), config)
    assert sde["sgd_matches_sde_small_eta"].verdict == "fails"
    assert sde["sgd_matches_svag_small_eta"].verdict == "holds"
    results = _fake_results(config, 0.0, 0.2, diverged=(-1, -2))
    assert _claims(results, config)["gap_grows_with_eta"].verdict == "fails"
    assert all(np.ndim(v) == 0 for v in sn.metrics(results, config).values())


def test_config_rejects_bad_grids():
    base = sn.Config()
    for changes in (
        dict(learning_rates=(0.25, 0.05)),
        dict(time=20.5),
        dict(records=7),
        dict(amplifications=(1, 2)),
        dict(seeds=1),
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(base, **changes)
