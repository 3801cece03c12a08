"""Algorithmic stability of asynchronous SGD against the delay bound τ_max (Regatti et al.).

Regatti et al., "Distributed SGD Generalizes Well Under Asynchrony": SGD on delayed iterates,
x_{k+1} = x_k − η ∇f(x_{k−τ_k}; ξ_k) with 0 <= τ_k <= τ_max, is algorithmically stable: the
trained weights move little, ‖w_S − w_S′‖, when one training example changes. Their bound
grows with the delay, and a rate that shrinks with it (η ∝ 1/τ_max) tightens it. The theorem
is about stability, so stability is what we measure. The generalization gap is reported as a
finding (metrics `gap_at_level_*`, last panel), not a claim: the bound is an upper bound, and a
later study (Deng et al., NeurIPS 2024) finds that more delay can *reduce* the gap.

Protocol (ours; the paper's schedule and experiments were not available):

- Data: MNIST-1D, `num_train` training examples S (small, so that the gap shows). The
  neighbouring set S′ replaces one example of S (index drawn per seed) by one from outside S.
- Shared randomness: the runs on S and S′ start from the same initialization and use the same
  keys, hence the same minibatch indices and the same delays τ_k; they differ only when the
  replaced example is drawn. Minibatch SGD on delayed iterates, τ_k uniform on {0…τ_max}
  (`algorithms.asynchrony.delayed_sgd`, ring buffer, run in chunks with its continuation
  API so that one compiled program serves every cell), an MLP.
- Two schedules: a fixed rate η and the shrinking rate η/(τ_max + 1)
  (`delay_scaled_learning_rate`; at τ_max = 0 the two are one run). The fixed-rate runs get
  `num_steps` updates; a shrinking-rate run gets `scaled_num_steps` × (τ_max + 1), since it
  needs about τ_max + 1 times the updates to reach the same loss.
- Matched training loss: ‖w_S − w_S′‖ (Euclidean, all weights), the step and the gap (test −
  train loss of w_S) are read where the training loss of w_S on S first falls to the
  pre-registered `loss_level`, interpolated linearly in log-loss between the evaluations
  around the crossing. Runs compared there fit S equally well, so a difference in ‖w_S − w_S′‖
  is not a difference in how far training went (comparing at the end of a fixed budget would
  compare an under-trained shrinking-rate run with a converged fixed-rate one).
- Control: no delay at the largest τ_max's shrunken rate and budget. It separates what the
  smaller rate does (more, smaller steps) from what the delay costs at that rate (metric
  `distance_ratio_scaled_taumax_vs_no_delay_same_rate`, star in the figure).
- Divergence: every run has a `divergence_threshold`; `diverged_step` is stored per pair. A
  run that diverged, or did not reach the level within its budget, has no value at the level,
  is counted (`runs_reaching_level_*`, `diverged_runs_*`), drawn dotted, and makes every claim
  that needs it fail: never NaN, never a success.

Claims (geometric means over seeds of paired per-seed ratios; the interval is exp(mean ± 2
s.e.) of the log-ratios):

- `stability_degrades_with_delay`: at fixed η, ‖w_S − w_S′‖ at the level is larger at the
  largest τ_max than at τ_max = 0 (ratio > 1). This is an inference from an upper bound, not
  a statement of the paper.
- `shrinking_rate_more_stable`: at the largest τ_max, ‖w_S − w_S′‖ at the level is larger under
  fixed η than under η/(τ_max + 1) (ratio fixed/shrinking > 1).

What we see and what would change it. At fixed η the distance hardly moves for small τ_max
and jumps once τ_max nears the delay-stability limit of the rate (the τ_max = 64 runs go
through an oscillating transient before they fit S); at η/(τ_max + 1) it does not grow, and
the control shows that at the shrunken rate the delay costs no stability at all: the
improvement is the smaller rate's. A smaller η (e.g. 0.05, far inside the stability region
at every τ_max) makes the first ratio approach 1 (inconclusive or failing); an η so large
that the fixed-rate run at τ_max = 64 no longer reaches the level makes both claims fail by
the divergence rule. The gap at the level follows the distance (it grows at fixed η once the
delay nears the limit and stays flat under the shrinking rate), but it is a finding only.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from algorithms.asynchrony import (
    DelayedState,
    DelayModel,
    delay_scaled_learning_rate,
    delayed_sgd,
    ring_buffer_init,
)

from .harness.contract import claim_greater, mean_interval
from .harness.plotting import figure
from .tasks import MLP, evaluate, init_stacked, load_mnist1d, minibatch_grad_fn

NAME = "async_generalization"
DESCRIPTION = "Stability ‖w_S − w_S′‖ of delayed SGD vs τ_max at matched train loss, η vs η/(τ+1)"

SCHEDULES = ("fixed", "scaled")
SCHEDULE_LABELS = {"fixed": "fixed η", "scaled": "η/(τ_max+1)"}
SPARE = 256  # examples outside S that may replace one example of S


@dataclasses.dataclass(frozen=True)
class Config:
    tau_maxes: tuple[int, ...] = dataclasses.field(
        default=(0, 4, 16, 64), metadata={"help": "delay bounds τ_max (must include 0)"}
    )
    num_train: int = dataclasses.field(default=256, metadata={"help": "training-set size |S|"})
    batch_size: int = dataclasses.field(default=16, metadata={"help": "minibatch"})
    learning_rate: float = dataclasses.field(default=0.1, metadata={"help": "η (fixed)"})
    hidden: tuple[int, ...] = dataclasses.field(default=(128,), metadata={"help": "MLP widths"})
    num_steps: int = dataclasses.field(default=2000, metadata={"help": "updates at fixed η"})
    scaled_num_steps: int = dataclasses.field(
        default=1000, metadata={"help": "updates at η/(τ_max+1), times τ_max + 1"}
    )
    evals: int = dataclasses.field(default=50, metadata={"help": "evaluations per run"})
    loss_level: float = dataclasses.field(
        default=0.1, metadata={"help": "matched training loss (pre-registered)"}
    )
    divergence_threshold: float = dataclasses.field(
        default=1e3, metadata={"help": "a run with some |weight| >= this diverged"}
    )
    seeds: int = dataclasses.field(default=5, metadata={"help": "independent pairs (S, S′)"})

    def __post_init__(self):
        if not self.tau_maxes or min(self.tau_maxes) < 0 or 0 not in self.tau_maxes:
            raise ValueError(f"tau_maxes must be >= 0 and include 0, got {self.tau_maxes}")
        if len(set(self.tau_maxes)) != len(self.tau_maxes):
            raise ValueError(f"tau_maxes must be distinct, got {self.tau_maxes}")
        if self.evals < 1 or self.num_steps % self.evals or self.scaled_num_steps % self.evals:
            raise ValueError(
                f"evals={self.evals} must be >= 1 and divide num_steps={self.num_steps} and "
                f"scaled_num_steps={self.scaled_num_steps}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if not 1 <= self.batch_size <= self.num_train:
            raise ValueError(f"batch_size must be in [1, num_train], got {self.batch_size}")
        if not 1 <= self.num_train <= 4000 - SPARE:
            raise ValueError(f"num_train must be in [1, {4000 - SPARE}], got {self.num_train}")
        if not self.loss_level > 0:
            raise ValueError(f"loss_level must be > 0, got {self.loss_level}")
        if not self.divergence_threshold > 0:
            raise ValueError(f"divergence_threshold must be > 0, got {self.divergence_threshold}")


QUICK = dict(hidden=(64,), num_steps=1800, scaled_num_steps=600, evals=30, loss_level=0.3, seeds=3)


def _budget(config, schedule: str, tau: int) -> int:
    """Server updates of one run: `num_steps` at the fixed rate, `scaled_num_steps` × (τ_max
    + 1) at the shrinking rate (it needs about τ_max + 1 times the steps to the same loss)."""
    return config.num_steps if schedule == "fixed" else config.scaled_num_steps * (tau + 1)


def _rate(config, schedule: str, tau: int) -> float:
    """η for "fixed", η/(τ_max + 1) for "scaled"."""
    if schedule == "fixed":
        return config.learning_rate
    return delay_scaled_learning_rate(config.learning_rate, tau)


def _chunk(config) -> int:
    """Steps per compiled call: the gcd of every run's record interval, so that one program
    serves every (schedule, τ_max) cell (compiling is the main cost on a CPU)."""
    intervals = [_budget(config, s, t) // config.evals for s in SCHEDULES for t in config.tau_maxes]
    return math.gcd(*intervals)


def _programs(config, data, model):
    """Jitted, seed-vmapped `setup`, `advance` (a chunk of delayed-SGD steps on the pair) and
    `record` (losses of w_S and ‖w_S − w_S′‖). Every cell shares them: the delay
    distribution is padded to the largest τ_max and the rate is traced."""
    n, chunk = config.num_train, _chunk(config)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    tau_cap = max(config.tau_maxes)

    def setup(key):
        k_index, k_spare, k_init, k_run = jax.random.split(key, 4)
        i = jax.random.randint(k_index, (), 0, n)  # the example of S that S′ replaces
        j = n + jax.random.randint(k_spare, (), 0, SPARE)  # its replacement, outside S
        xs = jnp.stack([x[:n], x[:n].at[i].set(x[j])])
        ys = jnp.stack([y[:n], y[:n].at[i].set(y[j])])
        w0 = jax.tree.map(lambda q: jnp.concatenate([q, q]), init_stacked(model, k_init, 1, x[:2]))
        state = DelayedState(w0, ring_buffer_init(w0, tau_cap))  # the pair (w_S, w_S′): axis 2
        return xs, ys, state, k_run

    def pair_grad(xs, ys):
        # The same key for both: the same minibatch indices (and, from delayed_sgd, the same
        # delays); the runs on S and S′ differ only where the replaced example is drawn.
        def grad_fn(pair, key):
            def one(w, xt, yt):
                return minibatch_grad_fn(model, xt, yt, config.batch_size)(w, key)

            losses, grads = jax.vmap(one)(pair, xs, ys)
            return losses[0], grads

        return grad_fn

    def advance(state, diverged, start, xs, ys, key, probs, eta):
        res = delayed_sgd(
            pair_grad(xs, ys), None, DelayModel(probs), eta, chunk, key, state=state,
            record_every=chunk, start_step=start, diverged_step=diverged,
            divergence_threshold=config.divergence_threshold,
        )  # fmt: skip
        return res.state, res.diverged_step

    def record(state, xs, ys):
        w_s = jax.tree.map(lambda p: p[:1], state.params)
        train_loss, _ = evaluate(model, w_s, xs[0], ys[0])
        test_loss, test_acc = evaluate(model, w_s, data.x_test, data.y_test)
        sq = sum(jnp.sum((p[0] - p[1]) ** 2) for p in jax.tree.leaves(state.params))
        return train_loss[0], test_loss[0], test_acc[0], jnp.sqrt(sq)

    seeds = (0, 0, None, 0, 0, 0, None, None)
    return (
        jax.jit(jax.vmap(setup)),
        jax.jit(jax.vmap(advance, in_axes=seeds), donate_argnums=0),
        jax.jit(jax.vmap(record)),
    )


def _pair_runs(config, programs, steps: int, eta: float, tau: int, keys):
    """Train on S and S′ with shared randomness for every seed (`steps` updates at rate
    `eta`, delays uniform on {0…tau}); records per evaluation."""
    setup, advance, record = programs
    chunk = _chunk(config)
    every = steps // config.evals
    size = max(config.tau_maxes) + 1
    probs = jnp.asarray(np.where(np.arange(size) <= tau, 1.0 / (tau + 1), 0.0))
    xs, ys, state, run_keys = setup(keys)
    diverged = jnp.full(len(keys), -1, jnp.int32)
    records = [record(state, xs, ys)]
    for r in range(config.evals):
        for c in range(every // chunk):
            start = jnp.asarray(r * every + c * chunk, jnp.int32)
            state, diverged = advance(state, diverged, start, xs, ys, run_keys, probs, eta)
        records.append(record(state, xs, ys))
    train, test, acc, dist = (np.stack([np.asarray(rec[i]) for rec in records], -1)
                              for i in range(4))  # fmt: skip
    return {
        "train_loss": train,  # (seed, records): w_S on S
        "test_loss": test,
        "test_accuracy": acc,
        "distance": dist,  # ‖w_S − w_S′‖
        "diverged_step": np.asarray(diverged),  # −1: neither run of the pair diverged
        "steps": np.arange(config.evals + 1) * every,
        "learning_rate": np.asarray(eta),
    }


def run(config: Config, key: jax.Array, cache=None) -> dict[str, np.ndarray]:
    data = load_mnist1d(num_train=config.num_train + SPARE, seed=0)
    model = MLP(hidden=config.hidden, num_classes=data.num_classes)
    programs = _programs(config, data, model)
    keys = jax.random.split(key, config.seeds)
    taus = list(config.tau_maxes)
    cells = {}
    for schedule in SCHEDULES:
        for tau in taus:
            if schedule == "scaled" and tau == 0:  # η/(0 + 1) = η: the fixed-rate run
                cells[schedule, tau] = cells["fixed", 0]
                continue
            steps, eta = _budget(config, schedule, tau), _rate(config, schedule, tau)

            def compute(steps=steps, eta=eta, tau=tau):
                return _pair_runs(config, programs, steps, eta, tau, keys)

            name = f"{schedule}_tau{tau}"
            cells[schedule, tau] = compute() if cache is None else cache.cached(name, compute)
    fields = ("train_loss", "test_loss", "test_accuracy", "distance", "steps",
              "learning_rate", "diverged_step")  # fmt: skip
    out = {
        f: np.stack([np.stack([cells[s, t][f] for t in taus]) for s in SCHEDULES]) for f in fields
    }  # (schedule, tau, seed, records); steps (schedule, tau, records)
    out["gap"] = out["test_loss"] - out["train_loss"]
    out["tau_maxes"] = np.asarray(taus)
    out.update({f"{k}_at_level": v for k, v in _at_level(out, config.loss_level).items()})
    # Control: no delay at the largest τ_max's shrunken rate and budget. It separates what the
    # smaller rate does (more, smaller steps) from what the delay does at that rate.
    tm = max(taus)
    steps, eta = _budget(config, "scaled", tm), _rate(config, "scaled", tm)

    def control():
        return _pair_runs(config, programs, steps, eta, 0, keys)

    ctrl = control() if cache is None else cache.cached("control", control)
    ctrl["gap"] = ctrl["test_loss"] - ctrl["train_loss"]
    out.update({f"control_{k}": v for k, v in ctrl.items()})
    out.update({f"control_{k}_at_level": v for k, v in _at_level(ctrl, config.loss_level).items()})
    return out


def _at_level(results, level):
    """Values where the training loss first reaches `level`, interpolated in log-loss.

    `results` arrays `(..., seed, records)` with `steps` `(..., records)`. Returns arrays
    `(..., seed)`: `reached` (the run reached the level and never
    diverged), `step`, `distance`, `gap`, `test_loss` (NaN where not reached; the claims and
    metrics test `reached` first).
    """
    train = np.asarray(results["train_loss"], dtype=float)
    shape = train.shape[:-1]
    below = train[..., 1:] <= level
    hit = below.any(-1) & (results["diverged_step"] < 0)
    r = np.where(hit, below.argmax(-1) + 1, 1)  # first record at or below the level (>= 1)

    def take(a, idx):
        return np.take_along_axis(np.asarray(a, dtype=float), idx[..., None], -1)[..., 0]

    lo_loss, hi_loss = take(train, r - 1), take(train, r)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (np.log(lo_loss) - np.log(level)) / (np.log(lo_loss) - np.log(hi_loss))
    frac = np.clip(np.where(np.isfinite(frac), frac, 1.0), 0.0, 1.0)
    steps = np.broadcast_to(np.expand_dims(results["steps"], -2), train.shape)
    out = {"reached": hit}
    for name, values in (("step", steps), ("distance", results["distance"]),
                         ("gap", results["gap"]), ("test_loss", results["test_loss"])):  # fmt: skip
        a, b = take(values, r - 1), take(values, r)
        out[name] = np.where(hit, a + frac * (b - a), np.nan).reshape(shape)
    return out


def _log_ratio(num, den, ok):
    """Geometric-mean ratio over seeds and its interval; inf (the claim fails) unless every
    seed's two runs reached the level."""
    if not np.all(ok):
        return float("inf"), None
    mean, (lo, hi) = mean_interval(np.log(num) - np.log(den))
    return float(np.exp(mean)), (float(np.exp(lo)), float(np.exp(hi)))


