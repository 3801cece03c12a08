"""Linear systems with delays (dynamics.theory, docs/papers.md "Delays in continuous time").

Each closed form is checked against an independent oracle: a root finder on another
formula, the characteristic equation evaluated directly, the spectrum of the Euler chain's
companion matrix built here, or a Monte-Carlo run of the chain in NumPy.
"""

import math

import numpy as np
import pytest
from scipy.optimize import brentq

from dynamics import theory


def companion(a, b, d, h):
    """Brute-force companion matrix of x_{k+1} = (1 − ha) x_k − hb x_{k−d} (test oracle)."""
    n = d + 1
    c = np.zeros((n, n))
    c[0, 0] += 1 - h * a
    c[0, d] += -h * b
    for i in range(1, n):
        c[i, i - 1] = 1.0
    return c


def radius(c):
    return np.max(np.abs(np.linalg.eigvals(c)))


# ---------------------------------------------------------------------------------------------
# x'(t) = −a x(t − τ) and its Euler chain


def test_continuous_threshold_is_where_a_delayed_decay_starts_to_grow():
    tau = np.array([0.0, 0.25, 1.0, 3.0])
    np.testing.assert_allclose(
        theory.continuous_delay_threshold(delay=tau), [np.inf, 2 * np.pi, np.pi / 2, np.pi / 6]
    )
    # Oracle: at a = π/(2τ) the pair λ = ±ia solves λ + a e^{−λτ} = 0 (a neutral oscillation).
    for t in tau[1:]:
        a = theory.continuous_delay_threshold(delay=t)
        lam = 1j * a
        assert abs(lam + a * np.exp(-lam * t)) < 1e-12
    # and a fine Euler simulation of x' = −a x(t − τ) decays just below it and grows above.
    t, h = 1.0, 1.0 / 200
    d = round(t / h)
    a_star = theory.continuous_delay_threshold(delay=t)
    for factor, grows in ((0.9, False), (1.1, True)):
        a = factor * a_star
        x = np.ones(d + 1)  # history x(t) = 1 on [−τ, 0]
        hist = list(x)
        for _ in range(round(40 / h)):
            hist.append(hist[-1] - h * a * hist[-1 - d])
        late = np.max(np.abs(hist[-2 * d :]))
        assert (late > 1.0) == grows


def test_discrete_threshold_as_a_rate_converges_to_the_continuous_one_at_rate_h():
    tau = 0.5
    limit = math.pi / (2 * tau)
    hs = tau / np.array([5, 10, 20, 40, 80])
    errs = np.array(
        [limit - theory.discrete_delay_threshold_time(delay=tau, step_size=h) for h in hs]
    )
    assert np.all(errs > 0)  # the discrete chain is always less tolerant than the ODE
    ratios = errs[:-1] / errs[1:]
    np.testing.assert_allclose(ratios, 2.0, rtol=0.05)  # O(h)
    # the leading term π h / (4τ²) of the expansion of 2 sin(πh/(2(2τ + h)))/h
    np.testing.assert_allclose(errs[-1] / hs[-1], math.pi / (4 * tau**2), rtol=0.02)


@pytest.mark.parametrize("d", [0, 1, 2, 5, 12])
def test_discrete_threshold_matches_the_companion_spectrum(d):
    h = 0.1
    rate = theory.discrete_delay_threshold_time(delay=d * h, step_size=h)
    assert rate * h == pytest.approx(theory.delay_stability_threshold(staleness=d), rel=1e-14)
    # Oracle: the spectral radius of the brute-force companion matrix crosses 1 at that rate.
    assert radius(companion(0.0, rate * (1 - 1e-6), d, h)) < 1
    assert radius(companion(0.0, rate * (1 + 1e-6), d, h)) > 1


# ---------------------------------------------------------------------------------------------
# x'(t) = −a x(t) − b x(t − τ): Hayes' theorem and the Lambert-W root

HAYES_CASES = [(0.0, 1.0), (0.5, 1.0), (0.5, 3.0), (-0.4, 1.0), (2.0, 2.5), (-1.0, 4.0)]


def test_max_stable_delay_regions_and_the_crossing_frequency():
    # every delay is stable when the undelayed decay dominates; none when a + b <= 0
    got = theory.max_stable_delay(
        decay=np.array([1.0, 1.0, 1.0, -1.0, 0.0, -0.5]),
        gain=np.array([0.3, -0.7, 1.0, 0.5, 0.0, 0.5]),
    )
    np.testing.assert_array_equal(got, [np.inf, np.inf, np.inf, 0.0, 0.0, 0.0])
    # a = 0 is the delayed decay of the previous section
    assert theory.max_stable_delay(decay=0.0, gain=2.0) == pytest.approx(
        theory.continuous_delay_threshold(delay=1.0) / 2.0
    )
    # Oracle: at τ* the pair λ = ±iω, ω = √(b² − a²), solves the characteristic equation.
    for a, b in HAYES_CASES:
        tau = theory.max_stable_delay(decay=a, gain=b)
        lam = 1j * math.sqrt(b**2 - a**2)
        assert abs(lam + a + b * np.exp(-lam * tau)) < 1e-12 * (abs(a) + abs(b))


