"""Noise reduction by coupling: Var(x̄) against N and the spread E e_i² against k.

Protocol (ours; docs/papers.md gives the closed forms): a quadratic `f = ½ a x²` (dim 1) with
additive noise σ, N agents from x* = 0, all-to-all `k(x̄ − x_i)` and quorum (g = 0) coupling.
Each configuration is simulated in both forms: the SDE with Diffrax's Heun solver (whose
stationary variance is accurate to O(h²)) and the discrete optimizer (`solve_discrete`,
step h, Gaussian gradient noise matched to σ; its stationary variance differs from the
continuous one by O(h), which the exact discrete Lyapunov solution accounts for). After a
burn-in, each run's time averages of x̄² and (1/N) Σ e_i² are one sample of Var(x̄) and of the
spread; `runs` independent runs (vmapped) give the estimate (their mean) and its Monte-Carlo
standard error (their standard deviation / √runs). The samples within one run are
correlated in time; the run averages are independent, so this s.e. needs no correlation
time. Each (coupling, form, N) cell of the Var(x̄) sweep uses its own random numbers; the
gains of one spread sweep share them.

Claims (tolerances fixed in the config before running; every interval is estimate ± 2 s.e.):

1. `var_mean_matches_closed_form`: in every cell (both couplings, both forms, every N) the
   relative error r = Var̂(x̄)/closed form − 1 satisfies |r| < `rel_tol`. Value: the largest
   |r|; interval: (largest distance of a cell's r ± 2 s.e. from 0, largest |r| + 2 s.e.). It
   holds when every cell's whole interval lies within ±`rel_tol` and fails when one cell's
   lies wholly outside.
2. `spread_matches_closed_form`: the same for E e_i² against σ²(N−1)/(2N(ηa + k)).
3. `mean_noise_scales_as_1_over_N` (all-to-all, both forms): the least-squares slope of
   log Var̂(x̄) on log N is −1 within `slope_tol`. Its s.e. propagates each point's relative
   s.e. (the cells are independent) through the fit: se² = Σ c_i² (s.e._i / Var̂_i)², c_i the
   fit's weights. Value: the larger |slope + 1| of the two forms, with the interval of
   |slope + 1| from slope ± 2 s.e. as in 1.

What would change the verdicts: too few runs or too short a sample time widen the intervals
until the claims are inconclusive (quick mode is sized so that they resolve the 10 %
tolerance). The runs start at x* with zero variance: the quorum variable relaxes slowly
(slowest time ≈ 40 at N = 1, 10 at N = 4 for the defaults) but carries little of Var(x̄), so the
burn-in of 10 biases the default estimates by −0.3 % at N = 1 and less at larger N (exact
covariance ODE of the linear system); a much shorter burn-in, a larger k_z relative to ηa, or
a step h comparable with 1/(ηa + k) would bias them more. A closed form that were wrong (e.g.
the quorum variance taken as 1/N) would fail claim 1 by far more than the intervals.
`var_mean_z_max` / `spread_z_max` are the largest |simulated − exact target| in s.e. (the
optimizer against its Euler chain's Lyapunov solution): values of 2–3 over the cells are
Monte-Carlo noise; a bias would show as much larger ones.
"""

from __future__ import annotations

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from algorithms.discrete import solve_discrete
from dynamics import theory
from dynamics.coupling import MeanField, Quorum
from dynamics.landscapes import Quadratic
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve_runs
from dynamics.system import CoupledSystem

from .harness.contract import claim_less
from .harness.plotting import figure

NAME = "noise_reduction"
DESCRIPTION = (
    "Var(x̄) vs N and spread E e_i² vs k, all-to-all and quorum, SDE and optimizer vs closed form"
)

COUPLINGS = ("all_to_all", "quorum")
FORMS = ("continuous", "discrete")
Z = 2.0  # every interval is estimate ± Z standard errors (the contract's convention)


