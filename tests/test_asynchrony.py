"""Tests of the asynchrony package: delays, the worker pool, server rules, DASGD and gossip."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

from algorithms import asynchrony as asy
from experiments.tasks import MLP, init_stacked, minibatch_grad_fn

A_DIAG = np.array([1.0, 0.5, 2.0])


def quadratic_grad(x, key):
    """Deterministic ∇(½ xᵀ diag(A) x)."""
    del key
    a = jnp.asarray(A_DIAG)
    return 0.5 * jnp.sum(a * x * x), a * x


def numpy_delayed_gd(x0, eta, tau, steps):
    """Reference loop: x_{k+1} = x_k − η A x_{k−τ}, with x_{j} = x_0 for j < 0."""
    xs = [np.array(x0, dtype=float)]
    for k in range(steps):
        stale = xs[max(k - tau, 0)]
        xs.append(xs[-1] - eta * (A_DIAG * stale))
    return np.stack(xs[1:])


# ----------------------------------------------------------------------------- delays


@pytest.mark.parametrize("tau", [0, 1, 3, 7])
def test_delayed_sgd_constant_delay_matches_numpy_loop(tau, getkey):
    x0 = jnp.array([1.0, -2.0, 0.5])
    run = jax.jit(
        lambda k: asy.delayed_sgd(
            quadratic_grad,
            x0,
            asy.constant_delay(tau),
            0.1,
            40,
            k,
            metrics_fn=lambda s: s.params,
        )  # fmt: skip
    )(getkey())
    ref = numpy_delayed_gd(np.asarray(x0), 0.1, tau, 40)
    # metrics[0] is x_0; the iterates after each update follow
    np.testing.assert_allclose(np.asarray(run.metrics[1:]), ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(np.asarray(run.metrics[0]), np.asarray(x0))
    assert np.all(np.asarray(run.trace.staleness) == tau)


def test_delayed_sgd_mean_mode_is_probability_weighted_sum(getkey):
    probs = np.array([0.5, 0.0, 0.3, 0.2])
    x0 = np.array([1.0, -2.0, 0.5])
    run = asy.delayed_sgd(
        quadratic_grad,
        jnp.asarray(x0),
        asy.categorical_delay(probs),
        0.05,
        25,
        getkey(),
        mode="mean",
        metrics_fn=lambda s: s.params,
    )
    xs = [x0]
    for k in range(25):
        g = sum(p * A_DIAG * xs[max(k - t, 0)] for t, p in enumerate(probs))
        xs.append(xs[-1] - 0.05 * g)
    np.testing.assert_allclose(np.asarray(run.metrics), np.stack(xs), rtol=1e-12)


@pytest.mark.parametrize(
    "model",
    [asy.uniform_delay(4), asy.geometric_delay(0.3, 6), asy.categorical_delay([1, 0, 3])],
)
def test_delay_model_sampling_frequencies_match_probs(model, getkey):
    taus = np.asarray(model.sample(getkey(), (40_000,)))
    freq = np.bincount(taus, minlength=model.tau_max + 1) / taus.size
    np.testing.assert_allclose(freq, np.asarray(model.probs), atol=0.01)
    assert taus.max() <= model.tau_max


def test_geometric_delay_probabilities_by_hand():
    probs = np.asarray(asy.geometric_delay(0.5, 2).probs)
    np.testing.assert_allclose(probs, np.array([0.5, 0.25, 0.125]) / 0.875, rtol=1e-12)


def test_ring_buffer_reads_past_iterates():
    buf = asy.ring_buffer_init(jnp.array(0.0), 3)
    for k in range(1, 6):
        buf = asy.ring_buffer_push(buf, jnp.array(float(k)))
    assert [float(asy.ring_buffer_read(buf, t)) for t in range(4)] == [5.0, 4.0, 3.0, 2.0]


def _final_abs(eta_a, tau, steps=3000):
    def grad(x, key):
        del key
        return 0.5 * eta_a * x * x, eta_a * x

    run = asy.delayed_sgd(grad, jnp.array(1.0), asy.constant_delay(tau), 1.0, steps, jr.key(0))
    return float(jnp.abs(run.params))


@pytest.mark.parametrize("tau", [0, 1, 2, 5, 10])
def test_constant_delay_stability_threshold_both_sides(tau):
    threshold = 2 * math.sin(math.pi / (2 * (2 * tau + 1)))
    assert _final_abs(0.95 * threshold, tau) < 1e-3
    assert _final_abs(1.05 * threshold, tau) > 1e3


def test_divergence_step_finds_first_bad_index():
    v = jnp.array([[1.0, 2.0, jnp.nan, 3.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1e9, 1.0, 1.0]])
    np.testing.assert_array_equal(np.asarray(asy.divergence_step(v)), [2, -1, 1])


# ----------------------------------------------------------------------------- pool


@pytest.mark.parametrize("num_workers", [1, 2, 4, 7])
def test_round_robin_pool_reproduces_constant_delay_recursion(num_workers, getkey):
    x0 = jnp.array([1.0, -2.0, 0.5])
    times = asy.compute_time("constant", num_workers)
    res = asy.run_pool(
        quadratic_grad,
        asy.constant_rate(0.1),
        x0,
        getkey(),
        times=times,
        num_arrivals=1,
        num_steps=50,
        metrics_fn=lambda s: s.params,
    )
    ref = numpy_delayed_gd(np.asarray(x0), 0.1, num_workers - 1, 50)
    np.testing.assert_allclose(np.asarray(res.metrics[1:]), ref, rtol=1e-13, atol=1e-15)
    # exactly (bitwise) the ring-buffer recursion with τ = W − 1
    ring = asy.delayed_sgd(
        quadratic_grad,
        x0,
        asy.constant_delay(num_workers - 1),
        0.1,
        50,
        getkey(),
        metrics_fn=lambda s: s.params,
    )
    np.testing.assert_array_equal(np.asarray(res.metrics), np.asarray(ring.metrics))
    # round robin: worker k mod W arrives at update k with staleness min(k, W − 1)
    k = np.arange(50)
    np.testing.assert_array_equal(np.asarray(res.trace.worker[:, 0]), k % num_workers)
    np.testing.assert_array_equal(
        np.asarray(res.trace.staleness[:, 0]), np.minimum(k, num_workers - 1)
    )


def _staleness(num_workers, n, kind, key, updates=3000):
    c = asy.softsync_arrivals(num_workers, n)
    res = jax.jit(
        lambda k: asy.run_pool(
            quadratic_grad,
            asy.constant_rate(1e-3),
            jnp.zeros(3),
            k,
            times=asy.compute_time(kind, num_workers),
            num_arrivals=c,
            num_steps=updates,
        )
    )(key)
    return res.trace


@pytest.mark.parametrize("n", [1, 2, 5, 10, 30])
def test_softsync_staleness_statistics(n, getkey):
    """c = ⌊W/n⌋ arrivals per update, distinct workers; ⟨τ⟩ = W/c − 1 = n − 1 (Little's law in
    our pull-after-update convention; Zhang et al. count one more). Exponential compute times
    make τ geometric, Var τ = n(n − 1); constant times make τ = n − 1 exactly."""
    trace = _staleness(30, n, "exponential", getkey())
    tau = np.asarray(trace.staleness)[200:]
    assert tau.shape[1] == 30 // n
    workers = np.asarray(trace.worker)
    assert all(len(set(row)) == row.size for row in workers)
    if n == 1:
        assert np.all(tau == 0)  # hardsync
    else:
        assert abs(tau.mean() - (n - 1)) < 0.02 * n
        assert abs(tau.var() / (n * (n - 1)) - 1) < 0.15
    tau_const = np.asarray(_staleness(30, n, "constant", getkey(), 300).staleness)
    assert np.all(tau_const[60:] == n - 1)


def test_downpour_lognormal_and_speeds_mean_staleness_is_w_minus_one(getkey):
    trace = _staleness(8, 8, "lognormal", getkey())
    tau = np.asarray(trace.staleness)[200:]
    assert abs(tau.mean() - 7.0) < 0.3
    times = asy.compute_time("exponential", 4, speeds=[1.0, 1.0, 1.0, 4.0])
    tr = asy.run_pool(
        quadratic_grad,
        asy.constant_rate(1e-3),
        jnp.zeros(3),
        getkey(),
        times=times,
        num_arrivals=1,
        num_steps=4000,
    )
    counts = np.bincount(np.asarray(tr.trace.worker[:, 0]), minlength=4)
    # the fast worker (speed 4) arrives ~4x as often as each slow one
    np.testing.assert_allclose(counts[3] / counts[:3].mean(), 4.0, rtol=0.15)


def test_padded_pools_of_several_sizes_share_one_vmapped_program(getkey):
    """Workers beyond W (infinite compute time) never arrive; ⟨τ⟩ = W − 1 for each W."""
    sizes = (2, 5, 8)
    means = jnp.stack([asy.compute_time("exponential", w, max_workers=8).mean for w in sizes])

    def one(mean, key):
        times = asy.ComputeTime("exponential", mean, 0.5)
        return asy.run_pool(
            quadratic_grad,
            asy.constant_rate(1e-3),
            jnp.zeros(3),
            key,
            times=times,
            num_arrivals=1,
            num_steps=2000,
        ).trace

    arrivals = jax.jit(jax.vmap(one, in_axes=(0, None)))(means, getkey())
    for i, w in enumerate(sizes):
        assert int(arrivals.worker[i].max()) == w - 1
        assert abs(float(arrivals.staleness[i, 200:].mean()) - (w - 1)) < 0.05 * w


def _batched_pool_step(state, key, *, grad_fn, rule, times):
    """The general pool update with c = 1: sorted arrival order, the arrival's snapshot
    gathered as a batch of one and its gradient through `vmap` (`pool_step`'s c > 1 path)."""
    key_grad, key_time = jr.split(key)
    workers = jnp.argsort(state.finish_time, stable=True)[:1]
    pulled = state.pull_version[workers]
    snaps = jax.tree.map(lambda s: s[workers], state.snapshots)
    keys = jax.vmap(lambda w, v: jr.fold_in(jr.fold_in(key_grad, w), v))(workers, pulled)
    losses, grads = jax.vmap(grad_fn)(snaps, keys)
    step, opt_state = rule.update(
        grads, state.opt_state, state.params, staleness=state.version - pulled,
        snapshot=snaps, worker=workers,
    )  # fmt: skip
    params = optax.apply_updates(state.params, step)
    clock = jnp.max(state.finish_time[workers])
    finish_time = state.finish_time.at[workers].set(clock + times.sample(key_time, workers))
    snapshots = jax.tree.map(lambda s, p: s.at[workers].set(p[None]), state.snapshots, params)
    version = state.version + 1
    pull_version = state.pull_version.at[workers].set(version)
    new = asy.PoolState(params, opt_state, snapshots, pull_version, finish_time, clock, version)
    return new, (losses, workers)


def test_single_arrival_path_is_bitwise_the_batched_update(getkey):
    """With c = 1 `pool_step` takes the first minimum and calls the gradient without an
    arrival axis; on an MLP with minibatches it gives bitwise the numbers of the general
    (sorted, vmapped) update, and ties in completion time go to the smaller worker index."""
    x = jr.normal(getkey(), (64, 12))
    y = jr.randint(getkey(), (64,), 0, 3)
    model = MLP(hidden=(16, 8), num_classes=3)
    grad_fn = minibatch_grad_fn(model, x, y, 8)
    params = jax.tree.map(lambda p: p[0], init_stacked(model, getkey(), 1, x[:2]))
    rule = asy.with_server_momentum(asy.staleness_aware_rate(0.05), 0.5)
    key = getkey()
    for times in (asy.compute_time("exponential", 5), asy.compute_time("constant", 3)):
        res = jax.jit(
            lambda k, t=times: asy.run_pool(
                grad_fn, rule, params, k, times=t, num_arrivals=1, num_steps=30
            )
        )(key)

        @jax.jit
        def reference(key, times=times):
            def step(state, k):
                return _batched_pool_step(
                    state, jr.fold_in(key, k), grad_fn=grad_fn, rule=rule, times=times
                )

            state = asy.pool_init(params, rule, times, key)
            return jax.lax.scan(step, state, jnp.arange(30, dtype=jnp.int32))

        state, (losses, workers) = reference(key)
        np.testing.assert_array_equal(np.asarray(res.trace.worker), np.asarray(workers))
        np.testing.assert_array_equal(np.asarray(res.trace.loss), np.asarray(losses))
        for a, b in zip(jax.tree.leaves(res.state), jax.tree.leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pool_computes_only_c_gradients_per_update(getkey):
    """A host callback inside the gradient sees the batch it is evaluated on: c rows, not W."""
    batch_shapes = []

    def host_grad(x):
        x = np.asarray(x)
        batch_shapes.append(x.shape)
        return A_DIAG[None, :] * x

    def grad_fn(x, key):
        del key
        g = jax.pure_callback(
            host_grad, jax.ShapeDtypeStruct(x.shape, x.dtype), x, vmap_method="broadcast_all"
        )
        return jnp.sum(x), g

    asy.run_pool(
        grad_fn,
        asy.constant_rate(0.1),
        jnp.ones(3),
        getkey(),
        times=asy.compute_time("exponential", 12),
        num_arrivals=3,
        num_steps=5,
    )
    assert batch_shapes == [(3, 3)] * 5


def test_pool_run_is_deterministic_for_a_fixed_seed(getkey):
    def noisy_grad(x, key):
        g = jnp.asarray(A_DIAG) * x + 0.1 * jr.normal(key, x.shape)
        return jnp.sum(x * x), g

    def go(key):
        return asy.run_pool(
            noisy_grad,
            asy.with_server_momentum(asy.staleness_aware_rate(0.05), 0.9),
            jnp.ones(3),
            key,
            times=asy.compute_time("lognormal", 6),
            num_arrivals=2,
            num_steps=100,
        )

    key = getkey()
    r1, r2, r3 = go(key), go(key), go(getkey())
    np.testing.assert_array_equal(np.asarray(r1.params), np.asarray(r2.params))
    np.testing.assert_array_equal(np.asarray(r1.trace.staleness), np.asarray(r2.trace.staleness))
    assert not np.array_equal(np.asarray(r1.params), np.asarray(r3.params))


# ----------------------------------------------------------------------------- server rules


def _extras(tau, snap, worker):
    return dict(staleness=jnp.asarray(tau), snapshot=jnp.asarray(snap), worker=jnp.asarray(worker))


def test_staleness_aware_and_adaptive_rates_by_hand():
    g = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    theta = jnp.zeros(2)
    ex = _extras([0, 2, 4], jnp.zeros((3, 2)), [0, 1, 2])
    rule = asy.staleness_aware_rate(0.6)
    step, _ = rule.update(g, rule.init(theta), theta, **ex)
    expected = -(0.6 * g[0] + 0.3 * g[1] + 0.15 * g[2]) / 3
    np.testing.assert_allclose(np.asarray(step), np.asarray(expected), rtol=1e-12)
    rule = asy.adaptive_staleness_rate(0.6)
    step, _ = rule.update(g, rule.init(theta), theta, **ex)
    expected = -(0.6 * g[0] + 0.2 * g[1] + 0.12 * g[2]) / 3
    np.testing.assert_allclose(np.asarray(step), np.asarray(expected), rtol=1e-12)
    assert asy.delay_scaled_learning_rate(0.6, 2) == pytest.approx(0.2)


def test_server_momentum_traces_the_aggregated_step():
    rule = asy.with_server_momentum(asy.constant_rate(0.1), 0.9)
    theta = jnp.zeros(2)
    state = rule.init(theta)
    g1, g2 = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]])
    ex = _extras([0], jnp.zeros((1, 2)), [0])
    s1, state = rule.update(g1, state, theta, **ex)
    s2, state = rule.update(g2, state, theta, **ex)
    np.testing.assert_allclose(np.asarray(s2), 0.9 * np.array([-0.1, 0.0]) + [0.0, -0.2])


