"""A network as a landscape (`dynamics.ModelLandscape`) and SGD's minibatch noise as a
diffusion (`dynamics.MinibatchNoise`, `algorithms.model_minibatch_oracle`).

Oracles that do not use the code under test: a direct pytree computation of the loss and its
gradient, a Python loop of `jax.grad` per example, NumPy covariances, exact enumeration of
all minibatches, the discrete optimizer's path (shared noise), and a Monte-Carlo mean with a
tolerance from its sample size.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from algorithms import (
    euler_optimizer,
    model_minibatch_oracle,
    run_agents,
    solve_discrete,
)
from dynamics import (
    CoupledSystem,
    MinibatchNoise,
    ModelLandscape,
    Quorum,
    solve,
    step_normal,
    theory,
)

N_EXAMPLES, N_FEATURES, N_CLASSES = 16, 4, 3


class TinyMLP(nn.Module):
    """4 → 5 (tanh) → 3 logits: dim = 4·5 + 5 + 5·3 + 3 = 43."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(N_CLASSES)(jnp.tanh(nn.Dense(5)(x)))


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_EXAMPLES, N_FEATURES))
    y = rng.integers(0, N_CLASSES, size=N_EXAMPLES)
    model = TinyMLP()
    params = model.init(jax.random.key(seed), jnp.zeros((1, N_FEATURES)))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    return model, x, y, params


def _per_example_loss(model):
    def loss_fn(params, xb, yb):
        logp = jax.nn.log_softmax(model.apply(params, xb))
        return -logp[jnp.arange(yb.shape[0]), yb]

    return loss_fn


def _landscape(chunk_size=None, seed=0):
    model, x, y, params = _problem(seed)
    return ModelLandscape.from_flax(model, x, y, params, chunk_size=chunk_size), params


def _loop_grads(landscape, params):
    """Per-example gradients `(n, dim)` by a Python loop of `jax.grad` on the pytree."""
    model, x, y, _ = _problem()
    loss = _per_example_loss(model)
    rows = []
    for j in range(N_EXAMPLES):
        g = jax.grad(lambda p, j=j: loss(p, x[j : j + 1], y[j : j + 1])[0])(params)
        rows.append(np.asarray(ravel_pytree(g)[0]))
    return np.stack(rows)


# ------------------------------------------------------------------------ the landscape


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 16, 100])
def test_value_and_grad_equal_direct_pytree_computation(chunk_size):
    model, x, y, params = _problem()
    f = ModelLandscape(_per_example_loss(model), x, y, params, chunk_size=chunk_size)
    theta = f.ravel(params)
    assert theta.shape == (f.dim,) == (43,)
    direct = lambda p: jnp.mean(_per_example_loss(model)(p, x, y))  # noqa: E731
    np.testing.assert_allclose(f.value(theta), direct(params), rtol=1e-13)
    expect = ravel_pytree(jax.grad(direct)(params))[0]
    np.testing.assert_allclose(f.grad(theta), expect, rtol=1e-12, atol=1e-15)
    # unravel gives the pytree back
    back = f.unravel(theta)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, params)


@pytest.mark.parametrize("chunk_size", [3, 4, 16, None])  # 3 does not divide n = 16
def test_per_example_grads_equal_a_loop_of_jax_grad(chunk_size):
    f, params = _landscape(chunk_size)
    expect = _loop_grads(f, params)
    got = f.per_example_grads(f.ravel(params))
    assert got.shape == (N_EXAMPLES, f.dim)
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-15)
    w = np.random.default_rng(1).normal(size=N_EXAMPLES)
    np.testing.assert_allclose(f.weighted_grad(f.ravel(params), w), expect.T @ w, atol=1e-13)


def test_network_has_no_minimizer_and_theory_says_so():
    f, _ = _landscape()
    for call in (f.minimizer, f.curvature_bounds):
        with pytest.raises(NotImplementedError, match="unknown"):
            call()
    with pytest.raises(NotImplementedError, match="minimizer"):
        theory.linearize(CoupledSystem(f, noise=MinibatchNoise(f, 4, 0.1)), num_agents=1)


# ------------------------------------------------------------------------ the noise


def _dense_covariance(g, batch, replacement):
    """NumPy: population covariance of the per-example gradients / B, times c_B."""
    n = g.shape[0]
    c = np.cov(g.T, bias=True)  # divide by n: see MinibatchNoise
    return c / batch * (1.0 if replacement else (n - batch) / (n - 1))