@dataclasses.dataclass(frozen=True)
class Config:
    sigma: float = dataclasses.field(default=0.5, metadata={"help": "noise intensity σ"})
    gradient_scale: float = dataclasses.field(default=1.0, metadata={"help": "η in the drift"})
    curvature: float = dataclasses.field(default=1.0, metadata={"help": "a in f = ½ a x²"})
    gain: float = dataclasses.field(default=1.0, metadata={"help": "k for the Var(x̄)-vs-N sweep"})
    quorum_gain: float = dataclasses.field(default=0.05, metadata={"help": "k_z (quorum)"})
    agent_counts: tuple[int, ...] = dataclasses.field(
        default=(1, 2, 4, 8, 16, 32, 64), metadata={"help": "N values for Var(x̄)"}
    )
    gains: tuple[float, ...] = dataclasses.field(
        default=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0), metadata={"help": "k values for the spread"}
    )
    spread_agents: int = dataclasses.field(default=8, metadata={"help": "N for the spread sweep"})
    runs: int = dataclasses.field(default=256, metadata={"help": "independent runs"})
    burn_in: float = dataclasses.field(default=10.0, metadata={"help": "time before sampling"})
    sample_time: float = dataclasses.field(default=60.0, metadata={"help": "time sampled"})
    sample_every: float = dataclasses.field(default=0.25, metadata={"help": "time between samples"})
    sde_step_size: float = dataclasses.field(default=0.01, metadata={"help": "SDE step (Heun)"})
    step_size: float = dataclasses.field(default=0.005, metadata={"help": "optimizer step h"})
    rel_tol: float = dataclasses.field(default=0.1, metadata={"help": "claimed max rel. error"})
    slope_tol: float = dataclasses.field(
        default=0.1, metadata={"help": "claimed max |slope of log Var(x̄) vs log N + 1|"}
    )

    def __post_init__(self):
        for name in (
            "sigma",
            "gradient_scale",
            "curvature",
            "sde_step_size",
            "step_size",
            "sample_time",
            "sample_every",
            "rel_tol",
            "slope_tol",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if min(self.agent_counts) < 1 or self.spread_agents < 2:
            raise ValueError(f"need N >= 1 (and >= 2 for the spread), got {self.agent_counts}")
        if min(self.gains) < 0 or self.gain < 0 or self.quorum_gain < 0:
            raise ValueError("gains must be >= 0")
        if self.runs < 2:
            raise ValueError(f"runs must be >= 2, got {self.runs}")
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in}")


QUICK = dict(agent_counts=(1, 4, 16), gains=(0.0, 1.0, 4.0), runs=256, sample_time=40.0)


def _rule(kind: str, gain, quorum_gain):
    return MeanField(gain) if kind == "all_to_all" else Quorum(gain, quorum_gain)


def _system(config, kind, gain):
    return CoupledSystem(
        Quadratic([config.curvature]),
        _rule(kind, gain, config.quorum_gain),
        IsotropicNoise(config.sigma),
        gradient_scale=config.gradient_scale,
    )


def _moments_continuous(config, kind, n_agents, gains, key):
    """Per-run (var_mean, spread) for each gain: arrays `(G, R)`."""
    t1 = config.burn_in + config.sample_time
    ts = np.arange(config.burn_in, t1 + 1e-9, config.sample_every)
    keys = jax.random.split(key, config.runs)
    x0 = jnp.zeros((n_agents, 1))

    def one(gain):
        sol = solve_runs(
            _system(config, kind, gain), x0, keys, t1=t1, step_size=config.sde_step_size,
            solver=diffrax.Heun(), saveat=ts,
        )  # fmt: skip
        x = sol.x[..., 0]  # (R, T, N)
        mean = x.mean(-1)
        return (mean**2).mean(-1), ((x - mean[..., None]) ** 2).mean((-2, -1))

    return jax.vmap(one)(jnp.asarray(gains))


def _moments_discrete(config, kind, n_agents, gains, key):
    h = config.step_size
    every = max(1, round(config.sample_every / h))
    burn = round(config.burn_in / h / every) * every
    total = burn + round(config.sample_time / h / every) * every
    saveat = np.arange(burn, total + 1, every) * h  # on the step grid: every `every` steps
    keys = jax.random.split(key, config.runs)
    x0 = jnp.zeros((n_agents, 1))

    def one(gain):
        system = _system(config, kind, gain)

        def run(k):
            sol = solve_discrete(system, x0, t1=total * h, step_size=h, key=k, saveat=saveat)
            x = sol.x[..., 0]  # (T, N)
            mean = x.mean(-1)
            return (mean**2).mean(), ((x - mean[:, None]) ** 2).mean(-1).mean()

        return jax.vmap(run)(keys)

    return jax.vmap(one)(jnp.asarray(gains))


def _theory(config, kind, n_agents, gain, step_size=None):
    """(Var x̄, E e²) from the closed forms, or the Euler chain's Lyapunov solution."""
    if step_size is not None:
        m = theory.stationary_moments(
            _system(config, kind, gain), num_agents=n_agents, step_size=step_size
        )
        return float(m.var_mean[0]), float(m.spread[0])
    common = dict(
        sigma=config.sigma, gradient_scale=config.gradient_scale, curvature=config.curvature,
        num_agents=n_agents,
    )  # fmt: skip
    if kind == "all_to_all":
        var = theory.all_to_all_mean_variance(**common)
    else:
        var = theory.quorum_mean_variance(**common, gain=gain, quorum_gain=config.quorum_gain)
    return var, theory.all_to_all_spread(**common, gain=gain)


