"""The strongly convex analysis: E‖x̄ − x*‖ and the deviation over time against the bounds.

Protocol (ours; docs/papers.md claim 4, the paper's constants were not available): the
log-cosh plus quadratic `f(x) = Σ_j log cosh(x_j − c_j) + (m/2)‖x − c‖²` in 2-D
(m-strongly convex, L = m + 1 smooth), N agents started around a common point at distance
`start_distance` from x* = c with a fixed spread, additive noise σ. Three algorithms in their
continuous form (Euler–Maruyama, many independent runs, vmapped):

- quorum SGD: `dx_i = [−η∇f(x_i) + k(z − x_i)] dt + σ dW_i`,
  `dz = [−η_z ∇f(z) + k_z Σ_i (x_i − z)] dt` (the quorum variable also descends f);
- quorum SGD with momentum: the same force on the velocity, `dx_i = v_i dt`,
  `dv_i = [−γ v_i − η∇f(x_i) + k(z − x_i)] dt + σ dW_i`;
- EASGD: quorum with `g = 0` and `k = k_z = ρ`.

Drawn on top: for the two first-order algorithms the bounds of `theory.mean_distance_bound`
(derived in its docstring; valid at all times) and `theory.deviation_bound`. For momentum we
have no derived bound: it is compared with the exact moments of the system linearized at x*
(`theory.linear_moments`), a prediction rather than a bound, and the figure says so.
The 1/N scaling: the stationary E‖x̄ − x*‖² (time average over the second half of each run)
against N, fitted on a log-log scale.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dynamics import theory
from dynamics.coupling import Quorum, elastic
from dynamics.landscapes import LogCoshQuadratic
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve_runs
from dynamics.system import CoupledSystem

from .harness.contract import claim_between, claim_less
from .harness.plotting import band, figure, mean_and_se

NAME = "convex_bounds"
DESCRIPTION = "Strongly convex f: E‖x̄ − x*‖ and deviation vs the bounds (quorum, momentum, EASGD)"

ALGORITHMS = ("quorum_sgd", "momentum_quorum_sgd", "easgd")
FIRST_ORDER = ("quorum_sgd", "easgd")
LABELS = {
    "quorum_sgd": "quorum SGD",
    "momentum_quorum_sgd": "quorum SGD + momentum",
    "easgd": "EASGD",
}


@dataclasses.dataclass(frozen=True)
class Config:
    dim: int = dataclasses.field(default=2, metadata={"help": "dimension n"})
    strong_convexity: float = dataclasses.field(default=0.5, metadata={"help": "m (L = m + 1)"})
    sigma: float = dataclasses.field(default=0.5, metadata={"help": "noise intensity σ"})
    gradient_scale: float = dataclasses.field(default=1.0, metadata={"help": "η in the drift"})
    gain: float = dataclasses.field(default=2.0, metadata={"help": "quorum SGD: k (1/time)"})
    quorum_gain: float = dataclasses.field(default=0.5, metadata={"help": "quorum SGD: k_z"})
    center_gradient_scale: float = dataclasses.field(
        default=1.0, metadata={"help": "quorum SGD: η_z, z descends f"}
    )
    damping: float = dataclasses.field(default=2.0, metadata={"help": "momentum: damping γ"})
    rho: float = dataclasses.field(default=1.0, metadata={"help": "EASGD: ρ = k = k_z"})
    agent_counts: tuple[int, ...] = dataclasses.field(
        default=(1, 4, 16, 64), metadata={"help": "numbers of agents N"}
    )
    plot_agents: int = dataclasses.field(default=16, metadata={"help": "N of the time plots"})
    start_distance: float = dataclasses.field(default=4.0, metadata={"help": "‖x̄(0) − x*‖"})
    start_spread: float = dataclasses.field(
        default=0.5, metadata={"help": "std of the agents' initial offsets per coordinate"}
    )
    time: float = dataclasses.field(default=30.0, metadata={"help": "horizon T (time units)"})
    step_size: float = dataclasses.field(default=0.01, metadata={"help": "Euler–Maruyama step h"})
    saves: int = dataclasses.field(default=121, metadata={"help": "save times in [0, T]"})
    runs: int = dataclasses.field(default=256, metadata={"help": "independent runs"})

    def __post_init__(self):
        for name in ("strong_convexity", "sigma", "gradient_scale", "time", "step_size", "damping"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("gain", "center_gradient_scale", "rho", "start_distance", "start_spread"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.quorum_gain > 0:
            raise ValueError(f"quorum_gain must be > 0, got {self.quorum_gain}")
        if self.dim < 1 or not self.agent_counts or min(self.agent_counts) < 1:
            raise ValueError("need dim >= 1 and agent_counts >= 1")
        if self.plot_agents not in self.agent_counts:
            raise ValueError(f"plot_agents {self.plot_agents} must be one of {self.agent_counts}")
        if self.saves < 3 or self.runs < 2:
            raise ValueError(f"need saves >= 3 and runs >= 2, got {self.saves}, {self.runs}")


QUICK = dict(agent_counts=(1, 4, 16), runs=128, time=24.0)


def _landscape(config):
    return LogCoshQuadratic(config.dim, config.strong_convexity)


def _system(config, algorithm):
    if algorithm == "easgd":
        rule, damping = elastic(config.rho), None
    else:
        rule = Quorum(config.gain, config.quorum_gain, config.center_gradient_scale)
        damping = config.damping if algorithm == "momentum_quorum_sgd" else None
    return CoupledSystem(
        _landscape(config), rule, IsotropicNoise(config.sigma), config.gradient_scale, damping
    )


def _start(config, n_agents, key):
    """Fixed initial positions `(N, dim)`: offsets with exactly zero mean around x̄(0)."""
    direction = np.ones(config.dim) / np.sqrt(config.dim)
    offsets = np.asarray(jax.random.normal(key, (n_agents, config.dim)), dtype=float)
    offsets = config.start_spread * (offsets - offsets.mean(0)) if n_agents > 1 else 0 * offsets
    return config.start_distance * direction[None] + offsets


def _bounds(config, algorithm, n_agents, x0, ts):
    m = config.strong_convexity
    d0 = float(np.mean(np.sum((x0 - x0.mean(0)) ** 2, -1)))
    k = config.rho if algorithm == "easgd" else config.gain
    common = dict(
        sigma=config.sigma,
        dim=config.dim,
        num_agents=n_agents,
        gain=k,
        gradient_scale=config.gradient_scale,
        strong_convexity=m,
    )
    deviation = theory.deviation_bound(ts, **common, initial_deviation=d0)
    mean = theory.mean_distance_bound(
        ts,
        **common,
        smoothness=m + 1.0,
        initial_distance=config.start_distance,
        initial_deviation=d0,
        quorum_gain=config.rho if algorithm == "easgd" else config.quorum_gain,
        center_gradient_scale=0.0 if algorithm == "easgd" else config.center_gradient_scale,
    )
    limit = theory.mean_distance_limit(**common, smoothness=m + 1.0)
    return mean, deviation, limit


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    ts = np.linspace(0.0, config.time, config.saves)
    window = ts >= config.time / 2
    out: dict[str, np.ndarray] = {"ts": ts, "agent_counts": np.asarray(config.agent_counts)}
    k_start, k_runs = jax.random.split(key)
    for ai, algorithm in enumerate(ALGORITHMS):
        stationary = np.zeros((len(config.agent_counts), 2))
        for ni, n in enumerate(config.agent_counts):
            n = int(n)
            x0 = _start(config, n, jax.random.fold_in(k_start, n))
            system = _system(config, algorithm)
            keys = jax.random.split(jax.random.fold_in(k_runs, 100 * ai + ni), config.runs)
            sol = solve_runs(
                system, jnp.asarray(x0), keys, t1=config.time, step_size=config.step_size, saveat=ts
            )
            x = np.asarray(sol.x, dtype=float)  # (R, T, N, dim)
            mean = x.mean(2)
            dist_sq = np.sum(mean**2, -1)  # x* = 0
            dist = np.sqrt(dist_sq)
            dev = np.mean(np.sum((x - mean[:, :, None]) ** 2, -1), -1)
            tag = f"{algorithm}_N{n}"
            se = lambda a: mean_and_se(a)[1]  # noqa: E731
            out[f"distance_{tag}"] = np.stack([dist.mean(0), se(dist)], -1)
            out[f"rms_distance_{tag}"] = np.sqrt(dist_sq.mean(0))
            out[f"deviation_{tag}"] = np.stack([dev.mean(0), se(dev)], -1)
            per_run = dist_sq[:, window].mean(1)
            stationary[ni] = per_run.mean(), se(per_run)
            lin = theory.linear_moments(system, x0, ts)
            out[f"linear_rms_distance_{tag}"] = np.sqrt(lin.mean_sq_distance)
            out[f"linear_deviation_{tag}"] = lin.deviation
            if algorithm in FIRST_ORDER:
                bound, dev_bound, limit = _bounds(config, algorithm, n, x0, ts)
                out[f"bound_{tag}"] = bound
                out[f"deviation_bound_{tag}"] = dev_bound
                out[f"limit_{tag}"] = np.asarray(limit)
        out[f"stationary_sq_distance_{algorithm}"] = stationary
    return out


def _excess(results, config, quantity, bound_name):
    """max over t > 0, N and first-order algorithms of (simulated − 3 s.e.) / bound.

    t = 0 is left out (both sides are the initial condition there), and so is N = 1 for the
    deviation (identically zero, as is its bound).
    """
    worst = -np.inf
    for algorithm in FIRST_ORDER:
        for n in results["agent_counts"]:
            if quantity == "deviation" and n == 1:
                continue
            tag = f"{algorithm}_N{n}"
            sim = results[f"{quantity}_{tag}"][1:]
            bound = results[f"{bound_name}_{tag}"][1:]
            worst = max(worst, np.max((sim[:, 0] - 3 * sim[:, 1]) / bound))
    return worst


def _slope(results, algorithm, linear=False):
    """Fitted slope of log stationary E‖x̄ − x*‖² against log N (simulated or linearized)."""
    ns = results["agent_counts"]
    if len(ns) < 2:
        return np.nan
    if linear:
        v = [results[f"linear_rms_distance_{algorithm}_N{n}"][-1] ** 2 for n in ns]
    else:
        v = results[f"stationary_sq_distance_{algorithm}"][:, 0]
    return np.polyfit(np.log(ns), np.log(v), 1)[0]


def _momentum_error(results, config):
    """Relative error of the stationary RMS distance (momentum) against the linear prediction."""
    ts = results["ts"]
    window = ts >= ts[-1] / 2
    errs = []
    for n in results["agent_counts"]:
        tag = f"momentum_quorum_sgd_N{n}"
        sim = results[f"rms_distance_{tag}"][window] ** 2
        ref = results[f"linear_rms_distance_{tag}"][window] ** 2
        errs.append(abs(np.sqrt(sim.mean()) / np.sqrt(ref.mean()) - 1))
    return max(errs)


def metrics(results, config) -> dict[str, float]:
    m = {
        "mean_distance_over_bound_max": _excess(results, config, "distance", "bound"),
        "deviation_over_bound_max": _excess(results, config, "deviation", "deviation_bound"),
        "momentum_rms_distance_rel_err_vs_linear": _momentum_error(results, config),
    }
    for algorithm in ALGORITHMS:
        m[f"{algorithm}_slope_vs_N"] = _slope(results, algorithm)
        # What the linearized system predicts for the same N (the quorum variable, noise-free,
        # also filters x̄, so the exact dependence on N is weaker than 1/N at small N).
        m[f"{algorithm}_linear_theory_slope_vs_N"] = _slope(results, algorithm, linear=True)
    return m


def claims(results, config):
    m = metrics(results, config)
    out = [
        claim_less(
            "mean_distance_under_bound",
            "Quorum SGD and EASGD: E‖x̄ − x*‖ − 3 s.e. stays under theory.mean_distance_bound "
            "at all times t > 0 and every N (largest ratio)",
            m["mean_distance_over_bound_max"],
            1.0,
        ),
        claim_less(
            "deviation_under_bound",
            "Quorum SGD and EASGD: E(1/N)Σ‖x_i − x̄‖² − 3 s.e. stays under "
            "theory.deviation_bound at all times t > 0 and every N >= 2 (largest ratio)",
            m["deviation_over_bound_max"],
            1.0,
        ),
        claim_less(
            "momentum_matches_linearized_prediction",
            "Quorum SGD with momentum (no bound derived): stationary RMS ‖x̄ − x*‖ within 10% of "
            "the linearized system's exact prediction (largest relative error over N)",
            m["momentum_rms_distance_rel_err_vs_linear"],
            0.1,
        ),
    ]
    if len(results["agent_counts"]) > 1:
        for algorithm in ALGORITHMS:
            out.append(
                claim_between(
                    f"{algorithm}_mean_noise_scales_as_1_over_N",
                    f"{LABELS[algorithm]}: stationary E‖x̄ − x*‖² scales as 1/N (fitted slope "
                    "against log N)",
                    m[f"{algorithm}_slope_vs_N"],
                    -1.15,
                    -0.85,
                )
            )
            # Where the slope departs from −1 (a quorum variable without noise filters x̄
            # at small N), the linearized system should predict by how much.
            out.append(
                claim_less(
                    f"{algorithm}_slope_matches_linearized_theory",
                    f"{LABELS[algorithm]}: |simulated slope − linearized-theory slope| of "
                    "E‖x̄ − x*‖² against log N",
                    abs(m[f"{algorithm}_slope_vs_N"] - m[f"{algorithm}_linear_theory_slope_vs_N"]),
                    0.05,
                )
            )
    return out


def plot(results, config):
    ts, ns = results["ts"], results["agent_counts"]
    n = config.plot_agents
    fig, axes = figure(3, width=4.3, height=3.6)
    fig2, axes2 = figure(3, width=4.3, height=3.6)
    for ax, ax2, algorithm in zip(axes, axes2, ALGORITHMS):
        tag = f"{algorithm}_N{n}"
        sim = results[f"distance_{tag}"]
        band(ax, ts, sim[:, 0], 1.96 * sim[:, 1], label="simulated E‖x̄ − x*‖ (95% CI)")
        ax.plot(
            ts,
            results[f"linear_rms_distance_{tag}"],
            "k:",
            label="linearized prediction of sqrt E‖x̄ − x*‖²",
        )
        dev = results[f"deviation_{tag}"]
        band(ax2, ts, dev[:, 0], 1.96 * dev[:, 1], label="simulated E(1/N)Σ‖x_i − x̄‖² (95% CI)")
        ax2.plot(ts, results[f"linear_deviation_{tag}"], "k:", label="linearized prediction")
        if algorithm in FIRST_ORDER:
            ax.plot(ts, results[f"bound_{tag}"], "r-", label="bound (theory)")
            ax.axhline(
                float(results[f"limit_{tag}"]), color="r", ls="--", lw=0.8, label="asymptotic bound"
            )
            ax2.plot(ts, results[f"deviation_bound_{tag}"], "r-", label="bound (theory)")
        else:
            ax.set_title(f"{LABELS[algorithm]}, N={n}\n(no bound derived: linearized prediction)")
            ax2.set_title(f"{LABELS[algorithm]}, N={n}\n(no bound derived: linearized prediction)")
        if algorithm in FIRST_ORDER:
            ax.set_title(f"{LABELS[algorithm]}, N={n}")
            ax2.set_title(f"{LABELS[algorithm]}, N={n}")
        ax.set(yscale="log", xlabel="time t", ylabel="distance of x̄ to x*")
        ax2.set(yscale="log", xlabel="time t", ylabel="deviation (1/N)Σ‖x_i − x̄‖²")
        ax.legend(fontsize=6)
        ax2.legend(fontsize=6)
    fig3, (ax3,) = figure(1)
    for i, algorithm in enumerate(ALGORITHMS):
        s = results[f"stationary_sq_distance_{algorithm}"]
        ax3.errorbar(
            ns,
            s[:, 0],
            yerr=1.96 * s[:, 1],
            fmt="o",
            color=f"C{i}",
            label=f"{LABELS[algorithm]} (slope {_slope(results, algorithm):.2f})",
        )
    ref = results["stationary_sq_distance_easgd"][0, 0] * ns[0] / ns
    ax3.plot(ns, ref, "k:", label="∝ 1/N")
    noise = config.dim * config.sigma**2 / (2 * config.gradient_scale * config.strong_convexity)
    ax3.plot(ns, noise / ns, "r--", lw=0.8, label="bound's noise term nσ²/(2ηmN)")
    ax3.set(
        xscale="log",
        yscale="log",
        xlabel="number of agents N",
        ylabel="stationary E‖x̄ − x*‖²",
        title="Noise of the spatial mean vs N",
    )
    ax3.legend(fontsize=7)
    caption = (
        f"f = Σ log cosh(x_j) + (m/2)‖x‖², n={config.dim}, m={config.strong_convexity:g}, "
        f"σ={config.sigma:g}, η={config.gradient_scale:g}; quorum: k={config.gain:g}, "
        f"k_z={config.quorum_gain:g}, η_z={config.center_gradient_scale:g}, γ={config.damping:g}; "
        f"EASGD ρ={config.rho:g}; Euler–Maruyama h={config.step_size:g}, {config.runs} runs. "
        "Protocol ours."
    )
    for f in (fig, fig2, fig3):
        f.suptitle(caption, fontsize=7)
    return {"mean_distance": fig, "deviation": fig2, "scaling_with_N": fig3}