def _ratios(results):
    taus = list(results["tau_maxes"])
    f, s = SCHEDULES.index("fixed"), SCHEDULES.index("scaled")
    t0, tm = taus.index(0), int(np.argmax(taus))
    d, ok = results["distance_at_level"], results["reached_at_level"]
    growth = _log_ratio(d[f, tm], d[f, t0], ok[f, tm] & ok[f, t0])
    scaling = _log_ratio(d[f, tm], d[s, tm], ok[f, tm] & ok[s, tm])
    return growth, scaling


def metrics(results, config) -> dict[str, float]:
    taus = results["tau_maxes"]
    ok = results["reached_at_level"]
    out = {}
    for s, sched in enumerate(SCHEDULES):
        for i, t in enumerate(taus):
            tag = f"{sched}_tau{t}"
            good = ok[s, i]
            out[f"runs_reaching_level_{tag}"] = float(good.sum())
            out[f"diverged_runs_{tag}"] = float(np.sum(results["diverged_step"][s, i] >= 0))
            for name in ("distance", "gap", "step", "test_loss"):
                v = results[f"{name}_at_level"][s, i][good]
                out[f"{name}_at_level_{tag}"] = float(v.mean()) if v.size else float("nan")
            out[f"final_train_loss_{tag}"] = float(results["train_loss"][s, i, :, -1].mean())
            out[f"final_gap_{tag}"] = float(results["gap"][s, i, :, -1].mean())
    (growth, _), (scaling, _) = _ratios(results)
    out["distance_ratio_fixed_taumax_vs_tau0"] = growth
    out["distance_ratio_fixed_vs_scaled_at_taumax"] = scaling
    # the control: no delay at the shrunken rate of the largest τ_max
    c_ok = results["control_reached_at_level"]
    out["runs_reaching_level_control"] = float(c_ok.sum())
    for name in ("distance", "gap", "step", "test_loss"):
        v = results[f"control_{name}_at_level"][c_ok]
        out[f"{name}_at_level_control"] = float(v.mean()) if v.size else float("nan")
    s_idx, tm = SCHEDULES.index("scaled"), int(np.argmax(taus))
    d = results["distance_at_level"][s_idx, tm]
    out["distance_ratio_scaled_taumax_vs_no_delay_same_rate"] = _log_ratio(
        d, results["control_distance_at_level"], ok[s_idx, tm] & c_ok
    )[0]
    # the gap at the level, largest τ_max minus τ_max = 0 (a finding, not a claim)
    gap = results["gap_at_level"]
    t0, tm = list(taus).index(0), int(np.argmax(taus))
    for s, sched in enumerate(SCHEDULES):
        both = ok[s, tm] & ok[s, t0]
        diff = gap[s, tm][both] - gap[s, t0][both]
        out[f"gap_change_taumax_minus_tau0_{sched}"] = (
            float(diff.mean()) if diff.size else float("nan")
        )
    return out