def test_rightmost_root_satisfies_the_characteristic_equation():
    a = np.array([-0.5, 0.0, 0.3, 1.0, 4.0])[:, None, None]
    b = np.array([-2.0, -0.2, 0.0, 0.4, 1.0, 3.0, 10.0])[None, :, None]
    tau = np.array([0.0, 0.01, 0.3, 1.0, 2.5, 6.0])[None, None, :]
    lam = theory.delayed_feedback_root(decay=a, gain=b, delay=tau)
    assert lam.shape == (5, 7, 6) and np.iscomplexobj(lam)
    residual = np.abs(lam + a + b * np.exp(-lam * tau))
    scale = np.abs(lam) + np.abs(a) + np.abs(b) + 1.0
    assert np.max(residual / scale) < 1e-10
    np.testing.assert_allclose(lam[..., 0], -(a + b)[..., 0] + 0 * lam[..., 0])  # τ = 0


@pytest.mark.parametrize("a, b", [(0.5, 1.5), (0.0, 2.0), (-0.3, 1.0), (1.0, -0.5)])
def test_rightmost_root_is_the_rightmost_eigenvalue_of_a_fine_euler_chain(a, b):
    """Oracle: μ = e^{λh} + O(h²) for the Euler chain, so the largest Re log(μ)/h of the
    brute-force companion matrix tends to Re λ (error O(h)); W₀ must pick the rightmost root."""
    tau, d = 1.0, 200
    h = tau / d
    mu = np.linalg.eigvals(companion(a, b, d, h))
    rightmost = np.max(np.log(np.abs(mu[np.abs(mu) > 0])) / h)
    lam = theory.delayed_feedback_root(decay=a, gain=b, delay=tau)
    assert rightmost == pytest.approx(lam.real, abs=0.05)


@pytest.mark.parametrize("a, b", HAYES_CASES)
def test_real_part_of_the_root_changes_sign_exactly_at_max_stable_delay(a, b):
    tau_star = theory.max_stable_delay(decay=a, gain=b)

    def growth(tau):
        return theory.delayed_feedback_root(decay=a, gain=b, delay=tau).real

    assert growth(0.5 * tau_star) < 0 < growth(2 * tau_star)
    crossing = brentq(growth, 0.5 * tau_star, 2 * tau_star, xtol=1e-15, rtol=1e-15)
    assert crossing == pytest.approx(tau_star, rel=1e-8)


def test_stable_iff_the_rightmost_root_has_negative_real_part_on_a_grid():
    a = np.array([-1.0, -0.3, 0.0, 0.5, 2.0])[:, None, None]
    b = np.linspace(-3.1, 3.3, 17)[None, :, None]
    tau = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 5.0])[None, None, :]
    stable = theory.delayed_coupling_stable(decay=a, gain=b, delay=tau)
    growth = theory.delayed_feedback_root(decay=a, gain=b, delay=tau).real
    assert stable.dtype == bool and stable.shape == (5, 17, 6)
    assert np.min(np.abs(growth)) > 1e-9  # no grid point on the boundary itself
    np.testing.assert_array_equal(stable, growth < 0)
    assert 0.2 < stable.mean() < 0.8  # both sides of the boundary are sampled
    # the (k, τ) region of one curvature, as a grid
    k, delays = np.linspace(0, 4, 9), np.linspace(0, 3, 7)
    region = theory.delayed_coupling_stable(decay=0.5, gain=k[:, None], delay=delays[None, :])
    assert region.shape == (9, 7)
    assert isinstance(theory.delayed_coupling_stable(decay=0.5, gain=1.0, delay=0.3), np.bool_)


