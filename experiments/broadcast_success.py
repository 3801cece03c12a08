"""Coupling shaped by each agent's broadcast loss, against plain quorum (Boffi & Slotine, claim 5).

The paper's exact rules were not available; ours (`dynamics.broadcast`) are
- success-weighted quorum: `dz = k_z Σ_i r_i (x_i − z) dt`, `r = N softmax(−β ℓ)`, force
  `k(z − x_i)`; β = 0 is plain quorum;
- loss-weighted gains: `k_i = k N softmax(+β ℓ)_i` toward x̄ (worse agents pulled harder);
  β = 0 is all-to-all coupling;
- leader: every agent pulled toward the soft arg-min `Σ_j softmax(−ℓ/T)_j x_j` (T = 0: the
  current best agent).

Protocol (ours): the landscapes of `nonconvex_stabilization` (tilted multi-well, Rastrigin),
N agents started independently and uniformly in the box `x* ± start_halfwidth` (a search
from scattered starts, where the agents' losses carry information), additive noise σ swept,
horizon T. A run succeeds when x̄(T) lies in the global basin (`algorithms.basin_success`,
the same sweep as `nonconvex_stabilization`). Each rule runs in both forms: the SDE
(Euler–Maruyama) and the discrete optimizer with matched Gaussian gradient noise, on
independent random numbers. The rule's shape parameter (β or T) is swept under `jax.vmap`;
plain quorum uses the same k and k_z. 95% Wilson intervals over runs.

Claim (threshold fixed before running): the best broadcast configuration, chosen on the SDE
runs by its success averaged over σ, also beats plain quorum in the discrete form (an
independent replication) by at least 0.05 in success averaged over σ.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.sweeps import FORMS, basin_success, wilson_interval
from dynamics.broadcast import Leader, LossWeightedGains, SuccessWeightedQuorum
from dynamics.coupling import MeanField, Quorum
from dynamics.landscapes import AbstractLandscape, Rastrigin, TiltedMultiWell

from .harness.contract import claim_greater
from .harness.plotting import figure

NAME = "broadcast_success"
DESCRIPTION = "Loss-shaped coupling (success-weighted quorum, loss gains, leader) vs plain quorum"

LANDSCAPES = ("multiwell", "rastrigin")
VARIANTS = ("plain_quorum", "success_weighted_quorum", "loss_weighted_gains", "leader")
LABELS = {
    "plain_quorum": "plain quorum",
    "success_weighted_quorum": "success-weighted quorum",
    "loss_weighted_gains": "loss-weighted gains",
    "leader": "leader",
}
MARGIN = 0.05


@dataclasses.dataclass(frozen=True)
class Config:
    landscapes: tuple[str, ...] = dataclasses.field(
        default=("multiwell", "rastrigin"), metadata={"help": "landscapes (multiwell, rastrigin)"}
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
    sigmas_multiwell: tuple[float, ...] = dataclasses.field(
        default=(0.3, 0.6, 1.0, 1.5), metadata={"help": "noise σ, multi-well"}
    )
    sigmas_rastrigin: tuple[float, ...] = dataclasses.field(
        default=(0.4, 0.8, 1.2, 1.6), metadata={"help": "noise σ, Rastrigin"}
    )
    start_halfwidth: float = dataclasses.field(
        default=3.0, metadata={"help": "agents start uniformly in x* ± this"}
    )
    tilt: float = dataclasses.field(default=0.2, metadata={"help": "tilt t of the multi-well"})
    gradient_scale: float = dataclasses.field(default=1.0, metadata={"help": "η in the drift"})
    time: float = dataclasses.field(default=30.0, metadata={"help": "horizon T (time units)"})
    sde_step_size: float = dataclasses.field(
        default=0.01, metadata={"help": "SDE step (Euler–Maruyama)"}
    )
    step_size: float = dataclasses.field(default=0.02, metadata={"help": "optimizer step h"})
    runs: int = dataclasses.field(default=256, metadata={"help": "independent runs per config"})

    def __post_init__(self):
        for name in ("gradient_scale", "time", "sde_step_size", "step_size", "gain", "quorum_gain"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        unknown = set(self.landscapes) - set(LANDSCAPES)
        if not self.landscapes or unknown:
            raise ValueError(f"landscapes must be among {LANDSCAPES}, got {self.landscapes}")
        if self.num_agents < 2:
            raise ValueError(f"num_agents must be >= 2, got {self.num_agents}")
        if not self.betas or min(self.betas) <= 0:
            raise ValueError(f"betas must be > 0 (β = 0 is plain quorum), got {self.betas}")
        if not self.temperatures or min(self.temperatures) < 0:
            raise ValueError(f"temperatures must be >= 0, got {self.temperatures}")
        for name in ("sigmas_multiwell", "sigmas_rastrigin"):
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
        if self.runs < 2:
            raise ValueError(f"runs must be >= 2, got {self.runs}")


QUICK = dict(
    landscapes=("multiwell",), betas=(1.0, 10.0), temperatures=(0.0, 1.0), runs=64, time=20.0
)


def _landscape(name: str, config) -> AbstractLandscape:
    """The protocol's landscape by name: the tilted multi-well (1-D) or Rastrigin (2-D)."""
    return TiltedMultiWell(1, tilt=config.tilt) if name == "multiwell" else Rastrigin(2)