def claims(results, config):
    taus = results["tau_maxes"]
    tm = int(np.max(taus))
    (growth, growth_iv), (scaling, scaling_iv) = _ratios(results)
    level = f"training loss {config.loss_level:g}"
    return [
        claim_greater(
            "stability_degrades_with_delay",
            f"At fixed η = {config.learning_rate:g} and matched {level}, ‖w_S − w_S′‖ is "
            f"larger at τ_max = {tm} than at τ_max = 0 (geometric-mean ratio over seeds; a "
            "diverged or unreached run fails the claim)",
            growth,
            1.0,
            interval=growth_iv,
        ),
        claim_greater(
            "shrinking_rate_more_stable",
            f"At τ_max = {tm} and matched {level}, ‖w_S − w_S′‖ is larger under fixed η than "
            f"under η/(τ_max+1) (geometric-mean ratio fixed/shrinking; a diverged or "
            "unreached run fails the claim)",
            scaling,
            1.0,
            interval=scaling_iv,
        ),
    ]


def _seed_band(ax, x, samples, **kwargs):
    """Mean ± 1 s.e. over seeds (NaN entries, i.e. unreached runs, are left out)."""
    samples = np.asarray(samples, dtype=float)
    n = np.sum(np.isfinite(samples), axis=-1)
    mean = np.nanmean(np.where(n[..., None] > 0, samples, 0.0), axis=-1)
    mean = np.where(n > 0, mean, np.nan)
    sd = np.array([np.nanstd(row, ddof=1) if k > 1 else 0.0 for row, k in zip(samples, n)])
    return ax.errorbar(x, mean, yerr=sd / np.sqrt(np.maximum(n, 1)), capsize=3, **kwargs)


