"""Coupling shaped by each agent's broadcast loss, against plain quorum (Boffi & Slotine, claim 5).

The paper's exact rules were not available; ours (`dynamics.broadcast`) are
- success-weighted quorum: `dz = k_z Σ_i r_i (x_i − z) dt`, `r = N softmax(−β ℓ)`, force
  `k(z − x_i)`; β = 0 is plain quorum;
- loss-weighted gains: `k_i = k N softmax(+β ℓ)_i` toward x̄ (worse agents pulled harder);
  β = 0 is all-to-all coupling;
- leader: every agent pulled toward the soft arg-min `Σ_j softmax(−ℓ/T)_j x_j` (T = 0: the
  current best agent).

Protocol (ours): three landscapes, N agents started independently and uniformly in the box
`e ± start_halfwidth` around the envelope's minimum e (a search from scattered starts that
does not know x*, where the agents' losses carry information), additive noise σ swept, horizon
T. A run succeeds when x̄(T) lies in the global basin (`algorithms.basin_success`, the sweep of
`nonconvex_stabilization`); diverged runs (recorded) are failures.

- **offset** `x²/20 + sin²(πx) − exp(−(x − 2)²/0.08)` (`dynamics.landscapes.OffsetMultiWell`):
  e = 0 while x* ≈ 2, so the mean of the starts sits two wells away from x* and a rule that
  follows x̄ has no hint of where x* is; only the losses point to the deep well. This is the
  landscape where a "measure of success" is meaningful, and the main evidence.
- **multiwell** `x²/20 + sin²(πx) + 0.2 x` (1-D) and **rastrigin** (2-D): symmetric about
  x* = e, so the starts are centred on x* (the old protocol) and the mean already points at
  x*; the wells' losses differ by little (the tilt, the bowl). Additional evidence.

Every variant runs on the same settings (N, k, k_z, σ, T, step) and on common random numbers:
run r has the same starts and noise for every variant within a form (paired runs). The rule's
shape parameter (β or T) is swept under `jax.vmap`. The rules without a measure of success
are plain quorum (the β = 0 member of the success-weighted family, same k and k_z) and
all-to-all coupling `k(x̄ − x_i)` (β = 0 of the loss-weighted gains, and the T → ∞ leader);
uncoupled agents are a reference. Each rule runs in both forms: the SDE (Euler–Maruyama) and
the discrete optimizer with matched Gaussian gradient noise, on independent random numbers.

Claim (threshold fixed before running), per landscape: the best broadcast configuration and
the best plain rule, each chosen on the SDE runs by its success averaged over σ (both sides
get the same selection), are compared in the discrete form (an independent replication, free
of the selection's optimism): the broadcast rule succeeds more often by more than `MARGIN` in
success averaged over σ. Its interval is mean ± 2 s.e. over runs of the per-run paired
differences (each run's success averaged over σ, broadcast minus plain). The SDE-form gain
(optimistic: selected on those runs) is a metric only; figure bands are 95 % Wilson intervals
over runs.

What would change the verdict: starting the agents centred on x* hands the mean-following rules
the answer on a landscape whose global well is off the envelope's minimum (not done here: the
offset starts are centred on e); a landscape whose losses do not rank the wells (equal-depth
wells) would leave the broadcast rules nothing to read; at noise levels where even the best
agent cannot hold the deep well all rules fail alike.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.sweeps import FORMS, basin_success, wilson_interval
from dynamics.broadcast import Leader, LossWeightedGains, SuccessWeightedQuorum
from dynamics.coupling import MeanField, Quorum
from dynamics.landscapes import AbstractLandscape, OffsetMultiWell, Rastrigin, TiltedMultiWell

from .harness.contract import claim_greater, mean_interval
from .harness.plotting import figure

NAME = "broadcast_success"
DESCRIPTION = "Loss-shaped coupling (success-weighted quorum, loss gains, leader) vs plain quorum"

LANDSCAPES = ("offset", "multiwell", "rastrigin")
VARIANTS = ("plain_quorum", "success_weighted_quorum", "loss_weighted_gains", "leader")
LABELS = {
    "plain_quorum": "plain quorum",
    "all_to_all": "all-to-all",
    "success_weighted_quorum": "success-weighted quorum",
    "loss_weighted_gains": "loss-weighted gains",
    "leader": "leader",
    "leader_hard": "leader (hard arg-min)",
}
MARGIN = 0.05  # the claim: broadcast beats plain quorum by more than this (success over σ)


@dataclasses.dataclass(frozen=True)
class Config:
    landscapes: tuple[str, ...] = dataclasses.field(
        default=LANDSCAPES, metadata={"help": f"landscapes, among {LANDSCAPES}"}
    )
    num_agents: int = dataclasses.field(default=16, metadata={"help": "number of agents N"})
    gain: float = dataclasses.field(default=3.0, metadata={"help": "k (1/time), every rule"})
    quorum_gain: float = dataclasses.field(
        default=0.25, metadata={"help": "k_z (1/time), quorum rules"}
    )
    betas: tuple[float, ...] = dataclasses.field(
        default=(1.0, 3.0, 10.0), metadata={"help": "β values (1/loss), weighted rules"}
    )
    temperatures: tuple[float, ...] = dataclasses.field(
        default=(0.0, 0.1, 1.0), metadata={"help": "leader temperatures T (0: hard arg-min)"}
    )
    sigmas_offset: tuple[float, ...] = dataclasses.field(
        default=(0.3, 0.6, 1.0, 1.5), metadata={"help": "noise σ, offset well"}
    )
    sigmas_multiwell: tuple[float, ...] = dataclasses.field(
        default=(0.3, 0.6, 1.0, 1.5), metadata={"help": "noise σ, multi-well"}
    )
    sigmas_rastrigin: tuple[float, ...] = dataclasses.field(
        default=(0.4, 0.8, 1.2, 1.6), metadata={"help": "noise σ, Rastrigin"}
    )
    start_halfwidth: float = dataclasses.field(
        default=3.0, metadata={"help": "agents start uniformly in e ± this (e: envelope minimum)"}
    )
    tilt: float = dataclasses.field(default=0.2, metadata={"help": "tilt t of the multi-well"})
    gradient_scale: float = dataclasses.field(default=1.0, metadata={"help": "η in the drift"})
    time: float = dataclasses.field(default=20.0, metadata={"help": "horizon T (time units)"})
    sde_step_size: float = dataclasses.field(
        default=0.01, metadata={"help": "SDE step (Euler–Maruyama)"}
    )
    step_size: float = dataclasses.field(default=0.02, metadata={"help": "optimizer step h"})
    runs: int = dataclasses.field(default=128, metadata={"help": "independent runs per config"})

    def __post_init__(self):
        for name in ("gradient_scale", "time", "sde_step_size", "step_size", "gain", "quorum_gain"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        unknown = set(self.landscapes) - set(LANDSCAPES)
        if not self.landscapes or unknown or len(set(self.landscapes)) != len(self.landscapes):
            raise ValueError(f"landscapes must be distinct, among {LANDSCAPES}: {self.landscapes}")
        if self.num_agents < 2:
            raise ValueError(f"num_agents must be >= 2, got {self.num_agents}")
        if not self.betas or min(self.betas) <= 0:
            raise ValueError(f"betas must be > 0 (β = 0 is plain quorum), got {self.betas}")
        if not self.temperatures or min(self.temperatures) < 0:
            raise ValueError(f"temperatures must be >= 0, got {self.temperatures}")
        for name in ("sigmas_offset", "sigmas_multiwell", "sigmas_rastrigin"):
            if not getattr(self, name) or min(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be non-empty and > 0")
        if self.start_halfwidth < 0:
            raise ValueError(f"start_halfwidth must be >= 0, got {self.start_halfwidth}")
        for name, step in (("sde_step_size", self.sde_step_size), ("step_size", self.step_size)):
            if abs(self.time / step - round(self.time / step)) > 1e-6:
                raise ValueError(f"time {self.time} is not a multiple of {name}={step}")
        # Loss-weighted gains reach k·N for one agent much worse than the rest.
        if self.gain * self.num_agents * self.step_size >= 2:
            raise ValueError("k·N·h must be < 2 (loss-weighted gains can reach k·N)")
        if self.runs < 3:
            raise ValueError(f"runs must be >= 3, got {self.runs}")


# Quick mode: the main evidence only (the offset well; compiling every rule dominates its time).
QUICK = dict(
    landscapes=("offset",),
    betas=(1.0, 10.0),
    temperatures=(0.0, 1.0),
    runs=48,
)


def _landscape(name: str, config) -> AbstractLandscape:
    """The protocol's landscape by name (see `LANDSCAPES`)."""
    if name == "offset":
        return OffsetMultiWell(1)
    if name == "multiwell":
        return TiltedMultiWell(1, tilt=config.tilt)
    if name == "rastrigin":
        return Rastrigin(2)
    raise ValueError(f"unknown landscape {name!r}; expected one of {LANDSCAPES}")


