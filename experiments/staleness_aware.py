"""Staleness-aware learning rate α0/τ vs constant α0 under n-softsync (Zhang et al., Fig. 3).

Zhang, Gupta, Lian, Liu, "Staleness-aware Async-SGD for Distributed Deep Learning": λ learners
with minibatch μ; the server updates after c = ⌊λ/n⌋ gradients,
θ ← θ − (1/c) Σ_l α(τ_l) Δθ_l, with momentum 0.9 on the aggregated step. With a constant α0
large-n softsync fails to learn; with α(τ) = α0/τ every protocol ends close to hardsync.

Protocol (ours; the paper used CIFAR-10 and ImageNet): MNIST-1D, the `CNN1D` network, λ = 30
learners with μ = 4, log-normal compute times (σ = 0.5; `compute_times="exponential"` gives a
much wider staleness distribution than the paper observed) on the virtual clock
(`algorithms.asynchrony.run_pool`), server momentum 0.9, the same number of worker gradients
(epochs) for every protocol, test error evaluated every `eval_every` worker steps. In our pool
an arriving learner pulls after the update it belongs to, so hardsync has τ = 0 and
n-softsync ⟨τ⟩ ≈ n − 1 (Zhang et al. count one more, ⟨τ⟩ ≈ n). α0/τ uses α0 at τ = 0.
A run that diverges (non-finite loss) is recorded with the worker step where it happened
(−1: never).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.asynchrony import (
    compute_time,
    constant_rate,
    divergence_step,
    run_pool,
    select_rule,
    softsync_arrivals,
    staleness_aware_rate,
    with_server_momentum,
)

from .harness.contract import claim_greater, claim_less
from .harness.plotting import band, figure, mean_and_se
from .tasks import CNN1D, evaluate, init_stacked, load_mnist1d, minibatch_grad_fn

NAME = "staleness_aware"
DESCRIPTION = "n-softsync with α0 vs α0/τ (Zhang et al. Fig. 3 analogue): test error, staleness"

RATES = ("constant", "staleness_aware")
RATE_LABELS = {"constant": "α = α0", "staleness_aware": "α = α0/τ"}


@dataclasses.dataclass(frozen=True)
class Config:
    num_workers: int = dataclasses.field(default=30, metadata={"help": "λ learners"})
    minibatch: int = dataclasses.field(default=4, metadata={"help": "μ per learner"})
    softsync: tuple[int, ...] = dataclasses.field(
        default=(1, 2, 4, 10, 15, 30), metadata={"help": "n values (n=1 hardsync)"}
    )
    learning_rate: float = dataclasses.field(default=0.05, metadata={"help": "α0"})
    momentum: float = dataclasses.field(default=0.9, metadata={"help": "server momentum"})
    epochs: float = dataclasses.field(default=30.0, metadata={"help": "passes over train set"})
    evals: int = dataclasses.field(default=30, metadata={"help": "test evaluations per run"})
    features: tuple[int, ...] = dataclasses.field(
        default=(32, 32, 32), metadata={"help": "CNN1D channels"}
    )
    compute_times: str = dataclasses.field(
        default="lognormal", metadata={"help": "exponential | lognormal | constant"}
    )
    compute_sigma: float = dataclasses.field(default=0.5, metadata={"help": "log-normal σ"})
    seeds: int = dataclasses.field(default=3, metadata={"help": "independent runs"})
    close_tol: float = dataclasses.field(
        default=0.05, metadata={"help": "claimed max gap of α0/τ runs to hardsync (test error)"}
    )

    def __post_init__(self):
        if self.num_workers < 1 or self.minibatch < 1 or self.seeds < 1 or self.evals < 1:
            raise ValueError("num_workers, minibatch, seeds and evals must be >= 1")
        for n in self.softsync:
            softsync_arrivals(self.num_workers, n)  # raises on n > λ
        if 1 not in self.softsync:
            raise ValueError("softsync must include n = 1 (hardsync), the reference")
        if not self.learning_rate > 0 or not 0 <= self.momentum < 1 or not self.epochs > 0:
            raise ValueError("need learning_rate > 0, momentum in [0, 1), epochs > 0")


QUICK = dict(softsync=(1, 4, 30), epochs=4.0, evals=8, features=(16, 16), seeds=1)


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    data = load_mnist1d()
    model = CNN1D(features=config.features)
    minibatch_grad = minibatch_grad_fn(model, data.x_train, data.y_train, config.minibatch)

    def grad_fn(params, key):
        # Agent 0's key at step 0 under `agent_oracle`: the random stream of the stored results.
        return minibatch_grad(params, jax.random.fold_in(jax.random.fold_in(key, 0), 0))

    def test_error(state):
        stacked = jax.tree.map(lambda p: p[None], state.params)
        loss, acc = evaluate(model, stacked, data.x_test, data.y_test)
        return 1.0 - acc[0], loss[0]

    num_train = data.y_train.shape[0]
    lam = config.num_workers
    # same number of worker gradients for every protocol, rounded to whole evaluations of λ
    total = int(config.epochs * num_train / config.minibatch)
    unit = math.lcm(*(softsync_arrivals(lam, int(n)) for n in config.softsync))
    per_eval = max(unit, total // config.evals // unit * unit)
    total = per_eval * config.evals
    keys = jax.random.split(key, config.seeds)
    times = compute_time(config.compute_times, lam, sigma=config.compute_sigma)
    rates = jnp.arange(len(RATES))  # index into RATES: one compiled program for both rules

    ns = np.asarray(config.softsync)
    err = np.zeros((len(RATES), len(ns), config.seeds, config.evals))
    test_loss = np.zeros_like(err)
    diverged = np.zeros((len(RATES), len(ns), config.seeds), dtype=np.int64)
    hist = np.zeros((len(ns), 4 * int(ns.max()) + 2))
    mean_tau = np.zeros(len(ns))
    for i, n in enumerate(ns):
        c = softsync_arrivals(lam, int(n))
        updates = total // c
        every = per_eval // c  # c divides per_eval

        def one(rate, k, c=c, updates=updates, every=every):
            params = jax.tree.map(
                lambda p: p[0], init_stacked(model, jax.random.fold_in(k, 1), 1, data.x_train[:2])
            )
            alpha0 = config.learning_rate
            rule = select_rule(rate, (constant_rate(alpha0), staleness_aware_rate(alpha0)))
            result = run_pool(
                grad_fn, with_server_momentum(rule, config.momentum), params, k, times=times,
                num_arrivals=c, num_steps=updates, metrics_fn=test_error, record_every=every,
            )  # fmt: skip
            record = jax.tree.map(lambda m: m[1:], result.metrics)  # from the first evaluation
            return record, result.trace.loss, result.trace.staleness

        fn = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
        (e, tl), loss, tau = fn(rates, keys)
        err[:, i], test_loss[:, i] = np.asarray(e), np.asarray(tl)
        loss = np.asarray(loss).reshape(len(RATES), config.seeds, -1)  # worker-step order
        diverged[:, i] = np.asarray(divergence_step(loss, 1e3))
        tau = np.asarray(tau)[1].ravel()  # staleness does not depend on the rate
        hist[i] = np.bincount(np.minimum(tau, hist.shape[1] - 1), minlength=hist.shape[1])
        hist[i] /= hist[i].sum()
        mean_tau[i] = tau.mean()
    worker_steps = np.arange(1, config.evals + 1) * per_eval
    return {
        "softsync": ns,
        "worker_steps": worker_steps,
        "epochs": worker_steps * config.minibatch / num_train,
        "test_error": err,
        "test_loss": test_loss,
        "diverged_at": diverged,
        "total_worker_steps": np.asarray(total),
        "staleness_hist": hist,
        "mean_staleness": mean_tau,
    }


def _final(results):
    """Final test error (rates, ns) averaged over seeds; a diverged run counts as error 0.9."""
    e = results["test_error"][..., -1]
    e = np.where(np.isfinite(e), e, 0.9)
    return e.mean(-1)


def metrics(results, config) -> dict[str, float]:
    final = _final(results)
    ns = results["softsync"]
    hard = list(ns).index(1)
    out = {}
    for r, rate in enumerate(RATES):
        for i, n in enumerate(ns):
            out[f"final_test_error_{rate}_n{n}"] = final[r, i]
    c, a = RATES.index("constant"), RATES.index("staleness_aware")
    out["constant_worst_gap_to_hardsync"] = float(np.max(final[c] - final[c, hard]))
    out["aware_worst_gap_to_hardsync"] = float(np.max(final[a] - final[a, hard]))
    out["constant_largest_n_test_error"] = float(final[c, -1])
    out["hardsync_test_error"] = float(final[c, hard])
    out["diverged_runs_constant"] = float(np.sum(results["diverged_at"][c] >= 0))
    out["diverged_runs_staleness_aware"] = float(np.sum(results["diverged_at"][a] >= 0))
    for i, n in enumerate(ns):
        out[f"mean_staleness_n{n}"] = float(results["mean_staleness"][i])
    tau_err = results["mean_staleness"] - (ns - 1)
    out["mean_staleness_minus_n_minus_1_max_abs"] = float(np.max(np.abs(tau_err)))
    return out


def claims(results, config):
    m = metrics(results, config)
    ns = results["softsync"]
    return [
        claim_greater(
            "constant_rate_large_n_much_worse",
            f"With α0, the largest-n softsync (n = {ns[-1]}) ends far worse than hardsync: "
            "test-error gap (worst n) in percentage points / 100",
            m["constant_worst_gap_to_hardsync"],
            0.1,
        ),
        claim_less(
            "staleness_aware_close_to_hardsync",
            "With α0/τ every protocol ends close to hardsync: largest test-error gap",
            m["aware_worst_gap_to_hardsync"],
            config.close_tol,
        ),
        claim_less(
            "mean_staleness_is_n_minus_1",
            "n-softsync staleness ⟨τ⟩ ≈ n − 1 in our pull-after-update convention (≈ n in "
            "Zhang et al.'s): largest |⟨τ⟩ − (n − 1)|",
            m["mean_staleness_minus_n_minus_1_max_abs"],
            0.5,
        ),
    ]


def plot(results, config):
    ns, epochs = results["softsync"], results["epochs"]
    fig, axes = figure(3, width=4.4)
    for r, rate in enumerate(RATES):
        ax = axes[r]
        for i, n in enumerate(ns):
            e = results["test_error"][r, i]
            mean, err = mean_and_se(e)
            label = "hardsync" if n == 1 else f"{n}-softsync"
            ok = np.isfinite(mean)
            if not ok.all():
                label += " (diverged)"
            band(ax, epochs[ok], mean[ok], err[ok], label=label, color=f"C{i}")
        ax.set(xlabel="epochs (worker gradients × μ / N_train)", ylabel="test error",
               title=f"{RATE_LABELS[rate]}, λ={config.num_workers}, μ={config.minibatch}",
               ylim=(0, 1))  # fmt: skip
        ax.legend(fontsize=7)
    ax = axes[2]
    hist = results["staleness_hist"]
    for i, n in enumerate(ns):
        ax.plot(np.arange(hist.shape[1]), hist[i], "-", drawstyle="steps-mid",
                label=f"n={n}: ⟨τ⟩={results['mean_staleness'][i]:.2f}", color=f"C{i}")  # fmt: skip
    ax.set(xlabel="staleness τ (server updates)", ylabel="fraction of gradients",
           yscale="log", title="Staleness histograms (last bin: ≥)")  # fmt: skip
    ax.legend(fontsize=7)
    title = (
        f"MNIST-1D CNN1D, α0={config.learning_rate:g}, server momentum {config.momentum:g}, "
        f"{config.compute_times} compute times; protocol ours"
    )
    fig.suptitle(title, fontsize=9)
    return {"staleness_aware": fig}
