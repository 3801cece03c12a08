"""Staleness-aware learning rate α0/τ vs constant α0 under n-softsync (Zhang et al., Fig. 3).

Zhang, Gupta, Lian, Liu, "Staleness-aware Async-SGD for Distributed Deep Learning": λ learners
with minibatch μ; the server updates after c = ⌊λ/n⌋ gradients,
θ ← θ − (1/c) Σ_l α(τ_l) Δθ_l, with momentum 0.9 on the aggregated step. With a constant α0
large-n softsync fails to learn; with α(τ) = α0/τ every protocol ends close to hardsync, and
softsync gets there sooner in wall-clock time because no update waits for the slowest learner.

Protocol (ours where marked; the paper used CIFAR-10 and ImageNet):

- Task (ours): MNIST-1D, a `CNN1D` with channels (16, 16) (2,490 parameters; the default
  (32, 32, 32) costs 2.5× more for the same story), λ = 30 learners with μ = 4,
  n ∈ {1, 2, 4, 10, 15, 30} (n = 1: hardsync; c = ⌊30/n⌋ = 30, 15, 7, 3, 2, 1), 30 epochs
  (rounded to 31.5 so that every n evaluates after the same gradients) and the same number of
  worker gradients for every protocol. Quick mode: n ∈ {1, 30}, 10 epochs, 3 seeds.
- Clock (ours): log-normal compute times (σ = 0.5; `compute_times="exponential"` gives a much
  wider staleness distribution than the paper observed) on the virtual clock
  (`algorithms.asynchrony.run_pool`). The speed-up of n-softsync is the virtual time hardsync
  needs for the run's gradients divided by the time n-softsync needs for the same gradients.
- Rates: α0 = 0.05 (ours; the paper's 0.001 is for CIFAR-10) with the paper's server
  momentum 0.9 and its final drops, ÷10 at 120/140 and 130/140 of the run (its epochs 120
  and 130 of 140; `lr_drops`, fractions of the run), as an Optax schedule of the server
  update count (the same epochs for every n).
- Staleness count. In our pool an arriving learner pulls after the update it belongs to, so
  hardsync has τ = 0 and n-softsync ⟨τ⟩ ≈ n − 1; Zhang et al.'s learners count one more
  (τ_Zhang = τ + 1). `staleness_count="paper"` (default) divides by their count, α0/(τ + 1)
  (`adaptive_staleness_rate`); `"ours"` applies α0/τ to our count, α0/max(τ, 1)
  (`staleness_aware_rate`), which at n = 2 (τ ≈ 1) removes the cut entirely and is larger than
  the paper's by (τ + 1)/τ in general.
- Measurement (ours): test error evaluated `evals` times per run, averaged over the last
  quarter of evaluations (`final_fraction`) to average out the evaluation noise of a single
  final point; `seeds` independent runs (initialization, minibatches, compute times), one
  per key, shared by both rates and every n, so differences are paired by seed.
- Divergence: a run whose minibatch loss becomes non-finite or exceeds 1e3 is marked diverged
  at that worker step (−1: never), counts at chance-level test error (0.9) in every claim, and
  is labelled in the figure.

Claims (thresholds fixed in the config):

- `constant_rate_large_n_much_worse`: with α0 the largest-n softsync ends worse than hardsync
  by more than `worse_tol` (mean over seeds of the paired differences ± 2 s.e.).
- `staleness_aware_close_to_hardsync`: with α0/τ every n ends within `close_tol` of hardsync:
  the worst n's paired difference (value: the largest mean; interval: the largest lower and
  upper ends over n, so it holds only when every n's interval is below the tolerance and fails
  when some n's interval lies above it).
- `mean_staleness_is_n_minus_1`: ⟨τ⟩ − (n − 1) within ±0.5 for every n (per-seed means).
- `softsync_speedup`: the largest n processes the run's gradients at least `speedup_min`
  times faster than hardsync on the virtual clock (per-seed ratios). With i.i.d. compute times
  hardsync waits for the slowest of λ learners each update (for log-normal σ = 0.5 and
  λ = 30, about 2.4 mean compute times per 30 gradients) while softsync keeps every learner
  busy, so this mostly checks that the clock models stragglers.

What would change the verdicts: a shorter run (the former 3.4 epochs and one seed) leaves
hardsync still falling fast, so large-n softsync, which takes more and smaller steps, leads or
trails it by several points from seed to seed and the tolerance claim becomes inconclusive;
too large an α0 (or exponential compute times with their long staleness tail) makes even the
α0/τ runs of large n diverge, and too small an α0 makes the constant-rate runs learn as well,
so the first claim would fail. With a constant α0, n = 2 (τ ≈ 1) still learns: from n = 4 on
the runs stay at chance (0.9), as the paper's 15- and 30-softsync do.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from algorithms.asynchrony import (
    adaptive_staleness_rate,
    compute_time,
    constant_rate,
    divergence_step,
    run_pool,
    select_rule,
    softsync_arrivals,
    staleness_aware_rate,
    with_server_momentum,
)

from .harness.contract import (
    claim_between,
    claim_greater,
    claim_less,
    mean_interval,
    worst_cell,
)
from .harness.plotting import band, figure, mean_and_se
from .tasks import CNN1D, evaluate, init_stacked, load_mnist1d, minibatch_grad_fn

NAME = "staleness_aware"
DESCRIPTION = (
    "n-softsync with α0 vs α0/τ (Zhang et al. Fig. 3 analogue): test error, staleness, speed-up"
)

RATES = ("constant", "staleness_aware")
STALENESS_COUNTS = ("paper", "ours")
CHANCE_ERROR = 0.9  # 10 classes: the test error of a run that diverged
DIVERGE_LOSS = 1e3


@dataclasses.dataclass(frozen=True)
class Config:
    num_workers: int = dataclasses.field(default=30, metadata={"help": "λ learners"})
    minibatch: int = dataclasses.field(default=4, metadata={"help": "μ per learner"})
    softsync: tuple[int, ...] = dataclasses.field(
        default=(1, 2, 4, 10, 15, 30), metadata={"help": "n values (n=1 hardsync)"}
    )
    learning_rate: float = dataclasses.field(default=0.05, metadata={"help": "α0"})
    momentum: float = dataclasses.field(default=0.9, metadata={"help": "server momentum"})
    lr_drops: tuple[float, ...] = dataclasses.field(
        default=(120 / 140, 130 / 140),
        metadata={"help": "fractions of the run where the rate drops (paper: epochs 120, 130)"},
    )
    lr_drop_factor: float = dataclasses.field(default=0.1, metadata={"help": "factor per drop"})
    staleness_count: str = dataclasses.field(
        default="paper",
        metadata={"help": "paper: α0/(τ+1) (their τ = ours + 1) | ours: α0/max(τ, 1)"},
    )
    epochs: float = dataclasses.field(default=30.0, metadata={"help": "passes over train set"})
    evals: int = dataclasses.field(default=30, metadata={"help": "test evaluations per run"})
    final_fraction: float = dataclasses.field(
        default=0.25, metadata={"help": "last fraction of evaluations averaged"}
    )
    features: tuple[int, ...] = dataclasses.field(
        default=(16, 16), metadata={"help": "CNN1D channels"}
    )
    compute_times: str = dataclasses.field(
        default="lognormal", metadata={"help": "exponential | lognormal | constant"}
    )
    compute_sigma: float = dataclasses.field(default=0.5, metadata={"help": "log-normal σ"})
    seeds: int = dataclasses.field(default=5, metadata={"help": "independent runs"})
    close_tol: float = dataclasses.field(
        default=0.05, metadata={"help": "claimed max gap of α0/τ runs to hardsync (test error)"}
    )
    worse_tol: float = dataclasses.field(
        default=0.1, metadata={"help": "claimed min gap of constant-α0 largest n to hardsync"}
    )
    speedup_min: float = dataclasses.field(
        default=1.5, metadata={"help": "claimed min virtual-clock speed-up of the largest n"}
    )

    def __post_init__(self):
        for name in ("num_workers", "minibatch", "seeds", "evals"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for n in self.softsync:
            softsync_arrivals(self.num_workers, n)  # raises on n > λ
        if 1 not in self.softsync:
            raise ValueError(f"softsync must include n = 1 (hardsync), got {self.softsync!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        if any(not 0 < f < 1 for f in self.lr_drops) or list(self.lr_drops) != sorted(
            self.lr_drops
        ):
            raise ValueError(
                f"lr_drops must be increasing fractions in (0, 1), got {self.lr_drops}"
            )
        if not 0 < self.lr_drop_factor <= 1:
            raise ValueError(f"lr_drop_factor must be in (0, 1], got {self.lr_drop_factor!r}")
        if self.staleness_count not in STALENESS_COUNTS:
            raise ValueError(
                f"staleness_count must be one of {STALENESS_COUNTS}, got {self.staleness_count!r}"
            )
        if not 0 < self.final_fraction <= 1:
            raise ValueError(f"final_fraction must be in (0, 1], got {self.final_fraction!r}")
        if self.compute_times not in ("exponential", "lognormal", "constant"):
            raise ValueError(f"unknown compute_times {self.compute_times!r}")


QUICK = dict(softsync=(1, 30), epochs=10.0, evals=10, seeds=3)


def learning_rate_schedule(config: Config, num_updates: int) -> optax.ScalarOrSchedule:
    """α0, dropped by `lr_drop_factor` at each fraction `lr_drops` of `num_updates` server
    updates (a scalar when there are no drops)."""
    if not config.lr_drops:
        return config.learning_rate
    boundaries: dict[int, float] = {}
    for f in config.lr_drops:
        b = int(round(f * num_updates))
        boundaries[b] = boundaries.get(b, 1.0) * config.lr_drop_factor
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def _aware_rule(config: Config, schedule):
    if config.staleness_count == "paper":
        return adaptive_staleness_rate(schedule)  # α0/τ_Zhang = α0/(τ + 1)
    return staleness_aware_rate(schedule)  # α0/max(τ, 1) on our count


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    data = load_mnist1d()
    model = CNN1D(features=config.features)
    minibatch_grad = minibatch_grad_fn(model, data.x_train, data.y_train, config.minibatch)

    def grad_fn(params, key):
        # Agent 0's key at step 0 under `agent_oracle`: the random stream of the stored results.
        return minibatch_grad(params, jax.random.fold_in(jax.random.fold_in(key, 0), 0))

    def record(state):
        stacked = jax.tree.map(lambda p: p[None], state.params)
        loss, acc = evaluate(model, stacked, data.x_test, data.y_test)
        return 1.0 - acc[0], loss[0], state.clock

    num_train = data.y_train.shape[0]
    lam = config.num_workers
    # same number of worker gradients for every protocol, rounded to whole evaluations of
    # lcm(c) gradients (the nearest such count to `epochs`)
    total = config.epochs * num_train / config.minibatch
    unit = math.lcm(*(softsync_arrivals(lam, int(n)) for n in config.softsync))
    per_eval = max(unit, int(round(total / config.evals / unit)) * unit)
    total = per_eval * config.evals
    keys = jax.random.split(key, config.seeds)
    times = compute_time(config.compute_times, lam, sigma=config.compute_sigma)
    rates = jnp.arange(len(RATES))  # index into RATES: one compiled program for both rules

    ns = np.asarray(config.softsync)
    err = np.zeros((len(RATES), len(ns), config.seeds, config.evals))
    test_loss = np.zeros_like(err)
    clock = np.zeros((len(ns), config.seeds, config.evals))
    diverged = np.zeros((len(RATES), len(ns), config.seeds), dtype=np.int64)
    hist = np.zeros((len(ns), 4 * int(ns.max()) + 2))
    mean_tau = np.zeros((len(ns), config.seeds))
    for i, n in enumerate(ns):
        c = softsync_arrivals(lam, int(n))
        updates = total // c
        every = per_eval // c  # c divides per_eval
        schedule = learning_rate_schedule(config, updates)

        def one(rate, k, c=c, updates=updates, every=every, schedule=schedule):
            params = jax.tree.map(
                lambda p: p[0], init_stacked(model, jax.random.fold_in(k, 1), 1, data.x_train[:2])
            )
            rule = select_rule(rate, (constant_rate(schedule), _aware_rule(config, schedule)))
            result = run_pool(
                grad_fn, with_server_momentum(rule, config.momentum), params, k, times=times,
                num_arrivals=c, num_steps=updates, metrics_fn=record, record_every=every,
            )  # fmt: skip
            metrics = jax.tree.map(lambda m: m[1:], result.metrics)  # from the first evaluation
            return metrics, result.trace.loss, result.trace.staleness

        fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
        (e, tl, t), loss, tau = fn(rates, keys)
        err[:, i], test_loss[:, i] = np.asarray(e), np.asarray(tl)
        clock[i] = np.asarray(t)[0]  # the clock does not depend on the rate
        loss = np.asarray(loss).reshape(len(RATES), config.seeds, -1)  # worker-step order
        diverged[:, i] = np.asarray(divergence_step(loss, DIVERGE_LOSS))
        tau = np.asarray(tau)[1].reshape(config.seeds, -1)  # nor does the staleness
        hist[i] = np.bincount(np.minimum(tau.ravel(), hist.shape[1] - 1), minlength=hist.shape[1])
        hist[i] /= hist[i].sum()
        mean_tau[i] = tau.mean(-1)
    worker_steps = np.arange(1, config.evals + 1) * per_eval
    return {
        "softsync": ns,
        "worker_steps": worker_steps,
        "epochs": worker_steps * config.minibatch / num_train,
        "test_error": err,
        "test_loss": test_loss,
        "virtual_time": clock,
        "diverged_at": diverged,
        "total_worker_steps": np.asarray(total),
        "staleness_hist": hist,
        "mean_staleness": mean_tau,
    }


def _final_errors(results, config) -> np.ndarray:
    """Test error averaged over the last `final_fraction` of evaluations, `(rates, ns, seeds)`;
    a diverged run counts at chance level."""
    e = results["test_error"]
    tail = max(1, math.ceil(config.final_fraction * e.shape[-1]))
    final = e[..., -tail:].mean(-1)
    bad = (results["diverged_at"] >= 0) | ~np.isfinite(final)
    return np.where(bad, CHANCE_ERROR, final)


def _gaps(results, config) -> np.ndarray:
    """Paired (per-seed) differences to hardsync of the same rate, `(rates, ns, seeds)`."""
    final = _final_errors(results, config)
    hard = list(results["softsync"]).index(1)
    return final - final[:, hard : hard + 1]


def _abs_interval(lo, hi) -> tuple[float, float]:
    """The interval of |x| for x in [lo, hi]."""
    if lo <= 0 <= hi:
        return 0.0, max(-lo, hi)
    return min(abs(lo), abs(hi)), max(abs(lo), abs(hi))


def _speedups(results) -> np.ndarray:
    """Virtual time hardsync needs for the run's gradients / the time n-softsync needs,
    `(ns, seeds)`."""
    end = results["virtual_time"][..., -1]
    hard = list(results["softsync"]).index(1)
    return end[hard] / end


def metrics(results, config) -> dict[str, float]:
    final = _final_errors(results, config)
    gaps = _gaps(results, config)
    speed = _speedups(results)
    ns = results["softsync"]
    out = {}
    for r, rate in enumerate(RATES):
        for i, n in enumerate(ns):
            out[f"final_test_error_{rate}_n{n}"] = float(final[r, i].mean())
            if n != 1:
                out[f"gap_to_hardsync_{rate}_n{n}"] = float(gaps[r, i].mean())
    c, a = RATES.index("constant"), RATES.index("staleness_aware")
    soft = np.asarray(ns) != 1
    if soft.any():
        out["constant_worst_gap_to_hardsync"] = float(np.max(gaps[c][soft].mean(-1)))
        out["aware_worst_gap_to_hardsync"] = float(np.max(gaps[a][soft].mean(-1)))
    out["hardsync_test_error"] = float(final[c, list(ns).index(1)].mean())
    out["diverged_runs_constant"] = float(np.sum(results["diverged_at"][c] >= 0))
    out["diverged_runs_staleness_aware"] = float(np.sum(results["diverged_at"][a] >= 0))
    for i, n in enumerate(ns):
        out[f"mean_staleness_n{n}"] = float(results["mean_staleness"][i].mean())
        out[f"speedup_n{n}"] = float(speed[i].mean())
    tau_err = results["mean_staleness"].mean(-1) - (ns - 1)
    out["mean_staleness_minus_n_minus_1_max_abs"] = float(np.max(np.abs(tau_err)))
    out["epochs_run"] = float(results["epochs"][-1])
    return out


def claims(results, config):
    ns = results["softsync"]
    gaps = _gaps(results, config)
    c, a = RATES.index("constant"), RATES.index("staleness_aware")
    big = int(np.argmax(ns))
    soft = [i for i, n in enumerate(ns) if n != 1]
    tail = f"test error over the last {config.final_fraction:g} of evaluations"
    const_mean, const_iv = mean_interval(gaps[c, big])
    aware = [mean_interval(gaps[a, i]) for i in soft] or [(0.0, (0.0, 0.0))]
    aware_mean, aware_iv = worst_cell(aware, claim="less")
    taus = [mean_interval(results["mean_staleness"][i] - (n - 1)) for i, n in enumerate(ns)]
    dev = [_abs_interval(*iv) for _, iv in taus]
    dev_mean, dev_iv = worst_cell([(abs(m), iv) for (m, _), iv in zip(taus, dev)], claim="less")
    speed_mean, speed_iv = mean_interval(_speedups(results)[big])
    rule = "α0/(τ+1) = α0/τ_Zhang" if config.staleness_count == "paper" else "α0/max(τ, 1)"
    return [
        claim_greater(
            "constant_rate_large_n_much_worse",
            f"With a constant α0, {ns[big]}-softsync ends worse than hardsync: paired "
            f"difference of the {tail} (diverged runs at chance level 0.9)",
            const_mean,
            config.worse_tol,
            interval=const_iv,
        ),
        claim_less(
            "staleness_aware_close_to_hardsync",
            f"With {rule} every n-softsync ends close to hardsync: paired difference of the "
            f"{tail}, worst n (interval: largest lower and upper ends over n)",
            aware_mean,
            config.close_tol,
            interval=aware_iv,
        ),
        claim_between(
            "mean_staleness_is_n_minus_1",
            "n-softsync staleness ⟨τ⟩ ≈ n − 1 in our pull-after-update convention (≈ n in "
            "Zhang et al.'s): largest |⟨τ⟩ − (n − 1)| over n",
            dev_mean,
            0.0,
            0.5,
            interval=dev_iv,
        ),
        claim_greater(
            "softsync_speedup",
            f"{ns[big]}-softsync processes the same gradients faster than hardsync on the "
            "virtual clock (no waiting for stragglers): hardsync time / softsync time",
            speed_mean,
            config.speedup_min,
            interval=speed_iv,
        ),
    ]


def _masked(curves, diverged):
    """Curves `(seeds, evals)` with the evaluations after a divergence set to NaN."""
    curves = np.array(curves, dtype=float)
    return np.where(np.asarray(diverged)[:, None] >= 0, np.nan, curves)


def plot(results, config):
    ns, epochs = results["softsync"], results["epochs"]
    labels = {
        "constant": "α = α0",
        "staleness_aware": (
            "α = α0/(τ+1) (Zhang's α0/τ)"
            if config.staleness_count == "paper"
            else "α = α0/max(τ,1)"
        ),
    }
    drops = [f * epochs[-1] for f in config.lr_drops]
    fig, axes = figure(4, width=4.4)
    for r, rate in enumerate(RATES):
        ax = axes[r]
        for i, n in enumerate(ns):
            div = results["diverged_at"][r, i]
            mean, err = mean_and_se(_masked(results["test_error"][r, i], div))
            label = "hardsync" if n == 1 else f"{n}-softsync"
            if np.any(div >= 0):
                label += f" ({int(np.sum(div >= 0))} diverged)"
            ok = np.isfinite(mean)
            band(ax, epochs[ok], mean[ok], err[ok], label=label, color=f"C{i}")
        for d in drops:
            ax.axvline(d, color="0.6", ls=":", lw=1)
        ax.set(xlabel="epochs (worker gradients × μ / N_train)", ylabel="test error",
               title=f"{labels[rate]}, λ={config.num_workers}, μ={config.minibatch}",
               ylim=(0, 1))  # fmt: skip
        ax.legend(fontsize=7)
    ax = axes[2]
    a = RATES.index("staleness_aware")
    for i, n in enumerate(ns):
        div = results["diverged_at"][a, i]
        mean, err = mean_and_se(_masked(results["test_error"][a, i], div))
        t = results["virtual_time"][i].mean(0)
        ok = np.isfinite(mean)
        label = "hardsync" if n == 1 else f"{n}-softsync"
        band(ax, t[ok], mean[ok], err[ok], label=label, color=f"C{i}")
    ax.set(xlabel="virtual time (mean compute times)", ylabel="test error",
           title=f"{labels['staleness_aware']} against the virtual clock", ylim=(0, 1))  # fmt: skip
    ax.legend(fontsize=7)
    ax = axes[3]
    hist = results["staleness_hist"]
    for i, n in enumerate(ns):
        ax.plot(np.arange(hist.shape[1]), hist[i], "-", drawstyle="steps-mid",
                label=f"n={n}: ⟨τ⟩={results['mean_staleness'][i].mean():.2f}",
                color=f"C{i}")  # fmt: skip
    ax.set(xlabel="staleness τ (server updates, our count)", ylabel="fraction of gradients",
           yscale="log", title="Staleness histograms (last bin: ≥)")  # fmt: skip
    ax.legend(fontsize=7)
    title = (
        f"MNIST-1D CNN1D, α0={config.learning_rate:g} (÷{1 / config.lr_drop_factor:g} at "
        f"{', '.join(f'{f:.2f}' for f in config.lr_drops)} of the run, dotted), server momentum "
        f"{config.momentum:g}, {config.compute_times} compute times, {config.seeds} seeds "
        f"(±1 s.e.), {epochs[-1]:.1f} epochs; protocol ours"
    )
    fig.suptitle(title, fontsize=9)
    return {"staleness_aware": fig}