def _start_center(name: str, land: AbstractLandscape):
    """The centre e of the start box: the minimum of the landscape's envelope (its smooth
    part). The offset well's envelope x²/20 has its minimum at 0, two wells from x*; the
    multi-well's `x²/20 + t x` has it at −10 t = x* and Rastrigin's at 0 = x*."""
    return np.zeros(land.dim) if name == "offset" else np.asarray(land.minimizer())


def _sigmas(name: str, config) -> tuple[float, ...]:
    return getattr(config, f"sigmas_{name}")


def _sweep(land, rule, where, grid, sig, form, config, key, start_center=None):
    """`basin_success` of one rule template over (σ, grid, runs) in one form, from starts in
    `start_center ± start_halfwidth` (default centre: x*)."""
    return basin_success(
        land, rule, where, grid, sig, num_agents=config.num_agents, form=form,
        gradient_scale=config.gradient_scale, t1=config.time,
        step_size=config.sde_step_size if form == "continuous" else config.step_size,
        num_runs=config.runs, key=key, start_halfwidth=config.start_halfwidth,
        start_center=start_center,
    )  # fmt: skip


def _variants(config):
    """(name, rule template, where, grid values, parameter labels) for every variant."""
    k, kz = config.gain, config.quorum_gain
    betas = jnp.asarray(config.betas, dtype=float)
    temps = [t for t in config.temperatures if t > 0]
    out = [
        ("plain_quorum", Quorum(k, kz), lambda r: r.gain, jnp.asarray([k]), ["β=0"]),
        (
            "success_weighted_quorum",
            SuccessWeightedQuorum(k, kz, 1.0),
            lambda r: r.beta,
            betas,
            [f"β={b:g}" for b in config.betas],
        ),
        (
            "loss_weighted_gains",
            LossWeightedGains(k, 1.0),
            lambda r: r.beta,
            betas,
            [f"β={b:g}" for b in config.betas],
        ),
    ]
    if temps:
        out.append(
            (
                "leader",
                Leader(k, 1.0),
                lambda r: r.temperature,
                jnp.asarray(temps, dtype=float),
                [f"T={t:g}" for t in temps],
            )
        )
    if 0.0 in config.temperatures:
        out.append(("leader_hard", Leader(k), lambda r: r.gain, jnp.asarray([k]), ["T=0"]))
    return out


