"""Delayed coupled SDEs (`dynamics.delay`) and their discrete form (`algorithms.delayed`)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.asynchrony.delays import constant_delay, uniform_delay
from algorithms.coupling import add_coupling_force, euler_optimizer
from algorithms.delayed import run_delayed_agents
from algorithms.discrete import solve_discrete
from algorithms.oracles import sde_matched_oracle
from dynamics.broadcast import LossWeightedGains
from dynamics.brownian import StepBrownianPath
from dynamics.coupling import MeanField, Quorum
from dynamics.delay import DelayedEuler, DelayedSystem, solve_delayed
from dynamics.landscapes import Quadratic, TiltedMultiWell
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve, terms
from dynamics.system import CoupledSystem

N, DIM, H, STEPS = 4, 2, 0.02, 40


def _system(rule, damping=None, sigma=0.6):
    return CoupledSystem(TiltedMultiWell(DIM, tilt=0.2), rule, IsotropicNoise(sigma), 0.8, damping)


def _assert_same(a, b, atol):
    np.testing.assert_allclose(a.ts, b.ts, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.x, b.x, rtol=0, atol=atol)
    if a.v is None:
        assert b.v is None
    else:
        np.testing.assert_allclose(a.v, b.v, rtol=0, atol=atol)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=0, atol=atol), a.aux, b.aux)
    assert int(a.num_steps) == int(b.num_steps) == STEPS


CASES = {
    "gradient": (MeanField(1.0), None, dict(gradient_delay=3)),
    "coupling_meanfield": (MeanField(1.5), None, dict(coupling_delay=2)),
    "coupling_quorum": (Quorum(1.0, 0.3, center_gradient_scale=0.5), None, dict(coupling_delay=3)),
    "both": (Quorum(1.0, 0.3), None, dict(gradient_delay=2, coupling_delay=4)),
    "random": (
        Quorum(1.0, 0.3, center_gradient_scale=0.5),
        None,
        dict(gradient_delay=uniform_delay(3), coupling_delay=uniform_delay(3)),
    ),
    "random_losses": (
        LossWeightedGains(0.8, 1.5),
        None,
        dict(gradient_delay=uniform_delay(2), coupling_delay=uniform_delay(3)),
    ),
    "heavy_ball": (Quorum(1.0, 0.3), 0.7, dict(gradient_delay=uniform_delay(3), coupling_delay=2)),
}


@pytest.mark.parametrize("case", CASES)
def test_euler_maruyama_equals_the_discrete_form(case, getkey):
    rule, damping, delays = CASES[case]
    system = DelayedSystem(_system(rule, damping), **delays)
    x0 = jax.random.normal(getkey(), (N, DIM))
    kwargs = dict(t1=0.3 + STEPS * H, step_size=H, t0=0.3, key=getkey(), delay_key=getkey(),
                  saveat=11)  # fmt: skip
    cont = solve_delayed(system, x0, **kwargs)
    disc = solve_discrete(system, x0, **kwargs)
    _assert_same(cont, disc, 1e-11)
    assert np.abs(cont.x[-1] - x0).max() > 0.05  # the path moved


def test_zero_delays_are_the_undelayed_solve(getkey):
    system = _system(Quorum(1.0, 0.3, center_gradient_scale=0.5))
    x0, key = jax.random.normal(getkey(), (N, DIM)), getkey()
    kwargs = dict(t1=STEPS * H, step_size=H, key=key, saveat=11)
    ref = solve(system, x0, **kwargs)
    _assert_same(solve_delayed(DelayedSystem(system), x0, **kwargs), ref, 1e-14)
    # A point mass at 0 is the constant delay 0; a larger buffer changes nothing.
    point = DelayedSystem(system, gradient_delay=constant_delay(0, 3), max_delay=3)
    _assert_same(solve_delayed(point, x0, **kwargs), ref, 1e-14)
    _assert_same(solve_discrete(DelayedSystem(system), x0, **kwargs), ref, 1e-11)


def test_diffeqsolve_directly_with_the_delayed_solver(getkey):
    system = DelayedSystem(_system(MeanField(1.0)), gradient_delay=2, coupling_delay=1)
    x0, key = jax.random.normal(getkey(), (N, DIM)), getkey()
    ref = solve_delayed(system, x0, t1=STEPS * H, step_size=H, key=key, saveat=[STEPS * H])
    path = StepBrownianPath(shape=(N, DIM), key=key, origin=0.0, step_size=H)
    sol = diffrax.diffeqsolve(terms(system, path), DelayedEuler(system, H), 0.0, STEPS * H, H,
                              system.init(x0), max_steps=STEPS)  # fmt: skip
    np.testing.assert_allclose(sol.ys.x, ref.x, rtol=0, atol=1e-14)
    # The buffer's step must be the solve's step: a wrong dt0 fails at run time.
    with pytest.raises(Exception, match="constant steps"):
        diffrax.diffeqsolve(terms(system, path), DelayedEuler(system, H), 0.0, STEPS * H, H / 2,
                            system.init(x0), max_steps=2 * STEPS)  # fmt: skip


def test_linear_system_against_numpy():
    # x_{k+1} = x_k − h a x_{k−d} − h k (x_{k−dc} − x̄_{k−dc}), x_{j<0} = x_0, σ = 0.
    a, k, h, d, dc, steps = 1.3, 0.9, 0.05, 3, 5, 60
    x0 = np.array([[1.0], [-0.5], [2.0]])
    system = DelayedSystem(CoupledSystem(Quadratic([a]), MeanField(k)), gradient_delay=d,
                           coupling_delay=dc)  # fmt: skip
    xs = [x0]
    for j in range(steps):
        xg, xc = xs[max(j - d, 0)], xs[max(j - dc, 0)]
        xs.append(xs[j] - h * a * xg - h * k * (xc - xc.mean(axis=0)))
    ref = np.stack(xs)
    kwargs = dict(t1=steps * h, step_size=h, saveat=steps + 1)
    np.testing.assert_allclose(solve_delayed(system, x0, **kwargs).x, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(solve_discrete(system, x0, **kwargs).x, ref, rtol=0, atol=1e-12)


def test_random_delays_follow_the_documented_stream(getkey):
    # Agent i reads ∇f at x_{k−dg_i, i} and the whole state dc_i steps old; the draws of step k
    # are categorical(fold_in(fold_in(delay_key, k), stream)) with stream 0 (gradient, (N,))
    # and 1 (coupling, (N + 1,): the agents, then aux).
    a, k, h, steps, n = 1.3, 0.9, 0.05, 30, 3
    x0 = np.array([[1.0], [-0.5], [2.0]])
    dk, p = getkey(), uniform_delay(3)
    system = DelayedSystem(CoupledSystem(Quadratic([a]), MeanField(k)), gradient_delay=p,
                           coupling_delay=p)  # fmt: skip

    def draw(j, stream, count):
        key = jax.random.fold_in(jax.random.fold_in(dk, j), stream)
        return np.asarray(jax.random.categorical(key, jnp.log(p.probs), shape=(count,)))

    xs, rows = [x0], np.arange(n)
    for j in range(steps):
        dg, dc = draw(j, 0, n), draw(j, 1, n + 1)[:n]
        xg = np.stack([xs[max(j - d, 0)][i] for i, d in enumerate(dg)])
        xc = [xs[max(j - d, 0)] for d in dc]
        force = np.stack([k * (xc[i].mean(axis=0) - xc[i][i]) for i in rows])
        xs.append(xs[j] - h * a * xg + h * force)
    kwargs = dict(t1=steps * h, step_size=h, saveat=steps + 1, delay_key=dk)
    np.testing.assert_allclose(solve_delayed(system, x0, **kwargs).x, np.stack(xs), atol=1e-12)


def test_memory_is_d_plus_one_states(getkey):
    system = DelayedSystem(_system(Quorum(1.0, 0.3), 0.5), gradient_delay=2,
                           coupling_delay=uniform_delay(4))  # fmt: skip
    x0 = jax.random.normal(getkey(), (N, DIM))
    y0 = system.init(x0)
    past, step = DelayedEuler(system, H, getkey()).init(None, 0.0, 1.0, y0, None)
    assert past.states.x.shape == (5, N, DIM) and past.states.v is None
    assert past.states.aux.shape == (5, DIM) and int(step) == 0
    # The discrete form: the coupling buffer holds D_c + 1, the runner D_g + 1 parameters.
    opt = euler_optimizer(system, H, delay_key=getkey())
    history = opt.init(x0)[0].history
    assert history.states[0].shape == (5, N, DIM) and history.states[2] is None
    oracle = sde_matched_oracle(system.system, H)
    res = run_delayed_agents(opt, x0, oracle, num_steps=2, key=getkey(), gradient_delay=2,
                             delay_key=getkey())  # fmt: skip
    assert res.state.history.states.shape == (3, N, DIM)


def test_bad_delays_and_solves_raise(getkey):
    system = _system(MeanField(1.0))
    x0, key = jnp.zeros((N, DIM)), getkey()
    with pytest.raises(ValueError, match="-1"):
        DelayedSystem(system, gradient_delay=-1)
    with pytest.raises(ValueError, match="1.5"):
        DelayedSystem(system, coupling_delay=1.5)
    with pytest.raises(ValueError, match="max_delay=2"):
        DelayedSystem(system, coupling_delay=uniform_delay(4), max_delay=2)
    with pytest.raises(ValueError, match="-1"):
        add_coupling_force(MeanField(1.0), H, delay=-1)
    delayed = DelayedSystem(system, gradient_delay=2)
    kwargs = dict(t1=1.0, step_size=0.1, key=key)
    with pytest.raises(ValueError, match="adaptive=True"):
        solve_delayed(delayed, x0, adaptive=True, **kwargs)
    with pytest.raises(ValueError, match="Heun"):
        solve_delayed(delayed, x0, solver=diffrax.Heun(), **kwargs)
    with pytest.raises(ValueError, match="0.05"):
        solve_delayed(delayed, x0, solver=DelayedEuler(delayed, 0.05), **kwargs)
    with pytest.raises(ValueError, match="another DelayedSystem"):
        other = DelayedSystem(system, gradient_delay=3)
        solve_delayed(delayed, x0, solver=DelayedEuler(other, 0.1), **kwargs)
    with pytest.raises(ValueError, match="whole number of steps"):
        solve_delayed(delayed, x0, t1=1.05, step_size=0.1, key=key)
    random = DelayedSystem(system, gradient_delay=uniform_delay(2))
    with pytest.raises(ValueError, match="delay_key"):
        solve_delayed(random, x0, **kwargs)
    with pytest.raises(ValueError, match="delay_key"):
        solve_discrete(random, x0, **kwargs)


@pytest.mark.parametrize(("factor", "grows"), ((0.9, False), (1.1, True)))
def test_delayed_feedback_loses_stability_at_a_tau_pi_over_two(factor, grows):
    # x' = −a x(t − τ) is stable iff aτ < π/2 (the Euler grid with τ = 50 h shifts the
    # threshold by ~1 %, well inside the ±10 % margins).
    tau, d = 1.0, 50
    a = factor * np.pi / (2 * tau)
    system = DelayedSystem(CoupledSystem(Quadratic([a])), gradient_delay=d)
    sol = solve_delayed(system, jnp.ones((1, 1)), t1=60.0, step_size=tau / d, saveat=601)
    late = np.abs(np.asarray(sol.x[-100:])).max()
    assert (late > 10.0) if grows else (late < 0.1)


def test_float32_times_pass_the_step_check(getkey):
    # t0 + k·h rounds in float32 (h = 0.01 is not a binary fraction): the solver's step
    # check must allow that rounding and still run the same steps.
    sde = CoupledSystem(Quadratic([1.0]), MeanField(2.0), IsotropicNoise(0.1))
    key = getkey()
    with jax.enable_x64(False), pytest.warns(UserWarning, match="float64"):
        low = solve_delayed(
            DelayedSystem(sde, coupling_delay=10), jnp.ones((3, 1), jnp.float32), t1=0.5,
            step_size=0.01, key=key, saveat=3,
        )  # fmt: skip
    assert low.x.dtype == jnp.float32 and int(low.num_steps) == 50
    assert np.all(np.isfinite(np.asarray(low.x)))