def run(config: Config, key: jax.Array, cache=None) -> dict[str, np.ndarray]:
    cached = cache.cached if cache is not None else (lambda name, fn: fn())
    ns, gains = np.asarray(config.agent_counts), np.asarray(config.gains, dtype=float)
    out: dict[str, np.ndarray] = {"agent_counts": ns, "gains": gains}
    for ci, kind in enumerate(COUPLINGS):
        for fi, form in enumerate(FORMS):
            sim = _moments_continuous if form == "continuous" else _moments_discrete
            var_n = np.zeros((len(ns), 2))
            for i, n in enumerate(ns):
                k = jax.random.fold_in(key, 1000 * ci + 100 * fi + i)
                cell = cached(
                    f"var_{kind}_{form}_N{n}",
                    lambda k=k, n=n: {"v": sim(config, kind, int(n), [config.gain], k)[0][0]},
                )
                v = cell["v"]
                var_n[i] = v.mean(), v.std(ddof=1) / np.sqrt(len(v))
            k = jax.random.fold_in(key, 1000 * ci + 100 * fi + 99)
            cell = cached(
                f"spread_{kind}_{form}",
                lambda k=k: {"s": sim(config, kind, config.spread_agents, gains, k)[1]},
            )
            sp = cell["s"]
            out[f"var_mean_{kind}_{form}"] = var_n
            out[f"spread_{kind}_{form}"] = np.stack(
                [sp.mean(1), sp.std(1, ddof=1) / np.sqrt(sp.shape[1])], -1
            )
        for label, h in (("", None), ("_euler", config.step_size)):
            out[f"theory_var_mean_{kind}{label}"] = np.array(
                [_theory(config, kind, int(n), config.gain, h)[0] for n in ns]
            )
            out[f"theory_spread_{kind}{label}"] = np.array(
                [_theory(config, kind, config.spread_agents, g, h)[1] for g in gains]
            )
    return out


def _errors(results, quantity, reference_suffix=""):
    """Signed relative errors r = sim/ref − 1 of every cell and their s.e. (s.e. of sim / ref).

    The optimizer is compared with `theory_<quantity>_<kind><reference_suffix>` ("" is the
    continuous closed form, "_euler" the Euler chain's Lyapunov solution)."""
    rel, se = [], []
    for kind in COUPLINGS:
        for form in FORMS:
            sim = results[f"{quantity}_{kind}_{form}"]
            suffix = reference_suffix if form == "discrete" else ""
            ref = results[f"theory_{quantity}_{kind}{suffix}"]
            rel.append(sim[:, 0] / ref - 1)
            se.append(sim[:, 1] / np.abs(ref))
    return np.concatenate(rel), np.concatenate(se)


def _worst_abs(values, se):
    """A "|value| < tol in every cell" claim: the largest |value| and the interval (largest
    distance of a cell's value ± Z·se from 0, largest |value| + Z·se). It lies below tol iff
    every cell's interval lies within ±tol, and from tol up iff one cell's lies wholly
    outside. The interval is None when a value is not finite (the claim then fails on it)."""
    values, se = np.abs(np.ravel(values)), np.ravel(se)
    value = float(np.max(values))
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(se))):
        return value, None
    return value, (float(np.max(np.maximum(values - Z * se, 0.0))), float(np.max(values + Z * se)))


def _slope(ns, stats):
    """Least-squares slope of log mean on log N and its s.e. from the points' relative s.e.
    (independent cells): slope = Σ c_i log v_i, se² = Σ c_i² (s_i / v_i)²."""
    x = np.log(np.asarray(ns, dtype=float))
    c = (x - x.mean()) / np.sum((x - x.mean()) ** 2)
    v, s = stats[:, 0], stats[:, 1]
    return float(c @ np.log(v)), float(np.sqrt(np.sum((c * s / v) ** 2)))


def _analysis(results):
    var_rel, var_se = _errors(results, "var_mean")
    spread_rel, spread_se = _errors(results, "spread")
    var_rel_e, var_se_e = _errors(results, "var_mean", "_euler")
    spread_rel_e, spread_se_e = _errors(results, "spread", "_euler")
    out = {
        "var_mean": _worst_abs(var_rel, var_se),
        "spread": _worst_abs(spread_rel, spread_se),
        # Monte-Carlo consistency: |sim − exact target| in s.e., the optimizer against its
        # Euler chain's Lyapunov solution (its O(h) offset from the closed form is no noise)
        "var_mean_z_max": float(np.max(np.abs(var_rel_e) / var_se_e)),
        "spread_z_max": float(np.max(np.abs(spread_rel_e) / spread_se_e)),
        "euler": float(max(np.abs(var_rel_e).max(), np.abs(spread_rel_e).max())),
    }
    ns = results["agent_counts"]
    if len(ns) > 1:
        slopes = {f: _slope(ns, results[f"var_mean_all_to_all_{f}"]) for f in FORMS}
        out["slopes"] = slopes
        out["slope"] = _worst_abs(
            [b + 1 for b, _ in slopes.values()], [se for _, se in slopes.values()]
        )
    return out