def plot(results, config):
    taus = results["tau_maxes"]
    fig, axes = figure(4, width=4.2)
    for s, sched in enumerate(SCHEDULES):
        ax = axes[s]
        for i, t in enumerate(taus):
            for seed in range(results["distance"].shape[2]):
                diverged = results["diverged_step"][s, i, seed] >= 0
                ax.plot(
                    results["train_loss"][s, i, seed], results["distance"][s, i, seed],
                    color=f"C{i}", lw=0.8, alpha=0.7, ls=":" if diverged else "-",
                    label=f"τ_max={t}" if seed == 0 else None,
                )  # fmt: skip
        ax.axvline(config.loss_level, color="k", ls="--", lw=0.8, label="matched level")
        ax.set(xscale="log", yscale="log", xlabel="training loss of w_S (time runs right→left)",
               ylabel="‖w_S − w_S′‖",
               title=f"{SCHEDULE_LABELS[sched]} (dotted: diverged)")  # fmt: skip
        ax.invert_xaxis()
        ax.legend(fontsize=7, loc="upper left")
    x = np.asarray(taus, dtype=float)
    for s, sched in enumerate(SCHEDULES):
        _seed_band(axes[2], x, results["distance_at_level"][s], fmt="o-",
                   label=SCHEDULE_LABELS[sched])  # fmt: skip
        _seed_band(axes[3], x, results["gap_at_level"][s], fmt="o-",
                   label=SCHEDULE_LABELS[sched])  # fmt: skip
        for i, t in enumerate(taus):
            missed = int(np.sum(~results["reached_at_level"][s, i]))
            if missed:
                axes[2].annotate(
                    f"{missed} not reached/diverged", (x[i], 1.0), fontsize=6,
                    xycoords=("data", "axes fraction"), va="top", rotation=90,
                )  # fmt: skip
    tm = float(np.max(taus))
    for ax, name in ((axes[2], "distance"), (axes[3], "gap")):
        _seed_band(ax, [tm], results[f"control_{name}_at_level"][None], fmt="k*", ms=9,
                   label="no delay at η/(τ_max+1) (control)")  # fmt: skip
    axes[2].set(xscale="symlog", yscale="log", xlabel="delay bound τ_max (server updates)",
                ylabel="‖w_S − w_S′‖ at the level",
                title=f"Stability at training loss {config.loss_level:g} (±1 s.e.)")  # fmt: skip
    axes[3].set(xscale="symlog", xlabel="delay bound τ_max (server updates)",
                ylabel="test − train loss at the level",
                title="Generalization gap at the level (finding, no claim)")  # fmt: skip
    for ax in axes[2:]:
        ax.set_xticks(x, [str(t) for t in taus])
        ax.legend(fontsize=7, loc="upper left")
    title = (
        f"MNIST-1D, |S|={config.num_train}, S′ = S with one example replaced, shared keys; "
        f"MLP {config.hidden}, batch {config.batch_size}, η={config.learning_rate:g}, "
        f"τ ~ U{{0…τ_max}}, {config.seeds} seeds; protocol ours"
    )
    fig.suptitle(title, fontsize=9)
    return {"async_generalization": fig}
