"""EASGD as a non-distributed optimizer: does the elastic center regularize (claim 6)?

Boffi & Slotine (docs/papers.md §1, claim 6) report that EASGD regularizes even with one agent
(CNNs on CIFAR-10) and that it is competitive with momentum SGD. With N = 1 and α = ηρ, EASGD
is `x ← x − η g(x) − α(x − x̃)`, `x̃ ← x̃ + α(x − x̃)`: the center x̃ is an exponential moving
average of the worker x, and the midpoint (x + x̃)/2 moves by −(η/2) g(x), i.e. follows SGD
at η/2. Comparing EASGD and SGD at the same nominal rate is therefore biased against EASGD
(SGD at η/2 overfits more per unit of training loss than SGD at η), so the rates are matched.

Protocol (ours; the paper's CIFAR-10 protocol is not available to us):

- Task: MNIST-1D, a `num_train` = 1000-example training subset (so overfitting is strong:
  test loss rises while the training loss falls to zero), the 1000 canonical test examples,
  the `CNN1D` network (evaluated as `PatchCNN1D`, the same network written with patch matrix
  products, which is several times faster on CPU and vmaps over seeds), minibatches of
  `batch_size` = 32 drawn with replacement. `tasks=("cifar10",)` with `data_dir` runs the same
  protocol on a `num_train` subset of a local copy of CIFAR-10's binary release with `CNN2D`
  (not part of the default runs). Quick mode runs the middle cell only (η = 0.1, ρ = 1), four
  seeds, 1600 steps.
- Matched effective learning rates, for every SGD rate η in `learning_rates`: SGD at η
  (`optax.sgd`); momentum SGD at η(1 − β), β = `momentum` (`optax.sgd(momentum=β)`, whose
  steady-state step is η); EASGD with one agent at 2η and ρ in `rhos`
  (`algorithms.optimizers.easgd`, α = 2ηρ). A cell with α = 2ηρ ≥ 1 is not run (the worker-
  center difference is multiplied by 1 − 2α per step and the pair oscillates or diverges);
  the grid η ∈ {0.05, 0.1, 0.25}, ρ ∈ {1, 5} runs (0.05, 1), (0.05, 5), (0.1, 1), (0.25, 1).
- Seeds: every cell runs `seeds` times with the same seed keys (same initialization, same
  minibatch stream), so comparisons are paired by seed. Each record (every `record_every`
  steps) evaluates the full training and test sets: for SGD and momentum their iterate, for
  EASGD both its output model, the center x̃, and its worker x.
- Generalization gap at matched fit: the gap `test loss − train loss` is read where a run's
  training loss first falls to each pre-registered level in `levels` = {0.5, 0.3, 0.2, 0.1}
  (linear interpolation in log training loss between the two records around the crossing).
- Divergence: every run has `divergence_threshold`; its step is recorded (`diverged_step`,
  −1 = never) and marked in the figures. A diverged EASGD run fails the claims it enters
  (its paired difference is −∞); a diverged baseline seed leaves no pair and is dropped, as
  is a seed where a run never reaches a level within `num_steps` (counted in the metrics).
  In the accuracy claim a diverged run scores accuracy 0.

Claims (paired per-seed differences, mean ± 2 s.e. over seeds, `mean_interval`):

- `{task}_center_gap_below_sgd_eta{η}_rho{ρ}`, one per EASGD cell: the center's gap is
  smaller than SGD's (same η) at every level. Per level, d = SGD gap − center gap per seed;
  the value is the smallest mean over levels and the interval (smallest lower end, smallest
  upper end), so it holds only if every level's interval lies above 0 and fails if some
  level's lies below.
- `{task}_easgd_competitive_with_momentum`: the best EASGD cell's test accuracy is within
  `competitive_margin` (2 points) of the best momentum cell's: momentum − EASGD < margin.
  A run's accuracy is its test accuracy averaged over the last `final_fraction` of records
  (not a peak picked on the test set); "best" is the cell with the highest seed mean.

The worker's gap against SGD's, the center's against its worker's and momentum's against
SGD's are metrics, not claims (the paper's output model is the center).

What the full run shows (8 seeds, 3000 steps; docs/results/easgd_regularization): the center's
gap is smaller than SGD's at every level in every cell, by 0.09-0.15 (η = 0.05, ρ = 1),
0.08-0.12 (η = 0.05, ρ = 5), 0.11-0.25 (η = 0.1) and 0.06-0.16 (η = 0.25); every level's
interval clears 0 except η = 0.25 at level 0.5 (0.057 ± 0.061), so that cell is
"inconclusive": with α = 2ηρ = 0.5 the center is the midpoint of its previous value and the
worker, a moving average over about two steps, and early in training its gap barely differs
from SGD's. The worker's gap lies between SGD's and the center's (the averaging, not the
elastic pull on the worker, does most of the work). Momentum at the matched rate overfits
like SGD (by up to 0.15 more at η = 0.25). The best EASGD cell (η = 0.25) ends 1.7 points
above the best momentum cell (0.732 against 0.715), so "competitive with momentum" holds.

What would change the verdicts: comparing at equal nominal rates (EASGD at η follows SGD at
η/2, which overfits more per unit of training loss; the previous protocol, at one nominal
η = 0.05, found EASGD's gap slightly larger than SGD's); a larger training set (smaller gaps,
the effect sinks into the noise); a shorter memory of the center (α near 0.5, as at η = 0.25,
shrinks the effect; α >= 1 is unstable and not run); too few steps for every run to reach the
0.1 level (those seeds drop out and the interval widens). The CIFAR-10 option runs but costs
about a second per step per seed on two CPU cores (`CNN2D`): it needs an accelerator.
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
    CNN2D,
    Dataset,
    PatchCNN1D,
    evaluate,
    init_stacked,
    load_cifar10,
    load_mnist1d,
    minibatch_oracle,
)

from .harness.cache import RunCache
from .harness.contract import Claim, claim_greater, claim_less, mean_interval
from .harness.plotting import figure, mean_and_se

NAME = "easgd_regularization"
DESCRIPTION = "EASGD (N=1) vs SGD and momentum at matched rates, MNIST-1D CNN: gap at fixed fit"

TASKS = ("mnist1d", "cifar10")  # cifar10 needs a local copy of the binary release (data_dir)
VALUES = ("train_loss", "test_loss", "train_acc", "test_acc")
KINDS = ("sgd", "momentum", "easgd")


@dataclasses.dataclass(frozen=True)
class Config:
    tasks: tuple[str, ...] = dataclasses.field(
        default=("mnist1d",),
        metadata={"help": "mnist1d (CNN1D) and/or cifar10 (CNN2D, needs data_dir)"},
    )
    data_dir: str = dataclasses.field(
        default="", metadata={"help": "CIFAR-10 binary release directory (cifar10 task)"}
    )
    num_train: int = dataclasses.field(default=1000, metadata={"help": "training subset size"})
    learning_rates: tuple[float, ...] = dataclasses.field(
        default=(0.05, 0.1, 0.25),
        metadata={"help": "SGD rates η; momentum runs at η(1−β), EASGD at 2η"},
    )
    rhos: tuple[float, ...] = dataclasses.field(
        default=(1.0, 5.0), metadata={"help": "EASGD ρ (α = 2ηρ; cells with α >= 1 skipped)"}
    )
    momentum: float = dataclasses.field(default=0.9, metadata={"help": "momentum β"})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "minibatch size"})
    num_steps: int = dataclasses.field(default=3000, metadata={"help": "optimizer steps"})
    record_every: int = dataclasses.field(default=50, metadata={"help": "steps per record"})
    seeds: int = dataclasses.field(default=8, metadata={"help": "independent seeds"})
    levels: tuple[float, ...] = dataclasses.field(
        default=(0.5, 0.3, 0.2, 0.1),
        metadata={"help": "training losses where gaps are compared (pre-registered)"},
    )
    final_fraction: float = dataclasses.field(
        default=0.25, metadata={"help": "last fraction of records averaged for test accuracy"}
    )
    competitive_margin: float = dataclasses.field(
        default=0.02, metadata={"help": "EASGD's best accuracy within this of momentum's"}
    )
    divergence_threshold: float = dataclasses.field(
        default=1e6, metadata={"help": "a parameter beyond this marks a run diverged"}
    )

    def __post_init__(self):
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise ValueError(f"tasks must be among {TASKS}, got {self.tasks!r}")
        if "cifar10" in self.tasks and not self.data_dir:
            raise ValueError("the cifar10 task needs data_dir (--set data_dir=PATH)")
        if not self.learning_rates or not all(r > 0 for r in self.learning_rates):
            raise ValueError(f"learning_rates must be > 0, got {self.learning_rates!r}")
        if not self.rhos or not all(r > 0 for r in self.rhos):
            raise ValueError(f"rhos must be > 0, got {self.rhos!r}")
        if not any(2 * e * r < 1 for e in self.learning_rates for r in self.rhos):
            raise ValueError(
                f"no EASGD cell with α = 2ηρ < 1 for learning_rates={self.learning_rates!r} "
                f"and rhos={self.rhos!r}"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        for name in ("num_train", "batch_size", "num_steps", "record_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.batch_size > self.num_train:
            raise ValueError(f"batch_size {self.batch_size} exceeds num_train {self.num_train}")
        if self.num_steps % self.record_every:
            raise ValueError(
                f"num_steps ({self.num_steps}) must be a multiple of record_every "
                f"({self.record_every})"
            )
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 (for intervals), got {self.seeds!r}")
        if not self.levels or not all(lv > 0 for lv in self.levels):
            raise ValueError(f"levels must be training losses > 0, got {self.levels!r}")
        if not 0 < self.final_fraction <= 1:
            raise ValueError(f"final_fraction must be in (0, 1], got {self.final_fraction!r}")
        if not self.competitive_margin >= 0:
            raise ValueError(f"competitive_margin must be >= 0, got {self.competitive_margin!r}")
        if not self.divergence_threshold > 0:
            raise ValueError(f"divergence_threshold must be > 0, got {self.divergence_threshold!r}")


# Quick: the middle cell of the grid (η = 0.1, ρ = 1: α = 0.2, a proper moving average, and
# every run reaches the 0.1 level by about step 1400), four seeds.
QUICK = dict(learning_rates=(0.1,), rhos=(1.0,), num_steps=1600, seeds=4)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One optimizer setting: `kind` at SGD-equivalent rate `eta` (and `rho` for EASGD)."""

    kind: str
    eta: float
    rho: float | None = None

    @property
    def name(self) -> str:
        rho = "" if self.rho is None else f"_rho{self.rho:g}"
        return f"{self.kind}_eta{self.eta:g}{rho}"

    def optimizer(self, config) -> optax.GradientTransformation:
        if self.kind == "sgd":
            return optax.sgd(self.eta)
        if self.kind == "momentum":
            return optax.sgd(self.eta * (1 - config.momentum), momentum=config.momentum)
        return easgd(2 * self.eta, self.rho)

    def label(self, config) -> str:
        if self.kind == "sgd":
            return f"SGD lr {self.eta:g}"
        if self.kind == "momentum":
            return f"momentum β={config.momentum:g}, lr {self.eta * (1 - config.momentum):g}"
        return f"EASGD lr {2 * self.eta:g}, ρ={self.rho:g} (α={2 * self.eta * self.rho:g})"