def run(config: Config, key: jax.Array, cache=None) -> dict[str, np.ndarray]:
    """Every (landscape, form, rule) sweep; with a `RunCache`, finished sweeps survive a kill."""
    cached = cache.cached if cache is not None else (lambda name, fn: fn())
    out: dict[str, np.ndarray] = {"runs": np.asarray(config.runs)}
    for name in config.landscapes:
        li = LANDSCAPES.index(name)
        land = _landscape(name, config)
        sig = _sigmas(name, config)
        out[f"sigmas_{name}"] = np.asarray(sig, dtype=float)
        centre = out[f"start_center_{name}"] = _start_center(name, land)
        for fi, form in enumerate(FORMS):
            # Every variant sees the same starts and noise (common random numbers).
            k = jax.random.fold_in(key, 10 * li + fi)
            # The plain references from the same starts: uncoupled (k = 0) and all-to-all
            # k(x̄ − x_i), one compilation.
            plain = ("plain", MeanField(0.0), lambda r: r.gain, jnp.asarray([0.0, config.gain]))
            for variant, rule, where, grid, _ in _variants(config) + [plain + ([],)]:
                sweep = functools.partial(
                    _sweep, land, rule, where, grid, sig, form, config, k, centre
                )
                res = cached(f"{name}_{form}_{variant}", sweep)
                split = {"uncoupled": [0], "all_to_all": [1]} if variant == "plain" else None
                for v, cols in (split or {variant: slice(None)}).items():
                    tag = f"{name}_{form}_{v}"
                    part = {q: res[q][:, cols] for q in ("success", "agent_success", "diverged")}
                    out[f"success_{tag}"] = part["success"].mean(-1)  # (S, G)
                    out[f"agent_success_{tag}"] = part["agent_success"].mean(-1)
                    out[f"diverged_{tag}"] = part["diverged"].mean(-1)
                    out[f"runs_success_{tag}"] = part["success"]  # (S, G, R), paired
    return out


def _configs(results, config):
    """(variant, grid index, label) of every broadcast configuration."""
    rows = []
    for variant, _, _, _, labels in _variants(config):
        if variant != "plain_quorum":
            rows += [(variant, gi, label) for gi, label in enumerate(labels)]
    return rows


PLAIN = ("plain_quorum", "all_to_all")  # the rules without a measure of success, at k (, k_z)


def _best(results, config, name):
    """The best broadcast configuration and the best plain rule (`PLAIN`), each chosen on the
    SDE runs by success averaged over σ, and the per-run paired differences between them in
    each form (success averaged over σ)."""

    def pick(rows):
        score = [results[f"success_{name}_continuous_{v}"][:, gi].mean() for v, gi, _ in rows]
        return rows[int(np.argmax(score))]

    v, gi, label = pick(_configs(results, config))
    ref, _, _ = pick([(p, 0, "") for p in PLAIN])
    diffs = {}
    for form in FORMS:
        best = np.asarray(results[f"runs_success_{name}_{form}_{v}"])[:, gi].mean(0)  # (R,)
        plain = np.asarray(results[f"runs_success_{name}_{form}_{ref}"])[:, 0].mean(0)
        diffs[form] = best - plain
    return v, label, ref, diffs


