"""Tests of asynchronous coupled SGD on the virtual clock (`algorithms.asynchrony.coupled`).

The oracles are NumPy loops written from the recursion in the module docstring: a plain
round-robin loop, and an event-driven reference that runs its own virtual clock from the
documented compute-time and gradient keys.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from algorithms import asynchrony as asy
from dynamics.coupling import elastic

A_DIAG = np.array([1.0, 0.5, 2.0])
X_STAR = np.array([1.0, -2.0, 0.5])
X0 = np.array([[3.0, 0.0, -1.0], [-1.0, 2.0, 1.5], [0.5, -3.0, 2.0], [2.0, 1.0, 0.0]])


def exact_grad(x, key):
    """Deterministic ∇ of ½ (x − x*)ᵀ diag(A) (x − x*)."""
    del key
    r = x - jnp.asarray(X_STAR)
    return 0.5 * jnp.sum(jnp.asarray(A_DIAG) * r * r), jnp.asarray(A_DIAG) * r


def noisy_grad(sigma):
    """The quadratic's gradient plus σ · N(0, I) drawn from the step's key."""

    def grad_fn(x, key):
        loss, g = exact_grad(x, key)
        return loss, g + sigma * jr.normal(key, x.shape, x.dtype)

    return grad_fn


def np_grad(x):
    return A_DIAG * (x - X_STAR)


def np_loss(x):
    return 0.5 * np.sum(A_DIAG * (x - X_STAR) ** 2)


# ----------------------------------------------------------------------------- oracles


def reference(
    x0,
    key,
    times,
    num_events,
    *,
    eta,
    period,
    variant,
    momentum=None,
    rho=0.0,
    gain=0.0,
    quorum_gain=0.0,
    pull="sum",
    sigma=0.0,
):
    """The event-driven algorithm in NumPy, with its own virtual clock.

    Compute times Δ(i, t) and gradient noise use the documented keys of worker i's local
    step t; everything else (clock, order, recursion) is computed here. `variant`: "easgd"
    (elastic exchange, Nesterov momentum δ if given) or "quorum" (stale-z force at every local
    step, z moved at exchanges with the sum or mean pull).
    """
    key_grad, key_time = jr.split(key)

    def fold(k, i, t):
        return jr.fold_in(jr.fold_in(k, i), t)

    def dt(i, t):
        return float(times.sample(fold(key_time, i, t), jnp.array([i]))[0])

    def noise(i, t):
        return sigma * np.asarray(jr.normal(fold(key_grad, i, t), (x0.shape[1],), jnp.float64))

    num_workers = x0.shape[0]
    x = np.array(x0, dtype=float)
    v = np.zeros_like(x)
    z = x.mean(axis=0)
    view = np.tile(z, (num_workers, 1))
    t = np.zeros(num_workers, dtype=int)
    finish = np.array([dt(i, 0) for i in range(num_workers)])
    delta = 0.0 if momentum is None else momentum
    out = {"worker": [], "time": [], "exchanged": [], "loss": [], "center": [z.copy()]}
    out["params"] = [x.copy()]
    for _ in range(num_events):
        i = int(np.argmin(finish))  # first minimum: ties to the smallest index
        clock = finish[i]
        p = x[i] + delta * v[i]
        u = np_grad(p) + noise(i, t[i])
        loss = np_loss(p)
        if variant == "quorum":
            u = u + gain * (p - view[i])  # u = g − F, F = k(ẑ_i − p)
        if momentum is None:
            x[i] = x[i] - eta * u
        else:
            v[i] = delta * v[i] - eta * u
            x[i] = x[i] + v[i]
        t[i] += 1
        finish[i] = clock + dt(i, t[i])
        exchanged = t[i] % period == 0
        if exchanged:
            if variant == "easgd":
                e = eta * rho * (x[i] - z)
                x[i] = x[i] - e
                z = z + e
            else:
                kz = quorum_gain if pull == "sum" else quorum_gain / num_workers
                z = z + eta * kz * (x[i] - z)
            view[i] = z
        out["worker"].append(i)
        out["time"].append(clock)
        out["exchanged"].append(exchanged)
        out["loss"].append(loss)
        out["center"].append(z.copy())
        out["params"].append(x.copy())
    return {name: np.array(values) for name, values in out.items()}


def assert_matches(result, ref, tol=1e-12):
    np.testing.assert_array_equal(np.asarray(result.trace.worker), ref["worker"])
    np.testing.assert_array_equal(np.asarray(result.trace.exchanged), ref["exchanged"])
    np.testing.assert_allclose(np.asarray(result.trace.time), ref["time"], rtol=tol)
    np.testing.assert_allclose(np.asarray(result.trace.loss), ref["loss"], rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(result.metrics.center), ref["center"], atol=tol)
    np.testing.assert_allclose(np.asarray(result.metrics.params), ref["params"], atol=tol)


# ----------------------------------------------------------------------------- tests


def test_round_robin_with_equal_times_is_the_sequential_recursion(getkey):
    num_workers, rounds, eta, rho = 3, 8, 0.1, 0.9
    x0 = X0[:num_workers]
    times = asy.compute_time("constant", num_workers)
    result = asy.run_async_coupled(
        exact_grad, asy.async_easgd(eta, rho, period=1), jnp.asarray(x0), getkey(),
        times=times, num_steps=num_workers * rounds,
    )  # fmt: skip

    # The hand-written sequential loop: workers 0, 1, 2, 0, … each take a local SGD step
    # and then their elastic exchange with the center.
    x, center, alpha = x0.copy(), x0.mean(axis=0), eta * rho
    centers, params = [center.copy()], [x.copy()]
    for _ in range(rounds):
        for i in range(num_workers):
            x[i] = x[i] - eta * np_grad(x[i])
            e = alpha * (x[i] - center)
            x[i] = x[i] - e
            center = center + e
            centers.append(center.copy())
            params.append(x.copy())

    np.testing.assert_array_equal(
        np.asarray(result.trace.worker), np.tile(np.arange(num_workers), rounds)
    )
    np.testing.assert_array_equal(
        np.asarray(result.trace.time), np.repeat(np.arange(1.0, rounds + 1), num_workers)
    )
    assert np.all(np.asarray(result.trace.exchanged))
    np.testing.assert_allclose(np.asarray(result.metrics.center), np.array(centers), atol=1e-12)
    np.testing.assert_allclose(np.asarray(result.metrics.params), np.array(params), atol=1e-12)
    np.testing.assert_allclose(np.asarray(result.metrics.time)[-1], rounds)


VARIANTS = {
    "easgd": dict(variant="easgd", rho=0.8),
    "eamsgd": dict(variant="easgd", rho=0.8, momentum=0.6),
    "quorum-sum": dict(variant="quorum", gain=0.7, quorum_gain=0.4, pull="sum"),
    "quorum-mean-momentum": dict(
        variant="quorum", gain=0.7, quorum_gain=1.5, pull="mean", momentum=0.5
    ),
}


def _rule(eta, period, variant, momentum=None, rho=0.0, gain=0.0, quorum_gain=0.0, pull="sum"):
    if variant == "easgd":
        return asy.async_easgd(eta, rho, period=period, momentum=momentum)
    return asy.async_quorum_sgd(
        eta, gain, quorum_gain, period=period, quorum_pull=pull, momentum=momentum
    )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_random_compute_times_match_the_event_driven_numpy_reference(name, getkey):
    eta, period, sigma, num_events = 0.15, 3, 0.3, 60
    times = asy.compute_time("lognormal", 4, sigma=0.8, speeds=[1.0, 2.0, 0.7, 1.3])
    key = getkey()
    spec = VARIANTS[name]
    result = asy.run_async_coupled(
        noisy_grad(sigma), _rule(eta, period, **spec), jnp.asarray(X0), key,
        times=times, num_steps=num_events,
    )  # fmt: skip
    ref = reference(X0, key, times, num_events, eta=eta, period=period, sigma=sigma, **spec)
    # The schedule is genuinely asynchronous: workers run different numbers of local steps.
    counts = np.bincount(ref["worker"], minlength=4)
    assert len(set(counts)) > 1
    assert_matches(result, ref)
    np.testing.assert_array_equal(np.asarray(result.state.local_step), counts)


@pytest.mark.parametrize("momentum", [None, 0.6])
def test_general_form_with_elastic_is_async_easgd(momentum, getkey):
    eta, rho, period = 0.2, 0.9, 2
    times = asy.compute_time("exponential", 4)
    key = getkey()

    def run(rule):
        return asy.run_async_coupled(
            noisy_grad(0.5), rule, jnp.asarray(X0), key, times=times, num_steps=40
        )

    dedicated = run(asy.async_easgd(eta, rho, period=period, momentum=momentum))
    general = run(asy.async_coupled(elastic(rho), eta, period=period, momentum=momentum))
    quorum = run(
        asy.async_quorum_sgd(eta, rho, rho, period=period, momentum=momentum, force_at="exchange")
    )
    assert np.any(np.asarray(dedicated.trace.exchanged))
    for other in (general, quorum):
        np.testing.assert_array_equal(
            np.asarray(other.trace.worker), np.asarray(dedicated.trace.worker)
        )
        for a, b in zip(jax.tree.leaves(other.metrics), jax.tree.leaves(dedicated.metrics)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_eamsgd_at_zero_momentum_is_async_easgd(getkey):
    times = asy.compute_time("lognormal", 4, sigma=1.0)
    key = getkey()

    def run(rule):
        return asy.run_async_coupled(
            noisy_grad(0.5), rule, jnp.asarray(X0), key, times=times, num_steps=40
        )

    easgd = run(asy.async_easgd(0.2, 0.5, period=2))
    eamsgd = run(asy.async_eamsgd(0.2, 0.5, momentum=0.0, period=2))
    assert easgd.state.velocity is None and eamsgd.state.velocity is not None
    for a, b in zip(jax.tree.leaves(easgd.metrics), jax.tree.leaves(eamsgd.metrics)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    # and momentum does change the path
    heavy = run(asy.async_eamsgd(0.2, 0.5, momentum=0.5, period=2))
    assert not np.allclose(np.asarray(heavy.metrics.center), np.asarray(easgd.metrics.center))


def _never_called(params, key):
    raise AssertionError("grad_fn was traced: validation must come first")


@pytest.mark.parametrize("period", [0, -1, 2.5, True])
def test_bad_period_is_rejected_by_name(period):
    with pytest.raises(ValueError, match=rf"period \(τ\).*{period!r}"):
        asy.async_easgd(0.1, 0.5, period=period)
    with pytest.raises(ValueError, match=r"period \(τ\)"):
        asy.async_coupled(elastic(0.5), 0.1, period=period)


def test_worker_count_and_other_arguments_are_rejected_by_name(getkey):
    rule = asy.async_easgd(0.1, 0.5)
    times = asy.compute_time("constant", 3)
    with pytest.raises(ValueError, match=r"W = 3.*shape \(4, 3\)"):
        asy.run_async_coupled(
            _never_called, rule, jnp.asarray(X0), getkey(), times=times, num_steps=4
        )
    with pytest.raises(ValueError, match="num_workers"):
        asy.compute_time("constant", 0)
    with pytest.raises(ValueError, match="num_steps"):
        asy.run_async_coupled(
            _never_called, rule, jnp.asarray(X0[:3]), getkey(), times=times, num_steps=-1
        )
    with pytest.raises(ValueError, match="alpha"):
        asy.async_easgd(0.5, 3.0)
    with pytest.raises(ValueError, match=r"momentum \(δ\)"):
        asy.async_eamsgd(0.1, 0.5, momentum=1.0)
    with pytest.raises(ValueError, match="force_at"):
        asy.async_quorum_sgd(0.1, 1.0, 1.0, force_at="sometimes")
    with pytest.raises(ValueError, match=r"learning_rate \(η\)"):
        asy.async_coupled(elastic(0.5), 0.0)


@pytest.mark.parametrize("record_every", [1, 4])
def test_divergence_is_recorded_at_its_event_without_nans(record_every, getkey):
    eta, rho, period, threshold, num_events = 1.4, 0.2, 2, 1e3, 80
    times = asy.compute_time("lognormal", 3, sigma=0.5)
    key = getkey()
    x0 = X0[:3]
    result = asy.run_async_coupled(
        exact_grad, asy.async_easgd(eta, rho, period=period), jnp.asarray(x0), key,
        times=times, num_steps=num_events, record_every=record_every,
        divergence_threshold=threshold,
    )  # fmt: skip
    ref = reference(x0, key, times, num_events, eta=eta, period=period, variant="easgd", rho=rho)
    # |1 − η a| = 1.8 on the stiffest direction: the first event after which some |x_i| or
    # |z| reaches the threshold (ref["params"][k + 1] is the state after event k).
    size = np.maximum(np.abs(ref["params"]).max(axis=(1, 2)), np.abs(ref["center"]).max(axis=1))
    expected = int(np.argmax(size[1:] >= threshold))
    assert size[expected + 1] >= threshold and 0 < expected < num_events - record_every
    assert int(result.diverged_step) == expected
    for leaf in jax.tree.leaves(result.metrics):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # The records stay at the last healthy record: the start of the block that went bad.
    last_good = (expected // record_every) * record_every
    np.testing.assert_allclose(
        np.asarray(result.metrics.params[-1]), ref["params"][last_good], rtol=1e-12
    )


@pytest.mark.parametrize(
    "rule",
    [
        asy.async_easgd(0.4, 1.0, period=2),
        asy.async_eamsgd(0.2, 1.0, momentum=0.5, period=3),
        asy.async_quorum_sgd(0.4, 0.5, 0.5, period=2, quorum_pull="sum"),
    ],
    ids=["easgd", "eamsgd", "quorum"],
)
def test_center_converges_to_the_minimizer(rule, getkey):
    times = asy.compute_time("lognormal", 4, sigma=0.8, speeds=[1.0, 3.0, 0.5, 1.0])
    result = asy.run_async_coupled(
        exact_grad, rule, jnp.asarray(X0), getkey(), times=times, num_steps=1200, record_every=1200
    )
    start = np.abs(np.asarray(result.metrics.center[0]) - X_STAR).max()
    assert start > 0.5
    np.testing.assert_allclose(np.asarray(result.state.aux), X_STAR, atol=1e-8)
    np.testing.assert_allclose(np.asarray(result.params), np.tile(X_STAR, (4, 1)), atol=1e-8)


def test_same_key_is_deterministic_and_continuation_is_bitwise(getkey):
    rule = asy.async_eamsgd(0.15, 0.8, momentum=0.5, period=2)
    times = asy.compute_time("exponential", 4)
    key = getkey()

    def run(key, num_steps, **kwargs):
        return asy.run_async_coupled(
            noisy_grad(0.5), rule, jnp.asarray(X0), key, times=times, num_steps=num_steps,
            record_every=5, **kwargs,
        )  # fmt: skip

    run30 = jax.jit(lambda key: run(key, 30))  # one compilation for the three runs of 30
    whole, again, other = run30(key), run30(key), run30(getkey())
    first = run(key, 15)
    rest = run(key, 15, state=first.state, start_step=15, diverged_step=first.diverged_step)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(rest.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(
        np.asarray(whole.trace.worker), np.concatenate([first.trace.worker, rest.trace.worker])
    )
    np.testing.assert_array_equal(
        np.asarray(whole.metrics.center),
        np.concatenate([first.metrics.center, rest.metrics.center[1:]]),
    )
    # a different key gives a different schedule
    assert not np.array_equal(np.asarray(other.trace.worker), np.asarray(whole.trace.worker))
