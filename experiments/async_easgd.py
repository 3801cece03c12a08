"""Asynchronous EASGD vs synchronous EASGD vs asynchronous SGD against the virtual clock.

Zhang, Choromanska & LeCun, "Deep learning with Elastic Averaging SGD" (NeurIPS 2015;
docs/papers.md §1): W workers run local SGD and, every τ local steps, exchange with a center
x̃ by the elastic step `e = α (x_i − x̃)`, `x_i ← x_i − e`, `x̃ ← x̃ + e`. Asynchronously
(their Algorithm 1) no worker waits for another; on CIFAR-10 and ImageNet they report the
EASGD family reaching a lower test error than DOWNPOUR for the same wall-clock time. Here the
three methods get the same virtual-time budget on workers with a realistic spread of compute
times, and the test error of the center / server parameters is read on a common virtual-time
grid.

Protocol (ours; the paper used CIFAR-10 and ImageNet CNNs on a GPU cluster):

- Task: MNIST-1D (4,000 training and 1,000 test examples), an MLP with hidden widths (32, 32)
  (2,698 parameters), minibatches of 32 drawn with replacement at every local step. All W = 8
  workers start from one initialization (the center starts there too).
- Compute times (the "realistic spread"): every local step of every worker lasts a log-normal
  time, σ = 0.5 (coefficient of variation 0.53; as in `staleness_aware`), independent across
  steps and workers, mean 1 for a fast worker (the unit of virtual time), and one of the 8
  workers is persistently slow at half speed (mean 2), a shared or older node. Jitter alone
  would make a synchronous period of τ = 4 steps last E[max of 8 sums of 4] ≈ 1.4 mean
  steps per local step; the slow worker makes it ≈ 2 (metric `sync_period_mean_time`, per
  period of τ steps). The spread is a stylised heterogeneous cluster, not a measurement.
  Exchanges and pushes take no time, which favours the methods that communicate most (ASGD
  at every gradient, EASGD every τ steps).
- EASGD (both forms): η = 0.5 per local step, β = Wα = 0.9 (Zhang et al.'s choice), so
  α = ηρ = 0.1125 and ρ = β/(Wη) = 0.225, period τ = 4, plain local SGD (no momentum).
- Asynchronous EASGD: `run_async_coupled(async_easgd(η, ρ, period=τ))`, one event = one
  worker finishing one local step (exchanging every τ of its own steps), for enough events
  to pass T in every seed; the center and the clock are recorded every W events.
- Synchronous EASGD: `run_agents(eamsgd(η, ρ, momentum=0, period=τ))`, Algorithm 1 run in
  lock step with the elastic step every τ steps. Worker i's local step t uses the same
  minibatch key and the same compute time Δ(i, t) as in the asynchronous run (the keys that
  `run_async_coupled` documents; `tests/test_async_easgd.py` checks the times against its
  event clock), so the two EASGDs differ only in the schedule. The virtual clock: the workers
  run their τ local steps on their own and all wait at the exchange, so period p lasts
  `max_i Σ_{t=(p−1)τ}^{pτ−1} Δ(i, t)` and the p-th exchange happens at S_p, the cumulative
  sum of the period lengths (`sync_exchange_times`; waiting only at exchanges is the most
  favourable synchronous schedule). The center after exchange p is current on
  [S_p, S_{p+1}). The two forms differ by one convention of `algorithms.asynchrony.coupled`:
  the gradient of the step that starts with an exchange is taken before it here and after it
  in the asynchronous form, O(ηα) per exchange.
- Asynchronous SGD (DOWNPOUR): `run_pool(constant_rate(η_A), num_arrivals=1)` with the same
  W workers and compute-time model, every arrival applied at η_A = 0.2 (the best of the
  pilots below; ⟨τ⟩ ≈ W − 1 = 7), its server parameters evaluated.
- Budget and grid: T = 2000 mean compute times of a fast worker, for all three methods (the
  asynchronous methods keep all W workers busy all of T; the synchronous one idles them at
  the barriers). The checkpoints t_j = jT/40 (every 50): at each, the parameters current at
  t_j are evaluated, for the asynchronous runs the last record at or before t_j (records
  every W events, ≈ 1 time unit apart: a lag below one unit), for the synchronous run the
  center after the last exchange at or before t_j. Test error on the 1,000 test examples,
  training loss on the whole training set.
- Seeds: 10 (quick mode 8). Per seed one initialization shared by the three methods, and one
  run key: the two EASGDs share minibatches and compute times per (worker, local step); ASGD
  draws its own streams from the same key. Differences are paired by seed, intervals mean ±
  2 s.e. (`mean_interval`).
- Claim windows: a claim reads each run's test error averaged over the checkpoints of a
  window of 0.1 T (four checkpoints) ending at T, at T/2 or at T/4.
- Divergence: the asynchronous runners run without their divergence check (smaller compiled
  programs; no pilot run diverged); a run whose training loss at some checkpoint is not
  finite or exceeds `diverge_loss` = 10 nats (or that `run_agents` flags) counts at chance,
  0.9, at every checkpoint.

Claims (pre-registered after the pilots below; bounds in the config):

- `async_beats_sync`: at T, synchronous minus asynchronous EASGD test error > 0 (stragglers:
  in T the synchronous workers complete about 1,000 local steps each, the fast asynchronous
  workers about 2,000, the slow one about 1,000).
- `async_easgd_beats_asgd_at_budget`: at T, asynchronous EASGD minus ASGD < 0.
- `asgd_ahead_early`: at T/4, asynchronous EASGD minus ASGD > 0.
- `async_center_improves`: the asynchronous center's error at T/2 minus at T > 0 (sanity: the
  budget is not spent on a plateau).

The two ASGD claims together say the curves cross, which is what the pilots showed and the
full run (seed 0, 10 seeds, 30 s on two cores) repeats: ASGD leads by 0.03 at T/4, the mean
curves cross near t ≈ 700, and at T asynchronous EASGD's center is ahead by 0.03 (test errors
0.38, synchronous EASGD 0.40, ASGD 0.42). ASGD's server takes about 7.5 steps per time unit
(one per arrival) and trains fastest, but at a constant rate and staleness ≈ 7 its test error
stops improving near 0.41 from t ≈ 400–800 on, and drifts up slightly, while its training
loss keeps falling: at T it fits the training set better than the asynchronous center
(training loss 0.54 against 0.58) and tests worse. EASGD's center moves about as fast as one
worker (it averages the workers rather than summing their gradients) but keeps improving.
Whether its edge is the averaging's noise reduction or a regularization of the center
(compare `easgd_regularization`) we have not separated. The comparison is at each method's
own best constant rate from the pilots; a decaying ASGD rate was not tried and might lower
its plateau. The synchronous EASGD's deficit is largest early (≈ 0.09 around t ≈ 300–600)
and shrinks as both EASGDs approach the same plateau; at T it is 0.019, so the first claim is
read at its least favourable point. Quick mode (8 seeds, 25 s) gives the same verdicts:
0.018 [0.005, 0.032], −0.032 [−0.039, −0.025], 0.035 [0.022, 0.048], 0.018 [0.006, 0.029].

Protocol history (so the verdicts can be weighed). Two smoke runs on the final seed 0 came
before any choice (η = η_A = 0.1, T ≤ 600; every method far from converged: test errors at
T = 600 of 0.57, 0.66, 0.42 for asynchronous EASGD, synchronous EASGD and ASGD). Every choice
was then made on other seeds:

1. Seed 1, 2 seeds, T = 600, η = η_A ∈ {0.2, 0.5, 1.0}: asynchronous EASGD at T 0.51, 0.45,
   0.46; ASGD 0.40, 0.68, 0.86 (stale gradients: ASGD cannot use EASGD's rate, so each method
   gets its own).
2. Seed 1, 2 seeds, T = 2000: EASGD η ∈ {0.3, 0.5, 1.0} gave the asynchronous center 0.39,
   0.37, 0.39 at T; ASGD η_A ∈ {0.05, 0.1, 0.2, 0.3} gave 0.42, 0.40, 0.39, 0.40, flat from
   t ≈ 800; with η = 0.5 and η_A = 0.2 the mean curves crossed near t ≈ 1200. Fixed:
   η = 0.5, η_A = 0.2, T = 2000 (ASGD was still ahead at T = 600), the windows (0.1 T, the
   early one ending at T/4) and the four claims.
3. Seed 2, 4 seeds, that protocol: all four held: 0.026 [0.003, 0.049], −0.022
   [−0.035, −0.008], 0.051 [0.034, 0.068], 0.031 [0.006, 0.055].
4. Seed 3, 4 seeds, quick mode with 20 checkpoints: all four held: 0.020 [0.002, 0.037],
   −0.032 [−0.039, −0.026], 0.038 [0.001, 0.076], 0.024 [0.012, 0.035].

After these, for run time only (about 45 s → 30 s for quick mode on two busy cores, mostly
compilation): the asynchronous runners' divergence checks were replaced by the post-hoc
rule above and the event margin cut from 15 % to 3 % (neither changes a number of a healthy
run: the asynchronous keys follow (worker, local step), the pool's the update index); quick
mode kept 40 checkpoints; the full mode got 10 seeds instead of 5 because the lower ends of
the first claim in pilots 3 and 4 were close to 0. The first quick run of the final code
(seed 0, 4 seeds) held two claims and left two inconclusive (`async_beats_sync` 0.018
[−0.005, 0.040], `async_center_improves` 0.021 [−0.000, 0.043]; the full run held all four);
quick mode was then given 8 seeds, so that it has the power to decide its claims (its
verdicts are a smoke test of the full mode's, not a separate result).

What would change the verdicts: a budget near or before the crossing (t ≈ 700 in the full
run, ≈ 1200 in pilot 2), where ASGD is level with or ahead of EASGD, so the second claim
fails or is inconclusive; no slow worker and a narrow
jitter (the synchronous period falls toward one mean step per local step and the first claim
narrows; with equal speeds and σ → 0 the two EASGDs nearly coincide); a learning rate tuned
for one method only.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from algorithms import eamsgd, easgd_center, run_agents
from algorithms.asynchrony import (
    async_easgd,
    compute_time,
    constant_rate,
    run_async_coupled,
    run_pool,
)

from .harness.contract import claim_greater, claim_less, mean_interval
from .harness.plotting import band, figure, mean_and_se
from .tasks import MLP, evaluate, init_stacked, load_mnist1d, minibatch_grad_fn

NAME = "async_easgd"
DESCRIPTION = (
    "Async EASGD vs sync EASGD vs async SGD (MNIST-1D MLP, W workers, log-normal times and a "
    "slow worker): test error against the virtual clock"
)

METHODS = ("async_easgd", "sync_easgd", "asgd")
LABELS = {
    "async_easgd": "asynchronous EASGD (center)",
    "sync_easgd": "synchronous EASGD (center)",
    "asgd": "asynchronous SGD / DOWNPOUR (server)",
}
CHANCE_ERROR = 0.9  # 10 classes: the test error a diverged run counts at


@dataclasses.dataclass(frozen=True)
class Config:
    num_workers: int = dataclasses.field(default=8, metadata={"help": "W workers"})
    hidden: tuple[int, ...] = dataclasses.field(default=(32, 32), metadata={"help": "MLP widths"})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "minibatch per local step"})
    learning_rate: float = dataclasses.field(
        default=0.5, metadata={"help": "η per local step (both EASGDs)"}
    )
    moving_rate: float = dataclasses.field(
        default=0.9, metadata={"help": "β = Wα (Zhang et al.'s 0.9); ρ = β/(Wη)"}
    )
    period: int = dataclasses.field(
        default=4, metadata={"help": "τ, local steps between exchanges (both EASGDs)"}
    )
    asgd_learning_rate: float = dataclasses.field(
        default=0.2, metadata={"help": "η of asynchronous SGD (every arrival applied)"}
    )
    compute_sigma: float = dataclasses.field(
        default=0.5, metadata={"help": "log-normal σ of a local step's compute time"}
    )
    slow_workers: int = dataclasses.field(
        default=1, metadata={"help": "workers running at slow_speed (the last ones)"}
    )
    slow_speed: float = dataclasses.field(
        default=0.5, metadata={"help": "speed of the slow workers (mean time 1/speed)"}
    )
    budget: float = dataclasses.field(
        default=2000.0, metadata={"help": "T, virtual time (mean compute times of a fast worker)"}
    )
    checkpoints: int = dataclasses.field(
        default=40, metadata={"help": "evaluations on the common grid t_j = jT/checkpoints"}
    )
    window: float = dataclasses.field(
        default=0.1, metadata={"help": "claim window: this fraction of T ending at a checkpoint"}
    )
    early_fraction: float = dataclasses.field(
        default=0.25, metadata={"help": "the early time, as a fraction of T, of asgd_ahead_early"}
    )
    sync_margin: float = dataclasses.field(
        default=0.0, metadata={"help": "claimed min test-error gap sync − async EASGD at T"}
    )
    asgd_margin: float = dataclasses.field(
        default=0.0, metadata={"help": "claimed max test-error gap async EASGD − ASGD at T"}
    )
    seeds: int = dataclasses.field(default=10, metadata={"help": "independent runs (paired)"})
    diverge_loss: float = dataclasses.field(
        default=10.0, metadata={"help": "a run whose training loss exceeds this diverged"}
    )

    def __post_init__(self):
        for name in ("num_workers", "batch_size", "period", "checkpoints", "seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_workers < 2:
            raise ValueError(f"num_workers must be >= 2, got {self.num_workers}")
        if not self.hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden
        ):
            raise ValueError(f"hidden must be positive integers, got {self.hidden!r}")
        if not 1 <= self.batch_size <= 4000:
            raise ValueError(f"batch_size must be in [1, 4000], got {self.batch_size}")
        for name in ("learning_rate", "asgd_learning_rate", "compute_sigma", "budget"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not 0 < self.moving_rate <= 1:
            raise ValueError(f"moving_rate (β) must be in (0, 1], got {self.moving_rate!r}")
        if not 0 <= self.slow_workers < self.num_workers:
            raise ValueError(f"slow_workers must be in [0, num_workers), got {self.slow_workers!r}")
        if not 0 < self.slow_speed <= 1:
            raise ValueError(f"slow_speed must be in (0, 1], got {self.slow_speed!r}")
        if self.checkpoints < 4:
            raise ValueError(f"checkpoints must be >= 4, got {self.checkpoints}")
        if not 0 < self.window <= self.early_fraction < 1:
            raise ValueError(
                f"need 0 < window <= early_fraction < 1, got {self.window!r}, "
                f"{self.early_fraction!r}"
            )
        if self.window * self.checkpoints < 1 - 1e-9:
            raise ValueError(
                f"the claim window ({self.window:g} T) must hold a checkpoint "
                f"(T/{self.checkpoints})"
            )
        for name in ("sync_margin", "asgd_margin"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if not self.diverge_loss > math.log(10):
            raise ValueError(f"diverge_loss must be > ln 10, got {self.diverge_loss!r}")

    @property
    def rho(self) -> float:
        """ρ = β/(Wη), so that α = ηρ = β/W."""
        return self.moving_rate / (self.num_workers * self.learning_rate)

    @property
    def speeds(self) -> np.ndarray:
        """Per-worker speeds: 1, and `slow_speed` for the last `slow_workers`."""
        s = np.ones(self.num_workers)
        s[self.num_workers - self.slow_workers :] = self.slow_speed
        return s


QUICK = dict(seeds=8)


def _times(config):
    return compute_time(
        "lognormal", config.num_workers, sigma=config.compute_sigma, speeds=config.speeds
    )


def _grid(config) -> np.ndarray:
    """The common checkpoints t_j = jT/checkpoints, j = 0…checkpoints."""
    return np.linspace(0.0, config.budget, config.checkpoints + 1)


def _window(config, end: float) -> np.ndarray:
    """Checkpoint indices of the claim window (`window` · T) ending at `end`."""
    grid = _grid(config)
    width = config.window * config.budget
    return np.flatnonzero((grid > end - width + 1e-9) & (grid <= end + 1e-9))


def _num_events(config) -> int:
    """Events (local steps, or server updates for ASGD) enough to pass T in every seed: the
    expected count T Σ speeds, with a 3 % + 4W margin (the count's s.d. is about 0.5 % of it
    at T = 2000), rounded up to whole records of W; `run` checks that every healthy run
    passed T."""
    w = config.num_workers
    expected = config.budget * float(config.speeds.sum())
    return int(math.ceil((1.03 * expected + 4 * w) / w)) * w


def _step_times(times, run_key, num_workers: int, num_local: int):
    """Δ(i, t), `(W, num_local)`: the compute time of worker i's local step t, drawn as
    `run_async_coupled` draws it (its module docstring: `key_time = split(key)[1]`, then
    `times.sample(fold_in(fold_in(key_time, i), t), [i])`), so that the synchronous run
    sees the same compute times as the asynchronous one."""
    _, key_time = jr.split(run_key)

    def one(i, t):
        k = jr.fold_in(jr.fold_in(key_time, i), t)
        return times.sample(k, jnp.reshape(i, (1,)))[0]

    workers, steps = jnp.arange(num_workers), jnp.arange(num_local)
    return jax.vmap(lambda i: jax.vmap(lambda t: one(i, t))(steps))(workers)


def sync_exchange_times(step_times, period: int) -> np.ndarray:
    """S_p, `(..., P)`: the virtual time of the synchronous EASGD's p-th exchange barrier,
    p = 1…P, from the local-step times `(..., W, P·τ)`: period p lasts
    `max_i Σ_{t=(p−1)τ}^{pτ−1} Δ(i, t)` (each worker runs its τ local steps on its own, all
    wait for the slowest at the exchange), and S_p is the cumulative sum."""
    d = np.asarray(step_times, dtype=float)
    p = d.shape[-1] // period
    sums = d[..., : p * period].reshape(d.shape[:-1] + (p, period)).sum(-1)
    return np.cumsum(sums.max(-2), axis=-1)


def _valid_at(times, grid) -> np.ndarray:
    """Per seed, the index of the last record whose `times` `(seeds, R)` (when its state
    became current) is <= each grid time: `(seeds, G)`."""
    return np.stack([np.searchsorted(t, grid, side="right") - 1 for t in np.asarray(times)])


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    data = load_mnist1d()
    model = MLP(hidden=config.hidden, num_classes=data.num_classes)
    grad_fn = minibatch_grad_fn(model, data.x_train, data.y_train, config.batch_size)
    w, tau, eta = config.num_workers, config.period, config.learning_rate
    times = _times(config)
    grid = _grid(config)
    keys = jr.split(key, config.seeds)
    init_keys = jax.vmap(lambda k: jr.fold_in(k, 1))(keys)  # shared by the three methods
    run_keys = keys

    def init(k):  # every worker starts from the same initialization
        return init_stacked(model, k, w, data.x_train[:2], same_init=True)

    # --- asynchronous EASGD: one event = one worker finishing one local step
    num_events = _num_events(config)

    @jax.jit
    @jax.vmap
    def async_run(k_init, k_run):
        res = run_async_coupled(
            grad_fn, async_easgd(eta, config.rho, period=tau), init(k_init), k_run,
            times=times, num_steps=num_events, metrics_fn=lambda s: (s.aux, s.clock),
            record_every=w,
        )  # fmt: skip
        tr = res.trace  # local steps per worker completed by T
        done = (tr.worker[:, None] == jnp.arange(w)[None]) & (tr.time[:, None] <= config.budget)
        return res.metrics, done.sum(0)

    (a_center, a_time), a_steps = async_run(init_keys, run_keys)

    # --- asynchronous SGD: a pool of W workers, every arrival applied with η_ASGD (c = 1)
    @jax.jit
    @jax.vmap
    def asgd_run(k_init, k_run):
        params = jax.tree.map(lambda p: p[0], init(k_init))
        res = run_pool(
            grad_fn, constant_rate(config.asgd_learning_rate), params, k_run, times=times,
            num_arrivals=1, num_steps=num_events, metrics_fn=lambda s: (s.params, s.clock),
            record_every=w,
        )  # fmt: skip
        return res.metrics

    p_params, p_time = asgd_run(init_keys, run_keys)

    # --- synchronous EASGD (eamsgd at δ = 0 with period τ), exchange barriers from the same
    # compute times Δ(i, t) as the asynchronous run
    horizon = int(math.ceil(1.5 * config.budget)) + 2 * tau
    horizon -= horizon % tau
    delta = np.asarray(jax.vmap(lambda k: _step_times(times, k, w, horizon))(run_keys))
    barriers = sync_exchange_times(delta, tau)  # (seeds, horizon/τ)
    if np.any(barriers[:, -1] <= config.budget):
        raise RuntimeError("the synchronous horizon does not reach the budget; raise it")
    periods = int(np.max(np.argmax(barriers > config.budget, axis=-1))) + 1  # S_P > T

    def oracle_for(key_grad):
        def oracle(params, key, k):
            del key

            def one(i, p):
                return grad_fn(p, jr.fold_in(jr.fold_in(key_grad, i), k))

            return jax.vmap(one)(jnp.arange(w), params)

        return oracle

    @jax.jit
    @jax.vmap
    def sync_run(k_init, k_run):
        key_grad, _ = jr.split(k_run)  # the async run's gradient keys (worker i, step t)
        res = run_agents(
            eamsgd(eta, config.rho, momentum=0.0, period=tau), init(k_init),
            oracle_for(key_grad), num_steps=periods * tau, key=key_grad, record_every=tau,
            metrics_fn=lambda state: easgd_center(state.opt_state),
        )  # fmt: skip
        return res.metrics, res.diverged_step

    s_center, s_div = sync_run(init_keys, run_keys)
    # Record j (after jτ steps) holds the center after the exchanges at steps 0, τ, …,
    # (j − 1)τ (eamsgd exchanges at the start of steps ≡ 0 mod τ), i.e. after barrier j − 1:
    # it is current from S_{j−1} (S_0 = 0) on.
    s_time = np.concatenate(
        [np.zeros((config.seeds, 2)), barriers[:, : periods - 1]], axis=-1
    )  # (seeds, periods + 1)

    # --- evaluate each method's center / server params current at the grid times
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

    @jax.jit
    def score(params):  # params with a leading axis (seeds · grid)
        _, acc = evaluate(model, params, x_test, y_test)
        train_loss, _ = evaluate(model, params, x_train, y_train)
        return 1.0 - acc, train_loss

    def at_grid(records, rtimes):
        idx = _valid_at(rtimes, grid)  # (seeds, G)
        rows = np.arange(config.seeds)[:, None]

        def take(leaf):
            leaf = np.asarray(leaf)[rows, idx]  # (seeds, G, ...)
            return leaf.reshape((-1,) + leaf.shape[2:])

        err, loss = score(jax.tree.map(take, records))
        shape = idx.shape
        return np.asarray(err).reshape(shape), np.asarray(loss).reshape(shape)

    out_err, out_loss = [], []
    for records, rtimes in ((a_center, a_time), (s_center, s_time), (p_params, p_time)):
        e, l_ = at_grid(records, rtimes)
        out_err.append(e)
        out_loss.append(l_)
    # Divergence, read from the evaluations (the asynchronous runners run unchecked): a run
    # diverged when its training loss at some checkpoint is not finite or exceeds
    # diverge_loss, or when run_agents flagged it.
    train_loss = np.stack(out_loss)
    diverged = np.any(~np.isfinite(train_loss) | (train_loss > config.diverge_loss), axis=-1)
    diverged[METHODS.index("sync_easgd")] |= np.asarray(s_div) >= 0
    final_clock = np.stack([np.asarray(a_time)[:, -1], barriers[:, periods - 1],
                            np.asarray(p_time)[:, -1]])  # fmt: skip
    short = ~diverged & (final_clock <= config.budget)
    if np.any(short):
        raise RuntimeError(f"a healthy run ended before the budget T: {final_clock}")
    return {
        "time": grid,
        "test_error": np.stack(out_err),  # (method, seed, checkpoint)
        "train_loss": train_loss,
        "diverged": diverged,  # (method, seed)
        "async_local_steps": np.asarray(a_steps),  # (seed, W): local steps completed by T
        "sync_local_steps": np.asarray(
            [np.searchsorted(b, config.budget, side="right") * tau for b in barriers]
        ),  # local steps per worker the synchronous run completed by T
        "sync_period_mean": np.diff(barriers[:, :periods], axis=-1, prepend=0.0).mean(-1),
        "events": np.asarray(num_events),
    }


def _errors(results):
    """Test error `(method, seed, checkpoint)` with diverged runs at chance level."""
    e = np.asarray(results["test_error"], dtype=float)
    bad = np.asarray(results["diverged"], dtype=bool)[..., None] | ~np.isfinite(e)
    return np.where(bad, CHANCE_ERROR, e)


def _window_mean(results, config, end):
    return _errors(results)[..., _window(config, end)].mean(-1)  # (method, seed)


def _claim_values(results, config):
    final = _window_mean(results, config, config.budget)
    half = _window_mean(results, config, config.budget / 2)
    early = _window_mean(results, config, config.early_fraction * config.budget)
    a, s, p = (METHODS.index(m) for m in METHODS)
    return {
        "sync_minus_async": mean_interval(final[s] - final[a]),
        "async_minus_asgd": mean_interval(final[a] - final[p]),
        "async_minus_asgd_early": mean_interval(early[a] - early[p]),
        "async_improvement": mean_interval(half[a] - final[a]),
    }


def metrics(results, config) -> dict[str, float]:
    final = _window_mean(results, config, config.budget)
    half = _window_mean(results, config, config.budget / 2)
    loss = np.asarray(results["train_loss"])[..., _window(config, config.budget)].mean(-1)
    out = {}
    for m, name in enumerate(METHODS):
        out[f"{name}_final_test_error"] = float(final[m].mean())
        out[f"{name}_half_budget_test_error"] = float(half[m].mean())
        out[f"{name}_final_train_loss"] = float(loss[m].mean())
        out[f"{name}_diverged_runs"] = float(np.sum(results["diverged"][m]))
    for name, (v, _) in _claim_values(results, config).items():
        out[name] = v
    steps = np.asarray(results["async_local_steps"], dtype=float)
    out["async_local_steps_fast_worker"] = float(steps[:, 0].mean())
    out["async_local_steps_slow_worker"] = float(steps[:, -1].mean())
    out["sync_local_steps_per_worker"] = float(np.mean(results["sync_local_steps"]))
    out["sync_period_mean_time"] = float(np.mean(results["sync_period_mean"]))
    return out


def claims(results, config):
    v = _claim_values(results, config)
    T = config.budget
    width = config.window * T
    what = (
        f"test error averaged over the checkpoints in a window of {width:g} time units (paired "
        "by seed; a diverged run counts at chance, 0.9)"
    )
    early = config.early_fraction * T
    return [
        claim_greater(
            "async_beats_sync",
            f"At the budget T = {T:g}, asynchronous EASGD's center beats synchronous EASGD's "
            f"(same η, ρ, τ, minibatches and compute times): synchronous minus asynchronous "
            f"{what} ending at T",
            v["sync_minus_async"][0],
            config.sync_margin,
            interval=v["sync_minus_async"][1],
        ),
        claim_less(
            "async_easgd_beats_asgd_at_budget",
            f"At the budget T = {T:g}, asynchronous EASGD's center beats asynchronous SGD's "
            f"server (each at its pilot-chosen η): EASGD minus ASGD {what} ending at T",
            v["async_minus_asgd"][0],
            config.asgd_margin,
            interval=v["async_minus_asgd"][1],
        ),
        claim_greater(
            "asgd_ahead_early",
            f"Early on asynchronous SGD is ahead: EASGD minus ASGD {what} ending at t = {early:g}",
            v["async_minus_asgd_early"][0],
            0.0,
            interval=v["async_minus_asgd_early"][1],
        ),
        claim_greater(
            "async_center_improves",
            f"Asynchronous EASGD's center keeps improving: its {what} ending at T/2 minus "
            "ending at T",
            v["async_improvement"][0],
            0.0,
            interval=v["async_improvement"][1],
        ),
    ]


def plot(results, config):
    t = results["time"]
    T = config.budget
    err = _errors(results)
    a, s, p = (METHODS.index(m) for m in METHODS)
    ends = (config.early_fraction * T, T / 2, T)
    fig, axes = figure(2, width=5.2)
    for m, name in enumerate(METHODS):
        band(axes[0], t, *mean_and_se(err[m]), label=LABELS[name], color=f"C{m}")
        band(axes[1], t, *mean_and_se(results["train_loss"][m]), label=LABELS[name],
             color=f"C{m}")  # fmt: skip
    for ax in axes:
        for end in ends:
            ax.axvspan(end - config.window * T, end, color="0.92")
        ax.set(xlabel="virtual time (mean compute times of a fast worker)")
        ax.legend(fontsize=7)
    axes[0].set(ylabel="test error", ylim=(0.3, 0.9),
                title="Test error, mean ± 1 s.e. over seeds (shaded: claim windows)")  # fmt: skip
    axes[1].set(ylabel="training loss (whole training set)", yscale="log",
                title="Training loss, mean ± 1 s.e.")  # fmt: skip
    proto = (
        f"MNIST-1D MLP {config.hidden}, W={config.num_workers}, batch {config.batch_size}, "
        f"EASGD η={config.learning_rate:g}, β=Wα={config.moving_rate:g}, τ={config.period}; "
        f"ASGD η={config.asgd_learning_rate:g}; log-normal σ={config.compute_sigma:g}, "
        f"{config.slow_workers} worker(s) at speed {config.slow_speed:g}; {config.seeds} seeds; "
        "protocol ours"
    )
    fig.suptitle(proto, fontsize=9)

    fig2, bx = figure(2, width=5.2)
    pairs = (
        ("sync − async EASGD", err[s] - err[a], "C1"),
        ("async EASGD − ASGD", err[a] - err[p], "C2"),
    )
    for label, diff, color in pairs:
        for seed in range(diff.shape[0]):
            bx[0].plot(t, diff[seed], color=color, lw=0.7, alpha=0.5,
                       label=label if seed == 0 else None)  # fmt: skip
        bx[0].plot(t, diff.mean(0), color=color, lw=2)
    for end in ends:
        bx[0].axvspan(end - config.window * T, end, color="0.92")
    bx[0].axhline(0.0, color="k", lw=0.8)
    bx[0].set(xlabel="virtual time", ylabel="test-error difference",
              title="Paired differences (thin: seeds, thick: mean)")  # fmt: skip
    bx[0].legend(fontsize=7)
    v = _claim_values(results, config)
    names = ("sync_minus_async", "async_minus_asgd", "async_minus_asgd_early",
             "async_improvement")  # fmt: skip
    labels = ("sync − async\nat T", "async − ASGD\nat T",
              f"async − ASGD\nat {config.early_fraction:g}T", "async: T/2 − T")  # fmt: skip
    final = _window_mean(results, config, T)
    half = _window_mean(results, config, T / 2)
    early = _window_mean(results, config, config.early_fraction * T)
    per_seed = (final[s] - final[a], final[a] - final[p], early[a] - early[p], half[a] - final[a])
    for i, (name, seeds) in enumerate(zip(names, per_seed)):
        mean, (lo, hi) = v[name]
        bx[1].plot(np.full(len(seeds), i), seeds, "o", color="0.6", ms=4)
        bx[1].errorbar([i], [mean], yerr=[[mean - lo], [hi - mean]], fmt="s", color="k",
                       capsize=4)  # fmt: skip
    bx[1].axhline(0.0, color="k", lw=0.8)
    bx[1].set_xticks(range(len(names)), labels, fontsize=8)
    bx[1].set(ylabel="test-error difference (window means)",
              title="Claimed quantities: seeds (grey), mean ± 2 s.e. (black)")  # fmt: skip
    fig2.suptitle(proto, fontsize=9)
    return {"async_easgd": fig, "async_easgd_paired": fig2}
