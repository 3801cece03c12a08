"""DASGD against synchronous all-reduce SGD as the target shrinks, and delayed gossip.

Tosi & Theobald (DASGD): K replicas each apply their own gradient at once and every other
replica's gradient after a delay. With a fixed step inside the delay-stability region, the
staleness between models (S_avg, S_max) enters only the lower-order terms of the rate,
O(σ ε⁻²) + O(S_avg ε^{−3/2}) + O(S_avg ε⁻¹): its cost in iterations should shrink as the
target ε shrinks. That trend is what we claim.

Protocol (ours):

- Problem: K replicas on a noisy ill-conditioned quadratic (`dynamics.landscapes.Quadratic`,
  curvatures log-spaced in [a_min, 1], additive Gaussian gradient noise σ), from a common
  x_0 = 3·1. Message delays uniform on {0…D} steps. DASGD applies every gradient with η/K, so
  D = 0 is exactly all-reduce SGD with the mean gradient and step η (`run_dasgd`).
- Rates tuned per method: every method (all-reduce = DASGD at D = 0, DASGD at each D > 0, each
  gossip topology at each view delay) runs on the whole η grid `learning_rates`; for each
  target the method's rate is the one with the fewest mean steps among the rates at which
  every seed reached the target. A rate past the delay-stability limit (the stiffest mode's
  spectral radius in the expected-delay model is > 1; metric `stiff_mode_radius_*`) diverges
  and is never chosen. The rate is chosen on the same seeds it is then reported on.
- Reaching a target ε (a fraction of f(x_0), pre-registered in `targets`): the mean replica
  loss is smoothed by a centred moving average whose half-width is `smoothing` × t (scale
  free: ±1 step near step 10, ±100 near step 1000); the run reaches ε at the first step its
  smoothed loss is <= ε·f(x_0), provided it never diverged (the runner's `diverged_step`,
  threshold `divergence_threshold`) and its smoothed loss is still <= ε·f(x_0) at the end of
  the budget. A run that dips under the target in a transient and then diverges, or drifts
  back above it, has not reached it.
- The ratio of a method to all-reduce SGD is taken per seed (same keys, so the same gradient
  noise), at each method's own tuned rate; means over seeds ± 2 s.e.
- Gossip (an extension, ours): replicas mix delayed neighbour views with Metropolis weights on
  a ring, 2-D torus, exponential graph and complete graph and take their own gradient step η
  (`run_gossip`), at D = 0 and at the largest D, rates tuned the same way. With
  `lazy_mixing` the weights are the lazy (I + W)/2: the 2 × 4 torus of K = 8 is bipartite and
  its plain Metropolis matrix has λ_min = −0.5, a mode that flips sign at every mixing step.

Claims, at the largest D, with ε_1 > ε_2 > ε_3 the targets (paired per-seed differences of
the iteration ratio DASGD / all-reduce, mean ± 2 s.e.):

- `staleness_cost_shrinks_<ε_i>_to_<ε_i+1>`: the ratio at ε_i exceeds the ratio at ε_i+1.
- `staleness_cost_small_at_<ε_3>`: at the smallest target the ratio is below
  `tight_ratio_bound` (pre-registered).

A method that reaches a target at no rate of the grid has an infinite ratio there, which makes
the claims that use it fail (divergence is a failure of the method, never a success).

What would change the verdicts: a rate grid that stops short of all-reduce's best rate at the
loose target (the ratio at 5 % then shrinks towards 1 and the first claim weakens); a target
at or below the noise floor of every stable rate (no method reaches it: the claims fail);
delays so long that no rate of the grid is both stable and fast (a failure of DASGD at that
D, reported as such); fewer seeds (intervals widen to inconclusive).
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

from .harness.contract import claim_greater, claim_less, mean_interval
from .harness.plotting import figure

NAME = "decentralized"
DESCRIPTION = (
    "DASGD vs all-reduce SGD, rates tuned per method: iteration ratio as the target ε shrinks"
)

GOSSIP = ("ring", "torus", "exponential", "complete")


@dataclasses.dataclass(frozen=True)
class Config:
    num_agents: int = dataclasses.field(default=16, metadata={"help": "K replicas"})
    dim: int = dataclasses.field(default=100, metadata={"help": "parameter dimension"})
    min_curvature: float = dataclasses.field(default=0.01, metadata={"help": "a_min"})
    noise: float = dataclasses.field(default=1.0, metadata={"help": "gradient noise σ"})
    learning_rates: tuple[float, ...] = dataclasses.field(
        default=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6), metadata={"help": "η grid (sync step)"}
    )
    max_delays: tuple[int, ...] = dataclasses.field(
        default=(0, 4, 16), metadata={"help": "DASGD delay bounds D (must include 0)"}
    )
    targets: tuple[float, ...] = dataclasses.field(
        default=(0.05, 0.01, 0.003), metadata={"help": "targets ε / f(x_0), decreasing"}
    )
    tight_ratio_bound: float = dataclasses.field(
        default=1.25, metadata={"help": "claimed bound on the ratio at the smallest target"}
    )
    smoothing: float = dataclasses.field(
        default=0.1, metadata={"help": "moving-average half-width, a fraction of the step"}
    )
    divergence_threshold: float = dataclasses.field(
        default=1e3, metadata={"help": "a run with some |x| >= this diverged"}
    )
    gossip: bool = dataclasses.field(default=True, metadata={"help": "run delayed gossip"})
    lazy_mixing: bool = dataclasses.field(
        default=True, metadata={"help": "gossip weights (I + W)/2"}
    )
    num_steps: int = dataclasses.field(default=2000, metadata={"help": "steps"})
    seeds: int = dataclasses.field(default=6, metadata={"help": "independent runs"})

    def __post_init__(self):
        if self.num_agents < 2:
            raise ValueError(f"num_agents must be >= 2, got {self.num_agents}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if min(self.max_delays) < 0 or 0 not in self.max_delays or len(self.max_delays) < 2:
            raise ValueError(
                f"max_delays must be >= 0, include 0 and one D > 0, got {self.max_delays}"
            )
        if len(set(self.max_delays)) != len(self.max_delays):
            raise ValueError(f"max_delays must be distinct, got {self.max_delays}")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError(f"learning_rates must be > 0, got {self.learning_rates}")
        t = self.targets
        if not t or not all(0 < x < 1 for x in t) or list(t) != sorted(set(t), reverse=True):
            raise ValueError(f"targets must be distinct, in (0, 1) and decreasing, got {t}")
        if not self.tight_ratio_bound >= 1:
            raise ValueError(f"tight_ratio_bound must be >= 1, got {self.tight_ratio_bound}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if not self.divergence_threshold > 0 or not self.min_curvature > 0 or self.noise < 0:
            raise ValueError(
                "need divergence_threshold > 0, min_curvature > 0, noise >= 0, got "
                f"{self.divergence_threshold}, {self.min_curvature}, {self.noise}"
            )


QUICK = dict(num_agents=8, dim=50, noise=0.7, max_delays=(0, 8), num_steps=1500, seeds=4)


def _landscape(config):
    return Quadratic(np.logspace(np.log10(config.min_curvature), 0.0, config.dim))


def _uniform(d: int) -> np.ndarray:
    return np.full(d + 1, 1.0 / (d + 1))


def stiff_mode_radius(learning_rate: float, num_agents: int, probs, curvature: float = 1.0):
    """Spectral radius of DASGD's expected-delay model on one mode of curvature a.

    Replica r applies its own gradient at once and the K − 1 others' after d ~ p(d); with the
    delays replaced by their distribution (mean field over the replicas),
    x_{k+1} = x_k − (η a/K) [x_k + (K − 1) Σ_d p(d) x_{k−d}]. The recursion is stable iff the
    companion matrix has spectral radius < 1. An approximation for the random delays (their
    fluctuations are ignored), used to mark the rates past the delay-stability limit.
    """
    p = np.asarray(probs, dtype=float)
    c = -learning_rate * curvature * (num_agents - 1) / num_agents * p
    c[0] += 1.0 - learning_rate * curvature / num_agents
    n = p.size
    if n == 1:
        return float(abs(c[0]))
    companion = np.zeros((n, n))
    companion[0] = c
    companion[1:, :-1] = np.eye(n - 1)
    return float(np.max(np.abs(np.linalg.eigvals(companion))))


def _smooth(curve, width: float) -> np.ndarray:
    """Centred moving average over steps [t − ⌊width·t⌋, t + ⌊width·t⌋] (step t = index + 1),
    truncated at the ends of the run; along the last axis."""
    curve = np.asarray(curve, dtype=float)
    n = curve.shape[-1]
    idx = np.arange(n)
    half = np.floor(width * (idx + 1)).astype(int)
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half, n - 1)
    zero = np.zeros(curve.shape[:-1] + (1,))
    cs = np.concatenate([zero, np.cumsum(curve, axis=-1)], axis=-1)
    return (cs[..., hi + 1] - cs[..., lo]) / (hi - lo + 1)


def _steps_to_target(curve, diverged_step, levels, width):
    """Steps until the smoothed curve first reaches each level, `(..., len(levels))`; inf where
    the run diverged or its smoothed loss is above the level at the end of the budget."""
    smooth = _smooth(curve, width)
    out = []
    for level in levels:
        below = smooth <= level
        ok = below.any(-1) & below[..., -1] & (np.asarray(diverged_step) < 0)
        out.append(np.where(ok, below.argmax(-1) + 1.0, np.inf))
    return np.stack(out, -1)


def _tune(steps):
    """Per-method rate tuning. `steps` `(..., rate, seed, target)` -> best rate index
    `(..., target)` (−1 where no rate reaches the target on every seed) and the steps at it
    `(..., seed, target)` (inf where none)."""
    steps = np.asarray(steps, dtype=float)
    all_reach = np.all(np.isfinite(steps), axis=-2)  # (..., rate, target)
    mean = np.where(all_reach, steps.mean(axis=-2), np.inf)
    best = np.where(all_reach.any(-2), mean.argmin(-2), -1)  # (..., target)
    taken = np.take_along_axis(steps, np.maximum(best, 0)[..., None, None, :], axis=-3)[
        ..., 0, :, :
    ]
    return best, np.where(best[..., None, :] >= 0, taken, np.inf)


def _ratio(steps, allreduce_steps):
    """Per-seed iteration ratio to all-reduce SGD: inf where the method did not reach the
    target, NaN where all-reduce did not (no reference); either makes a claim fail."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(allreduce_steps), steps / allreduce_steps, np.nan)


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    f = _landscape(config)
    k = config.num_agents

    def grad_fn(x, kk):
        return f.value(x), f.grad(x) + config.noise * jax.random.normal(kk, x.shape)

    x0 = jnp.ones(config.dim) * 3.0
    f0 = float(f.value(x0))
    etas = jnp.asarray(config.learning_rates)
    keys = jax.random.split(key, config.seeds)
    mean_loss = lambda s: jnp.mean(jax.vmap(f.value)(s.params))  # noqa: E731
    over_rates_and_seeds = lambda fn: jax.vmap(jax.vmap(fn, in_axes=(None, 0)), in_axes=(0, None))  # noqa: E731

    d_loss, d_div, s_avg, s_max = [], [], [], []
    for d in config.max_delays:
        delay = DelayModel(jnp.asarray(_uniform(d)))

        def dasgd(eta, kk, delay=delay):
            res = run_dasgd(
                grad_fn, x0, kk, num_agents=k, delay=delay, learning_rate=eta / k,
                num_steps=config.num_steps, metrics_fn=mean_loss,
                divergence_threshold=config.divergence_threshold,
            )  # fmt: skip
            tr = res.trace
            # metrics[0] is the initial state: the loss after each step is metrics[1:].
            return (
                res.metrics[1:],
                res.diverged_step,
                tr.staleness_mean.mean(),
                tr.staleness_max.max(),
            )

        out = jax.jit(over_rates_and_seeds(dasgd))(etas, keys)
        for acc, v in zip((d_loss, d_div, s_avg, s_max), out):
            acc.append(np.asarray(v))
    out = {
        "max_delays": np.asarray(config.max_delays),
        "learning_rates": np.asarray(config.learning_rates),
        "targets": np.asarray(config.targets),
        "initial_loss": np.asarray(f0),
        "dasgd_loss": np.stack(d_loss),  # (D, rate, seed, step)
        "dasgd_diverged_step": np.stack(d_div),  # (D, rate, seed), −1 = never
        "dasgd_s_avg": np.stack(s_avg),
        "dasgd_s_max": np.stack(s_max),
    }
    out["stiff_mode_radius"] = np.array(
        [
            [stiff_mode_radius(e, k, _uniform(d)) for e in config.learning_rates]
            for d in config.max_delays
        ]
    )  # fmt: skip  (D, rate): > 1 past the delay-stability limit
    levels = np.asarray(config.targets) * f0
    out["dasgd_steps"] = _steps_to_target(
        out["dasgd_loss"], out["dasgd_diverged_step"], levels, config.smoothing
    )  # (D, rate, seed, target)
    best, best_steps = _tune(out["dasgd_steps"])  # (D, target), (D, seed, target)
    out["dasgd_best_rate"], out["dasgd_best_steps"] = best, best_steps
    out["dasgd_ratio"] = _ratio(best_steps, best_steps[0])  # (D, seed, target)
    if config.gossip:
        out.update(_run_gossip(config, grad_fn, x0, etas, keys, mean_loss, levels, best_steps[0]))
    return out


