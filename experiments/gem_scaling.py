"""GEM vs Downpour vs adaptive staleness as the number of asynchronous workers grows.

Hermans & Louppe, "Gradient Energy Matching for Distributed Asynchronous Gradient Descent":
GEM scales each committed update element-wise by π = (κ|m| − |θ − s|)/(|Δθ| + ε) so that the
central variable's kinetic energy matches a momentum-SGD proxy (μ = 0.9). Baselines:
DOWNPOUR (every gradient applied with η) and adaptive staleness (η/(τ + 1)).

Protocol (ours; the paper used an MNIST CNN, we use MNIST-1D): a pool of n workers
(`algorithms.asynchrony.run_pool`) with exponential compute times commits one gradient per
server update (c = 1, so ⟨τ⟩ = n − 1), minibatch 64, η = 0.05, for a fixed number of worker
steps (= server updates here). GEM uses κ = 1, μ = 0.9, ε = 1e-16 and the authors' clamp of π
to [0, 5]. We record the arriving minibatch losses (smoothed over windows), the final loss of
the central variable on the whole training set, test accuracy, the median π of every GEM
update, and a κ sweep at one worker count. A run whose loss becomes non-finite or exceeds
`diverge_loss` is marked diverged at that worker step (−1: never; never plotted as a finite
curve).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.asynchrony import (
    ComputeTime,
    adaptive_staleness_rate,
    compute_time,
    constant_rate,
    divergence_step,
    gem,
    run_pool,
)

from .harness.contract import claim_greater, claim_less
from .harness.plotting import band, figure, mean_and_se
from .tasks import CNN1D, MLP, evaluate, init_stacked, load_mnist1d, minibatch_grad_fn

NAME = "gem_scaling"
DESCRIPTION = "GEM vs Downpour vs adaptive staleness for 5…100 async workers; median π; κ sweep"

RULES = ("gem", "downpour", "adaptive")
RULE_LABELS = {"gem": "GEM (κ=1)", "downpour": "DOWNPOUR", "adaptive": "adaptive staleness"}


@dataclasses.dataclass(frozen=True)
class Config:
    workers: tuple[int, ...] = dataclasses.field(
        default=(5, 10, 20, 30, 100), metadata={"help": "numbers of workers n"}
    )
    worker_steps: int = dataclasses.field(default=20000, metadata={"help": "gradients per run"})
    learning_rate: float = dataclasses.field(default=0.05, metadata={"help": "η"})
    momentum: float = dataclasses.field(default=0.9, metadata={"help": "GEM proxy μ"})
    kappas: tuple[float, ...] = dataclasses.field(
        default=(1.0, 2.0, 3.0, 4.0), metadata={"help": "κ sweep"}
    )
    kappa_workers: int = dataclasses.field(default=30, metadata={"help": "n for the κ sweep"})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "minibatch per worker"})
    model: str = dataclasses.field(default="cnn", metadata={"help": "cnn (CNN1D) or mlp"})
    seeds: int = dataclasses.field(default=3, metadata={"help": "independent runs"})
    windows: int = dataclasses.field(default=100, metadata={"help": "points per loss curve"})
    diverge_loss: float = dataclasses.field(default=20.0, metadata={"help": "divergence level"})

    def __post_init__(self):
        if min(self.workers) < 1 or self.kappa_workers < 1:
            raise ValueError(f"worker counts must be >= 1, got {self.workers}")
        if self.worker_steps < self.windows or self.windows < 1:
            raise ValueError("need worker_steps >= windows >= 1")
        if self.model not in ("cnn", "mlp"):
            raise ValueError(f"model must be 'cnn' or 'mlp', got {self.model!r}")
        if self.seeds < 1 or not self.learning_rate > 0 or min(self.kappas) <= 0:
            raise ValueError("seeds >= 1, learning_rate > 0 and kappas > 0 required")


QUICK = dict(
    workers=(5, 30, 100), worker_steps=1500, kappas=(1.0, 2.0, 4.0), kappa_workers=30,
    model="mlp", seeds=1, windows=30,
)  # fmt: skip


def _task(config):
    data = load_mnist1d()
    model = CNN1D() if config.model == "cnn" else MLP(hidden=(64, 64), num_classes=10)
    minibatch_grad = minibatch_grad_fn(model, data.x_train, data.y_train, config.batch_size)

    def grad_fn(params, key):
        # Agent 0's key at step 0 under `agent_oracle`: the random stream of the stored results.
        return minibatch_grad(params, jax.random.fold_in(jax.random.fold_in(key, 0), 0))

    return data, model, grad_fn


def _rule(name, config, num_workers, kappa=1.0):
    if name == "gem":
        return gem(config.learning_rate, num_workers, momentum=config.momentum, kappa=kappa)
    if name == "downpour":
        return constant_rate(config.learning_rate)
    return adaptive_staleness_rate(config.learning_rate)


def _sweep(config, rule_fn, worker_counts, kappas, max_workers, init_fn, grad_fn, evaluate_fn,
           keys):  # fmt: skip
    """One compiled program for all (n, κ, seed): pools padded to `max_workers` (inactive
    workers never arrive), vmapped over n (or κ) and seeds. Returns per (n, seed):
    raw arrival losses (T,), GEM median π (T,), final train loss, test accuracy."""
    means = jnp.stack(
        [compute_time("exponential", int(n), max_workers=max_workers).mean for n in worker_counts]
    )

    def one(mean, kappa, key):
        params = init_fn(jax.random.fold_in(key, 1))
        times = ComputeTime("exponential", mean, 0.5)
        res = run_pool(
            grad_fn, rule_fn(kappa), params, key, times=times, num_arrivals=1,
            num_steps=config.worker_steps,
            metrics_fn=lambda s: getattr(s.opt_state, "pi_median", jnp.zeros(())),
        )  # fmt: skip
        train_loss, test_acc = evaluate_fn(res.params)
        # records[0] is the state before the first update: π after each update is [1:].
        return res.trace.loss[:, 0], res.metrics[1:], train_loss, test_acc

    over_seeds = jax.vmap(one, in_axes=(None, None, 0))
    out = jax.jit(jax.vmap(over_seeds, in_axes=(0, 0, None)))(means, jnp.asarray(kappas), keys)
    return [np.asarray(o) for o in out]


def _smooth(x, windows):
    x = np.asarray(x)
    t = x.shape[-1] // windows * windows
    return x[..., :t].reshape(x.shape[:-1] + (windows, -1)).mean(-1)


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    data, model, grad_fn = _task(config)

    def init_fn(k):
        return jax.tree.map(lambda p: p[0], init_stacked(model, k, 1, data.x_train[:2]))

    def evaluate_fn(params):
        stacked = jax.tree.map(lambda p: p[None], params)
        train_loss, _ = evaluate(model, stacked, data.x_train, data.y_train)
        _, test_acc = evaluate(model, stacked, data.x_test, data.y_test)
        return train_loss[0], test_acc[0]

    keys = jax.random.split(key, config.seeds)
    ns = np.asarray(config.workers)
    max_workers = int(max(ns.max(), config.kappa_workers))
    shape = (len(RULES), len(ns), config.seeds)
    curves = np.zeros(shape + (config.windows,))
    final = np.zeros(shape)
    acc = np.zeros(shape)
    diverged = np.zeros(shape, dtype=np.int64)
    ones = np.ones(len(ns))
    for r, name in enumerate(RULES):
        loss, pis, train_loss, test_acc = _sweep(
            config, lambda kappa, name=name: _rule(name, config, max_workers, kappa), ns, ones,
            max_workers, init_fn, grad_fn, evaluate_fn, keys,
        )  # fmt: skip
        curves[r] = _smooth(loss, config.windows)
        final[r], acc[r] = train_loss, test_acc
        diverged[r] = np.asarray(divergence_step(loss, config.diverge_loss))
        if name == "gem":
            pi_curves = _smooth(pis, config.windows)

    kappas = np.asarray(config.kappas)
    loss, _, train_loss, _ = _sweep(
        config, lambda kappa: _rule("gem", config, max_workers, kappa),
        [config.kappa_workers] * len(kappas), kappas, max_workers, init_fn, grad_fn,
        evaluate_fn, keys,
    )  # fmt: skip
    steps = np.arange(1, config.windows + 1) * (config.worker_steps // config.windows)
    return {
        "workers": ns,
        "steps": steps,
        "loss_curves": curves,
        "final_train_loss": final,
        "test_accuracy": acc,
        "diverged_at": diverged,
        "pi_median": pi_curves,
        "kappas": kappas,
        "kappa_curves": _smooth(loss, config.windows),
        "kappa_final_train_loss": train_loss,
        "kappa_diverged_at": np.asarray(divergence_step(loss, config.diverge_loss)),
    }


def _finite_or_inf(x):
    x = np.asarray(x, dtype=float)
    return np.where(np.isfinite(x), x, np.inf)


def metrics(results, config) -> dict[str, float]:
    final = _finite_or_inf(results["final_train_loss"]).mean(-1)  # (rules, ns)
    g, d, a = (RULES.index(r) for r in RULES)
    ns = results["workers"]
    pi = np.nanmedian(results["pi_median"][..., results["pi_median"].shape[-1] // 2 :], axis=-1)
    pi = pi.mean(-1)  # (ns,)
    out = {
        "gem_final_loss_nmax": final[g, -1],
        "gem_final_loss_nmin": final[g, 0],
        "downpour_final_loss_nmax": final[d, -1],
        "downpour_final_loss_nmin": final[d, 0],
        "adaptive_final_loss_nmax": final[a, -1],
        "downpour_degradation_ratio": final[d, -1] / final[d, 0],
        "gem_stability_ratio": final[g, -1] / final[g, 0],
        "gem_diverged_runs": float(np.sum(results["diverged_at"][g] >= 0)),
        "downpour_diverged_runs": float(np.sum(results["diverged_at"][d] >= 0)),
        "gem_test_accuracy_nmax": float(results["test_accuracy"][g, -1].mean()),
        "pi_median_nmin": pi[0],
        "pi_median_nmax": pi[-1],
        "pi_median_vs_n_spearman": float(_spearman(ns, pi)) if len(ns) > 2 else np.nan,
        "initial_loss": float(np.log(10.0)),
    }
    for j, kappa in enumerate(results["kappas"]):
        out[f"kappa_{kappa:g}_final_loss"] = float(
            _finite_or_inf(results["kappa_final_train_loss"][j]).mean()
        )
    return out


def _spearman(x, y):
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return np.corrcoef(rx, ry)[0, 1]


def claims(results, config):
    m = metrics(results, config)
    stable = m["gem_final_loss_nmax"] if m["gem_diverged_runs"] == 0 else np.inf
    return [
        claim_less(
            "gem_stable_at_max_workers",
            f"GEM stays stable at n = {results['workers'][-1]} workers: no run diverges and the "
            "final training loss is below the initial loss ln 10 (value: final loss, inf if any "
            "run diverged)",
            stable,
            float(np.log(10.0)),
        ),
        claim_greater(
            "downpour_degrades_with_n",
            "DOWNPOUR degrades as n grows: final training loss at the largest n / at the "
            "smallest n (inf when it diverged)",
            m["downpour_degradation_ratio"],
            1.0,
        ),
        claim_less(
            "pi_median_decreases_with_n",
            "The median π (second half of training) is smaller at the largest n than at the "
            "smallest (ratio)",
            m["pi_median_nmax"] / m["pi_median_nmin"],
            1.0,
        ),
    ]


def _curve(ax, x, runs, diverged, label, color):
    runs = np.asarray(runs)
    mean, err = mean_and_se(runs)
    steps = np.asarray(diverged)[np.asarray(diverged) >= 0]  # −1: never diverged
    if steps.size:
        label = f"{label} ({steps.size}/{runs.shape[0]} diverged at step {int(steps.min())})"
    ok = np.isfinite(mean) & (np.abs(mean) < 1e3)
    band(ax, x[ok], mean[ok], err[ok], label=label, color=color)
    if steps.size:
        ax.axvline(int(steps.min()), color=color, ls=":", lw=1)


def plot(results, config):
    steps, ns = results["steps"], results["workers"]
    colors = [f"C{i}" for i in range(len(ns))]
    fig, axes = figure(len(RULES) + 1, width=4.3)
    for r, name in enumerate(RULES):
        ax = axes[r]
        for i, n in enumerate(ns):
            _curve(ax, steps, results["loss_curves"][r, i], results["diverged_at"][r, i],
                   f"n={n}", colors[i])  # fmt: skip
        ax.set(xlabel="worker steps (gradients)", ylabel="training loss (minibatch, smoothed)",
               title=RULE_LABELS[name], ylim=(0, 3.0))  # fmt: skip
        ax.legend(fontsize=7)
    ax = axes[-1]
    for r, name in enumerate(RULES):
        final = results["final_train_loss"][r]
        shown = np.where(np.isfinite(final), final, np.nan)
        mean = np.nanmean(shown, -1)
        ax.plot(ns, mean, "o-", label=RULE_LABELS[name])
        for i, n in enumerate(ns):
            if np.any(results["diverged_at"][r, i] >= 0):
                ax.plot([n], [3.0], "x", color=ax.lines[-1].get_color(), ms=9)
    ax.set(xscale="log", xlabel="number of workers n", ylabel="final training loss (full set)",
           title="Final loss vs n (x: diverged)", ylim=(0, 3.2))  # fmt: skip
    ax.legend(fontsize=7)
    title = (
        f"MNIST-1D {config.model.upper()}, η={config.learning_rate:g}, batch "
        f"{config.batch_size}, c=1, exponential compute times; protocol ours"
    )
    fig.suptitle(title, fontsize=9)

    fig2, (bx1, bx2, bx3) = figure(3, width=4.3)
    for i, n in enumerate(ns):
        pm = results["pi_median"][i]
        band(bx1, steps, *mean_and_se(pm), label=f"n={n}",
             color=colors[i])  # fmt: skip
    bx1.set(xlabel="server updates", ylabel="median π (window mean)", title="GEM: median π")
    bx1.legend(fontsize=7)
    half = results["pi_median"].shape[-1] // 2
    pi_n = np.nanmedian(results["pi_median"][..., half:], axis=-1)
    bx2.errorbar(ns, pi_n.mean(-1), yerr=pi_n.std(-1), fmt="o-")
    bx2.set(xscale="log", xlabel="number of workers n", ylabel="median π (2nd half)",
            title="Median π vs n")  # fmt: skip
    for j, kappa in enumerate(results["kappas"]):
        _curve(bx3, steps, results["kappa_curves"][j], results["kappa_diverged_at"][j],
               f"κ={kappa:g}", f"C{j}")  # fmt: skip
    bx3.set(xlabel="worker steps", ylabel="training loss (minibatch, smoothed)",
            title=f"GEM κ sweep, n={config.kappa_workers}", ylim=(0, 3.0))  # fmt: skip
    bx3.legend(fontsize=7)
    return {"gem_scaling_loss": fig, "gem_scaling_pi_kappa": fig2}
