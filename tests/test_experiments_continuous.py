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
    smoothing,
)
from experiments.harness.contract import Claim

matplotlib.use("Agg")

TINY = {
    nonconvex_stabilization: dict(
        agent_counts=(1, 4),
        gains=(0.0, 10.0),
        sigmas_multiwell=(0.7, 2.2),
        sigmas_rastrigin=(0.8, 2.2),
        time=1.0,
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
        landscapes=("multiwell",),
        betas=(3.0,),
        temperatures=(1.0,),
        sigmas_multiwell=(0.6,),
        time=1.0,
        runs=4,
    ),
    easgd_regularization: dict(
        tasks=("digits",), steps=20, record_every=10, seeds=2, easgd_agents=(2,)
    ),
}
KEYS = {
    nonconvex_stabilization: ("success_multiwell_continuous", "success_rastrigin_discrete"),
    smoothing: ("spread_continuous", "spread_discrete", "theory_spread"),
    convex_bounds: ("distance_easgd_N2", "bound_quorum_sgd_N2", "stationary_sq_distance_easgd"),
    broadcast_success: (
        "success_multiwell_discrete_leader",
        "success_multiwell_continuous_uncoupled",
    ),
    easgd_regularization: ("steps", "digits_sgd", "digits_easgd_2"),
}
MODULES = tuple(TINY)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.NAME)
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


BAD = {"runs": 1, "seeds": 1}


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
