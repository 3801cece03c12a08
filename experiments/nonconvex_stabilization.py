"""Coupling keeps agents in the global well at noise levels that scatter uncoupled agents
(Boffi & Slotine, claim 3: "on model nonconvex objectives, coupling tolerates more noise and
converges better").

Protocol (ours; the paper's objectives and constants were not available, docs/papers.md §1).
N agents all start at the global minimizer x* and follow the all-to-all coupled SDE
`dx_i = [−η ∇f(x_i) + k (x̄ − x_i)] dt + σ dW_i` up to time T, for every pre-registered noise
level σ, gain k (k = 0: independent agents) and number of agents N. Coupled and uncoupled
agents are always compared at the same N, σ and T, on common random numbers (run r uses the
same Brownian path for every k, `algorithms.basin_success`). Per run we record

- whether the spatial mean x̄(T) lies in the global minimizer's basin (x̄ success);
- the fraction of the N agents whose own x_i(T) lies in it (per-agent success);
- the agents' loss `(1/N) Σ_i f(x_i(t))` averaged over t ∈ [`average_from`, T] (time-averaged
  E f, sampled every `average_every`), and f(x̄(T)).

Both forms of the rule run every configuration on independent random numbers: the SDE by
Euler–Maruyama (`dynamics.solve`, step `sde_step_size`) and the discrete optimizer
(`algorithms.euler_optimizer`, step h, Gaussian gradient noise matched to σ). A diverged run
(recorded per configuration) counts as a failure: x̄ and per-agent success 0, loss +inf.

Landscapes (1-D unless stated):

- **offset** (the claim's landscape), `f(x) = x²/20 + sin²(πx) − exp(−(x − 2)²/0.08)`
  (`dynamics.landscapes.OffsetMultiWell`): the global well (x* ≈ 1.996, f ≈ −0.80) sits two
  wells away from the envelope's minimum at 0. Uncoupled agents at large σ scatter over many
  wells and their average lands near the centre of that cloud, outside the global basin;
  coupled agents move as one cloud that stays in the deep well. Here x̄ success separates
  coupled from uncoupled agents.
- **multiwell**, `x²/20 + sin²(πx) + 0.2 x` (x* ≈ −2), and **rastrigin** (2-D,
  `Σ_j x_j²/20 + 1 − cos(2π x_j)`, x* = 0): the global well *is* the envelope's minimum and the
  landscape is symmetric about x*, so the distribution of each independent agent (started at
  x*) stays symmetric about x* and the average of many independent agents lands on x* at any
  σ: x̄-in-basin cannot separate coupled from uncoupled agents there (it is reported as a
  metric, `*_mean_success_*`, and in the figure, never claimed). What the symmetric wells can
  show, and are claimed for, is per-agent: coupled agents share the global well more often and
  have a lower time-averaged loss.

Claims (every level and threshold fixed in the config or below before running; claim point
σ* = `claim_sigma_<landscape>`, N* = `claim_agents`, "every coupled gain" = every gain
≥ `claim_min_gain` in `gains`), each in both forms:

1. offset: uncoupled agents' x̄(T) lies in the global basin in fewer than `FAIL_LEVEL` of the
   runs (95 % Wilson interval over runs).
2. offset: for every coupled gain, x̄(T) lies in it in more than `STABLE_LEVEL` of the runs.
   The value is the smallest rate over the gains and the interval is (smallest lower Wilson
   bound, smallest upper bound): it holds when every gain's interval clears the level and fails
   when some gain's whole interval misses it.
3. every landscape: coupling raises the per-agent success by more than `AGENT_MARGIN` for every
   coupled gain (per-run paired differences coupled − uncoupled, mean ± 2 s.e. over runs;
   smallest over gains as in 2).
4. every landscape: coupling lowers the time-averaged E f for every coupled gain (paired
   differences uncoupled − coupled > 0, as in 3). A diverged run has loss +inf, so any
   divergence at the claim point makes this claim's value non-finite and the claim fails
   (conservatively, whichever arm diverged).

What would change the verdicts: claims 1–2 hinge on the global well being off the envelope's
minimum (on a symmetric landscape claim 1 fails by construction, see above), on σ* being large
enough to scatter independent agents and on N* being large enough that their average
concentrates (at N = 1, x̄ is one agent). Weak gains (k < `claim_min_gain`, e.g. k = 0.3 in the
grid) do not reliably keep x̄ in the offset well at σ* = 1 and are shown but not claimed. Claims 3–4
would fail at noise levels where even coupled agents scatter (k must beat the wells' negative
curvature, about 2π² on the multi-wells and 4π² on Rastrigin, to synchronize them), or with
fewer runs than the effect needs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from algorithms.sweeps import FORMS, basin_success, wilson_interval
from dynamics.coupling import MeanField
from dynamics.landscapes import AbstractLandscape, OffsetMultiWell, Rastrigin, TiltedMultiWell

from .harness.contract import (
    claim_greater,
    claim_less,
    mean_interval,
    proportion_interval,
    worst_cell,
)

NAME = "nonconvex_stabilization"
DESCRIPTION = "Coupled agents stay in the global well at noise levels that scatter uncoupled ones"

LANDSCAPES = ("offset", "multiwell", "rastrigin")
FAIL_LEVEL = 0.5  # claim 1: uncoupled x̄ in the global basin in fewer than this share of runs
STABLE_LEVEL = 0.9  # claim 2: coupled x̄ in it in more than this share
AGENT_MARGIN = 0.1  # claim 3: coupling raises the share of agents in it by more than this
LOSS_MARGIN = 0.0  # claim 4: coupling lowers the time-averaged E f by more than this
QUANTITIES = ("success", "agent_success", "time_avg_loss", "diverged")


@dataclasses.dataclass(frozen=True)
class Config:
    landscapes: tuple[str, ...] = dataclasses.field(
        default=LANDSCAPES, metadata={"help": f"landscapes, among {LANDSCAPES}"}
    )
    agent_counts: tuple[int, ...] = dataclasses.field(
        default=(4, 16, 64), metadata={"help": "numbers of agents N"}
    )
    claim_agents: int = dataclasses.field(
        default=64, metadata={"help": "N* of the claims (one of agent_counts)"}
    )
    gains: tuple[float, ...] = dataclasses.field(
        default=(0.0, 0.3, 1.0, 3.0, 10.0, 30.0),
        metadata={"help": "coupling gains k (1/time), starting with 0 (uncoupled)"},
    )
    claim_min_gain: float = dataclasses.field(
        default=1.0, metadata={"help": "claims cover every gain k >= this"}
    )
    sigmas_offset: tuple[float, ...] = dataclasses.field(
        default=(0.7, 1.0, 1.5, 2.0, 3.0), metadata={"help": "noise σ, offset well"}
    )
    sigmas_multiwell: tuple[float, ...] = dataclasses.field(
        default=(0.7, 1.0, 1.5, 2.2), metadata={"help": "noise σ, multi-well"}
    )
    sigmas_rastrigin: tuple[float, ...] = dataclasses.field(
        default=(0.8, 1.2, 1.6, 2.2), metadata={"help": "noise σ, Rastrigin"}
    )
    claim_sigma_offset: float = dataclasses.field(
        default=1.0, metadata={"help": "σ* of the offset-well claims"}
    )
    claim_sigma_multiwell: float = dataclasses.field(
        default=1.0, metadata={"help": "σ* of the multi-well claims"}
    )
    claim_sigma_rastrigin: float = dataclasses.field(
        default=1.2, metadata={"help": "σ* of the Rastrigin claims"}
    )
    tilt: float = dataclasses.field(default=0.2, metadata={"help": "tilt t of the multi-well"})
    gradient_scale: float = dataclasses.field(default=1.0, metadata={"help": "η in the drift"})
    time: float = dataclasses.field(default=20.0, metadata={"help": "horizon T (time units)"})
    average_from: float = dataclasses.field(
        default=10.0, metadata={"help": "time-averaged E f over [this, T]"}
    )
    average_every: float = dataclasses.field(
        default=0.5, metadata={"help": "time between the samples of the time average"}
    )
    sde_step_size: float = dataclasses.field(
        default=0.01, metadata={"help": "SDE step (Euler–Maruyama)"}
    )
    step_size: float = dataclasses.field(default=0.02, metadata={"help": "optimizer step h"})
    runs: int = dataclasses.field(default=96, metadata={"help": "independent runs per config"})

    def __post_init__(self):
        for name in ("gradient_scale", "time", "sde_step_size", "step_size", "average_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        unknown = [name for name in self.landscapes if name not in LANDSCAPES]
        if not self.landscapes or unknown or len(set(self.landscapes)) != len(self.landscapes):
            raise ValueError(f"landscapes must be distinct, among {LANDSCAPES}: {self.landscapes}")
        if not self.agent_counts or min(self.agent_counts) < 1:
            raise ValueError(f"agent_counts must be >= 1, got {self.agent_counts}")
        if self.claim_agents not in self.agent_counts or self.claim_agents < 2:
            raise ValueError(
                f"claim_agents={self.claim_agents} must be >= 2 and one of {self.agent_counts}"
            )
        if len(self.gains) < 2 or min(self.gains) < 0 or self.gains[0] != 0:
            raise ValueError(f"gains must start with 0 (uncoupled) and be >= 0, got {self.gains}")
        if not self.claim_min_gain > 0 or not any(k >= self.claim_min_gain for k in self.gains):
            raise ValueError(
                f"claim_min_gain={self.claim_min_gain} must be > 0 with some gain >= it "
                f"in {self.gains}"
            )
        for name in LANDSCAPES:
            s = getattr(self, f"sigmas_{name}")
            if not s or min(s) <= 0:
                raise ValueError(f"sigmas_{name} must be a non-empty tuple of values > 0, got {s}")
            star = getattr(self, f"claim_sigma_{name}")
            if name in self.landscapes and star not in s:
                raise ValueError(f"claim_sigma_{name}={star} must be one of sigmas_{name}={s}")
        for name, step in (("sde_step_size", self.sde_step_size), ("step_size", self.step_size)):
            if not _multiple(self.time, step):
                raise ValueError(f"time {self.time} is not a multiple of {name}={step}")
            if not _multiple(self.average_every, step):
                raise ValueError(f"average_every {self.average_every} is not a multiple of {name}")
        if not 0 <= self.average_from < self.time:
            raise ValueError(f"average_from must lie in [0, time), got {self.average_from}")
        for name in ("time", "average_from"):
            if not _multiple(getattr(self, name), self.average_every):
                raise ValueError(f"{name}={getattr(self, name)} is not a multiple of average_every")
        if self.runs < 3:
            raise ValueError(f"runs must be >= 3, got {self.runs}")


def _multiple(value: float, of: float) -> bool:
    q = value / of
    return abs(q - round(q)) <= 1e-6


QUICK = dict(
    agent_counts=(64,),
    gains=(0.0, 1.0, 10.0, 30.0),
    sigmas_offset=(1.0, 2.0),
    sigmas_multiwell=(1.0,),
    sigmas_rastrigin=(1.2,),
    runs=48,
)


def landscape(name: str, config) -> AbstractLandscape:
    """The protocol's landscape by name (see `LANDSCAPES`)."""
    if name == "offset":
        return OffsetMultiWell(1)
    if name == "multiwell":
        return TiltedMultiWell(1, tilt=config.tilt)
    if name == "rastrigin":
        return Rastrigin(2)
    raise ValueError(f"unknown landscape {name!r}; expected one of {LANDSCAPES}")