@pytest.mark.parametrize("clamp", [None, (0.0, 5.0)])
def test_gem_formula_by_hand(clamp):
    eta, mu, kappa, eps = 0.1, 0.9, 1.5, 1e-16
    rule = asy.gem(eta, 3, momentum=mu, kappa=kappa, eps=eps, clamp=clamp)
    theta = jnp.array([1.0, -1.0, 0.5])
    state = rule.init(theta)
    m_prev = np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.05], [1.0, 1.0, 1.0]])
    state = state._replace(velocity=jnp.asarray(m_prev))
    g = np.array([[2.0, -1.0, 4.0], [-1.0, 0.5, 0.1]])
    snaps = np.array([[0.9, -1.0, 0.0], [1.2, -0.7, 0.5]])
    workers = [2, 1]
    step, new_state = rule.update(jnp.asarray(g), state, theta, **_extras([1, 3], snaps, workers))
    # hand computation, element by element, arrival by arrival
    expected = np.zeros(3)
    m_new = m_prev.copy()
    pis = []
    for arrival, w in enumerate(workers):
        for i in range(3):
            delta = -eta * g[arrival, i]
            m = mu * m_prev[w, i] + delta
            pi = (kappa * abs(m) - abs(float(theta[i]) - snaps[arrival, i])) / (abs(delta) + eps)
            if clamp is not None:
                pi = min(max(pi, clamp[0]), clamp[1])
            pis.append(pi)
            m_new[w, i] = m
            expected[i] += pi * delta / 2
    np.testing.assert_allclose(np.asarray(step), expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(new_state.velocity), m_new, rtol=1e-12)
    assert float(new_state.pi_median) == pytest.approx(float(np.median(pis)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gem_median_without_sort_matches_numpy(dtype):
    from algorithms.asynchrony.server import _median

    median = jax.jit(_median)  # as the server runs it; one compile per size, not per operation
    rng = np.random.default_rng(0)
    cases = [rng.normal(size=n) for n in (1, 2, 3, 10, 501)]  # odd and even sizes
    cases += [np.clip(rng.normal(size=1000), 0.0, 5.0), np.round(rng.normal(size=999))]
    cases += [np.array([-0.0, 0.0, 0.0, -0.0]), np.array([np.inf, -np.inf, 1.0, 2.0, np.inf])]
    cases += [np.array([3.0, 3.0, 3.0, 3.0]), np.array([-1e30, 1e-30, -1e-30, 1e30])]
    for x in cases:
        x = x.astype(dtype)
        # == and not assert_equal: NumPy's sort leaves −0.0 and 0.0 in either order, so the
        # sign of a zero median is arbitrary there (and irrelevant to π).
        assert float(median(jnp.asarray(x))) == float(np.median(x)), x
    assert np.isnan(float(median(jnp.asarray(np.array([1.0, np.nan, 2.0], dtype)))))


def test_gem_with_traced_kappa_and_clamp_equals_concrete_rules():
    """κ and the clamp bounds may be vmapped lane parameters; (−inf, inf) clips nothing."""
    theta = jnp.array([1.0, -1.0, 0.5])
    g = jnp.array([[2.0, -1.0, 4.0], [-1.0, 0.5, 0.1]])
    ex = _extras([1, 3], np.array([[0.9, -1.0, 0.0], [1.2, -0.7, 0.5]]), [2, 1])
    m_prev = jnp.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.05], [1.0, 1.0, 1.0]])

    def step(kappa, lo, hi, clamp=True):
        rule = asy.gem(0.1, 3, kappa=kappa, clamp=(lo, hi) if clamp else None)
        state = rule.init(theta)._replace(velocity=m_prev)
        out, new = rule.update(g, state, theta, **ex)
        return out, new.velocity, new.pi_median

    lanes = (jnp.array([1.0, 4.0, 1.0]), jnp.array([0.0, 0.0, -jnp.inf]),
             jnp.array([5.0, 5.0, jnp.inf]))  # fmt: skip
    batched = jax.vmap(step)(*lanes)
    concrete = [step(1.0, 0.0, 5.0), step(4.0, 0.0, 5.0), step(1.0, 0.0, 0.0, clamp=False)]
    for lane, expected in enumerate(concrete):
        for got, want in zip(batched, expected):
            np.testing.assert_allclose(np.asarray(got[lane]), np.asarray(want), rtol=1e-12)


