"""Less smoothing of the loss: the spread of the agents around x̄ against the coupling gain k.

The spatial mean of N coupled agents moves with the average gradient,
`dx̄ = −η mean_i ∇f(x̄ + e_i) dt + (σ/√N) dW̄`, so it descends f convolved with the
distribution of the deviations `e_i = x_i − x̄`: the loss seen by x̄ is smoothed over a width
`D = E (1/N) Σ_i e_i²`. Coupling shrinks D (docs/papers.md, claim 2); for uncoupled agents D is
the spread of independent SGD runs, the smoothing plain SGD imposes.

Protocol (ours): the multi-well `f(x) = x²/20 + sin²(πx)` (1-D), N agents started at x* = 0,
all-to-all coupling `k(x̄ − x_i)`, additive noise σ small enough that the agents stay in the
global well. D is averaged over time after a burn-in and over independent runs (vmapped),
for the SDE (Diffrax Heun, accurate to O(h²)) and the discrete optimizer (`solve_discrete`,
step h). Theory: the linearization at x* (`theory.stationary_moments`), i.e.
`σ²(N−1)/(2N(ηa + k))` with `a = f''(x*) = 1/10 + 2π²` (the landscape's Hessian at its
minimizer), and the Euler chain's Lyapunov solution for the optimizer. The
right panel draws the loss seen by x̄, `E f(x + √D ξ)` with ξ standard normal, which for this f is
`q(x² + D) + (A/2)(1 − e^{−2π² D} cos 2πx)`: coupling restores the wells that smoothing hides.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from algorithms.discrete import solve_discrete
from dynamics import theory
from dynamics.coupling import MeanField
from dynamics.landscapes import TiltedMultiWell
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve_runs
from dynamics.system import CoupledSystem

from .harness.contract import claim_less
from .harness.plotting import figure

NAME = "smoothing"
DESCRIPTION = "Spread of agents around x̄ (the smoothing width seen by the mean) vs k, vs theory"

FORMS = ("continuous", "discrete")


@dataclasses.dataclass(frozen=True)
class Config:
    sigma: float = dataclasses.field(default=0.3, metadata={"help": "noise intensity σ"})
    gradient_scale: float = dataclasses.field(default=1.0, metadata={"help": "η in the drift"})
    agent_counts: tuple[int, ...] = dataclasses.field(
        default=(4, 16, 64), metadata={"help": "numbers of agents N (>= 2)"}
    )
    gains: tuple[float, ...] = dataclasses.field(
        default=(0.0, 1.0, 3.0, 10.0, 30.0, 100.0), metadata={"help": "gains k (1/time)"}
    )
    runs: int = dataclasses.field(default=128, metadata={"help": "independent runs"})
    burn_in: float = dataclasses.field(default=1.0, metadata={"help": "time before sampling"})
    sample_time: float = dataclasses.field(default=20.0, metadata={"help": "time sampled"})
    sample_every: float = dataclasses.field(default=0.05, metadata={"help": "sampling interval"})
    sde_step_size: float = dataclasses.field(default=0.002, metadata={"help": "SDE step (Heun)"})
    step_size: float = dataclasses.field(default=0.005, metadata={"help": "optimizer step h"})
    rel_tol: float = dataclasses.field(
        default=0.1, metadata={"help": "claimed max relative error of D against theory"}
    )

    def __post_init__(self):
        for name in (
            "sigma",
            "gradient_scale",
            "sde_step_size",
            "step_size",
            "sample_time",
            "sample_every",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.burn_in < 0:
            raise ValueError(f"burn_in must be >= 0, got {self.burn_in}")
        if not self.agent_counts or min(self.agent_counts) < 2:
            raise ValueError(
                f"agent_counts must be >= 2 (a spread needs two agents), got {self.agent_counts}"
            )
        if len(self.gains) < 2 or min(self.gains) < 0:
            raise ValueError(f"need >= 2 gains, all >= 0, got {self.gains}")
        if self.runs < 2:
            raise ValueError(f"runs must be >= 2, got {self.runs}")
        rate = self.gradient_scale * _curvature() + max(self.gains)
        # Heun's stationary variance is off by O((rate·h)²): keep it to about 1%.
        if rate * self.sde_step_size > 0.3:
            raise ValueError(
                f"(ηa + k_max)·h = {rate * self.sde_step_size:.2f} must be <= 0.3 (SDE accuracy)"
            )
        if rate * self.step_size >= 1:
            raise ValueError(f"(ηa + k_max)·h = {rate * self.step_size:.2f} must be < 1")


QUICK = dict(
    agent_counts=(4, 16), gains=(0.0, 3.0, 10.0, 30.0), runs=64, sample_time=8.0,
    sde_step_size=0.005,
)  # fmt: skip


def _landscape():
    return TiltedMultiWell(1)


@functools.cache
def _curvature() -> float:
    """a = f''(x*), the curvature of the protocol's landscape at its global minimizer."""
    landscape = _landscape()
    return float(landscape.hessian(landscape.minimizer())[0, 0])


