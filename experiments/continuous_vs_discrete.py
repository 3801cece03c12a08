"""The same coupling rule as an SDE (Diffrax) and as an Optax optimizer, on a nonconvex f.

Protocol (ours): the tilted multi-well `f(x) = q x² + A sin²(πx) + t x` (docs/papers.md), N
agents with quorum coupling (g = 0), additive noise σ.

1. Pathwise (in float64): the Euler–Maruyama solution with step h (`dynamics.solve` with a
   `StepBrownianPath`) and the discrete optimizer (`algorithms.solve_discrete`, Gaussian
   gradient noise from the same key) are run from the same start; their trajectories are
   overlaid and their largest absolute difference is `pathwise_max_abs_diff` (rounding only).
2. Weak error: for several h, E φ(X^h_T) of the optimizer, φ(x) = (1/N) Σ_i x_i², against a
   fine-step Heun solution of the SDE. Both are driven by one `VirtualBrownianTree` per
   sample (the optimizer's gradient noise is that path's increments on its step grid), so the
   difference is estimated with low variance. The slope of log |error| against log h is the
   weak order (Li, Tai, E: SGD is an order-1 weak approximation of its SDE).

Claims (tolerances fixed in the config before running):

- `euler_maruyama_equals_optimizer` is deterministic (the same random numbers enter both
  computations; the difference is floating-point rounding): no interval, it holds when the
  largest |difference| is below `pathwise_tol`.
- `weak_order_one`: the fitted slope lies in [1 − `order_tol`, 1 + `order_tol`]. The slope is
  a weighted least-squares fit, slope = Σ c_i log m_i, of the mean differences m_i (one per
  h) over `samples` independent samples. Every h uses the same samples, so the m_i are
  correlated; the interval is slope ± 2 s.e. with se² = Σ_ij c_i c_j C_ij / (m_i m_j) (delta
  method), C the sample covariance of the per-sample differences divided by `samples`
  (stored as `weak_error_cov`). If some |m_i| is within 2 s.e. of 0 its logarithm is not
  resolved and the interval is unbounded (inconclusive).

What would change the verdicts: a path claim failing would mean the optimizer is not the
Euler–Maruyama step of the SDE (a wrong drift, noise scale or step count). The weak-order
interval narrows as 1/√samples; too few samples make it inconclusive, and step sizes so large
that the O(h²) term dominates (or so small that the reference's own error, O(dt²) at dt =
min(h)/`reference_refinement`, matters) move the slope away from 1.

The slope over h = 2^-4…2^-7 is pre-asymptotic, and this sets how close the claim sits to its
tolerance. A generalized least-squares fit of the errors to C1 h + C2 h² (metrics
`weak_error_c1`, `weak_error_c2`, and the dashed curve in the figure) fits the four points
within their s.e. with C1 ≈ 0.22 ± 0.015 and C2 ≈ 1.5 ± 0.3 (full mode): the first-order term
is present and resolved (order 1, not 2), but C2 h / C1 ≈ 0.4 at h = 2^-4, so the log-log slope
of the model falls from about 1.3 at the largest h to 1.05 at the smallest
(`two_term_slope_at_smallest_h`) and the fitted slope over the range is about 1.17. With the
pre-registered ±0.25 the full-mode interval (± 2 × 0.034) clears 1.25 by a few hundredths;
quick mode's (± 2 × 0.047) usually reaches past 1.25 and is then inconclusive, which is the
honest state of a slope that quick mode cannot place on either side of 1.25. Smaller step
sizes would bring the slope nearer 1 at a higher cost (a finer reference and more samples,
since the relative s.e. grows as h shrinks).

Quick mode spends its time where the interval needs it: twice the samples of the old quick
mode (8192) with a reference step of min(h)/4 = 2^-9 instead of 2^-10 (Heun's weak error for
additive noise is O(dt²), about 4·10⁻⁶ times its constant there, against a smallest weak error
of about 2·10⁻³), at about the old cost.
"""

from __future__ import annotations

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from algorithms.discrete import solve_discrete
from dynamics.coupling import Quorum
from dynamics.landscapes import TiltedMultiWell
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve
from dynamics.system import CoupledSystem

from .harness.contract import claim_between, claim_less
from .harness.plotting import figure