@pytest.mark.parametrize("replacement", [True, False])
def test_noise_kinds_have_the_minibatch_covariance(replacement):
    f, params = _landscape(chunk_size=5)
    theta = f.ravel(params)
    lr, eta, batch = 0.3, 0.5, 4
    sigma_g = _dense_covariance(_loop_grads(f, params), batch, replacement)
    target = lr * eta * sigma_g  # σσᵀ = lr·η Σ

    def noise(kind):
        return MinibatchNoise(f, batch, lr, gradient_scale=eta, kind=kind, replacement=replacement)

    exact = noise("exact")
    assert exact.brownian_shape(f.dim) == (N_EXAMPLES,)
    # A as a dense (dim, n) matrix, column j = σ(θ) e_j, e_j a unit vector of R^n
    a = jax.vmap(lambda e: exact.apply(theta, e))(jnp.eye(N_EXAMPLES)).T
    assert a.shape == (f.dim, N_EXAMPLES)
    np.testing.assert_allclose(a @ a.T, target, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(exact.gradient_covariance(theta), sigma_g, rtol=1e-10, atol=1e-15)

    diagonal = noise("diagonal")
    assert diagonal.brownian_shape(f.dim) == (f.dim,)
    d = jax.vmap(lambda e: diagonal.apply(theta, e))(jnp.eye(f.dim)).T
    np.testing.assert_allclose(d @ d.T, np.diag(np.diag(target)), rtol=1e-10, atol=1e-14)

    iso = noise("isotropic")
    s = jax.vmap(lambda e: iso.apply(theta, e))(jnp.eye(f.dim)).T
    np.testing.assert_allclose(s @ s.T, np.trace(target) / f.dim * np.eye(f.dim), rtol=1e-10)


@pytest.mark.parametrize("replacement", [True, False])
def test_covariance_formula_equals_exact_enumeration_of_minibatches(replacement):
    # All n^B ordered batches (with replacement) or all B-subsets (without), equally likely:
    # their mean gradient is ∇f and their covariance is c_B C / B.
    f, params = _landscape()
    theta = f.ravel(params)
    g = _loop_grads(f, params)
    batch = 2
    if replacement:
        batches = list(itertools.product(range(N_EXAMPLES), repeat=batch))
    else:
        batches = list(itertools.combinations(range(N_EXAMPLES), batch))
    means = np.stack([g[list(b)].mean(axis=0) for b in batches])
    np.testing.assert_allclose(means.mean(axis=0), f.grad(theta), atol=1e-14)
    noise = MinibatchNoise(f, batch, 1.0, replacement=replacement)
    np.testing.assert_allclose(
        np.cov(means.T, bias=True), noise.gradient_covariance(theta), rtol=1e-10, atol=1e-15
    )


# ------------------------------------------------------------------------ shared noise


@pytest.mark.parametrize(
    ("kind", "damping"), [("exact", None), ("diagonal", None), ("isotropic", None), ("exact", 0.7)]
)
def test_euler_maruyama_path_equals_discrete_path(kind, damping, getkey):
    f, params = _landscape(chunk_size=5)
    lr, eta = 0.2, 2.0  # h = lr/η = 0.1
    h = lr / eta
    noise = MinibatchNoise(f, 4, lr, gradient_scale=eta, kind=kind)
    system = CoupledSystem(f, noise=noise, gradient_scale=eta, damping=damping)
    x0 = f.ravel(params)[None] + 0.1 * jax.random.normal(getkey(), (2, f.dim))
    steps, key = 15, getkey()
    sol = solve(system, x0, t1=steps * h, step_size=h, key=key, saveat=steps + 1)
    disc = solve_discrete(system, x0, t1=steps * h, step_size=h, key=key)
    assert sol.x.shape == disc.x.shape == (steps + 1, 2, f.dim)
    np.testing.assert_allclose(disc.x, sol.x, rtol=0, atol=1e-10)
    # the noise moved the path: one step differs from the noiseless Euler step
    noiseless = x0 - h * eta * jax.vmap(f.grad)(x0)
    if damping is None:
        assert np.abs(sol.x[1] - noiseless).max() > 1e-3


def test_quorum_on_three_networks_matches_the_discrete_path(getkey):
    f, params = _landscape(chunk_size=8)
    h = 0.1
    system = CoupledSystem(f, Quorum(1.0, 0.4), MinibatchNoise(f, 2, h))
    x0 = f.ravel(params)[None] + 0.2 * jax.random.normal(getkey(), (3, f.dim))
    steps, key = 12, getkey()
    sol = solve(system, x0, t1=steps * h, step_size=h, key=key, saveat=steps + 1)
    # the discrete path fed the same numbers as a table of per-example normals (K, N, n)
    table = jnp.stack([step_normal(key, k, (3, N_EXAMPLES)) for k in range(steps)])
    disc = solve_discrete(system, x0, t1=steps * h, step_size=h, noise_table=table)
    np.testing.assert_allclose(disc.x, sol.x, rtol=0, atol=1e-10)
    np.testing.assert_allclose(disc.aux, sol.aux, rtol=0, atol=1e-10)
    assert sol.aux.shape == (steps + 1, f.dim)


# ------------------------------------------------------------------------ real minibatches


@pytest.mark.parametrize("replacement", [True, False])
def test_real_minibatch_gradients_average_to_the_full_gradient(replacement, getkey):
    # Monte Carlo over R independent agents at the same θ; per coordinate the sample mean's
    # standard error is sqrt(Σ_jj / R), and 5 of them bound a false failure by ~1e-6 · dim.
    f, params = _landscape()
    theta = f.ravel(params)
    batch, runs = 3, 1500
    oracle = model_minibatch_oracle(f, batch, replacement=replacement)
    losses, grads = oracle(jnp.broadcast_to(theta, (runs, f.dim)), getkey(), 7)
    assert losses.shape == (runs,) and grads.shape == (runs, f.dim)
    sigma = MinibatchNoise(f, batch, 1.0, replacement=replacement).gradient_covariance(theta)
    se = np.sqrt(np.diag(sigma) / runs)
    assert np.all(np.abs(grads.mean(axis=0) - f.grad(theta)) <= 5 * se + 1e-12)
    assert abs(losses.mean() - f.value(theta)) < 0.1


def test_real_sgd_runs_through_the_optimizer_of_the_sde(getkey):
    # Real minibatch SGD (lr = h·η = 0.5) with the optimizer of the system whose SDE models it.
    f, params = _landscape()
    theta = f.ravel(params)
    system = CoupledSystem(f, noise=MinibatchNoise(f, 4, 0.5))
    oracle = model_minibatch_oracle(f, 4, replacement=False)
    res = run_agents(euler_optimizer(system, 0.5), jnp.stack([theta] * 2), oracle,
                     num_steps=30, key=getkey())  # fmt: skip
    assert res.params.shape == (2, f.dim)
    assert float(jnp.max(jax.vmap(f.value)(res.params))) < float(f.value(theta))


# ------------------------------------------------------------------------ bad input


def _bad_calls():
    model, x, y, params = _problem()
    loss = _per_example_loss(model)
    f = ModelLandscape(loss, x, y, params)
    return {
        "batch 0": (lambda: MinibatchNoise(f, 0, 0.1), "batch_size.*0"),
        "batch > n": (lambda: MinibatchNoise(f, 17, 0.1), "batch_size.*17"),
        "kind": (lambda: MinibatchNoise(f, 2, 0.1, kind="full"), "kind.*'full'"),
        "lr": (lambda: MinibatchNoise(f, 2, -1.0), "learning_rate.*-1.0"),
        "chunk": (lambda: ModelLandscape(loss, x, y, params, chunk_size=0), "chunk_size.*0"),
        "lengths": (lambda: ModelLandscape(loss, x, y[:15], params), "16.*15"),
        "mean loss": (
            lambda: ModelLandscape(lambda p, a, b: loss(p, a, b).mean(), x, y, params),
            r"per-example.*\(\)",
        ),
        "flax loss": (lambda: ModelLandscape.from_flax(model, x, y, params, "hinge"), "hinge"),
        "oracle batch": (lambda: model_minibatch_oracle(f, 20), "batch_size.*20"),
        "eta": (
            lambda: CoupledSystem(f, noise=MinibatchNoise(f, 2, 0.1), gradient_scale=2.0),
            "gradient_scale",
        ),
    }


BAD = _bad_calls()


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_value_error_naming_the_value(name):
    call, match = BAD[name]
    with pytest.raises(ValueError, match=match):
        call()


def test_sme2_on_a_network_is_the_gradient_of_its_modified_loss():
    """SME-2 on a `ModelLandscape` (an HVP through the chunked scan): its drift gradient equals
    autodiff of f + (lr/4)‖∇f‖² written directly on the pytree, with a chunk size that does
    not divide n; and `sme2` of a network system integrates."""
    from dynamics import ModifiedLandscape, sme2

    landscape, params = _landscape(chunk_size=5)
    model, x, y, _ = _problem()
    loss = _per_example_loss(model)
    lr = 0.3

    def modified(p):
        g = jax.grad(lambda q: jnp.mean(loss(q, x, y)))(p)
        return jnp.mean(loss(p, x, y)) + lr / 4 * sum(jnp.sum(a * a) for a in jax.tree.leaves(g))

    expected = ravel_pytree(jax.grad(modified)(params))[0]
    theta = landscape.ravel(params)
    got = ModifiedLandscape(landscape, lr).grad(theta)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-10, atol=1e-12)
    system = sme2(CoupledSystem(landscape, Quorum(1.0, 1.0), gradient_scale=2.0), 0.15)
    sol = solve(system, jnp.stack([theta, theta]), t1=0.3, step_size=0.15, saveat=2)
    assert np.all(np.isfinite(np.asarray(sol.x)))