def _run_gossip(config, grad_fn, x0, etas, keys, mean_loss, levels, allreduce_steps):
    k = config.num_agents
    mixing = jnp.asarray(
        np.stack([metropolis_weights(topology(n, k), lazy=config.lazy_mixing) for n in GOSSIP])
    )
    delays = (0, max(config.max_delays))
    losses, divs = [], []
    for d in delays:
        delay = DelayModel(jnp.asarray(_uniform(d)))

        def gossip(w, eta, kk, delay=delay):
            res = run_gossip(
                grad_fn, x0, kk, mixing=w, delay=delay, learning_rate=eta,
                num_steps=config.num_steps, metrics_fn=mean_loss,
                divergence_threshold=config.divergence_threshold,
            )  # fmt: skip
            return res.metrics[1:], res.diverged_step

        fn = jax.vmap(jax.vmap(jax.vmap(gossip, (None, None, 0)), (None, 0, None)), (0, None, None))
        loss, div = jax.jit(fn)(mixing, etas, keys)
        losses.append(np.asarray(loss))
        divs.append(np.asarray(div))
    loss, div = np.stack(losses, 1), np.stack(divs, 1)  # (topology, delay, rate, seed, ...)
    steps = _steps_to_target(loss, div, levels, config.smoothing)
    best, best_steps = _tune(steps)
    ratio = _ratio(best_steps, allreduce_steps)
    return {
        "gossip_delays": np.asarray(delays),
        "gossip_loss": loss,
        "gossip_diverged_step": div,
        "gossip_steps": steps,
        "gossip_best_rate": best,
        "gossip_ratio": ratio,  # (topology, delay, seed, target)
        "gossip_mixing_lambda_min": np.linalg.eigvalsh(np.asarray(mixing)).min(-1),
    }