NAME = "continuous_vs_discrete"
DESCRIPTION = "One rule as SDE and optimizer: pathwise equality with shared noise, weak order 1"
Z = 2.0  # the interval is slope ± Z standard errors (the contract's convention)


@dataclasses.dataclass(frozen=True)
class Config:
    num_agents: int = dataclasses.field(default=8, metadata={"help": "N"})
    sigma: float = dataclasses.field(default=0.8, metadata={"help": "noise σ"})
    gradient_scale: float = dataclasses.field(default=0.5, metadata={"help": "η"})
    gain: float = dataclasses.field(default=1.0, metadata={"help": "k"})
    quorum_gain: float = dataclasses.field(default=0.25, metadata={"help": "k_z"})
    tilt: float = dataclasses.field(default=0.2, metadata={"help": "tilt t of the multi-well"})
    path_time: float = dataclasses.field(default=20.0, metadata={"help": "time of the overlay"})
    path_step: float = dataclasses.field(default=0.01, metadata={"help": "h for the overlay"})
    weak_time: float = dataclasses.field(default=1.0, metadata={"help": "T for the weak error"})
    step_sizes: tuple[float, ...] = dataclasses.field(
        default=(2**-4, 2**-5, 2**-6, 2**-7), metadata={"help": "h values (weak error)"}
    )
    reference_refinement: int = dataclasses.field(
        default=8, metadata={"help": "reference dt = min(h) / this"}
    )
    samples: int = dataclasses.field(default=16384, metadata={"help": "samples (weak error)"})
    pathwise_tol: float = dataclasses.field(
        default=1e-9, metadata={"help": "claimed max |SDE path − optimizer path| (float64)"}
    )
    order_tol: float = dataclasses.field(
        default=0.25, metadata={"help": "claimed max |weak order slope − 1|"}
    )

    def __post_init__(self):
        if self.num_agents < 1:
            raise ValueError(f"num_agents must be >= 1, got {self.num_agents}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        for name in ("gradient_scale", "path_time", "path_step", "weak_time"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if len(self.step_sizes) < 2 or min(self.step_sizes) <= 0:
            raise ValueError(f"need >= 2 positive step sizes, got {self.step_sizes}")
        for h in self.step_sizes:
            if abs(self.weak_time / h - round(self.weak_time / h)) > 1e-9:
                raise ValueError(f"weak_time {self.weak_time} is not a multiple of h={h}")
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2, got {self.samples}")
        if self.reference_refinement < 1:
            raise ValueError(f"reference_refinement must be >= 1, got {self.reference_refinement}")
        for name in ("pathwise_tol", "order_tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")


QUICK = dict(samples=8192, reference_refinement=4, path_time=10.0)


def _system(config):
    return CoupledSystem(
        TiltedMultiWell(1, tilt=config.tilt),
        Quorum(config.gain, config.quorum_gain),
        IsotropicNoise(config.sigma),
        gradient_scale=config.gradient_scale,
    )


def _start(config):
    return jnp.linspace(-2.5, 2.5, config.num_agents)[:, None]


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    # float64 so that "equal paths" is tested to rounding of 1e-16, not float32's 1e-7
    # amplified over thousands of steps of a nonconvex flow.
    with jax.enable_x64(True):
        return _run(config, key)


def _run(config, key):
    system, x0 = _system(config), _start(config)
    k_path, k_weak = jax.random.split(key)

    # 1. Pathwise equality with shared random numbers.
    h = config.path_step
    steps = round(config.path_time / h)
    path = dict(t1=steps * h, step_size=h, key=k_path, saveat=steps + 1)
    sol = solve(system, x0, **path)
    disc = solve_discrete(system, x0, **path)
    out = {
        "path_ts": np.asarray(sol.ts),
        "path_sde": np.asarray(sol.x[..., 0]),
        "path_sde_center": np.asarray(sol.aux[..., 0]),
        "path_optax": np.asarray(disc.x[..., 0]),
    }

    # 2. Weak error against a fine Heun reference on a shared Brownian tree.
    t1 = config.weak_time
    ref_dt = min(config.step_sizes) / config.reference_refinement
    keys = jax.random.split(k_weak, config.samples)

    def tree(k):
        # Dyadic step sizes and tol = ref_dt: every grid point is a node of the tree.
        return diffrax.VirtualBrownianTree(0.0, t1, tol=ref_dt, shape=x0.shape, key=k)

    def phi(x):
        return jnp.mean(x**2)

    def reference(k):
        s = solve(
            system, x0, t1=t1, step_size=ref_dt, brownian=tree(k), solver=diffrax.Heun(), saveat=1
        )
        return phi(s.x[-1])

    ref = jax.vmap(reference)(keys)
    diffs = []
    for h in config.step_sizes:

        def discrete(k, h=h):
            s = solve_discrete(system, x0, t1=t1, step_size=h, brownian=tree(k), saveat=1)
            return phi(s.x[-1])

        diffs.append(jax.vmap(discrete)(keys) - ref)
    out.update(_weak_stats(np.asarray(jnp.stack(diffs)), config.step_sizes))
    out["reference_mean"] = np.asarray(ref.mean())
    return out


def _weak_stats(diffs, step_sizes) -> dict[str, np.ndarray]:
    """Summary of the per-sample differences `diffs` `(H, samples)` φ(X^h) − φ(X^ref)."""
    n = diffs.shape[1]
    return {
        "step_sizes": np.asarray(step_sizes, dtype=float),
        "weak_error": np.abs(diffs.mean(1)),
        "weak_error_se": diffs.std(1, ddof=1) / np.sqrt(n),
        "weak_error_mean": diffs.mean(1),  # signed mean differences m_h
        "weak_error_cov": np.cov(diffs) / n,  # covariance of the m_h (every h: same samples)
    }


def _weights(results):
    """The fit's weights: each point's inverse relative s.e."""
    err, se = results["weak_error"], results["weak_error_se"]
    return err / np.maximum(se, 1e-300)


def _fit(results):
    """Least squares of log error on log h, weighted by each point's relative s.e."""
    hs, err = results["step_sizes"], results["weak_error"]
    return np.polyfit(np.log(hs), np.log(err), 1, w=_weights(results))


def _slope(results):
    return _fit(results)[0]


def _slope_se(results) -> float:
    """Delta-method s.e. of the fitted slope with the weights held fixed: the slope is
    Σ c_i log m_i, so se² = cᵀ D C D c with D = diag(1/m_i) and C the covariance of the m_i
    (correlated: every h uses the same samples). Infinite when some m_i is within Z s.e. of 0
    (its logarithm is then not resolved)."""
    m, cov = results["weak_error_mean"], np.atleast_2d(results["weak_error_cov"])
    se = np.sqrt(np.diag(cov))
    if not np.all(np.abs(m) > Z * se):  # also catches non-finite entries
        return float("inf")
    x, w2 = np.log(results["step_sizes"]), _weights(results) ** 2
    xbar = np.sum(w2 * x) / np.sum(w2)
    c = w2 * (x - xbar) / np.sum(w2 * (x - xbar) ** 2)  # slope = Σ c_i log|m_i|
    g = c / m
    var = float(g @ cov @ g)
    return float(np.sqrt(var)) if np.isfinite(var) else float("inf")


def _two_term_fit(results):
    """Generalized least squares of the weak error on `C1 h + C2 h²` with the covariance of
    the points: `((C1, C2), (se1, se2))`, NaN when the covariance is singular. The
    model's log-log slope at h is `(C1 + 2 C2 h) / (C1 + C2 h)`: it tends to 1 as h → 0 when
    C1 ≠ 0 (order 1), and exceeds 1 at finite h when C2 / C1 > 0."""
    hs, err = results["step_sizes"], results["weak_error"]
    sign = np.sign(results["weak_error_mean"])
    cov = np.atleast_2d(results["weak_error_cov"]) * np.outer(sign, sign)  # covariance of err
    design = np.stack([hs, hs**2], -1)
    try:
        white = np.linalg.inv(np.linalg.cholesky(cov))
        a, b = white @ design, white @ err
        coef_cov = np.linalg.inv(a.T @ a)
    except np.linalg.LinAlgError:
        return (np.nan, np.nan), (np.nan, np.nan)
    coef = coef_cov @ a.T @ b
    return tuple(coef), tuple(np.sqrt(np.diag(coef_cov)))


def metrics(results, config):
    (c1, c2), (se1, se2) = _two_term_fit(results)
    h = float(np.min(results["step_sizes"]))
    return {
        "pathwise_max_abs_diff": np.abs(results["path_sde"] - results["path_optax"]).max(),
        "weak_order_slope": _slope(results),
        "weak_order_slope_se": _slope_se(results),
        "weak_error_largest_h": results["weak_error"][0],
        "weak_error_c1": float(c1),
        "weak_error_c1_se": float(se1),
        "weak_error_c2": float(c2),
        "weak_error_c2_se": float(se2),
        "two_term_slope_at_smallest_h": float((c1 + 2 * c2 * h) / (c1 + c2 * h)),
    }


def claims(results, config):
    m = metrics(results, config)
    slope, se = m["weak_order_slope"], m["weak_order_slope_se"]
    return [
        claim_less(
            "euler_maruyama_equals_optimizer",
            "With shared random numbers the Euler–Maruyama path equals the optimizer's path "
            "(largest |difference| in float64: rounding only; deterministic)",
            m["pathwise_max_abs_diff"],
            config.pathwise_tol,
        ),
        claim_between(
            "weak_order_one",
            "The optimizer is a weak order-1 approximation of the SDE: fitted slope of "
            "log|E φ(X^h) − E φ(X)| against log h (interval: ± 2 s.e., delta method over "
            "the independent samples)",
            slope,
            1 - config.order_tol,
            1 + config.order_tol,
            # a non-finite slope fails on its value; an unresolved s.e. gives (−inf, inf)
            interval=(slope - Z * se, slope + Z * se) if np.isfinite(slope) else None,
        ),
    ]


def plot(results, config):
    fig, (ax1, ax2) = figure(2)
    ts, sde, opt = results["path_ts"], results["path_sde"], results["path_optax"]
    every = max(1, len(ts) // 60)
    for i in range(sde.shape[1]):
        ax1.plot(
            ts,
            sde[:, i],
            "-",
            lw=0.8,
            color=f"C{i % 10}",
            label="SDE (Euler–Maruyama)" if i == 0 else None,
        )
        ax1.plot(ts[::every], opt[::every, i], "o", ms=2.5, mfc="none", color=f"C{i % 10}",
                 label="Optax optimizer" if i == 0 else None)  # fmt: skip
    ax1.plot(ts, results["path_sde_center"], "k-", lw=2, label="quorum variable z")
    ax1.set(xlabel="time t = k·h", ylabel="x_i",
            title=f"Shared noise, h={config.path_step:g}: max |Δ| = "
            f"{np.abs(sde - opt).max():.1e}")  # fmt: skip
    ax1.legend(fontsize=7)
    hs, err, se = results["step_sizes"], results["weak_error"], results["weak_error_se"]
    ax2.errorbar(hs, err, yerr=Z * se, fmt="o", label="|E φ(X^h_T) − E φ(X_T)| (±2 s.e.)")
    slope, slope_se = _slope(results), _slope_se(results)
    fit = np.exp(np.polyval(_fit(results), np.log(hs)))
    ax2.plot(hs, fit, "-", label=f"fit: slope {slope:.2f} ± {Z * slope_se:.2f}")
    ax2.plot(hs, err[0] * hs / hs[0], "k:", label="order 1")
    (c1, c2), _ = _two_term_fit(results)
    if np.isfinite(c1) and np.isfinite(c2):
        fine = np.geomspace(hs.min(), hs.max(), 50)
        ax2.plot(fine, np.abs(c1 * fine + c2 * fine**2), "--", color="C2",
                 label=f"GLS fit {c1:.2f} h + {c2:.2f} h²")  # fmt: skip
    ax2.set(xscale="log", yscale="log", xlabel="step size h (time)", ylabel="weak error",
            title=f"Weak error at T={config.weak_time:g}, φ = mean x_i², {config.samples} "
            f"samples, Heun ref. dt=min h/{config.reference_refinement}")  # fmt: skip
    ax2.legend(fontsize=8)
    fig.suptitle(
        f"Protocol ours: quorum SGD on the tilted multi-well, N={config.num_agents}, "
        f"σ={config.sigma:g}, "
        f"η={config.gradient_scale:g}, k={config.gain:g}, k_z={config.quorum_gain:g}",
        fontsize=9,
    )
    return {"continuous_vs_discrete": fig}
