"""Generalization gap of asynchronous SGD against the delay bound τ_max (Regatti et al.).

Regatti et al., "Distributed SGD Generalizes Well Under Asynchrony": SGD on delayed iterates,
x_{k+1} = x_k − η ∇f(x_{k−τ_k}; ξ_k) with 0 <= τ_k <= τ_max, is algorithmically stable; the
bound on the generalization error grows with the delay, and a rate that shrinks with the
delay (η ∝ 1/τ_max) reduces it.

Protocol (ours; the paper's schedule and experiments were not available): MNIST-1D with a
small training set (so the gap is visible), an MLP, minibatch SGD on delayed iterates with
τ_k uniform on {0…τ_max} (`algorithms.asynchrony.delayed_sgd`, ring buffer), for several
τ_max at a fixed η and at η/(τ_max + 1) (`delay_scaled_learning_rate`). Every
`eval_every` steps we evaluate the full training and test sets; the generalization gap is
test loss − train loss. All τ_max share one compiled program (delay distributions padded to
the largest τ_max). Steps are server updates (one gradient each).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.asynchrony import DelayModel, delay_scaled_learning_rate, delayed_sgd

from .harness.contract import claim_greater
from .harness.plotting import band, figure, mean_and_se
from .tasks import MLP, evaluate, init_stacked, load_mnist1d, minibatch_grad_fn

NAME = "async_generalization"
DESCRIPTION = "Generalization gap vs iterations for several τ_max, fixed η vs η ∝ 1/τ_max"

SCHEDULES = ("fixed", "scaled")
SCHEDULE_LABELS = {"fixed": "fixed η", "scaled": "η/(τ_max+1)"}


@dataclasses.dataclass(frozen=True)
class Config:
    tau_maxes: tuple[int, ...] = dataclasses.field(
        default=(0, 4, 16, 64), metadata={"help": "delay bounds τ_max"}
    )
    num_train: int = dataclasses.field(default=256, metadata={"help": "training-set size"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "minibatch"})
    learning_rate: float = dataclasses.field(default=0.05, metadata={"help": "η (fixed)"})
    hidden: tuple[int, ...] = dataclasses.field(default=(256, 256), metadata={"help": "MLP"})
    num_steps: int = dataclasses.field(default=20000, metadata={"help": "server updates"})
    evals: int = dataclasses.field(default=40, metadata={"help": "evaluations per run"})
    seeds: int = dataclasses.field(default=4, metadata={"help": "independent runs"})

    def __post_init__(self):
        if min(self.tau_maxes) < 0:
            raise ValueError(f"tau_maxes must be >= 0, got {self.tau_maxes}")
        if self.num_steps % self.evals:
            raise ValueError(f"evals={self.evals} must divide num_steps={self.num_steps}")
        if not self.learning_rate > 0 or self.seeds < 1 or self.batch_size < 1:
            raise ValueError("need learning_rate > 0, seeds >= 1, batch_size >= 1")


QUICK = dict(tau_maxes=(0, 8, 32), hidden=(128,), num_steps=3000, evals=15, seeds=2)


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    data = load_mnist1d(num_train=config.num_train, seed=0)
    model = MLP(hidden=config.hidden, num_classes=data.num_classes)
    minibatch_grad = minibatch_grad_fn(model, data.x_train, data.y_train, config.batch_size)

    def grad_fn(params, key):
        # Agent 0's key at step 0 under `agent_oracle`: the random stream of the stored results.
        return minibatch_grad(params, jax.random.fold_in(jax.random.fold_in(key, 0), 0))

    def losses(state):
        stacked = jax.tree.map(lambda p: p[None], state.params)
        train, _ = evaluate(model, stacked, data.x_train, data.y_train)
        test, test_acc = evaluate(model, stacked, data.x_test, data.y_test)
        return train[0], test[0], test_acc[0]

    taus = np.asarray(config.tau_maxes)
    size = int(taus.max()) + 1
    probs = np.stack([np.where(np.arange(size) <= t, 1.0 / (t + 1), 0.0) for t in taus])
    etas = np.array(
        [[config.learning_rate] * len(taus),
         [delay_scaled_learning_rate(config.learning_rate, int(t)) for t in taus]]
    )  # fmt: skip
    every = config.num_steps // config.evals

    def one(p, eta, k):
        params = jax.tree.map(
            lambda q: q[0], init_stacked(model, jax.random.fold_in(k, 1), 1, data.x_train[:2])
        )
        result = delayed_sgd(
            grad_fn, params, DelayModel(p), eta, config.num_steps, k, metrics_fn=losses,
            record_every=every,
        )  # fmt: skip
        return jax.tree.map(lambda m: m[1:], result.metrics)  # from the first evaluation on

    keys = jax.random.split(key, config.seeds)
    fn = jax.vmap(jax.vmap(jax.vmap(one, in_axes=(None, None, 0)), in_axes=(0, 0, None)),
                  in_axes=(None, 0, None))  # fmt: skip
    train, test, acc = jax.jit(fn)(jnp.asarray(probs), jnp.asarray(etas), keys)
    train, test = np.asarray(train), np.asarray(test)  # (schedule, tau, seed, evals)
    return {
        "tau_maxes": taus,
        "learning_rates": etas,
        "steps": np.arange(1, config.evals + 1) * every,
        "train_loss": train,
        "test_loss": test,
        "test_accuracy": np.asarray(acc),
        "gap": test - train,
    }


def _final_gap(results):
    """Mean over seeds of the gap averaged over the last quarter of evaluations, (sched, tau)."""
    g = results["gap"]
    q = max(1, g.shape[-1] // 4)
    return g[..., -q:].mean(-1).mean(-1)


def metrics(results, config) -> dict[str, float]:
    gap = _final_gap(results)
    taus = results["tau_maxes"]
    f, s = SCHEDULES.index("fixed"), SCHEDULES.index("scaled")
    out = {}
    for i, t in enumerate(taus):
        out[f"gap_fixed_tau{t}"] = float(gap[f, i])
        out[f"gap_scaled_tau{t}"] = float(gap[s, i])
        out[f"train_loss_fixed_tau{t}"] = float(results["train_loss"][f, i, :, -1].mean())
    out["gap_growth_fixed"] = float(gap[f, -1] - gap[f, 0])
    out["gap_reduction_by_scaling_at_tau_max"] = float(gap[f, -1] - gap[s, -1])
    rx, ry = np.argsort(np.argsort(taus)), np.argsort(np.argsort(gap[f]))
    out["gap_vs_tau_spearman_fixed"] = float(np.corrcoef(rx, ry)[0, 1]) if len(taus) > 2 else 0.0
    return out


def claims(results, config):
    m = metrics(results, config)
    taus = results["tau_maxes"]
    return [
        claim_greater(
            "gap_grows_with_tau_max",
            f"At fixed η the generalization gap (test − train loss, last quarter of training) "
            f"is larger at τ_max = {taus[-1]} than at τ_max = {taus[0]} (difference)",
            m["gap_growth_fixed"],
            0.0,
        ),
        claim_greater(
            "shrinking_rate_reduces_gap",
            f"η/(τ_max+1) reduces the gap at τ_max = {taus[-1]} relative to fixed η (difference)",
            m["gap_reduction_by_scaling_at_tau_max"],
            0.0,
        ),
    ]


def plot(results, config):
    steps, taus = results["steps"], results["tau_maxes"]
    fig, axes = figure(3, width=4.4)
    for s, sched in enumerate(SCHEDULES):
        ax = axes[s]
        for i, t in enumerate(taus):
            g = results["gap"][s, i]
            band(ax, steps, *mean_and_se(g), label=f"τ_max={t}", color=f"C{i}")
        ax.set(xlabel="server updates k", ylabel="generalization gap (test − train loss)",
               title=SCHEDULE_LABELS[sched])  # fmt: skip
        ax.legend(fontsize=7)
    ax = axes[2]
    gap = _final_gap(results)
    for s, sched in enumerate(SCHEDULES):
        ax.plot(taus, gap[s], "o-", label=f"gap, {SCHEDULE_LABELS[sched]}")
        ax.plot(
            taus,
            results["train_loss"][s, :, :, -1].mean(-1),
            "s--",
            mfc="none",
            color=ax.lines[-1].get_color(),
            label=f"final train loss, {SCHEDULE_LABELS[sched]}",
        )
    ax.set(xlabel="delay bound τ_max (server updates)", ylabel="loss", xscale="symlog",
           title="End of training (bands: ±1 s.e. over seeds)")  # fmt: skip
    ax.legend(fontsize=7)
    title = (
        f"MNIST-1D, {config.num_train} training examples, MLP {config.hidden}, batch "
        f"{config.batch_size}, η={config.learning_rate:g}, τ ~ U{{0…τ_max}}; protocol ours"
    )
    fig.suptitle(title, fontsize=9)
    return {"async_generalization": fig}