@pytest.mark.parametrize("adaptive", [False, True])
def test_dc_asgd_formula_by_hand(adaptive):
    eta, lam, decay, eps = 0.1, 0.04, 0.95, 1e-7
    rule = asy.dc_asgd(eta, lam, adaptive=adaptive, decay=decay, eps=eps)
    theta = jnp.array([1.0, -2.0])
    g = np.array([[3.0, -1.0], [0.5, 2.0]])
    snaps = np.array([[0.0, -1.0], [2.0, -2.5]])
    state = rule.init(theta)
    step, new_state = rule.update(jnp.asarray(g), state, theta, **_extras([1, 2], snaps, [0, 1]))
    th = np.asarray(theta)
    if adaptive:
        ms = (1 - decay) * np.mean(g * g, axis=0)
        lam_t = lam / np.sqrt(ms + eps)
        np.testing.assert_allclose(np.asarray(new_state.mean_square), ms, rtol=1e-12)
    else:
        lam_t = np.full(2, lam)
    expected = -eta * np.mean(g + lam_t * g * g * (th - snaps), axis=0)
    np.testing.assert_allclose(np.asarray(step), expected, rtol=1e-12)


def test_gem_in_pool_sees_current_params_and_its_own_snapshot(getkey):
    """Fake rule recording which copy it is given: θ (central) vs s (the arrival's snapshot)."""
    seen = []

    def init(params):
        return jnp.zeros(())

    def update(updates, state, params=None, *, staleness, snapshot, worker):
        seen.append(None)
        # with a round-robin pool of 2 workers, after the first update the arriving worker's
        # snapshot is the θ of one update before: θ − s = the last step, never 0 after k = 1
        step = -0.1 * jnp.mean(updates, axis=0)
        return step, state + jnp.sum(jnp.abs(params - snapshot[0]))

    rule = optax.GradientTransformationExtraArgs(init, update)
    res = asy.run_pool(
        quadratic_grad,
        rule,
        jnp.array([1.0, 1.0, 1.0]),
        getkey(),
        times=asy.compute_time("constant", 2),
        num_arrivals=1,
        num_steps=3,
        metrics_fn=lambda s: s.opt_state,
    )
    rec = np.asarray(res.metrics[1:])  # after each update
    # update 0: worker 0 at θ_0 (diff 0); update 1: worker 1 holds θ_0, θ = θ_1 (diff > 0)
    assert rec[0] == 0.0 and rec[1] > 0.0
    d = np.asarray(quadratic_grad(jnp.ones(3), None)[1]) * 0.1
    assert rec[1] == pytest.approx(np.abs(d).sum())