def sigmas(name: str, config) -> tuple[float, ...]:
    """The protocol's noise levels σ for the named landscape."""
    return getattr(config, f"sigmas_{name}")


def step_size(form: str, config) -> float:
    """The time step of a form: `sde_step_size` (continuous) or `step_size` (discrete)."""
    return config.sde_step_size if form == "continuous" else config.step_size


def _cell(land, sig, num_agents, form, config, key) -> dict[str, np.ndarray]:
    """`basin_success` over (σ, every gain, runs) for one landscape, form and N."""
    return basin_success(
        land, MeanField(0.0), lambda r: r.gain, jnp.asarray(config.gains, dtype=float), sig,
        num_agents=num_agents, form=form, gradient_scale=config.gradient_scale, t1=config.time,
        step_size=step_size(form, config), num_runs=config.runs, key=key,
        average_from=config.average_from, average_every=config.average_every,
    )  # fmt: skip


def run(config: Config, key: jax.Array, cache=None) -> dict[str, np.ndarray]:
    """Every (landscape, form, N) cell; with a `RunCache`, finished cells survive a kill."""
    cached = cache.cached if cache is not None else (lambda name, fn: fn())
    gains = np.asarray(config.gains, dtype=float)
    out: dict[str, np.ndarray] = {
        "agent_counts": np.asarray(config.agent_counts),
        "gains": gains,
        "runs": np.asarray(config.runs),
    }
    claim_n = list(config.agent_counts).index(config.claim_agents)
    for name in config.landscapes:
        li = LANDSCAPES.index(name)
        land = landscape(name, config)
        sig = sigmas(name, config)
        claim_s = list(sig).index(getattr(config, f"claim_sigma_{name}"))
        out[f"sigmas_{name}"] = np.asarray(sig, dtype=float)
        for fi, form in enumerate(FORMS):
            cells = []
            for ni, n in enumerate(config.agent_counts):
                k = jax.random.fold_in(key, 100 * li + 10 * fi + ni)
                cell = functools.partial(_cell, land, sig, int(n), form, config, k)
                cells.append(cached(f"{name}_{form}_N{n}", cell))
            # (N, S, K, R) -> per-config summaries (N, S, K) and the claim point's runs (K, R)
            per_run = {q: np.stack([c[q] for c in cells]) for q in QUANTITIES + ("loss",)}
            tag = f"{name}_{form}"
            out[f"success_{tag}"] = per_run["success"].mean(-1)
            out[f"agent_success_{tag}"] = per_run["agent_success"].mean(-1)
            out[f"diverged_{tag}"] = per_run["diverged"].mean(-1)
            for q in ("time_avg_loss", "loss"):
                v = per_run[q]
                out[f"{q}_{tag}"] = v.mean(-1)  # +inf where a run diverged
                out[f"{q}_se_{tag}"] = v.std(-1, ddof=1) / math.sqrt(v.shape[-1])
            for q in QUANTITIES:
                out[f"claim_runs_{q}_{tag}"] = per_run[q][claim_n, claim_s]
        out[f"f_star_{name}"] = np.asarray(land.value(land.minimizer()))
    return out