def test_delayed_mean_field_coupling_of_agents_splits_into_the_mean_and_deviation_modes():
    """Oracle: the full N-agent chain x_i ← x_i − hηa x_i + hk (x̄ − x_i)(k − d), built as one
    matrix on the stacked history, has the spectral radius of the worse of the mean mode
    (a = ηa, b = 0) and the deviation mode (a = ηa, b = k), as the docstring claims."""
    n_agents, d, h = 3, 4, 0.1
    tau = d * h
    centring = np.eye(n_agents) - np.full((n_agents, n_agents), 1 / n_agents)
    for eta_a, k in [(0.5, 1.0), (0.5, 4.0), (0.2, 3.5), (-0.2, 1.0)]:
        size = n_agents * (d + 1)
        full = np.zeros((size, size))
        full[:n_agents, :n_agents] = (1 - h * eta_a) * np.eye(n_agents)
        full[:n_agents, d * n_agents :] += -h * k * centring  # F_i = k (x̄ − x_i), delayed
        full[n_agents:, :-n_agents] = np.eye(size - n_agents)
        modes = [
            theory.delayed_euler_spectral_radius(decay=eta_a, gain=g, delay=tau, step_size=h)
            for g in (0.0, k)
        ]
        assert radius(full) == pytest.approx(max(modes), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# The Euler chain x_{k+1} = (1 − ha) x_k − hb x_{k−d}


@pytest.mark.parametrize("d", [0, 1, 3, 7])
def test_discrete_feedback_reproduces_delay_stability_threshold_at_a_or_b_zero(d):
    h = 0.05
    threshold = theory.delay_stability_threshold(staleness=d)

    def excess(b):
        return theory.delayed_euler_spectral_radius(decay=0, gain=b, delay=d * h, step_size=h) - 1

    boundary = brentq(excess, 0.5 * threshold / h, 1.5 * threshold / h, xtol=1e-14)
    assert boundary * h == pytest.approx(threshold, rel=1e-8)
    # b = 0: no delayed term, x_{k+1} = (1 − ha) x_k, stable iff ha < 2 whatever d
    stable = theory.delay_stability_threshold(staleness=0)
    for ha, expected in ((0.999 * stable, True), (1.001 * stable, False)):
        assert theory.delayed_euler_stable(decay=ha / h, gain=0, delay=d * h, step_size=h) is (
            expected
        )


def test_discrete_boundary_in_gain_converges_to_the_continuous_one():
    a, tau = 0.5, 1.0
    # Oracle for the continuous boundary: solve τ*(a, b) = τ for b by root finding.
    b_cont = brentq(
        lambda b: theory.max_stable_delay(decay=a, gain=b) - tau, 0.51, 20.0, xtol=1e-14
    )
    assert theory.delayed_feedback_root(decay=a, gain=b_cont, delay=tau).real == pytest.approx(
        0, abs=1e-10
    )
    errs = []
    for d in (10, 20, 40, 80):
        h = tau / d

        def excess(b, h=h):
            return theory.delayed_euler_spectral_radius(decay=a, gain=b, delay=tau, step_size=h) - 1

        errs.append(b_cont - brentq(excess, 0.6, 3.0, xtol=1e-13))
    errs = np.array(errs)
    assert np.all(errs > 0)
    np.testing.assert_allclose(errs[:-1] / errs[1:], 2.0, rtol=0.05)  # O(h)
    assert errs[-1] < 0.01 * b_cont


# ---------------------------------------------------------------------------------------------
# Stationary variance: Küchler–Mensch and the Euler chain's Lyapunov solution


def test_delayed_ou_variance_closed_form_limits():
    sigma, b = 0.7, 1.3
    assert theory.delayed_ou_variance(gain=b, delay=0.0, sigma=sigma) == pytest.approx(
        sigma**2 / (2 * b)
    )
    v = theory.delayed_ou_variance(gain=b, delay=np.array([0.0, 0.3, 1.0, 1.2]), sigma=sigma)
    assert np.all(np.diff(v) > 0)  # delay inflates the variance
    near = theory.delayed_ou_variance(gain=b, delay=(np.pi / 2 - 1e-6) / b, sigma=sigma)
    assert near > 1e5  # and it diverges at bτ → π/2


def test_euler_variance_converges_to_kuchler_mensch_at_rate_h():
    b, tau, sigma = 1.0, 0.5, 0.7
    exact = theory.delayed_ou_variance(gain=b, delay=tau, sigma=sigma)
    hs = tau / np.array([10, 20, 40, 80])
    v = np.array(
        [
            theory.delayed_euler_variance(decay=0, gain=b, delay=tau, sigma=sigma, step_size=h)
            for h in hs
        ]
    )
    errs = v - exact
    np.testing.assert_allclose(errs[:-1] / errs[1:], 2.0, rtol=0.05)  # O(h)
    assert abs(errs[-1]) < 0.005 * exact
    # Richardson extrapolation removes the O(h) term
    assert 2 * v[-1] - v[-2] == pytest.approx(exact, rel=2e-4)
    # a > 0: no closed form, but the chain's variance still converges like h (Cauchy ratios)
    w = np.array(
        [
            theory.delayed_euler_variance(decay=0.4, gain=b, delay=tau, sigma=sigma, step_size=h)
            for h in hs
        ]
    )
    np.testing.assert_allclose(np.diff(w)[:-1] / np.diff(w)[1:], 2.0, rtol=0.05)


@pytest.mark.parametrize("a", [0.0, 0.6])
def test_euler_variance_without_delay_is_the_discrete_ou_variance(a):
    b, sigma, h = 1.5, 0.8, 0.05
    v = theory.delayed_euler_variance(decay=a, gain=b, delay=0.0, sigma=sigma, step_size=h)
    rate = a + b
    assert v == pytest.approx(sigma**2 * h / (1 - (1 - h * rate) ** 2), rel=1e-12)


def test_euler_variance_agrees_with_a_monte_carlo_run_of_the_chain():
    a, b, tau, sigma, h = 0.5, 1.5, 0.5, 1.0, 0.05
    d = round(tau / h)
    predicted = theory.delayed_euler_variance(decay=a, gain=b, delay=tau, sigma=sigma, step_size=h)
    growth = theory.delayed_feedback_root(decay=a, gain=b, delay=tau).real  # about −1.2
    steps = math.ceil(25 / (-growth * h))  # transients decay by e^{−50} in the variance
    n_paths = 4000
    rng = np.random.default_rng(20240611)
    hist = np.zeros((d + 1, n_paths))  # ring buffer of x_{k}, …, x_{k−d}, starting at 0
    x = hist[0].copy()
    for k in range(steps):
        delayed = hist[(k - d) % (d + 1)]
        x = (1 - h * a) * x - h * b * delayed + sigma * math.sqrt(h) * rng.standard_normal(n_paths)
        hist[(k + 1) % (d + 1)] = x
    measured = np.mean(x**2)  # the stationary mean is 0
    standard_error = predicted * math.sqrt(2 / n_paths)
    assert abs(measured - predicted) < 4 * standard_error
    # and the delay matters at this precision: the undelayed chain's variance is far off
    undelayed = theory.delayed_euler_variance(decay=a, gain=b, delay=0, sigma=sigma, step_size=h)
    assert abs(undelayed - predicted) > 8 * standard_error


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_unstable_parameters_have_no_stationary_variance():
    with pytest.raises(ValueError, match="bτ"):
        theory.delayed_ou_variance(gain=1.0, delay=math.pi / 2, sigma=1.0)
    with pytest.raises(ValueError, match="gain"):
        theory.delayed_ou_variance(gain=-1.0, delay=0.1, sigma=1.0)
    # a = 0, b = 1.2 π/(2τ) beyond the continuous and the discrete threshold
    with pytest.raises(ValueError, match="unstable"):
        theory.delayed_euler_variance(
            decay=0, gain=1.2 * math.pi, delay=0.5, sigma=1, step_size=0.05
        )
    with pytest.raises(ValueError, match="unstable"):  # a + b < 0: unstable without delay
        theory.delayed_euler_variance(decay=-1, gain=0.5, delay=0.0, sigma=1, step_size=0.05)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: theory.continuous_delay_threshold(delay=-1.0), "delay.*-1.0"),
        (lambda: theory.continuous_delay_threshold(delay=np.nan), "delay.*nan"),
        (lambda: theory.discrete_delay_threshold_time(delay=0.25, step_size=0.1), "0.25.*0.1"),
        (lambda: theory.discrete_delay_threshold_time(delay=0.3, step_size=0.0), "step_size"),
        (lambda: theory.discrete_delay_threshold_time(delay=-0.2, step_size=0.1), "delay"),
        (lambda: theory.max_stable_delay(decay=np.inf, gain=1.0), "decay.*inf"),
        (lambda: theory.max_stable_delay(decay=0.0, gain=np.nan), "gain.*nan"),
        (lambda: theory.delayed_coupling_stable(decay=0, gain=1, delay=-0.1), "delay.*-0.1"),
        (lambda: theory.delayed_feedback_root(decay=800.0, gain=1.0, delay=1.0), "aτ"),
        (lambda: theory.delayed_ou_variance(gain=1.0, delay=0.1, sigma=-1.0), "sigma.*-1.0"),
        (
            lambda: theory.delayed_euler_spectral_radius(
                decay=0, gain=1, delay=0.35, step_size=0.1
            ),
            "0.35.*0.1",
        ),
        (
            lambda: theory.delayed_euler_variance(
                decay=0, gain=1, delay=0.3, sigma=-2.0, step_size=0.1
            ),
            "sigma.*-2.0",
        ),
    ],
)
def test_bad_inputs_raise_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_whole_steps_tolerate_rounding():
    # 0.3 / 0.1 = 2.9999999999999996 in floating point: still three steps
    assert theory.discrete_delay_threshold_time(delay=0.3, step_size=0.1) == pytest.approx(
        theory.delay_stability_threshold(staleness=3) / 0.1
    )
