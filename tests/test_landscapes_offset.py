"""The offset multi-well (global well off the envelope's minimum) and the per-agent outputs of
`algorithms.basin_success`, each against hand-written NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.discrete import solve_discrete
from algorithms.sweeps import basin_success, wilson_interval
from dynamics.coupling import MeanField
from dynamics.landscapes import OffsetMultiWell
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve
from dynamics.system import CoupledSystem
from experiments.harness.contract import proportion_interval

PARAMS = (
    dict(),  # the issue's x²/20 + sin²(πx) − exp(−(x − 2)²/0.08)
    dict(quadratic=0.1, amplitude=0.5, depth=2.0, center=-3.0, width=0.3),
)


def np_value(x, q=0.05, a=1.0, d=1.0, c=2.0, s=0.2):
    """Hand-written f, summed over the last axis."""
    x = np.asarray(x, dtype=float)
    f = q * x**2 + a * np.sin(np.pi * x) ** 2 - d * np.exp(-((x - c) ** 2) / (2 * s**2))
    return f.sum(-1)


def np_grad(x, q=0.05, a=1.0, d=1.0, c=2.0, s=0.2):
    x = np.asarray(x, dtype=float)
    dip = d * (x - c) / s**2 * np.exp(-((x - c) ** 2) / (2 * s**2))
    return 2 * q * x + 2 * a * np.pi * np.sin(np.pi * x) * np.cos(np.pi * x) + dip


def np_second(x, q=0.05, a=1.0, d=1.0, c=2.0, s=0.2):
    x = np.asarray(x, dtype=float)
    u2 = (x - c) ** 2 / s**2
    return 2 * q + 2 * a * np.pi**2 * np.cos(2 * np.pi * x) + d / s**2 * (1 - u2) * np.exp(-u2 / 2)


def _args(params):
    keys = ("quadratic", "amplitude", "depth", "center", "width")
    defaults = dict(quadratic=0.05, amplitude=1.0, depth=1.0, center=2.0, width=0.2)
    return [params.get(k, defaults[k]) for k in keys]


def test_default_is_the_issue_formula():
    f = OffsetMultiWell()
    x = np.linspace(-4, 6, 101)
    expected = x**2 / 20 + np.sin(np.pi * x) ** 2 - np.exp(-((x - 2) ** 2) / 0.08)
    got = jax.vmap(f.value)(jnp.asarray(x)[:, None])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("dim", (1, 3))
def test_value_and_grad_match_numpy(params, dim, getkey):
    f = OffsetMultiWell(dim, **params)
    xs = np.asarray(jax.random.uniform(getkey(), (50, dim), minval=-5.0, maxval=5.0))
    args = _args(params)
    np.testing.assert_allclose(jax.vmap(f.value)(jnp.asarray(xs)), np_value(xs, *args), rtol=1e-12)
    np.testing.assert_allclose(
        jax.vmap(f.grad)(jnp.asarray(xs)), np_grad(xs, *args), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        jax.vmap(f.grad)(jnp.asarray(xs)), jax.vmap(jax.grad(f.value))(jnp.asarray(xs)), atol=1e-10
    )


@pytest.mark.parametrize("params", PARAMS)
def test_minimizer_is_the_global_minimum_on_a_dense_grid(params):
    f = OffsetMultiWell(1, **params)
    args = _args(params)
    grid = np.linspace(-30, 30, 600_001)
    values = np_value(grid[:, None], *args)
    x_grid = grid[np.argmin(values)]
    x_star = float(f.minimizer()[0])
    assert abs(x_star - x_grid) < 2e-4
    assert np_value([x_star], *args) <= values.min() + 1e-12
    assert abs(np_grad(x_star, *args)) < 1e-8
    # The global well is the dip's, not the envelope's minimum at 0.
    assert abs(x_star - args[3]) < 0.1 and abs(x_star) > 1.5
    np.testing.assert_array_equal(OffsetMultiWell(2, **params).minimizer(), [x_star, x_star])


def _descend(x, args, step=0.002, steps=20_000):
    """Plain NumPy gradient descent from each point of `x` (the basin's definition)."""
    for _ in range(steps):
        x = x - step * np_grad(x, *args)
    return x


@pytest.mark.parametrize("params", PARAMS)
def test_basin_matches_gradient_descent_on_a_dense_grid(params):
    f = OffsetMultiWell(1, **params)
    args = _args(params)
    x_star = float(f.minimizer()[0])
    grid = x_star + np.linspace(-1.8, 1.8, 3601)
    end = _descend(grid.copy(), args)
    reaches = np.abs(end - x_star) < 1e-3
    lo, hi = f.basin_1d()
    # The basin is one interval around x* whose ends are the local maxima on either side.
    assert lo < x_star < hi
    np.testing.assert_allclose(np_grad(np.array([lo, hi]), *args), 0.0, atol=0.02)
    assert np.all(np_second(np.array([lo, hi]), *args) < 0)
    # Away from the ends (where descent stalls at the maximum), the indicator matches.
    away = (np.abs(grid - lo) > 2e-3) & (np.abs(grid - hi) > 2e-3)
    inside = np.asarray(f.in_global_basin(jnp.asarray(grid)[:, None]))
    np.testing.assert_array_equal(inside[away], reaches[away])
    # In several dimensions every coordinate must be in the well.
    g = OffsetMultiWell(2, **params)
    assert bool(g.in_global_basin(jnp.array([x_star, x_star + 0.1])))
    assert not bool(g.in_global_basin(jnp.array([x_star, x_star + 1.0])))


@pytest.mark.parametrize("params", PARAMS)
def test_curvature_bounds_hold_on_a_dense_grid(params):
    f = OffsetMultiWell(1, **params)
    args = _args(params)
    grid = np.linspace(-10, 10, 200_001)
    second = np_second(grid, *args)
    m, big_l = f.curvature_bounds()
    assert m <= second.min() and second.max() <= big_l
    xs = jnp.asarray(grid[::5000])[:, None]
    hess = jax.vmap(lambda x: jax.hessian(f.value)(x)[0, 0])(xs)
    np.testing.assert_allclose(hess, np_second(np.asarray(xs[:, 0]), *args), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    (
        dict(dim=0),
        dict(quadratic=0.0),
        dict(amplitude=-1.0),
        dict(depth=-0.5),
        dict(width=0.0),
        dict(center=math.inf),
    ),
)
def test_bad_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        OffsetMultiWell(**kwargs)


# basin_success: the per-agent and time-averaged outputs.

N, RUNS, T, EVERY = 3, 4, 1.0, 0.25


def _sweep(form, step, **kwargs):
    return basin_success(
        OffsetMultiWell(1), MeanField(0.0), lambda r: r.gain, jnp.asarray([0.0, 2.0]), (0.8,),
        num_agents=N, form=form, gradient_scale=1.0, t1=T, step_size=step, num_runs=RUNS,
        key=jax.random.key(3), start_halfwidth=1.5, start_center=jnp.zeros(1), **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("form,step", (("continuous", 0.01), ("discrete", 0.05)))
def test_basin_success_per_agent_outputs_match_a_direct_run(form, step):
    out = _sweep(form, step, average_from=0.5, average_every=EVERY)
    times = np.array([0.5, 0.75, 1.0])
    land = OffsetMultiWell(1)
    lo, hi = land.basin_1d()
    for gi, gain in enumerate((0.0, 2.0)):
        system = CoupledSystem(land, MeanField(gain), IsotropicNoise(0.8), gradient_scale=1.0)
        for r, run_key in enumerate(jax.random.split(jax.random.key(3), RUNS)):
            k_start, k = jax.random.split(run_key)
            x0 = 1.5 * jax.random.uniform(k_start, (N, 1), minval=-1.0, maxval=1.0)
            run = solve if form == "continuous" else solve_discrete
            path = np.asarray(run(system, x0, t1=T, step_size=step, key=k, saveat=times).x)
            per_agent = np_value(path)  # (times, N)
            inside = (path[..., 0] > lo) & (path[..., 0] < hi)
            mean = path[-1].mean(0)
            np.testing.assert_allclose(out["time_avg_loss"][0, gi, r], per_agent.mean(), atol=1e-9)
            np.testing.assert_allclose(out["agent_loss"][0, gi, r], per_agent[-1].mean(), atol=1e-9)
            assert out["time_avg_agent_success"][0, gi, r] == pytest.approx(inside.mean())
            assert out["agent_success"][0, gi, r] == pytest.approx(inside[-1].mean())
            assert out["success"][0, gi, r] == (lo < mean[0] < hi)
            np.testing.assert_allclose(out["loss"][0, gi, r], np_value(mean), atol=1e-9)
    assert not out["diverged"].any()


def test_basin_success_averaging_leaves_the_old_outputs_unchanged():
    plain = _sweep("discrete", 0.05)
    averaged = _sweep("discrete", 0.05, average_from=0.5, average_every=EVERY)
    assert set(plain) == {"success", "loss", "diverged", "agent_success", "agent_loss"}
    for name in plain:
        np.testing.assert_array_equal(plain[name], averaged[name])


@pytest.mark.parametrize(
    "kwargs",
    (
        dict(average_from=0.5),  # without average_every
        dict(average_from=1.0, average_every=EVERY),  # not before t1
        dict(average_from=0.5, average_every=0.3),  # t1 not a multiple
        dict(average_from=0.5, average_every=0.125),  # not a multiple of the step 0.05
        dict(average_from=0.3, average_every=EVERY),  # start not a multiple
    ),
)
def test_basin_success_bad_averaging_raises(kwargs):
    with pytest.raises(ValueError):
        _sweep("discrete", 0.05, **kwargs)


def test_wilson_interval_matches_the_contract():
    successes = np.array([0, 1, 7, 31, 32])
    lo, hi = wilson_interval(successes, 32)
    for s, a, b in zip(successes, lo, hi):
        _, (a_ref, b_ref) = proportion_interval(int(s), 32)
        assert a == pytest.approx(a_ref, abs=1e-12) and b == pytest.approx(b_ref, abs=1e-12)
    assert lo.min() >= 0 and hi.max() <= 1