def _claimed(results, config) -> np.ndarray:
    """Indices of the coupled gains the claims cover (k >= claim_min_gain)."""
    return np.flatnonzero(np.asarray(results["gains"]) >= config.claim_min_gain)


def _analysis(results, config, name, form) -> dict:
    """The claim point's numbers on one landscape and form (see the module docstring)."""
    tag = f"{name}_{form}"
    runs = {q: np.asarray(results[f"claim_runs_{q}_{tag}"]) for q in QUANTITIES}
    num_runs = runs["success"].shape[-1]
    coupled = _claimed(results, config)
    rate = [proportion_interval(int(runs["success"][ki].sum()), num_runs) for ki in coupled]
    agent_gain = [
        mean_interval(runs["agent_success"][ki] - runs["agent_success"][0]) for ki in coupled
    ]
    loss_gain = [
        mean_interval(runs["time_avg_loss"][0] - runs["time_avg_loss"][ki]) for ki in coupled
    ]
    return {
        "uncoupled_mean_success": proportion_interval(int(runs["success"][0].sum()), num_runs),
        "coupled_mean_success": worst_cell(rate, claim="greater"),
        "agent_success_gain": worst_cell(agent_gain, claim="greater"),
        "time_avg_loss_gain": worst_cell(loss_gain, claim="greater"),
        "uncoupled_agent_success": float(runs["agent_success"][0].mean()),
        "coupled_agent_success": float(runs["agent_success"][coupled].mean(-1).min()),
        "uncoupled_time_avg_loss": float(runs["time_avg_loss"][0].mean()),
        "coupled_time_avg_loss": float(runs["time_avg_loss"][coupled].mean(-1).max()),
        "diverged": float(runs["diverged"].mean()),
    }