def _system(config, gain):
    return CoupledSystem(
        _landscape(), MeanField(gain), IsotropicNoise(config.sigma), config.gradient_scale
    )


def _spread_continuous(config, n_agents, key):
    """Per-run time-averaged spread D for every gain: `(K, R)`."""
    t1 = config.burn_in + config.sample_time
    ts = np.minimum(np.arange(config.burn_in, t1 + 1e-9, config.sample_every), t1)
    keys = jax.random.split(key, config.runs)
    x0 = jnp.zeros((n_agents, 1))

    def one(gain):
        sol = solve_runs(
            _system(config, gain), x0, keys, t1=t1, step_size=config.sde_step_size,
            solver=diffrax.Heun(), saveat=ts,
        )  # fmt: skip
        x = sol.x[..., 0]  # (R, T, N)
        return jnp.mean((x - x.mean(-1, keepdims=True)) ** 2, axis=(-2, -1))

    return np.asarray(jax.vmap(one)(jnp.asarray(config.gains, dtype=float)))


def _spread_discrete(config, n_agents, key):
    h = config.step_size
    every = max(1, round(config.sample_every / h))
    first = round(config.burn_in / h / every)
    total = (first + round(config.sample_time / h / every)) * every
    saveat = np.arange(first + 1, total // every + 1) * every * h  # after the burn-in
    keys = jax.random.split(key, config.runs)
    x0 = jnp.zeros((n_agents, 1))

    def one(gain):
        system = _system(config, gain)

        def run(k):
            sol = solve_discrete(system, x0, t1=total * h, step_size=h, key=k, saveat=saveat)
            x = sol.x[..., 0]  # (T, N)
            return ((x - x.mean(-1, keepdims=True)) ** 2).mean(-1).mean()

        return jax.vmap(run)(keys)

    return np.asarray(jax.vmap(one)(jnp.asarray(config.gains, dtype=float)))


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    ns, gains = np.asarray(config.agent_counts), np.asarray(config.gains, dtype=float)
    out: dict[str, np.ndarray] = {"agent_counts": ns, "gains": gains}
    for fi, (form, sim) in enumerate(zip(FORMS, (_spread_continuous, _spread_discrete))):
        stats = np.zeros((len(ns), len(gains), 2))
        for ni, n in enumerate(ns):
            d = sim(config, int(n), jax.random.fold_in(key, 10 * fi + ni))  # (K, R)
            stats[ni] = np.stack([d.mean(1), d.std(1, ddof=1) / np.sqrt(d.shape[1])], -1)
        out[f"spread_{form}"] = stats
    for label, h in (("", None), ("_euler", config.step_size)):
        out[f"theory_spread{label}"] = np.array(
            [
                [
                    float(
                        theory.stationary_moments(
                            _system(config, g), num_agents=int(n), step_size=h
                        ).spread[0]
                    )
                    for g in gains
                ]
                for n in ns
            ]
        )
    out["sgd_variance"] = np.asarray(
        theory.uncoupled_variance(
            sigma=config.sigma, gradient_scale=config.gradient_scale, curvature=_curvature()
        )
    )
    return out


def _rel_errors(results):
    out = []
    for form in FORMS:
        ref = results["theory_spread" + ("_euler" if form == "discrete" else "")]
        out.append(theory.relative_error(results[f"spread_{form}"][..., 0], ref).ravel())
    return np.concatenate(out)


def metrics(results, config) -> dict[str, float]:
    d = results["spread_continuous"][..., 0]
    return {
        "spread_rel_err_max": _rel_errors(results).max(),
        "spread_ratio_strongest_vs_uncoupled": (d[:, -1] / d[:, 0]).max(),
        "theory_ratio_strongest_vs_uncoupled": (
            results["theory_spread"][:, -1] / results["theory_spread"][:, 0]
        ).max(),
        "well_depth_factor_uncoupled": np.exp(-2 * math.pi**2 * d[-1, 0]),
        "well_depth_factor_strongest": np.exp(-2 * math.pi**2 * d[-1, -1]),
    }


def claims(results, config):
    m = metrics(results, config)
    gains = results["gains"]
    return [
        claim_less(
            "spread_matches_linearized_theory",
            "The spread D = E (1/N)Σ(x_i − x̄)² (SDE and optimizer, every N and k) matches the "
            "linearized theory σ²(N−1)/(2N(ηa+k)) (largest relative error)",
            m["spread_rel_err_max"],
            config.rel_tol,
        ),
        claim_less(
            "coupling_reduces_smoothing",
            f"Coupling at k={gains[-1]:g} shrinks the smoothing width D seen by x̄ to less than "
            f"half that of uncoupled agents (k={gains[0]:g}); largest ratio over N",
            m["spread_ratio_strongest_vs_uncoupled"],
            0.5,
        ),
    ]


def plot(results, config):
    fig, (ax1, ax2) = figure(2)
    ns, gains = results["agent_counts"], results["gains"]
    x_gains = np.where(gains > 0, gains, np.min(gains[gains > 0]) / 3 if np.any(gains > 0) else 1)
    for ni, n in enumerate(ns):
        c = f"C{ni}"
        ax1.plot(x_gains, results["theory_spread"][ni], "-", color=c, label=f"N={n}: theory")
        ax1.plot(
            x_gains,
            results["theory_spread_euler"][ni],
            ":",
            color=c,
            label=f"N={n}: theory, Euler h={config.step_size:g}",
        )
        for form, marker in zip(FORMS, ("o", "s")):
            s = results[f"spread_{form}"][ni]
            ax1.errorbar(
                x_gains,
                s[:, 0],
                yerr=1.96 * s[:, 1],
                fmt=marker,
                mfc="none",
                color=c,
                label=f"N={n}: {'SDE' if form == 'continuous' else 'optimizer'}",
            )
    ax1.axhline(
        float(results["sgd_variance"]),
        color="k",
        ls="--",
        lw=0.8,
        label="Var of one SGD agent σ²/(2ηa)",
    )
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="coupling gain k (1/time; k=0 drawn at left)",
        ylabel="smoothing width D = E(1/N)Σ(x_i − x̄)²",
        title="Spread around x̄ (bars: 95% CI)",
    )
    ax1.legend(fontsize=6)

    # The smoothed loss keeps the wells with depth e^{−2π²D} of the original: the fraction of
    # each barrier that the smoothing removes is 1 − e^{−2π²D}.
    def removed(d):
        return 1 - np.exp(-2 * math.pi**2 * np.asarray(d))

    for ni, n in enumerate(ns):
        c = f"C{ni}"
        ax2.plot(
            x_gains, removed(results["theory_spread"][ni]), "-", color=c, label=f"N={n}: theory"
        )
        s = results["spread_continuous"][ni]
        ax2.errorbar(
            x_gains,
            removed(s[:, 0]),
            yerr=removed(s[:, 0] + 1.96 * s[:, 1]) - removed(s[:, 0]),
            fmt="o",
            mfc="none",
            color=c,
            label=f"N={n}: SDE",
        )
    ax2.axhline(
        removed(float(results["sgd_variance"])), color="k", ls="--", lw=0.8, label="one SGD agent"
    )
    ax2.set(
        xscale="log",
        xlabel="coupling gain k (1/time; k=0 drawn at left)",
        ylabel="barrier fraction smoothed away, 1 − e^{−2π²D}",
        title="How much of each well the mean no longer sees",
    )
    ax2.legend(fontsize=7)
    fig.suptitle(
        f"f = x²/20 + sin²(πx), agents from x*=0, all-to-all coupling, σ={config.sigma:g}, "
        f"η={config.gradient_scale:g}; SDE: Heun h={config.sde_step_size:g}, {config.runs} runs; "
        f"optimizer h={config.step_size:g}. Protocol ours.",
        fontsize=8,
    )
    return {"smoothing": fig}