def _pct(eps) -> str:
    return f"{100 * float(eps):g}%"


def _ratio_stats(ratio):
    """Mean over seeds and its interval; (inf, None) when some seed did not reach."""
    ratio = np.asarray(ratio, dtype=float)
    if not np.all(np.isfinite(ratio)):
        return float("inf"), None
    return mean_interval(ratio)


def metrics(results, config) -> dict[str, float]:
    out = {}
    ds, etas, targets = results["max_delays"], results["learning_rates"], results["targets"]
    for i, d in enumerate(ds):
        out[f"dasgd_S_avg_D{d}"] = float(results["dasgd_s_avg"][i].mean())
        out[f"dasgd_S_max_D{d}"] = float(results["dasgd_s_max"][i].max())
        for j, eta in enumerate(etas):
            out[f"stiff_mode_radius_D{d}_eta{eta:g}"] = float(results["stiff_mode_radius"][i, j])
            out[f"diverged_runs_D{d}_eta{eta:g}"] = float(
                np.sum(results["dasgd_diverged_step"][i, j] >= 0)
            )
        for t, eps in enumerate(targets):
            tag = f"D{d}_eps{_pct(eps)}"
            b = int(results["dasgd_best_rate"][i, t])
            out[f"dasgd_best_rate_{tag}"] = float(etas[b]) if b >= 0 else float("nan")
            out[f"dasgd_steps_{tag}"] = float(results["dasgd_best_steps"][i, :, t].mean())
            if d != 0:
                out[f"dasgd_ratio_{tag}"] = _ratio_stats(results["dasgd_ratio"][i, :, t])[0]
    if "gossip_ratio" in results:
        for g, name in enumerate(GOSSIP):
            out[f"gossip_{name}_mixing_lambda_min"] = float(results["gossip_mixing_lambda_min"][g])
            for i, d in enumerate(results["gossip_delays"]):
                for t, eps in enumerate(targets):
                    ratio = _ratio_stats(results["gossip_ratio"][g, i, :, t])[0]
                    out[f"gossip_{name}_ratio_D{d}_eps{_pct(eps)}"] = ratio
    return out