def _stable_sigma(results, config, name, form, gains) -> float:
    """Largest σ of the grid at which x̄ success (N*) is >= STABLE_LEVEL for some gain in
    `gains` (indices); 0 if none."""
    ni = list(np.asarray(results["agent_counts"])).index(config.claim_agents)
    success = np.asarray(results[f"success_{name}_{form}"])[ni][:, gains].max(-1)
    ok = np.flatnonzero(success >= STABLE_LEVEL)
    return float(results[f"sigmas_{name}"][ok].max()) if ok.size else 0.0


def metrics(results, config) -> dict[str, float]:
    m = {}
    coupled = _claimed(results, config)
    for name in config.landscapes:
        for form in FORMS:
            tag = f"{name}_{form}"
            a = _analysis(results, config, name, form)
            m[f"{tag}_uncoupled_mean_success"] = a["uncoupled_mean_success"][0]
            m[f"{tag}_coupled_mean_success_min"] = a["coupled_mean_success"][0]
            m[f"{tag}_uncoupled_agent_success"] = a["uncoupled_agent_success"]
            m[f"{tag}_coupled_agent_success_min"] = a["coupled_agent_success"]
            m[f"{tag}_agent_success_gain_min"] = a["agent_success_gain"][0]
            m[f"{tag}_uncoupled_time_avg_loss"] = a["uncoupled_time_avg_loss"]
            m[f"{tag}_coupled_time_avg_loss_max"] = a["coupled_time_avg_loss"]
            m[f"{tag}_time_avg_loss_gain_min"] = a["time_avg_loss_gain"][0]
            m[f"{tag}_stable_sigma_uncoupled"] = _stable_sigma(results, config, name, form, [0])
            m[f"{tag}_stable_sigma_coupled"] = _stable_sigma(results, config, name, form, coupled)
            m[f"{tag}_diverged_fraction_max"] = float(np.max(results[f"diverged_{tag}"]))
    return m