# ----------------------------------------------------------------------------- decentralized


def noisy_quadratic(x, key):
    g = jnp.asarray(A_DIAG) * x + 0.3 * jr.normal(key, x.shape)
    return 0.5 * jnp.sum(jnp.asarray(A_DIAG) * x * x), g


def test_dasgd_applies_every_gradient_exactly_once(getkey):
    k, steps, delay = 5, 40, asy.uniform_delay(4)
    res = asy.run_dasgd(
        noisy_quadratic,
        jnp.ones(3),
        getkey(),
        num_agents=k,
        delay=delay,
        learning_rate=0.05,
        num_steps=steps,
        drain=True,
    )
    state, trace = res.state, res.trace
    np.testing.assert_array_equal(np.asarray(state.applied), np.full(k, k * steps))
    # after the drain every replica has applied the same set of gradients ⇒ equal replicas
    p = np.asarray(state.params)
    np.testing.assert_allclose(p, np.broadcast_to(p[0], p.shape), rtol=1e-12, atol=1e-12)
    s = np.asarray(trace.staleness_mean)
    assert s[:steps].mean() > 0 and s[-1] == 0
    assert np.all(np.asarray(jax.tree.leaves(state.inbox)[0]) == 0)


def test_dasgd_without_delay_is_allreduce_sgd(getkey):
    k, eta, steps = 4, 0.2, 30
    key = getkey()
    res = asy.run_dasgd(
        noisy_quadratic,
        jnp.ones(3),
        key,
        num_agents=k,
        delay=asy.constant_delay(0),
        learning_rate=eta / k,
        num_steps=steps,
        metrics_fn=lambda s: s.params,
    )
    state, trace = res.state, res.trace
    # reference: x ← x − η mean_r g(x; ξ_r) with the same keys
    x = jnp.ones(3)
    for i in range(steps):
        kg = jr.split(jr.split(jr.fold_in(key, i))[0], k)
        g = jnp.mean(jax.vmap(lambda kk: noisy_quadratic(x, kk)[1])(kg), axis=0)
        x = x - eta * g
    p = np.asarray(state.params)
    np.testing.assert_allclose(p, np.broadcast_to(np.asarray(x), p.shape), rtol=1e-10)
    assert float(jnp.max(trace.staleness_max)) == 0