def claims(results, config):
    ds, targets = list(results["max_delays"]), results["targets"]
    i = int(np.argmax(ds))
    d = ds[i]
    ratio = results["dasgd_ratio"][i]  # (seed, target)
    s_avg = float(results["dasgd_s_avg"][i].mean())
    out = []
    for t in range(len(targets) - 1):
        a, b = _pct(targets[t]), _pct(targets[t + 1])
        diff = ratio[:, t] - ratio[:, t + 1]
        if np.all(np.isfinite(diff)):
            value, interval = mean_interval(diff)
        else:  # some seed did not reach a target at any rate: a failure of the method
            value, interval = float("-inf"), None
        out.append(
            claim_greater(
                f"staleness_cost_shrinks_{a}_to_{b}",
                f"DASGD at D = {d} (S_avg = {s_avg:.1f}), rates tuned per method: its iteration "
                f"ratio to all-reduce SGD is larger at target {a} than at {b} of f(x_0) "
                "(paired difference of ratios)",
                value,
                0.0,
                interval=interval,
            )
        )
    eps = _pct(targets[-1])
    value, interval = _ratio_stats(ratio[:, -1])
    out.append(
        claim_less(
            f"staleness_cost_small_at_{eps}",
            f"DASGD at D = {d}, rates tuned per method, needs less than "
            f"{config.tight_ratio_bound:g}× the iterations of all-reduce SGD to reach {eps} of "
            "f(x_0) (ratio)",
            value,
            config.tight_ratio_bound,
            interval=interval,
        )
    )
    return out


