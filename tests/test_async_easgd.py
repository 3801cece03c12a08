"""Tests of the `async_easgd` experiment: config validation, the synchronous clock, the pairing
of compute times with `run_async_coupled`, and a tiny end-to-end run with its claims."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.asynchrony import async_easgd, compute_time, run_async_coupled
from experiments import async_easgd as ae
from experiments.harness.contract import VERDICTS, Claim


def test_defaults_and_quick_are_valid():
    config = ae.Config()
    quick = dataclasses.replace(config, **ae.QUICK)
    assert quick.seeds < config.seeds
    # α = ηρ = β/W, and the last `slow_workers` run at `slow_speed`
    assert config.learning_rate * config.rho == pytest.approx(
        config.moving_rate / config.num_workers
    )
    assert list(config.speeds) == [1.0] * 7 + [0.5]


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_workers=1),
        dict(num_workers=8, slow_workers=8),
        dict(slow_speed=0.0),
        dict(slow_speed=1.5),
        dict(learning_rate=0.0),
        dict(asgd_learning_rate=-0.1),
        dict(moving_rate=1.5),
        dict(period=0),
        dict(seeds=0),
        dict(budget=0.0),
        dict(hidden=()),
        dict(window=0.5, early_fraction=0.25),
        dict(window=0.01, checkpoints=40),  # a window with no checkpoint
        dict(sync_margin=float("nan")),
        dict(diverge_loss=1.0),
        dict(checkpoints=2),
    ],
)
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        ae.Config(**bad)


def test_sync_barriers_wait_for_the_slowest_worker_each_period():
    # W = 2, τ = 2: periods of (1 + 3, 2 + 2) -> 4, then (1 + 1, 5 + 1) -> 6
    delta = np.array([[1.0, 3.0, 1.0, 1.0], [2.0, 2.0, 5.0, 1.0]])
    np.testing.assert_allclose(ae.sync_exchange_times(delta, 2), [4.0, 10.0])


def test_windows_hold_the_claimed_checkpoints():
    config = ae.Config(budget=100.0, checkpoints=20, window=0.1, early_fraction=0.25)
    grid = ae._grid(config)
    np.testing.assert_allclose(grid[ae._window(config, 100.0)], [95.0, 100.0])
    np.testing.assert_allclose(grid[ae._window(config, 25.0)], [20.0, 25.0])


def test_step_times_are_the_async_runs_compute_times(getkey):
    """The synchronous run's Δ(i, t) replays `run_async_coupled`'s documented time keys:
    the asynchronous event times are the per-worker cumulative sums of the same table."""
    w, events = 3, 24
    times = compute_time("lognormal", w, sigma=0.5, speeds=[1.0, 1.0, 0.5])
    key = getkey()

    def grad_fn(x, k):
        del k
        return 0.5 * jnp.sum(x**2), x

    res = run_async_coupled(
        grad_fn, async_easgd(0.1, 1.0, period=2), jnp.ones((w, 2)), key, times=times,
        num_steps=events, metrics_fn=None,
    )  # fmt: skip
    delta = np.asarray(ae._step_times(times, key, w, events))
    finish = np.cumsum(delta, axis=-1)
    worker = np.asarray(res.trace.worker)
    count = np.zeros(w, dtype=int)
    for k in range(events):
        i = worker[k]
        np.testing.assert_allclose(res.trace.time[k], finish[i, count[i]], rtol=1e-6)
        count[i] += 1


TINY = dict(
    num_workers=3,
    slow_workers=1,
    hidden=(8,),
    batch_size=8,
    budget=24.0,
    checkpoints=8,
    window=0.25,
    early_fraction=0.5,
    seeds=2,
)


@pytest.mark.slow  # ~20 s on two cores: three compiled runners (as gem_scaling's smoke test)
def test_tiny_run_metrics_claims_and_plots(getkey):
    from matplotlib.figure import Figure

    config = ae.Config(**TINY)
    results = ae.run(config, getkey())
    assert all(isinstance(v, np.ndarray) for v in results.values())
    assert results["test_error"].shape == (3, 2, 9)
    assert results["train_loss"].shape == (3, 2, 9)
    # every method starts from the same initialization: the same errors at t = 0
    start = results["test_error"][:, :, 0]
    np.testing.assert_allclose(start, np.broadcast_to(start[:1], start.shape))
    assert not results["diverged"].any()
    assert np.all((results["test_error"] >= 0) & (results["test_error"] <= 1))
    # the synchronous run waits: fewer local steps per worker by T than a fast async worker
    assert np.all(results["sync_local_steps"] < results["async_local_steps"][:, 0])
    metrics = ae.metrics(results, config)
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    claims = ae.claims(results, config)
    assert [c.id for c in claims] == [
        "async_beats_sync",
        "async_easgd_beats_asgd_at_budget",
        "asgd_ahead_early",
        "async_center_improves",
    ]
    assert all(isinstance(c, Claim) and c.verdict in VERDICTS for c in claims)
    assert all(c.interval is not None for c in claims)
    figures = ae.plot(results, config)
    assert set(figures) == {"async_easgd", "async_easgd_paired"}
    assert all(isinstance(f, Figure) for f in figures.values())


def test_a_diverged_run_counts_at_chance():
    results = {
        "test_error": np.full((3, 2, 5), 0.3),
        "diverged": np.array([[True, False], [False, False], [False, False]]),
    }
    e = ae._errors(results)
    assert np.all(e[0, 0] == ae.CHANCE_ERROR) and np.all(e[0, 1] == 0.3)