@pytest.mark.parametrize("name", asy.TOPOLOGIES)
def test_topologies_give_doubly_stochastic_connected_mixing(name):
    adj = asy.topology(name, 16)
    w = asy.metropolis_weights(adj)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    eig = np.sort(np.abs(np.linalg.eigvalsh(w)))
    assert eig[-2] < 1 - 1e-9  # connected: spectral gap
    degree = {"ring": 2, "torus": 4, "exponential": 7, "complete": 15}[name]
    assert np.all(adj.sum(axis=1) == degree)


def test_metropolis_weights_of_the_2x4_torus_and_their_lazy_form_by_hand():
    # The 2 x 4 wrap-around grid: i = 4r + c ~ (r, c ± 1 mod 4) and (1 − r, c); degree 3, so
    # W = (I + A)/4, and A = C4 ⊕ K2 has eigenvalues {±3, ±1, ±1, ±1}: λ(W) = (1 + λ_A)/4.
    adj = asy.topology("torus", 8)
    hand = np.zeros((8, 8), dtype=bool)
    for r in range(2):
        for c in range(4):
            for nb in (4 * r + (c + 1) % 4, 4 * r + (c - 1) % 4, 4 * (1 - r) + c):
                hand[4 * r + c, nb] = True
    np.testing.assert_array_equal(adj, hand)
    expected = np.sort(np.array([3.0, 1, 1, 1, -1, -1, -1, -3]) + 1) / 4
    w = asy.metropolis_weights(adj)
    np.testing.assert_allclose(w, (np.eye(8) + hand) / 4, atol=1e-15)
    np.testing.assert_allclose(np.linalg.eigvalsh(w), expected, atol=1e-12)  # λ_min = −0.5
    lazy = asy.metropolis_weights(adj, lazy=True)
    np.testing.assert_allclose(lazy, (np.eye(8) + w) / 2, atol=1e-15)
    np.testing.assert_allclose(np.linalg.eigvalsh(lazy), (1 + expected) / 2, atol=1e-12)
    np.testing.assert_allclose(lazy.sum(axis=0), 1.0)
    np.testing.assert_allclose(lazy.sum(axis=1), 1.0)