def claims(results, config):
    out = []
    n_star = config.claim_agents
    k_min = config.claim_min_gain
    for name in config.landscapes:
        s_star = getattr(config, f"claim_sigma_{name}")
        for form in FORMS:
            tag = f"{name}_{form}"
            what = "SDE" if form == "continuous" else "discrete optimizer"
            where = f"{name}, {what}, σ={s_star:g}, N={n_star}"
            a = _analysis(results, config, name, form)
            if name == "offset":
                p, iv = a["uncoupled_mean_success"]
                out.append(
                    claim_less(
                        f"{tag}_uncoupled_mean_leaves_basin",
                        f"{where}: share of runs in which the mean x̄(T) of uncoupled agents "
                        "lies in the global basin (Wilson 95%)",
                        p,
                        FAIL_LEVEL,
                        interval=iv,
                    )
                )
                p, iv = a["coupled_mean_success"]
                out.append(
                    claim_greater(
                        f"{tag}_coupled_mean_stays_in_basin",
                        f"{where}: share of runs in which x̄(T) lies in the global basin, "
                        f"smallest over every coupled gain k >= {k_min:g} (Wilson 95%)",
                        p,
                        STABLE_LEVEL,
                        interval=iv,
                    )
                )
            v, iv = a["agent_success_gain"]
            out.append(
                claim_greater(
                    f"{tag}_coupling_raises_agent_success",
                    f"{where}: coupled minus uncoupled share of agents in the global basin at T "
                    f"(paired runs, mean ± 2 s.e.), smallest over k >= {k_min:g}",
                    v,
                    AGENT_MARGIN,
                    interval=iv,
                )
            )
            v, iv = a["time_avg_loss_gain"]
            out.append(
                claim_greater(
                    f"{tag}_coupling_lowers_time_avg_loss",
                    f"{where}: uncoupled minus coupled agents' loss averaged over "
                    f"t ∈ [{config.average_from:g}, {config.time:g}] (paired runs, mean ± 2 "
                    f"s.e.), smallest over k >= {k_min:g}",
                    v,
                    LOSS_MARGIN,
                    interval=iv,
                )
            )
    return out