def metrics(results, config) -> dict[str, float]:
    a = _analysis(results)
    (var_lo, var_hi), (spread_lo, spread_hi) = (
        (np.nan, np.nan) if iv is None else iv for iv in (a["var_mean"][1], a["spread"][1])
    )
    m = {
        "var_mean_rel_err_max": a["var_mean"][0],
        "var_mean_rel_err_lo": var_lo,
        "var_mean_rel_err_hi": var_hi,
        "spread_rel_err_max": a["spread"][0],
        "spread_rel_err_lo": spread_lo,
        "spread_rel_err_hi": spread_hi,
        "var_mean_z_max": a["var_mean_z_max"],
        "spread_z_max": a["spread_z_max"],
        "discrete_vs_euler_lyapunov_rel_err_max": a["euler"],
    }
    for form, (b, se) in a.get("slopes", {}).items():
        m[f"var_mean_slope_vs_N_{form}"] = b
        m[f"var_mean_slope_vs_N_{form}_se"] = se
    return m


def claims(results, config):
    a = _analysis(results)
    out = [
        claim_less(
            "var_mean_matches_closed_form",
            "Simulated Var(x̄) (SDE and optimizer, both couplings, every N) matches "
            "σ²/(2ηaN) and the quorum closed form (largest |relative error|; "
            "interval: ±2 s.e. over independent runs, worst cell)",
            a["var_mean"][0],
            config.rel_tol,
            interval=a["var_mean"][1],
        ),
        claim_less(
            "spread_matches_closed_form",
            "Simulated spread E e_i² matches σ²(N−1)/(2N(ηa+k)) for every k (largest "
            "|relative error|; interval: ±2 s.e. over independent runs, worst cell)",
            a["spread"][0],
            config.rel_tol,
            interval=a["spread"][1],
        ),
    ]
    if "slope" in a:
        out.append(
            claim_less(
                "mean_noise_scales_as_1_over_N",
                "Coupling reduces the spatial mean's noise as 1/N: |slope of log Var(x̄) vs "
                "log N + 1| (all-to-all, SDE and optimizer, larger of the two; interval from "
                "the slope ± 2 s.e. propagated from the runs)",
                a["slope"][0],
                config.slope_tol,
                interval=a["slope"][1],
            )
        )
    return out


def plot(results, config):
    fig, (ax1, ax2) = figure(2)
    ns, gains = results["agent_counts"], results["gains"]
    styles = {"all_to_all": "C0", "quorum": "C1"}
    for kind in COUPLINGS:
        c = styles[kind]
        label = "all-to-all" if kind == "all_to_all" else f"quorum (k_z={config.quorum_gain:g})"
        ax1.plot(
            ns, results[f"theory_var_mean_{kind}"], "-", color=c, label=f"{label}: closed form"
        )
        ax2.plot(
            gains, results[f"theory_spread_{kind}"], "-", color=c, label=f"{label}: closed form"
        )
        for form, marker in zip(FORMS, ("o", "s")):
            v = results[f"var_mean_{kind}_{form}"]
            ax1.errorbar(
                ns,
                v[:, 0],
                yerr=Z * v[:, 1],
                fmt=marker,
                color=c,
                mfc="none",
                label=f"{label}: {form}",
            )
            s = results[f"spread_{kind}_{form}"]
            ax2.errorbar(
                gains,
                s[:, 0],
                yerr=Z * s[:, 1],
                fmt=marker,
                color=c,
                mfc="none",
                label=f"{label}: {form}",
            )
    ax1.plot(
        ns,
        [
            theory.uncoupled_variance(
                sigma=config.sigma, gradient_scale=config.gradient_scale, curvature=config.curvature
            )
        ]
        * len(ns),
        "k:",
        label="one uncoupled agent",
    )
    ax1.set(xscale="log", yscale="log", xlabel="number of agents N", ylabel="Var(x̄) (stationary)",
            title=f"Spatial-mean noise, k={config.gain:g}")  # fmt: skip
    ax2.set(xlabel="coupling gain k (1/time)", ylabel="spread E e_i² (stationary)",
            title=f"Spread around x̄, N={config.spread_agents}")  # fmt: skip
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.suptitle(
        f"Protocol ours: f = ½ a x², σ={config.sigma:g}, η={config.gradient_scale:g}; "
        f"SDE: Heun h={config.sde_step_size:g}; optimizer: h={config.step_size:g}; "
        f"{config.runs} runs, burn-in {config.burn_in:g}, sampled {config.sample_time:g}; "
        f"bars: ±2 s.e. over runs",
        fontsize=9,
    )
    return {"noise_reduction": fig}