def test_gossip_vmapped_over_traced_mixing_matches_concrete_runs(getkey):
    k, key = 6, getkey()
    ws = [asy.metropolis_weights(asy.topology(n, k), lazy=True) for n in ("ring", "complete")]
    kwargs = dict(delay=asy.uniform_delay(2), learning_rate=0.05, num_steps=15)

    def run(w):
        return asy.run_gossip(noisy_quadratic, jnp.ones(3), key, mixing=w, **kwargs).params

    batched = jax.jit(jax.vmap(run))(jnp.asarray(np.stack(ws)))
    for i, w in enumerate(ws):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(run(w)), rtol=1e-12)


@pytest.mark.parametrize("eta, k, d", [(0.3, 1, 0), (0.5, 8, 16), (0.2, 16, 16), (0.4, 16, 4)])
def test_dasgd_stiff_mode_radius_is_the_growth_rate_of_the_expected_delay_recursion(eta, k, d):
    from experiments.decentralized import stiff_mode_radius

    probs = np.full(d + 1, 1.0 / (d + 1))
    # x_{n+1} = x_n − (η/K) [x_n + (K − 1) Σ_j p_j x_{n−j}] from x_j = 1 (j <= 0), rescaled
    # every step; the mean log growth over the second half is log ρ (power iteration).
    xs, logs = [1.0] * (d + 1), []
    for _ in range(20_000):
        stale = sum(p * xs[-1 - j] for j, p in enumerate(probs))
        xs.append(xs[-1] - eta / k * (xs[-1] + (k - 1) * stale))
        scale = max(abs(v) for v in xs[-(d + 1) :])
        xs = [v / scale for v in xs[-(d + 1) :]]
        logs.append(math.log(scale))
    growth = math.exp(np.mean(logs[10_000:]))
    assert stiff_mode_radius(eta, k, probs) == pytest.approx(growth, rel=1e-3)


