"""Decentralized asynchronous SGD (DASGD) and delayed gossip vs synchronous all-reduce SGD.

Tosi & Theobald (DASGD): K replicas each apply their own gradient at once and every other
replica's gradient after a delay; staleness between models (S_avg, S_max) only costs
lower-order terms in the convergence rate.

Protocol (ours): K replicas on a noisy ill-conditioned quadratic (`dynamics.landscapes.
Quadratic`, curvatures log-spaced in [a_min, 1], additive Gaussian gradient noise σ), from a
common x_0. Message delays are uniform on {0…D} steps; D sets S_avg. DASGD applies every
gradient with η/K (so D = 0 is exactly all-reduce SGD with the mean gradient and step η);
gossip replicas mix delayed neighbour views with Metropolis weights on a ring, 2-D torus,
exponential graph and complete graph and take their own gradient step η. We record the mean
replica loss f(x_r) every step and the first step at which it reaches `target` × f(x_0)
(NaN-free: runs that never reach it are reported at the step budget and flagged). All delays
of one method share one compiled program (delay distributions padded to the largest D).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.asynchrony import (
    DelayModel,
    metropolis_weights,
    run_dasgd,
    run_gossip,
    topology,
)
from dynamics.landscapes import Quadratic

from .harness.contract import claim_less
from .harness.plotting import band, figure, mean_and_se

NAME = "decentralized"
DESCRIPTION = "DASGD and delayed gossip: iterations to a target loss vs S_avg, vs all-reduce SGD"

GOSSIP = ("ring", "torus", "exponential", "complete")


@dataclasses.dataclass(frozen=True)
class Config:
    num_agents: int = dataclasses.field(default=16, metadata={"help": "K replicas"})
    dim: int = dataclasses.field(default=100, metadata={"help": "parameter dimension"})
    min_curvature: float = dataclasses.field(default=0.01, metadata={"help": "a_min"})
    noise: float = dataclasses.field(default=1.0, metadata={"help": "gradient noise σ"})
    learning_rate: float = dataclasses.field(default=0.5, metadata={"help": "η (sync step)"})
    max_delays: tuple[int, ...] = dataclasses.field(
        default=(0, 1, 2, 4, 8, 16, 32), metadata={"help": "delay bounds D"}
    )
    num_steps: int = dataclasses.field(default=3000, metadata={"help": "steps"})
    target: float = dataclasses.field(default=0.05, metadata={"help": "target / f(x_0)"})
    seeds: int = dataclasses.field(default=8, metadata={"help": "independent runs"})

    def __post_init__(self):
        if self.num_agents < 2 or self.dim < 1 or self.seeds < 1:
            raise ValueError("need num_agents >= 2, dim >= 1, seeds >= 1")
        if min(self.max_delays) < 0 or 0 not in self.max_delays:
            raise ValueError(f"max_delays must be >= 0 and include 0, got {self.max_delays}")
        if not 0 < self.target < 1 or not self.learning_rate > 0:
            raise ValueError("need 0 < target < 1 and learning_rate > 0")


QUICK = dict(num_agents=8, dim=50, max_delays=(0, 2, 8, 16), num_steps=1500, seeds=4)


def _landscape(config):
    return Quadratic(np.logspace(np.log10(config.min_curvature), 0.0, config.dim))


def _steps_to_target(curve, level, budget):
    hit = curve <= level
    return np.where(hit.any(-1), hit.argmax(-1), budget)


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    f = _landscape(config)
    k = config.num_agents

    def grad_fn(x, kk):
        return f.value(x), f.grad(x) + config.noise * jax.random.normal(kk, x.shape)

    x0 = jnp.ones(config.dim) * 3.0
    f0 = float(f.value(x0))
    ds = np.asarray(config.max_delays)
    size = int(ds.max()) + 1
    probs = jnp.asarray(np.stack([np.where(np.arange(size) <= d, 1.0 / (d + 1), 0.0) for d in ds]))
    keys = jax.random.split(key, config.seeds)
    mean_loss = lambda s: jnp.mean(jax.vmap(f.value)(s.params))  # noqa: E731

    def dasgd(p, kk):
        res = run_dasgd(
            grad_fn, x0, kk, num_agents=k, delay=DelayModel(p),
            learning_rate=config.learning_rate / k, num_steps=config.num_steps,
            metrics_fn=mean_loss,
        )  # fmt: skip
        # metrics[0] is the initial state: the loss after each step is metrics[1:].
        tr = res.trace
        return res.metrics[1:], tr.staleness_mean.mean(), tr.staleness_max.max()

    vm = lambda fn: jax.jit(jax.vmap(jax.vmap(fn, in_axes=(None, 0)), in_axes=(0, None)))  # noqa: E731
    d_loss, s_avg, s_max = (np.asarray(a) for a in vm(dasgd)(probs, keys))

    g_loss, g_delay = [], []
    for name in GOSSIP:
        w = metropolis_weights(topology(name, k))

        def gossip(p, kk, w=w):
            res = run_gossip(
                grad_fn, x0, kk, mixing=w, delay=DelayModel(p),
                learning_rate=config.learning_rate, num_steps=config.num_steps,
                metrics_fn=mean_loss,
            )  # fmt: skip
            return res.metrics[1:], res.trace.view_delay.mean()

        loss, vd = vm(gossip)(probs, keys)
        g_loss.append(np.asarray(loss))
        g_delay.append(np.asarray(vd))
    g_loss = np.stack(g_loss)  # (topology, D, seed, T)
    level = config.target * f0
    return {
        "max_delays": ds,
        "initial_loss": np.asarray(f0),
        "dasgd_loss": d_loss,
        "dasgd_s_avg": s_avg,
        "dasgd_s_max": s_max,
        "dasgd_steps_to_target": _steps_to_target(d_loss, level, config.num_steps),
        "gossip_loss": g_loss,
        "gossip_view_delay": np.stack(g_delay),
        "gossip_steps_to_target": _steps_to_target(g_loss, level, config.num_steps),
    }


def metrics(results, config) -> dict[str, float]:
    d_steps = results["dasgd_steps_to_target"].mean(-1)  # (D,)
    allreduce = d_steps[list(results["max_delays"]).index(0)]
    g_steps = results["gossip_steps_to_target"].mean(-1)  # (topology, D)
    out = {"allreduce_steps_to_target": float(allreduce)}
    for i, d in enumerate(results["max_delays"]):
        out[f"dasgd_steps_D{d}"] = float(d_steps[i])
        out[f"dasgd_S_avg_D{d}"] = float(results["dasgd_s_avg"][i].mean())
        out[f"dasgd_S_max_D{d}"] = float(results["dasgd_s_max"][i].max())
    for t, name in enumerate(GOSSIP):
        out[f"gossip_{name}_steps_D0"] = float(g_steps[t, 0])
        out[f"gossip_{name}_steps_Dmax"] = float(g_steps[t, -1])
    out["dasgd_slowdown_at_Dmax"] = float(d_steps[-1] / allreduce)
    out["runs_not_reaching_target"] = float(
        np.sum(results["dasgd_steps_to_target"] >= config.num_steps)
        + np.sum(results["gossip_steps_to_target"] >= config.num_steps)
    )
    return out


def claims(results, config):
    m = metrics(results, config)
    d = results["max_delays"][-1]
    return [
        claim_less(
            "dasgd_staleness_costs_little",
            f"DASGD at D = {d} (S_avg = {m[f'dasgd_S_avg_D{d}']:.1f}) needs at most 1.5x the "
            "iterations of synchronous all-reduce SGD to reach the target loss (ratio)",
            m["dasgd_slowdown_at_Dmax"],
            1.5,
        ),
    ]


def plot(results, config):
    ds = results["max_delays"]
    budget = config.num_steps
    fig, (ax1, ax2, ax3) = figure(3, width=4.4)
    steps = results["dasgd_steps_to_target"]
    s_avg = results["dasgd_s_avg"].mean(-1)
    err = steps.std(-1) / np.sqrt(steps.shape[-1])
    ax1.errorbar(s_avg, steps.mean(-1), yerr=err, fmt="o-", label="DASGD")
    ax1.axhline(steps[list(ds).index(0)].mean(), color="k", ls="--", label="all-reduce SGD")
    ax1.axhline(budget, color="r", ls=":", label="step budget (not reached)")
    ax1.set(xlabel="S_avg (gradients one replica has applied and another not)",
            ylabel="steps to target loss", title=f"DASGD, K={config.num_agents}")  # fmt: skip
    ax1.legend(fontsize=7)
    for t, name in enumerate(GOSSIP):
        gs = results["gossip_steps_to_target"][t]
        vd = results["gossip_view_delay"][t].mean(-1)
        ax2.errorbar(vd, gs.mean(-1), yerr=gs.std(-1) / np.sqrt(gs.shape[-1]), fmt="o-",
                     label=f"gossip, {name}")  # fmt: skip
    ax2.axhline(steps[list(ds).index(0)].mean(), color="k", ls="--", label="all-reduce SGD")
    ax2.axhline(budget, color="r", ls=":", label="step budget")
    ax2.set(xlabel="mean neighbour-view delay (steps)", ylabel="steps to target loss",
            title="Gossip with delayed views")  # fmt: skip
    ax2.legend(fontsize=7)
    t_axis = np.arange(1, budget + 1)
    f0 = float(results["initial_loss"])
    for i, d in enumerate(ds):
        curve = results["dasgd_loss"][i] / f0
        band(ax3, t_axis, *mean_and_se(curve),
             label=f"DASGD D={d}", color=f"C{i}")  # fmt: skip
    ax3.axhline(config.target, color="k", ls=":", label="target")
    ax3.set(xlabel="steps (one gradient per replica)", ylabel="mean replica loss / f(x_0)",
            yscale="log", title="DASGD loss curves")  # fmt: skip
    ax3.legend(fontsize=7)
    title = (
        f"Noisy quadratic, dim={config.dim}, a∈[{config.min_curvature:g},1], σ={config.noise:g}, "
        f"η={config.learning_rate:g}, delays ~ U{{0…D}}; protocol ours"
    )
    fig.suptitle(title, fontsize=9)
    return {"decentralized": fig}