ROWS = (
    ("success", "P(x̄(T) in global basin)"),
    ("agent_success", "share of agents in global basin at T"),
    ("time_avg_loss", "agents' E f, time-averaged"),
)


def plot(results, config):
    figs = {}
    ns, gains, runs = results["agent_counts"], results["gains"], int(results["runs"])
    for name in config.landscapes:
        sig = results[f"sigmas_{name}"]
        fig = Figure(figsize=(3.6 * len(ns), 3.0 * len(ROWS)), layout="constrained")
        axes = np.asarray(fig.subplots(len(ROWS), len(ns), squeeze=False))
        for ni, n in enumerate(ns):
            for ri, (q, ylabel) in enumerate(ROWS):
                ax = axes[ri, ni]
                for ki, k in enumerate(gains):
                    color = f"C{ki}"
                    for form, style in zip(FORMS, ("-", "--")):
                        tag = f"{name}_{form}"
                        y = np.asarray(results[f"{q}_{tag}"])[ni, :, ki]
                        label = f"k={k:g}" if form == "continuous" else None
                        ax.plot(sig, y, style, marker="o", ms=3, color=color, label=label)
                        bad = np.asarray(results[f"diverged_{tag}"])[ni, :, ki] > 0
                        if bad.any():
                            ax.plot(sig[bad], np.where(np.isfinite(y), y, 0)[bad], "x", color="r")
                        if form != "continuous":
                            continue
                        if q == "time_avg_loss":
                            se = np.asarray(results[f"{q}_se_{tag}"])[ni, :, ki]
                            ax.fill_between(sig, y - 2 * se, y + 2 * se, color=color, alpha=0.15)
                        elif q == "success":
                            lo, hi = wilson_interval(y * runs, runs)
                            ax.fill_between(sig, lo, hi, color=color, alpha=0.15)
                if q == "time_avg_loss":
                    ax.axhline(float(results[f"f_star_{name}"]), color="k", lw=0.8, ls=":")
                else:
                    ax.set_ylim(-0.02, 1.02)
                ax.axvline(getattr(config, f"claim_sigma_{name}"), color="gray", lw=0.6, ls=":")
                ax.set(xlabel="noise σ", ylabel=ylabel, title=f"N={n}")
        axes[0, 0].legend(fontsize=7, title="solid: SDE, dashed: optimizer", title_fontsize=7)
        symmetric = (
            "global well off the envelope's minimum"
            if name == "offset"
            else "symmetric about x*: x̄ of independent agents lands on x* (x̄ success not claimed)"
        )
        caption = (
            f"{name} ({symmetric}): agents start at x*, all-to-all k(x̄ − x_i), equal N and σ "
            f"for every k, paired runs; η={config.gradient_scale:g}, T={config.time:g}, E f "
            f"averaged over [{config.average_from:g}, {config.time:g}]; SDE Euler–Maruyama "
            f"h={config.sde_step_size:g} (bands: 95% Wilson / ±2 s.e., {runs} runs), optimizer "
            f"h={config.step_size:g}; x: diverged runs; dotted: claim σ, f(x*). Protocol ours."
        )
        fig.suptitle(textwrap.fill(caption, int(20 * 3.6 * len(ns))), fontsize=8)
        figs[f"stabilization_{name}"] = fig
    return figs
