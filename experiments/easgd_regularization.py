"""EASGD as a non-distributed optimizer: does the elastic center regularize (claim 6)?

Boffi & Slotine report that EASGD regularizes even with a single agent (CNNs on CIFAR-10).
Our protocol (not the paper's; CIFAR-10 is not part of the default runs): a Flax 1-D CNN on
MNIST-1D (a `num_train`-example training subset, so that overfitting is visible) and a small
MLP on scikit-learn's digits, trained with minibatch SGD from the same initializations by
- SGD (`optax.sgd`), momentum SGD (`optax.sgd(momentum=β)`), one agent;
- EASGD (`algorithms.optimizers.easgd`, `α = ηρ`) with N = 1 and with N ∈ `easgd_agents`
  agents that start from one initialization; its output model is the center x̃ (the quorum
  variable), as in Zhang, Choromanska, LeCun (2015).
Every optimizer runs `seeds` times (vmapped; a seed fixes the initialization and the
minibatches); train and test loss and accuracy are recorded on the full sets.

The claim "EASGD with one agent has a smaller generalization gap than SGD at matched
training loss" is checked as follows: the matched level is the highest of the lowest
training losses over every seed of the two methods, so every run reaches it; each seed's gap
`test loss − train loss` is read (linearly interpolated in steps) where that seed's training
loss first falls to the level; the claim holds if SGD's gap minus EASGD's exceeds zero by
more than 1.96 standard errors over seeds. Whatever the numbers say is the verdict.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from algorithms.optimizers import easgd, easgd_center
from experiments.tasks import (
    CNN1D,
    CNN2D,
    MLP,
    evaluate,
    init_stacked,
    load_cifar10,
    load_digits,
    load_mnist1d,
    minibatch_oracle,
)

from .harness.cache import RunCache
from .harness.contract import claim_greater
from .harness.plotting import band, figure, mean_and_se

NAME = "easgd_regularization"
DESCRIPTION = "EASGD (N=1 and N>1) vs SGD and momentum on MNIST-1D CNN and digits MLP: gen. gap"

TASKS = ("mnist1d", "digits")
OPTIONAL_TASKS = ("cifar10",)  # needs a local copy of the binary release: --set data_dir=...
METRICS = ("train_loss", "test_loss", "train_acc", "test_acc")


@dataclasses.dataclass(frozen=True)
class Config:
    tasks: tuple[str, ...] = dataclasses.field(
        default=TASKS,
        metadata={"help": "tasks: mnist1d (CNN), digits (MLP), cifar10 (CNN, needs data_dir)"},
    )
    data_dir: str = dataclasses.field(
        default="", metadata={"help": "CIFAR-10 binary release directory (cifar10 task)"}
    )
    num_train: int = dataclasses.field(default=1000, metadata={"help": "MNIST-1D train subset"})
    mlp_hidden: tuple[int, ...] = dataclasses.field(
        default=(64,), metadata={"help": "hidden widths of the digits MLP"}
    )
    learning_rate: float = dataclasses.field(default=0.05, metadata={"help": "step η"})
    momentum: float = dataclasses.field(default=0.9, metadata={"help": "momentum β"})
    rho: float = dataclasses.field(default=1.0, metadata={"help": "EASGD ρ (α = ηρ)"})
    easgd_agents: tuple[int, ...] = dataclasses.field(
        default=(4, 8), metadata={"help": "N for distributed EASGD"}
    )
    batch_size: int = dataclasses.field(default=32, metadata={"help": "minibatch per agent"})
    steps: int = dataclasses.field(default=6000, metadata={"help": "optimizer steps"})
    record_every: int = dataclasses.field(default=100, metadata={"help": "steps per record"})
    seeds: int = dataclasses.field(default=5, metadata={"help": "independent seeds"})

    def __post_init__(self):
        if not self.tasks or set(self.tasks) - set(TASKS + OPTIONAL_TASKS):
            raise ValueError(f"tasks must be among {TASKS + OPTIONAL_TASKS}, got {self.tasks}")
        if "cifar10" in self.tasks and not self.data_dir:
            raise ValueError("the cifar10 task needs data_dir (--set data_dir=PATH)")
        for name in ("learning_rate", "rho"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if max(self.easgd_agents, default=1) * self.learning_rate * self.rho >= 1:
            raise ValueError("N·α = N·η·ρ must be < 1 for a stable center update")
        if min(self.easgd_agents, default=2) < 2:
            raise ValueError(f"easgd_agents must be >= 2, got {self.easgd_agents}")
        for name in ("num_train", "batch_size", "steps", "record_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps % self.record_every:
            raise ValueError("steps must be a multiple of record_every")
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 (for error bars), got {self.seeds}")


QUICK = dict(steps=1000, record_every=50, seeds=2, easgd_agents=(4,), num_train=500)


def optimizers(config) -> list[tuple[str, int]]:
    """(name, number of agents) of every optimizer in the comparison."""
    out = [("sgd", 1), ("momentum", 1), ("easgd_1", 1)]
    return out + [(f"easgd_{n}", n) for n in config.easgd_agents]


def _task(name, config):
    if name == "mnist1d":
        return load_mnist1d(num_train=config.num_train, seed=0), CNN1D()
    if name == "cifar10":
        return load_cifar10(config.data_dir), CNN2D()
    return load_digits(seed=0), MLP(hidden=tuple(config.mlp_hidden), num_classes=10)


def _optimizer(name, config):
    if name == "sgd":
        return optax.sgd(config.learning_rate)
    if name == "momentum":
        return optax.sgd(config.learning_rate, momentum=config.momentum)
    return easgd(config.learning_rate, config.rho)


def _train(task_name, opt_name, n_agents, config, key, cache=None):
    """Records `(seeds, R, 4)` of the evaluated model's METRICS, and divergence steps."""
    data, model = _task(task_name, config)
    oracle = minibatch_oracle(model, data.x_train, data.y_train, config.batch_size)
    optimizer = _optimizer(opt_name, config)
    sample = jnp.asarray(data.x_train[:2])
    center_output = opt_name.startswith("easgd")

    def metrics_fn(params, opt_state, losses):
        del losses
        if center_output:
            # The center x̃ has no agent axis: evaluate it as a single model.
            params = jax.tree.map(lambda c: c[None], easgd_center(opt_state))
        train = evaluate(model, params, data.x_train, data.y_train)
        test = evaluate(model, params, data.x_test, data.y_test)
        return {"values": jnp.stack([train[0][0], test[0][0], train[1][0], test[1][0]])}

    def init(seed_key):
        k_init, k_data = jax.random.split(seed_key)
        return init_stacked(model, k_init, n_agents, sample, same_init=True), k_data

    # The same seed keys for every optimizer: identical initializations and data streams.
    params, data_keys = jax.vmap(init)(jax.random.split(key, config.seeds))
    # The seeds train together (vmapped), checkpointed about ten times: a kill loses at most
    # one segment of the cell, and the resumed records are bitwise those of an unbroken run.
    records = config.steps // config.record_every
    res = (RunCache(None) if cache is None else cache).run_agents(
        f"{task_name}_{opt_name}_training", optimizer, params, oracle, num_steps=config.steps,
        key=data_keys, record_every=config.record_every, metrics_fn=metrics_fn, batched=True,
        checkpoint_every=config.record_every * (records // math.gcd(records, 10)),
    )  # fmt: skip
    return np.asarray(res.metrics["values"], dtype=float), np.asarray(res.diverged_step)


def run(config: Config, key: jax.Array, cache=None) -> dict[str, np.ndarray]:
    """Train every (task, optimizer) cell; with a `RunCache`, finished cells survive a kill."""
    out: dict[str, np.ndarray] = {
        "steps": np.arange(config.steps // config.record_every + 1) * config.record_every
    }
    cells = [
        (ti, task, o, n) for ti, task in enumerate(config.tasks) for o, n in optimizers(config)
    ]
    if cache is not None:
        cells = cache.progress(cells, desc=NAME, unit="run")
    for ti, task, opt_name, n in cells:
        k = jax.random.fold_in(key, ti)

        def train(task=task, opt_name=opt_name, n=n, k=k):
            values, diverged = _train(task, opt_name, n, config, k, cache)
            return {"values": values, "diverged": diverged}

        cell = train() if cache is None else cache.cached(f"{task}_{opt_name}", train)
        out[f"{task}_{opt_name}"] = cell["values"]  # (seeds, R, 4)
        out[f"{task}_{opt_name}_diverged_step"] = cell["diverged"]
    return out


def _crossing(steps, train_loss, level):
    """The first (interpolated) step where `train_loss` falls to `level`, or NaN."""
    below = np.flatnonzero(train_loss <= level)
    if not below.size:
        return np.nan
    i = below[0]
    if i == 0:
        return float(steps[0])
    t0, t1, l0, l1 = steps[i - 1], steps[i], train_loss[i - 1], train_loss[i]
    return float(t0 + (t1 - t0) * (l0 - level) / (l0 - l1)) if l0 != l1 else float(t1)


def matched_gaps(results, task, names, matched=("sgd", "easgd_1")):
    """Per-seed gaps (test − train loss) of `names` at the matched training loss; and it.

    The level is the highest lowest training loss over every seed of the `matched` methods,
    so each of their seeds reaches it; other methods get NaN for seeds that never reach it.
    """
    steps = results["steps"]
    curves = {n: results[f"{task}_{n}"] for n in names}
    level = max(results[f"{task}_{n}"][:, :, 0].min(1).max() for n in matched)
    gaps = {}
    for n, c in curves.items():
        per_seed = []
        for s in range(c.shape[0]):
            at = _crossing(steps, c[s, :, 0], level)
            if np.isnan(at):
                per_seed.append(np.nan)
                continue
            gap = c[s, :, 1] - c[s, :, 0]
            per_seed.append(np.interp(at, steps, gap))
        gaps[n] = np.asarray(per_seed)
    return gaps, level


def metrics(results, config) -> dict[str, float]:
    m = {}
    for task in config.tasks:
        for opt_name, _ in optimizers(config):
            v = results[f"{task}_{opt_name}"][:, -1].mean(0)
            for i, metric in enumerate(METRICS):
                m[f"{task}_{opt_name}_final_{metric}"] = v[i]
            m[f"{task}_{opt_name}_final_loss_gap"] = v[1] - v[0]
            m[f"{task}_{opt_name}_final_acc_gap"] = v[2] - v[3]
            m[f"{task}_{opt_name}_diverged_runs"] = float(
                (results[f"{task}_{opt_name}_diverged_step"] >= 0).sum()
            )
        gaps, level = matched_gaps(results, task, [n for n, _ in optimizers(config)])
        m[f"{task}_matched_train_loss"] = level
        for n, g in gaps.items():
            m[f"{task}_{n}_gap_at_matched_loss"] = np.nanmean(g)
        diff = gaps["sgd"] - gaps["easgd_1"]
        m[f"{task}_sgd_minus_easgd1_gap"] = np.nanmean(diff)
        ok = np.isfinite(diff)
        se = diff[ok].std(ddof=1) / np.sqrt(ok.sum()) if ok.sum() > 1 else np.nan
        m[f"{task}_sgd_minus_easgd1_gap_se"] = se
    return m


def claims(results, config):
    m = metrics(results, config)
    out = []
    for task in config.tasks:
        diff, se = m[f"{task}_sgd_minus_easgd1_gap"], m[f"{task}_sgd_minus_easgd1_gap_se"]
        out.append(
            claim_greater(
                f"{task}_easgd1_smaller_gap_than_sgd",
                f"{task}: EASGD with one agent has a smaller generalization gap (test − train "
                "loss) than SGD at matched training loss: (SGD gap − EASGD gap) − 1.96 s.e. "
                f"over {config.seeds} seeds",
                diff - 1.96 * se,
                0.0,
            )
        )
    return out


def plot(results, config):
    figs = {}
    steps = results["steps"]
    names = [n for n, _ in optimizers(config)]
    labels = {"sgd": "SGD", "momentum": f"momentum SGD (β={config.momentum:g})"}
    for n, agents in optimizers(config):
        if n.startswith("easgd"):
            labels[n] = f"EASGD N={agents} (center)"
    for task in config.tasks:
        fig, axes = figure(3, width=4.3, height=3.6)
        for i, n in enumerate(names):
            v = results[f"{task}_{n}"]
            mean, se = mean_and_se(v)
            c = f"C{i}"
            band(axes[0], steps, mean[:, 0], se[:, 0], color=c, label=f"{labels[n]}: train")
            axes[0].plot(steps, mean[:, 1], "--", color=c, label=f"{labels[n]}: test")
            band(axes[1], steps, mean[:, 2], se[:, 2], color=c, label=f"{labels[n]}: train")
            axes[1].plot(steps, mean[:, 3], "--", color=c, label=f"{labels[n]}: test")
            gap = v[:, :, 1] - v[:, :, 0]
            axes[2].plot(mean[:, 0], gap.mean(0), "-", color=c, label=labels[n])
        gaps, level = matched_gaps(results, task, names)
        axes[2].axvline(level, color="k", ls=":", lw=0.8, label="matched training loss")
        axes[0].set(
            yscale="log",
            xlabel="step",
            ylabel="cross-entropy (solid: train, dashed: test)",
            title=f"{task}: loss",
        )
        axes[1].set(
            xlabel="step", ylabel="accuracy (solid: train, dashed: test)", title=f"{task}: accuracy"
        )
        axes[2].set(
            xscale="log",
            xlabel="training loss",
            ylabel="test − train loss (gap)",
            title="Generalization gap vs training loss",
        )
        axes[2].invert_xaxis()
        for ax in axes:
            ax.legend(fontsize=5)
        model = "CNN1D" if task == "mnist1d" else f"MLP{tuple(config.mlp_hidden)}"
        sizes = f"{config.num_train} train examples" if task == "mnist1d" else "sklearn digits"
        fig.suptitle(
            f"{task} ({sizes}), {model}: η={config.learning_rate:g}, batch {config.batch_size}, "
            f"EASGD ρ={config.rho:g} (α={config.learning_rate * config.rho:g}), "
            f"{config.seeds} seeds (bands ±1 s.e.). Protocol ours.",
            fontsize=8,
        )
        figs[f"training_{task}"] = fig
    return figs