def test_gossip_preserves_mean_and_reaches_consensus_without_gradients(getkey):
    def zero_grad(x, key):
        del key
        return jnp.zeros(()), jnp.zeros_like(x)

    k = 8
    w = asy.metropolis_weights(asy.topology("ring", k))
    x0 = jr.normal(getkey(), (k, 2))
    state = asy.gossip_init(jnp.zeros(2), k, asy.constant_delay(0))
    state = state._replace(params=x0, history=x0[None])
    step = jax.jit(
        lambda s, key: asy.gossip_step(
            s,
            key,
            grad_fn=zero_grad,
            mixing=jnp.asarray(w),
            delay=asy.constant_delay(0),
            learning_rate=0.1,
        )[0]
    )
    key = getkey()
    for i in range(300):
        state = step(state, jr.fold_in(key, i))
    p = np.asarray(state.params)
    np.testing.assert_allclose(p.mean(axis=0), np.asarray(x0).mean(axis=0), atol=1e-12)
    assert np.abs(p - p.mean(axis=0)).max() < 1e-6


def test_gossip_delayed_views_record_mean_delay(getkey):
    w = asy.metropolis_weights(asy.topology("complete", 4))
    trace = asy.run_gossip(
        noisy_quadratic,
        jnp.ones(3),
        getkey(),
        mixing=w,
        delay=asy.constant_delay(3),
        learning_rate=0.05,
        num_steps=20,
    ).trace
    np.testing.assert_array_equal(np.asarray(trace.view_delay), 3.0)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: asy.softsync_arrivals(4, 5), "n must be"),
        (lambda: asy.softsync_arrivals(4, 0), "n must be"),
        (lambda: asy.uniform_delay(-1), "tau_max"),
        (lambda: asy.constant_delay(3, tau_max=2), "tau must be <= tau_max"),
        (lambda: asy.geometric_delay(0.0, 3), "p must be"),
        (lambda: asy.categorical_delay([0.0, 0.0]), "probs"),
        (lambda: asy.compute_time("gamma", 3), "kind"),
        (lambda: asy.compute_time("constant", 3, max_workers=2), "max_workers"),
        (lambda: asy.compute_time("constant", 3, speeds=[1.0, 0.0, 1.0]), "speeds"),
        (lambda: asy.gem(0.1, 0), "num_workers"),
        (lambda: asy.gem(0.1, 3, clamp=(5.0, 0.0)), "clamp"),
        (lambda: asy.dc_asgd(-0.1), "learning_rate"),
        (lambda: asy.staleness_aware_rate(0.0), "learning_rate"),
        (lambda: asy.delay_scaled_learning_rate(0.1, -2), "tau_max"),
        (lambda: asy.topology("star", 4), "topology"),
        (
            lambda: asy.run_pool(
                quadratic_grad,
                asy.constant_rate(0.1),
                jnp.zeros(3),
                jr.key(0),
                times=asy.compute_time("constant", 3),
                num_arrivals=4,
                num_steps=2,
            ),
            "num_arrivals",
        ),
        (
            lambda: asy.run_dasgd(
                quadratic_grad,
                jnp.zeros(3),
                jr.key(0),
                num_agents=0,
                delay=asy.constant_delay(0),
                learning_rate=0.1,
                num_steps=2,
            ),
            "num_agents",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_record_every_matches_subsampled_per_step_records(getkey):
    key = getkey()
    kwargs = dict(times=asy.compute_time("exponential", 4), num_arrivals=2, num_steps=12)
    every1 = asy.run_pool(
        noisy_quadratic,
        asy.constant_rate(0.1),
        jnp.ones(3),
        key,
        metrics_fn=lambda s: s.params,
        **kwargs,
    )
    every3 = asy.run_pool(
        noisy_quadratic,
        asy.constant_rate(0.1),
        jnp.ones(3),
        key,
        metrics_fn=lambda s: s.params,
        record_every=3,
        **kwargs,
    )
    np.testing.assert_array_equal(np.asarray(every3.metrics), np.asarray(every1.metrics)[::3])
    np.testing.assert_array_equal(np.asarray(every3.steps), np.arange(0, 13, 3))
    np.testing.assert_array_equal(
        np.asarray(every3.trace.staleness), np.asarray(every1.trace.staleness)
    )
    run1 = asy.delayed_sgd(quadratic_grad, jnp.ones(3), asy.uniform_delay(2), 0.1, 12, key,
                           metrics_fn=lambda s: s.params)  # fmt: skip
    run4 = asy.delayed_sgd(quadratic_grad, jnp.ones(3), asy.uniform_delay(2), 0.1, 12, key,
                           metrics_fn=lambda s: s.params, record_every=4)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(run4.metrics), np.asarray(run1.metrics)[::4])