def metrics(results, config) -> dict[str, float]:
    m = {}
    for name in config.landscapes:
        for form in FORMS:
            for ref in PLAIN + ("uncoupled",):
                tag = f"{name}_{form}_{ref}"
                m[f"{tag}_mean_success"] = results[f"success_{tag}"][:, 0].mean()
                m[f"{tag}_mean_agent_success"] = results[f"agent_success_{tag}"][:, 0].mean()
            for variant, gi, label in _configs(results, config):
                tag = f"{name}_{form}_{variant}"
                key = f"{tag}_{label.replace('=', '')}"
                m[f"{key}_mean_success"] = results[f"success_{tag}"][:, gi].mean()
                m[f"{key}_mean_agent_success"] = results[f"agent_success_{tag}"][:, gi].mean()
            m[f"{name}_{form}_diverged_max"] = max(
                results[k].max() for k in results if k.startswith(f"diverged_{name}_{form}")
            )
        _, _, _, diffs = _best(results, config, name)
        m[f"{name}_best_gain_sde"] = diffs["continuous"].mean()  # selected here: optimistic
        m[f"{name}_best_gain_discrete"] = diffs["discrete"].mean()
    return m


def claims(results, config):
    out = []
    for name in config.landscapes:
        variant, label, ref, diffs = _best(results, config, name)
        value, interval = mean_interval(diffs["discrete"])
        out.append(
            claim_greater(
                f"{name}_broadcast_beats_plain_coupling",
                f"{name}: the best broadcast rule on the SDE runs ({LABELS[variant]}"
                f", {label}) beats the best plain rule there ({LABELS[ref]}) at the same N, k, "
                "k_z, σ and starts, in the discrete form (independent runs): success averaged "
                "over σ, paired per-run differences, mean ± 2 s.e.",
                value,
                MARGIN,
                interval=interval,
            )
        )
    return out


def plot(results, config):
    figs = {}
    runs = int(results["runs"])
    for name in config.landscapes:
        sig = results[f"sigmas_{name}"]
        variants = [v for v in _variants(config)]
        fig, axes = figure(len(variants), width=3.5, height=3.4)
        for ax, (variant, _, _, _, labels) in zip(axes, variants):
            for form, style in zip(FORMS, ("-", "--")):
                ref = results[f"success_{name}_{form}_uncoupled"][:, 0]
                ax.plot(
                    sig, ref, style, color="gray", label="uncoupled" if form == FORMS[0] else None
                )
                for ref, color in zip(PLAIN, ("k", "tab:brown")):
                    ax.plot(
                        sig,
                        results[f"success_{name}_{form}_{ref}"][:, 0],
                        style,
                        color=color,
                        lw=1.5,
                        label=LABELS[ref] if form == FORMS[0] else None,
                    )
                if variant == "plain_quorum":
                    continue
                p = results[f"success_{name}_{form}_{variant}"]
                for gi, label in enumerate(labels):
                    ax.plot(
                        sig,
                        p[:, gi],
                        style,
                        marker="o",
                        ms=3,
                        color=f"C{gi}",
                        label=label if form == FORMS[0] else None,
                    )
                    if form == FORMS[0]:
                        lo, hi = wilson_interval(p[:, gi] * runs, runs)
                        ax.fill_between(sig, lo, hi, color=f"C{gi}", alpha=0.15)
                    bad = results[f"diverged_{name}_{form}_{variant}"][:, gi] > 0
                    if bad.any():
                        ax.plot(sig[bad], p[bad, gi], "x", color="r", ms=6)
            title = LABELS[variant]
            ax.set(
                xlabel="noise σ", ylabel="P(x̄(T) in global basin)", ylim=(-0.02, 1.02), title=title
            )
            ax.legend(fontsize=6, title="solid: SDE, dashed: optimizer", title_fontsize=6)
        centre = ", ".join(f"{c:g}" for c in np.atleast_1d(results[f"start_center_{name}"]))
        fig.suptitle(
            f"{name}: N={config.num_agents} agents from uniform starts in ({centre}) ± "
            f"{config.start_halfwidth:g}, k={config.gain:g}, k_z={config.quorum_gain:g}, "
            f"η={config.gradient_scale:g}, T={config.time:g}; every rule on the same starts and "
            f"noise (paired runs); SDE h={config.sde_step_size:g} (bands: 95% Wilson CI, {runs} "
            f"runs), optimizer h={config.step_size:g}; x: runs diverged. Protocol ours.",
            fontsize=8,
        )
        figs[f"broadcast_{name}"] = fig
    return figs