def _errorbar(ax, x, samples, **kwargs):
    """Mean ± 2 s.e. over seeds (last axis); points with an unreached seed are left out."""
    samples = np.asarray(samples, dtype=float)
    ok = np.all(np.isfinite(samples), axis=-1)
    mean = np.where(ok, np.where(ok[..., None], samples, 0.0).mean(-1), np.nan)
    n = samples.shape[-1]
    err = np.where(
        ok & (n > 1), np.where(ok[..., None], samples, 0.0).std(-1, ddof=min(1, n - 1)), 0.0
    )
    return ax.errorbar(x, mean, yerr=2 * err / np.sqrt(n), capsize=3, **kwargs)


def plot(results, config):
    ds, etas, targets = results["max_delays"], results["learning_rates"], results["targets"]
    f0 = float(results["initial_loss"])
    fig, axes = figure(4 if "gossip_ratio" in results else 3, width=4.6)
    ax = axes[0]
    for i, d in enumerate(ds):
        if d == 0:
            continue
        _errorbar(ax, targets, results["dasgd_ratio"][i].T, fmt="o-", color=f"C{i}",
                  label=f"DASGD D={d} (S_avg={results['dasgd_s_avg'][i].mean():.1f})")  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.8, ls=":")
    ax.axhline(config.tight_ratio_bound, color="r", lw=0.8, ls=":", label="claimed bound")
    ax.set(xscale="log", yscale="log", xlabel="target ε / f(x_0)",
           ylabel="iterations / all-reduce SGD's (each at its tuned η)",
           title="Cost of staleness vs target (±2 s.e.; missing: not reached)")  # fmt: skip
    ax.set_xticks(targets, [_pct(e) for e in targets])
    ax.set_xticks([], minor=True)
    ax.invert_xaxis()
    ax.legend(fontsize=6)

    ax = axes[1]
    mid = len(targets) // 2
    for i, d in enumerate(ds):
        steps = results["dasgd_steps"][i, :, :, mid]  # (rate, seed)
        _errorbar(ax, etas, steps, fmt="o-", color=f"C{i}", label=f"D={d}")
        div = np.any(results["dasgd_diverged_step"][i] >= 0, axis=-1)
        unreached = ~np.all(np.isfinite(steps), axis=-1)
        ax.plot(etas[div], np.full(div.sum(), config.num_steps), "x", color=f"C{i}", ms=8)
        ax.plot(etas[unreached & ~div], np.full((unreached & ~div).sum(), config.num_steps),
                "v", color=f"C{i}", mfc="none")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="η (sync step)",
           ylabel=f"steps to {_pct(targets[mid])} of f(x_0)",
           title="DASGD rate grid (×: diverged, ▽: not reached)")  # fmt: skip
    ax.legend(fontsize=7)

    ax = axes[2]
    t_axis = np.arange(1, results["dasgd_loss"].shape[-1] + 1)
    for i, d in enumerate(ds):
        b = int(results["dasgd_best_rate"][i, -1])
        for j, ls in ((b, "-"), (int(np.argmax(etas)), ":")):
            if j < 0:
                continue
            curve = results["dasgd_loss"][i, j].mean(0) / f0
            diverged = np.any(results["dasgd_diverged_step"][i, j] >= 0)
            lab = f"D={d}, η={etas[j]:g}" + (" (diverged)" if diverged else "")
            ax.plot(t_axis, _smooth(curve, config.smoothing), ls, color=f"C{i}", label=lab)
    for eps in targets:
        ax.axhline(eps, color="k", lw=0.6, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="steps (one gradient per replica)",
           ylabel="smoothed mean replica loss / f(x_0)",
           title=f"At the η tuned for {_pct(targets[-1])} (solid), largest η (dotted)")  # fmt: skip
    ax.legend(fontsize=6)
    if "gossip_ratio" in results:
        ax = axes[3]
        for g, name in enumerate(GOSSIP):
            for i, (d, ls) in enumerate(zip(results["gossip_delays"], ("o-", "s--"))):
                _errorbar(ax, targets, results["gossip_ratio"][g, i].T, fmt=ls, ms=4,
                          color=f"C{g}", label=f"{name}, D={d}")  # fmt: skip
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set(xscale="log", yscale="log", xlabel="target ε / f(x_0)",
               ylabel="iterations / all-reduce SGD's (each at its tuned η)",
               title="Gossip (extension, ours; missing: not reached)")  # fmt: skip
        ax.set_xticks(targets, [_pct(e) for e in targets])
        ax.set_xticks([], minor=True)
        ax.invert_xaxis()
        ax.legend(fontsize=6, ncols=2)
    mixing = "lazy Metropolis (I+W)/2" if config.lazy_mixing else "Metropolis"
    title = (
        f"Noisy quadratic, K={config.num_agents}, dim={config.dim}, a∈[{config.min_curvature:g},1],"
        f" σ={config.noise:g}, delays ~ U{{0…D}}, η tuned per method on {len(etas)} rates, "
        f"{config.seeds} seeds, gossip {mixing}; protocol ours"
    )
    fig.suptitle(title, fontsize=9)
    return {"decentralized": fig}