# ----------------------------------------------------------------------------- experiments


def test_staleness_aware_schedule_and_staleness_counts():
    """The paper's rate drops at fixed fractions of the run, and its α0/τ on their count is
    α0/(τ + 1) on ours ("paper"), against α0/max(τ, 1) on ours ("ours")."""
    from experiments import staleness_aware as sa

    config = sa.Config(lr_drops=(0.5, 0.75), lr_drop_factor=0.1, learning_rate=0.2)
    schedule = sa.learning_rate_schedule(config, 100)
    rates = np.array([float(schedule(k)) for k in (0, 49, 50, 74, 75, 99)])
    np.testing.assert_allclose(rates, [0.2, 0.2, 0.02, 0.02, 0.002, 0.002], rtol=1e-6)
    assert sa.learning_rate_schedule(sa.Config(lr_drops=()), 100) == sa.Config().learning_rate
    g = jnp.ones((3, 1))
    ex = _extras([0, 1, 4], jnp.zeros((3, 1)), [0, 1, 2])
    for count, alphas in [("paper", [1.0, 1 / 2, 1 / 5]), ("ours", [1.0, 1.0, 1 / 4])]:
        rule = sa._aware_rule(sa.Config(staleness_count=count), 0.6)
        step, _ = rule.update(g, rule.init(jnp.zeros(1)), jnp.zeros(1), **ex)
        np.testing.assert_allclose(float(step[0]), -0.6 * np.mean(alphas), rtol=1e-12)
    with pytest.raises(ValueError, match="staleness_count"):
        sa.Config(staleness_count="zhang")
    with pytest.raises(ValueError, match="lr_drops"):
        sa.Config(lr_drops=(0.9, 0.5))


def test_gem_scaling_pi_at_matched_loss_averages_the_steps_in_the_band():
    from experiments import gem_scaling as gs

    values = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    loss = np.array([[2.0, 1.4, 1.0, 0.5], [2.0, 1.9, 1.8, 1.7]])
    got = gs._in_band(values, loss, (1.0, 1.5))
    assert got[0] == 2.5 and np.isnan(got[1])  # steps 1 and 2; the second run never enters
    with pytest.raises(ValueError, match="pi_loss_band"):
        gs.Config(pi_loss_band=(1.5, 1.0))


TINY = {
    "delay_stability": dict(
        tau_max=2, num_steps=200, bisection_iters=5, grid_points=5, grid_steps=50
    ),
    "gem_scaling": dict(
        workers=(2, 3),
        steps_per_worker=4,
        compare_workers=3,
        kappas=(1.0, 2.0),
        kappa_turnover=2.0,
        kappa_workers=2,
        model="mlp",
        seeds=2,
        windows=2,
        batch_size=8,
    ),
    "staleness_aware": dict(
        num_workers=4, softsync=(1, 4), epochs=0.05, evals=2, features=(4,), seeds=2
    ),
    "async_generalization": dict(
        tau_maxes=(0, 2),
        num_train=32,
        hidden=(8,),
        num_steps=20,
        scaled_num_steps=10,
        evals=2,
        seeds=2,
        batch_size=8,
        loss_level=2.0,
    ),
    "decentralized": dict(
        num_agents=4, dim=5, max_delays=(0, 2), learning_rates=(0.1, 0.4), num_steps=30, seeds=2
    ),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n == "gem_scaling" else n  # ~20 s: 4 compiles
        for n in sorted(TINY)
    ],
)
def test_experiment_smoke(name, getkey):
    import dataclasses
    import importlib

    from matplotlib.figure import Figure

    from experiments.harness.contract import Claim

    module = importlib.import_module(f"experiments.{name}")
    assert module.NAME == name and isinstance(module.DESCRIPTION, str)
    dataclasses.replace(module.Config(), **module.QUICK)  # quick overrides are valid
    config = dataclasses.replace(module.Config(), **TINY[name])
    results = module.run(config, getkey())
    assert all(isinstance(v, np.ndarray) for v in results.values())
    assert all(isinstance(v, float | int) for v in module.metrics(results, config).values())
    claims = module.claims(results, config)
    assert claims and all(isinstance(c, Claim) for c in claims)
    figures = module.plot(results, config)
    assert figures and all(isinstance(f, Figure) for f in figures.values())