def _sigmas(name: str, config) -> tuple[float, ...]:
    return config.sigmas_multiwell if name == "multiwell" else config.sigmas_rastrigin


def _sweep(land, rule, where, grid, sig, form, config, key):
    """`basin_success` of one rule template over (σ, grid, runs) in one form."""
    return basin_success(
        land, rule, where, grid, sig, num_agents=config.num_agents, form=form,
        gradient_scale=config.gradient_scale, t1=config.time,
        step_size=config.sde_step_size if form == "continuous" else config.step_size,
        num_runs=config.runs, key=key, start_halfwidth=config.start_halfwidth,
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


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {"runs": np.asarray(config.runs)}
    for li, name in enumerate(config.landscapes):
        land = _landscape(name, config)
        sig = _sigmas(name, config)
        out[f"sigmas_{name}"] = np.asarray(sig, dtype=float)
        for fi, form in enumerate(FORMS):
            # Every variant sees the same starts and noise (common random numbers).
            k = jax.random.fold_in(key, 10 * li + fi)
            for variant, rule, where, grid, _ in _variants(config):
                res = _sweep(land, rule, where, grid, sig, form, config, k)
                out[f"success_{name}_{form}_{variant}"] = res["success"].mean(-1)  # (S, G)
                out[f"diverged_{name}_{form}_{variant}"] = res["diverged"].mean(-1)
            # The uncoupled reference (k = 0) from the same starts.
            res = _sweep(
                land, MeanField(0.0), lambda r: r.gain, jnp.asarray([0.0]), sig, form, config, k
            )
            out[f"success_{name}_{form}_uncoupled"] = res["success"].mean(-1)
    return out


def _configs(results, config):
    """(variant, grid index, label) of every broadcast configuration."""
    rows = []
    for variant, _, _, _, labels in _variants(config):
        if variant != "plain_quorum":
            rows += [(variant, gi, label) for gi, label in enumerate(labels)]
    return rows


def _best(results, config, name):
    """Best broadcast config on the SDE runs, by success averaged over σ; its discrete gain."""
    rows = _configs(results, config)
    score = [results[f"success_{name}_continuous_{v}"][:, gi].mean() for v, gi, _ in rows]
    v, gi, label = rows[int(np.argmax(score))]
    plain = {f: results[f"success_{name}_{f}_plain_quorum"][:, 0].mean() for f in FORMS}
    best = {f: results[f"success_{name}_{f}_{v}"][:, gi].mean() for f in FORMS}
    return v, label, best, plain


def metrics(results, config) -> dict[str, float]:
    m = {}
    for name in config.landscapes:
        for form in FORMS:
            m[f"{name}_{form}_plain_quorum_mean_success"] = results[
                f"success_{name}_{form}_plain_quorum"
            ][:, 0].mean()
            m[f"{name}_{form}_uncoupled_mean_success"] = results[
                f"success_{name}_{form}_uncoupled"
            ][:, 0].mean()
            for variant, gi, label in _configs(results, config):
                key = f"{name}_{form}_{variant}_{label.replace('=', '')}_mean_success"
                m[key] = results[f"success_{name}_{form}_{variant}"][:, gi].mean()
            m[f"{name}_{form}_diverged_max"] = max(
                results[k].max() for k in results if k.startswith(f"diverged_{name}_{form}")
            )
        _, _, best, plain = _best(results, config, name)
        m[f"{name}_best_gain_sde"] = best["continuous"] - plain["continuous"]
        m[f"{name}_best_gain_discrete"] = best["discrete"] - plain["discrete"]
    return m


def claims(results, config):
    m = metrics(results, config)
    out = []
    for name in config.landscapes:
        variant, label, _, _ = _best(results, config, name)
        out.append(
            claim_greater(
                f"{name}_broadcast_beats_plain_quorum",
                f"{name}: the best broadcast rule on the SDE runs ({LABELS.get(variant, variant)}"
                f", {label}) beats plain quorum in the discrete form (independent runs) by "
                "success averaged over σ",
                m[f"{name}_best_gain_discrete"],
                MARGIN,
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
                plain = results[f"success_{name}_{form}_plain_quorum"][:, 0]
                ax.plot(
                    sig,
                    plain,
                    style,
                    color="k",
                    lw=1.5,
                    label="plain quorum" if form == FORMS[0] else None,
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
            title = LABELS.get(variant, "leader (hard arg-min)")
            ax.set(
                xlabel="noise σ", ylabel="P(x̄(T) in global basin)", ylim=(-0.02, 1.02), title=title
            )
            ax.legend(fontsize=6, title="solid: SDE, dashed: optimizer", title_fontsize=6)
        fig.suptitle(
            f"{name}: N={config.num_agents} agents from uniform starts in x* ± "
            f"{config.start_halfwidth:g}, k={config.gain:g}, k_z={config.quorum_gain:g}, "
            f"η={config.gradient_scale:g}, T={config.time:g}; SDE h={config.sde_step_size:g} "
            f"(bands: 95% "
            f"Wilson CI, {runs} runs), optimizer h={config.step_size:g}. Protocol ours.",
            fontsize=8,
        )
        figs[f"broadcast_{name}"] = fig
    return figs