def cells(config) -> list[Cell]:
    """Every optimizer cell, per SGD rate η: SGD, momentum, EASGD for each ρ with 2ηρ < 1."""
    out = []
    for eta in config.learning_rates:
        out += [Cell("sgd", eta), Cell("momentum", eta)]
        out += [Cell("easgd", eta, rho) for rho in config.rhos if 2 * eta * rho < 1]
    return out


def _load(task, config) -> tuple[Dataset, object]:
    if task == "mnist1d":
        return load_mnist1d(num_train=config.num_train, seed=0), PatchCNN1D()
    data = load_cifar10(config.data_dir)
    if config.num_train > len(data.y_train):
        raise ValueError(
            f"num_train {config.num_train} exceeds the {len(data.y_train)} CIFAR-10 training "
            f"images in {config.data_dir}"
        )
    keep = np.sort(np.random.default_rng(0).choice(len(data.y_train), config.num_train, False))
    return data._replace(x_train=data.x_train[keep], y_train=data.y_train[keep]), CNN2D()


def _train(name, cell, data, model, config, key, cache):
    """Records `{"output": (seeds, R, 4), ["worker": …]}` of VALUES, and divergence steps."""
    oracle = minibatch_oracle(model, data.x_train, data.y_train, config.batch_size)
    sample = jnp.asarray(data.x_train[:2])
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def values(params):
        train = evaluate(model, params, x_train, y_train, batch_size=1000)
        test = evaluate(model, params, x_test, y_test, batch_size=1000)
        return jnp.stack([train[0][0], test[0][0], train[1][0], test[1][0]])

    def metrics_fn(state):
        if cell.kind != "easgd":
            return {"output": values(state.params)}
        # The center x̃ has no agent axis: evaluate it as a single model.
        center = jax.tree.map(lambda c: c[None], easgd_center(state.opt_state))
        return {"output": values(center), "worker": values(state.params)}

    def init(seed_key):
        k_init, k_data = jax.random.split(seed_key)
        return init_stacked(model, k_init, 1, sample, same_init=True), k_data

    # The same seed keys for every cell: identical initializations and minibatch streams.
    params, data_keys = jax.vmap(init)(jax.random.split(key, config.seeds))
    # The seeds train together (vmapped), checkpointed about ten times: a kill loses at most
    # one segment of the cell, and the resumed records are bitwise those of an unbroken run.
    records = config.num_steps // config.record_every
    res = cache.run_agents(
        name, cell.optimizer(config), params, oracle, num_steps=config.num_steps,
        key=data_keys, record_every=config.record_every, metrics_fn=metrics_fn, batched=True,
        checkpoint_every=config.record_every * (records // math.gcd(records, 10)),
        divergence_threshold=config.divergence_threshold,
    )  # fmt: skip
    out = {k: np.asarray(v, dtype=float) for k, v in res.metrics.items()}
    return out, np.asarray(res.diverged_step)


def run(config: Config, key: jax.Array, cache=None) -> dict[str, np.ndarray]:
    """Train every (task, cell); with a `RunCache`, finished cells survive a kill."""
    cache = RunCache(None) if cache is None else cache
    # Every dataset is loaded (and checked) before anything is trained or written.
    tasks = {task: _load(task, config) for task in config.tasks}
    out: dict[str, np.ndarray] = {
        "steps": np.arange(config.num_steps // config.record_every + 1) * config.record_every
    }
    todo = [(ti, task, cell) for ti, task in enumerate(config.tasks) for cell in cells(config)]
    for ti, task, cell in cache.progress(todo, desc=NAME, unit="cell"):
        data, model = tasks[task]
        name = f"{task}_{cell.name}"

        def train(name=name, cell=cell, data=data, model=model, k=jax.random.fold_in(key, ti)):
            values, diverged = _train(f"{name}_training", cell, data, model, config, k, cache)
            return {**values, "diverged_step": diverged}

        result = cache.cached(name, train)
        out[name] = result["output"]  # (seeds, R, 4): SGD's / momentum's iterate, EASGD's x̃
        if "worker" in result:
            out[f"{name}_worker"] = result["worker"]
        out[f"{name}_diverged_step"] = result["diverged_step"]
    return out


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------


def crossing(steps, train_loss, level) -> float:
    """The first step where `train_loss` falls to `level` (linear in log-loss between the
    records around it), or NaN if it never does."""
    below = np.flatnonzero(train_loss <= level)
    if not below.size:
        return math.nan
    i = below[0]
    if i == 0:
        return float(steps[0])
    t0, t1 = steps[i - 1], steps[i]
    l0, l1 = np.log(train_loss[i - 1]), np.log(train_loss[i])
    return float(t0 + (t1 - t0) * (l0 - np.log(level)) / (l0 - l1)) if l0 != l1 else float(t1)


def gaps_at_levels(steps, values, levels) -> np.ndarray:
    """`(seeds, levels)`: test − train loss where each seed's training loss first reaches
    each level (NaN where it never does); `values` is `(seeds, R, 4)` of VALUES."""
    out = np.full((values.shape[0], len(levels)), np.nan)
    for s, v in enumerate(values):
        gap = v[:, 1] - v[:, 0]
        for j, level in enumerate(levels):
            at = crossing(steps, v[:, 0], level)
            if np.isfinite(at):
                out[s, j] = np.interp(at, steps, gap)
    return out


def _diverged(results, name) -> np.ndarray:
    return np.asarray(results[f"{name}_diverged_step"]) >= 0


def paired_gap_differences(results, task, cell, config, model="output") -> np.ndarray:
    """`(seeds, levels)`: SGD's gap minus EASGD `cell`'s (its center, or `model="worker"`).

    −inf for a seed where the EASGD run diverged (a failure of the method); NaN where SGD
    diverged or either run never reached the level (no pair).
    """
    steps = results["steps"]
    sgd = f"{task}_{Cell('sgd', cell.eta).name}"
    subject = f"{task}_{cell.name}" + ("_worker" if model == "worker" else "")
    diff = gaps_at_levels(steps, results[sgd], config.levels) - gaps_at_levels(
        steps, results[subject], config.levels
    )
    diff[_diverged(results, sgd)] = np.nan
    diff[_diverged(results, f"{task}_{cell.name}")] = -np.inf
    return diff


def _interval(diffs) -> tuple[float, tuple[float, float], int]:
    """Mean ± 2 s.e. of the defined paired differences, and how many there are; −inf in any
    seed makes it −inf (the subject failed)."""
    d = np.asarray(diffs, dtype=float)
    if np.any(d == -np.inf):
        return -math.inf, (-math.inf, -math.inf), int(d.size)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, (-math.inf, math.inf), 0
    mean, interval = mean_interval(d)
    return mean, interval, int(d.size)


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def final_test_accuracy(results, name, config) -> np.ndarray:
    """`(seeds,)`: test accuracy averaged over the last `final_fraction` of records; 0 for a
    diverged run."""
    v = results[name][:, :, 3]
    last = max(1, int(round(config.final_fraction * (v.shape[1] - 1))))
    acc = v[:, -last:].mean(1)
    return np.where(_diverged(results, name), 0.0, acc)


def _best(results, task, kind, config) -> tuple[Cell, np.ndarray]:
    options = [c for c in cells(config) if c.kind == kind]
    accs = [final_test_accuracy(results, f"{task}_{c.name}", config) for c in options]
    i = int(np.argmax([a.mean() for a in accs]))
    return options[i], accs[i]


def metrics(results, config) -> dict[str, float]:
    m = {}
    for task in config.tasks:
        for cell in cells(config):
            name = f"{task}_{cell.name}"
            final = results[name][:, -1].mean(0)
            for i, value in enumerate(VALUES):
                m[f"{name}_final_{value}"] = final[i]
            m[f"{name}_final_test_acc_window"] = final_test_accuracy(results, name, config).mean()
            m[f"{name}_diverged_runs"] = float(_diverged(results, name).sum())
            gaps = gaps_at_levels(results["steps"], results[name], config.levels)
            for j, level in enumerate(config.levels):
                m[f"{name}_gap_at_loss{level:g}"] = _nanmean(gaps[:, j])
            if cell.kind != "easgd":
                continue
            for model in ("output", "worker"):
                who = "center" if model == "output" else "worker"
                diff = paired_gap_differences(results, task, cell, config, model)
                for j, level in enumerate(config.levels):
                    mean, (lo, hi), n = _interval(diff[:, j])
                    key = f"{name}_sgd_minus_{who}_gap_at_loss{level:g}"
                    m[key], m[f"{key}_lo"], m[f"{key}_hi"] = mean, lo, hi
                    m[f"{key}_pairs"] = float(n)
        mom, mom_acc = _best(results, task, "momentum", config)
        eas, eas_acc = _best(results, task, "easgd", config)
        m[f"{task}_best_momentum_test_acc"] = mom_acc.mean()
        m[f"{task}_best_easgd_test_acc"] = eas_acc.mean()
    return m


def claims(results, config) -> list[Claim]:
    out = []
    levels = ", ".join(f"{lv:g}" for lv in config.levels)
    for task in config.tasks:
        for cell in cells(config):
            if cell.kind != "easgd":
                continue
            diff = paired_gap_differences(results, task, cell, config)
            stats = [_interval(diff[:, j]) for j in range(len(config.levels))]
            means = np.array([s[0] for s in stats])
            statement = (
                f"{task}: EASGD (N=1, lr {2 * cell.eta:g}, ρ={cell.rho:g}), its center, has a "
                f"smaller generalization gap (test − train loss) than SGD at the matched rate "
                f"{cell.eta:g} at every training loss in {{{levels}}}: worst level of the "
                f"paired per-seed differences SGD − center ({config.seeds} seeds)"
            )
            cid = f"{task}_center_gap_below_sgd_{cell.name.removeprefix('easgd_')}"
            if np.all(np.isnan(means)):  # no seed reached any level: nothing to compare
                out.append(Claim(cid, statement, math.nan, "> 0", "inconclusive"))
                continue
            interval = (min(s[1][0] for s in stats), min(s[1][1] for s in stats))
            out.append(claim_greater(cid, statement, np.nanmin(means), 0.0, interval=interval))
        mom, mom_acc = _best(results, task, "momentum", config)
        eas, eas_acc = _best(results, task, "easgd", config)
        value, interval = mean_interval(mom_acc - eas_acc)
        out.append(
            claim_less(
                f"{task}_easgd_competitive_with_momentum",
                f"{task}: EASGD's best test accuracy over the rate grid ({eas.label(config)}) "
                f"is within {config.competitive_margin:g} of momentum SGD's best "
                f"({mom.label(config)}): momentum − EASGD, last {config.final_fraction:g} of "
                f"records, paired over {config.seeds} seeds",
                value,
                config.competitive_margin,
                interval=interval,
            )
        )
    return out


def plot(results, config):
    figs = {}
    etas = config.learning_rates
    all_cells = cells(config)
    colors = {c.name: f"C{i}" for i, c in enumerate(all_cells)}
    for task in config.tasks:
        fig, axes = figure(len(etas) + 2, width=4.4, height=4.2)

        def label(cell, name):
            div = int(_diverged(results, name).sum())
            return cell.label(config) + (f" ({div} diverged)" if div else "")

        for ax, eta in zip(axes, etas):
            for cell in (c for c in all_cells if c.eta == eta):
                name = f"{task}_{cell.name}"
                curves = [("output", "-", "center" if cell.kind == "easgd" else None)]
                if cell.kind == "easgd":
                    curves.append(("worker", ":", "worker"))
                for model, style, who in curves:
                    v = results[name if model == "output" else f"{name}_worker"]
                    ok = ~_diverged(results, name)
                    if not ok.any():
                        continue
                    mean = v[ok].mean(0)
                    text = label(cell, name) + (f": {who}" if who else "")
                    ax.plot(mean[:, 0], mean[:, 1] - mean[:, 0], style, color=colors[cell.name],
                            label=text)  # fmt: skip
            for level in config.levels:
                ax.axvline(level, color="0.6", ls=":", lw=0.8)
            ax.set(xscale="log", xlabel="training loss (dotted lines: levels)",
                   ylabel="test − train loss (gap), seed mean",
                   title=f"Gap vs fit, matched rate η={eta:g}")  # fmt: skip
            ax.invert_xaxis()
            ax.legend(fontsize=6)
        ax = axes[-2]
        easgd_cells = [c for c in all_cells if c.kind == "easgd"]
        width = 0.8 / max(1, 2 * len(easgd_cells))
        x = np.arange(len(config.levels))
        for i, cell in enumerate(easgd_cells):
            for j, (model, marker) in enumerate((("output", "o"), ("worker", "s"))):
                diff = paired_gap_differences(results, task, cell, config, model)
                stats = [_interval(diff[:, k]) for k in range(len(config.levels))]
                mean = np.array([s[0] for s in stats])
                lo = np.array([s[1][0] for s in stats])
                hi = np.array([s[1][1] for s in stats])
                pos = x + (2 * i + j - len(easgd_cells) + 0.5) * width
                fin = np.isfinite(mean) & np.isfinite(lo) & np.isfinite(hi)
                who = "center" if model == "output" else "worker"
                ax.errorbar(pos[fin], mean[fin], yerr=[mean[fin] - lo[fin], hi[fin] - mean[fin]],
                            fmt=marker, color=colors[cell.name], mfc="w" if j else None,
                            label=f"{cell.label(config)}: {who}")  # fmt: skip
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(x, [f"{lv:g}" for lv in config.levels])
        ax.set(xlabel="training loss level", ylabel="SGD gap − EASGD gap (paired)",
               title="Gap reduction at matched fit (mean ± 2 s.e.)")  # fmt: skip
        ax.legend(fontsize=6)
        ax = axes[-1]
        for i, cell in enumerate(all_cells):
            name = f"{task}_{cell.name}"
            mean, se = mean_and_se(final_test_accuracy(results, name, config))
            ax.errorbar([i], [mean], yerr=[2 * se], fmt="o", color=colors[cell.name])
        ax.set_xticks(range(len(all_cells)), [label(c, f"{task}_{c.name}") for c in all_cells],
                      rotation=60, ha="right", fontsize=6)  # fmt: skip
        ax.set(ylabel=f"test accuracy, last {config.final_fraction:g} of the run",
               title="Test accuracy (mean ± 2 s.e.; diverged runs count 0)")  # fmt: skip
        model = "CNN1D" if task == "mnist1d" else "CNN2D"
        fig.suptitle(
            f"{task} ({config.num_train} training examples), {model}, batch "
            f"{config.batch_size}, {config.num_steps} steps, {config.seeds} seeds. Matched "
            f"effective rates: SGD η, momentum η(1−β), EASGD N=1 at 2η. Protocol ours.",
            fontsize=8,
        )
        figs[f"training_{task}"] = fig
    return figs
