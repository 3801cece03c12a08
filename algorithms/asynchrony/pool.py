"""A pool of W asynchronous workers on a virtual clock, with n-softsync aggregation.

Each worker holds the snapshot s_w it pulled from the server, the server version at which it
pulled, and the virtual time at which its gradient will be ready. One server update:

1. the `c` workers with the smallest completion times arrive (ties broken by worker index, so
   the order is deterministic); `c = ⌊W/n⌋` for n-softsync (Zhang et al., "Staleness-aware
   Async-SGD for Distributed Deep Learning"): `c = W` is hardsync, `c = 1` Downpour/ASGD;
2. only those `c` gradients are computed, at their snapshots: `g_l = ∇L(s_l; ξ_l)` — the
   cost of an update is `c` gradients, not W;
3. the server rule (`algorithms.asynchrony.server`) turns them into a step using each arrival's
   staleness τ_l = (server version now) − (version at which the worker pulled), its snapshot and
   its worker index, and θ ← θ + step;
4. the clock moves to the last of the c completion times; the arriving workers pull the new θ
   and draw their next compute times.

So in this model an arriving worker pulls *after* the update its gradient is part of: hardsync
has τ = 0 exactly and n-softsync with i.i.d. compute times has ⟨τ⟩ ≈ n − 1 (Downpour with W
workers: ⟨τ⟩ = W − 1, the "n − 1" of Hermans & Louppe). Zhang et al.'s learners pull right
after pushing, which adds one to their staleness (⟨τ⟩ ≈ n); that convention is theirs.

Time units: `k` counts server updates; a worker step is one gradient (c per update); the
virtual clock is in units of the mean compute time.

Memory: the pool stores one snapshot per worker, O(W × params) (plus the rule's state, e.g.
GEM's per-worker velocity, another O(W × params)).

Everything is fixed-shape and traceable: `run_pool` is a `lax.scan` over server updates and can
be wrapped in `jit`/`vmap` (e.g. over seeds). A run is a pure function of its arguments and key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.typing import ArrayLike

__all__ = [
    "ComputeTime",
    "compute_time",
    "softsync_arrivals",
    "PoolState",
    "Arrivals",
    "PoolTrace",
    "pool_init",
    "pool_step",
    "run_pool",
]

_KINDS = ("constant", "exponential", "lognormal")


class ComputeTime(eqx.Module):
    """A model of the workers' gradient compute times on the virtual clock.

    `kind` is "constant", "exponential" or "lognormal"; `mean` the per-worker mean time,
    shape `(W,)` (heterogeneous speeds: mean / speed); `sigma` the log-normal shape σ.
    """

    kind: str = eqx.field(static=True)
    mean: jax.Array
    sigma: float

    @property
    def num_workers(self) -> int:
        """The pool size (static); workers with an infinite mean time never arrive."""
        return int(self.mean.shape[-1])

    def sample(self, key: jax.Array, workers: jax.Array) -> jax.Array:
        """Compute times for the given workers (int `(c,)`) -> float `(c,)`, all > 0."""
        mean = self.mean[workers]
        if self.kind == "constant":
            return mean
        if self.kind == "exponential":
            factor = jr.exponential(key, workers.shape, mean.dtype)
        else:
            z = jr.normal(key, workers.shape, mean.dtype)
            factor = jnp.exp(self.sigma * z - 0.5 * self.sigma**2)
        return jnp.where(jnp.isinf(mean), mean, mean * factor)  # inactive workers: never


def compute_time(
    kind: str,
    num_workers: int,
    *,
    mean: float = 1.0,
    sigma: float = 0.5,
    speeds: ArrayLike | None = None,
    max_workers: int | None = None,
) -> ComputeTime:
    """Build a compute-time model.

    Args:
      kind: "constant", "exponential" (memoryless) or "lognormal" (mean `mean`, shape σ).
      num_workers: W >= 1.
      mean: mean compute time of a unit-speed worker, > 0.
      sigma: log-normal σ > 0 (ignored otherwise).
      speeds: optional per-worker speeds, shape `(W,)`, all > 0; worker w's mean time is
        `mean / speeds[w]`.
      max_workers: optional pool size >= W. Workers W…max_workers − 1 get an infinite compute
        time and never arrive, so pools with different W share one compiled program (stack
        the models' `mean` arrays and `vmap`); memory is then O(max_workers × params).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if not mean > 0:
        raise ValueError(f"mean must be > 0, got {mean!r}")
    if kind == "lognormal" and not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if speeds is None:
        speeds = np.ones(num_workers)
    speeds = np.asarray(speeds, dtype=float)
    if speeds.shape != (num_workers,) or not np.all(speeds > 0):
        raise ValueError(f"speeds must have shape ({num_workers},) and be > 0, got {speeds!r}")
    means = mean / speeds
    if max_workers is not None:
        if not isinstance(max_workers, (int, np.integer)) or max_workers < num_workers:
            raise ValueError(
                f"max_workers must be an integer >= num_workers={num_workers}, got {max_workers!r}"
            )
        means = np.concatenate([means, np.full(max_workers - num_workers, np.inf)])
    return ComputeTime(kind, jnp.asarray(means), float(sigma))


def softsync_arrivals(num_workers: int, n: int) -> int:
    """c = ⌊W/n⌋, the arrivals per update of n-softsync, 1 <= n <= W (n = W: Downpour)."""
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= num_workers:
        raise ValueError(f"n must be an integer in [1, num_workers={num_workers}], got {n!r}")
    return num_workers // n


class PoolState(NamedTuple):
    """State of the server and the W workers.

    `params`: central θ; `opt_state`: the server rule's state; `snapshots`: each worker's pulled
    parameters (leaves `(W, ...)`); `pull_version` (int `(W,)`): server version at each pull;
    `finish_time` (`(W,)`): virtual time each in-flight gradient is ready; `clock`: virtual time
    of the last update; `version`: number of server updates so far.
    """

    params: object
    opt_state: object
    snapshots: object
    pull_version: jax.Array
    finish_time: jax.Array
    clock: jax.Array
    version: jax.Array


class Arrivals(NamedTuple):
    """What one server update applied: `loss`, `staleness`, `worker` (each `(c,)`) and `time`
    (the virtual time of the update)."""

    loss: jax.Array
    staleness: jax.Array
    worker: jax.Array
    time: jax.Array


class PoolTrace(NamedTuple):
    """`Arrivals` stacked over server updates (`(T, c)`, time `(T,)`) and `record(state)`
    after every `record_every` updates (leading axis T / record_every), or None."""

    arrivals: Arrivals
    record: object


def _worker_keys(key, workers, versions):
    return jax.vmap(lambda w, v: jr.fold_in(jr.fold_in(key, w), v))(workers, versions)


def pool_init(
    params, rule: optax.GradientTransformation, times: ComputeTime, key: jax.Array
) -> PoolState:
    """All W workers pull θ_0 at version 0, time 0, and draw their first compute times."""
    num_workers = times.num_workers
    snapshots = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_workers,) + jnp.shape(p)), params)
    workers = jnp.arange(num_workers)
    finish = times.sample(jr.split(key)[1], workers)
    return PoolState(
        params=params,
        opt_state=rule.init(params),
        snapshots=snapshots,
        pull_version=jnp.zeros(num_workers, jnp.int32),
        finish_time=finish,
        clock=jnp.zeros((), finish.dtype),
        version=jnp.zeros((), jnp.int32),
    )


def pool_step(
    state: PoolState,
    key: jax.Array,
    *,
    grad_fn: Callable,
    rule: optax.GradientTransformationExtraArgs,
    times: ComputeTime,
    num_arrivals: int,
) -> tuple[PoolState, Arrivals]:
    """One server update: the next `c = num_arrivals` arrivals in completion order.

    With `key_grad, key_time = split(key)`, the gradient of worker w pulled at version v uses
    `fold_in(fold_in(key_grad, w), v)`; the new compute times use `key_time`.
    """
    key_grad, key_time = jr.split(key)
    order = jnp.argsort(state.finish_time, stable=True)
    workers = order[:num_arrivals]
    pulled = state.pull_version[workers]
    snaps = jax.tree.map(lambda s: s[workers], state.snapshots)
    staleness = state.version - pulled
    losses, grads = jax.vmap(grad_fn)(snaps, _worker_keys(key_grad, workers, pulled))
    step, opt_state = rule.update(
        grads, state.opt_state, state.params, staleness=staleness, snapshot=snaps, worker=workers
    )
    params = optax.apply_updates(state.params, step)
    clock = jnp.max(state.finish_time[workers])
    new_times = times.sample(key_time, workers)
    finish_time = state.finish_time.at[workers].set(clock + new_times)
    snapshots = jax.tree.map(
        lambda s, p: s.at[workers].set(jnp.broadcast_to(p, (num_arrivals,) + jnp.shape(p))),
        state.snapshots,
        params,
    )
    version = state.version + 1
    pull_version = state.pull_version.at[workers].set(version)
    new_state = PoolState(params, opt_state, snapshots, pull_version, finish_time, clock, version)
    return new_state, Arrivals(losses, staleness, workers, clock)


def run_pool(
    grad_fn: Callable,
    rule: optax.GradientTransformationExtraArgs,
    params,
    key: jax.Array,
    *,
    times: ComputeTime,
    num_arrivals: int,
    num_updates: int,
    record: Callable[[PoolState], object] | None = None,
    record_every: int = 1,
) -> tuple[PoolState, PoolTrace]:
    """Run `num_updates` server updates of an asynchronous worker pool (traceable).

    Args:
      grad_fn: `grad_fn(params, key) -> (loss, grad)` for one worker at its snapshot.
      rule: a server rule from `algorithms.asynchrony.server` (optionally chained with
        server momentum); it receives `staleness`, `snapshot` and `worker` extras.
      params: θ_0.
      key: PRNG key (minibatches and compute times derive from it).
      times: the compute-time model; its length is the number of workers W.
      num_arrivals: c, gradients per server update, 1 <= c <= W (`softsync_arrivals(W, n)`).
      num_updates: T, server updates (static). Worker steps = c·T.
      record: optional `record(state) -> pytree` stored after every `record_every` updates.
      record_every: updates between records (>= 1, must divide `num_updates`); use it for
        costly records such as a test-set evaluation.

    Returns:
      `(final_state, PoolTrace)`. Memory O(W × params).
    """
    num_workers = times.num_workers
    if not isinstance(num_arrivals, (int, np.integer)) or not 1 <= num_arrivals <= num_workers:
        raise ValueError(
            f"num_arrivals must be an integer in [1, num_workers={num_workers}], "
            f"got {num_arrivals!r}"
        )
    if not isinstance(num_updates, (int, np.integer)) or num_updates < 0:
        raise ValueError(f"num_updates must be an integer >= 0, got {num_updates!r}")
    if not isinstance(record_every, (int, np.integer)) or record_every < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
    if num_updates % record_every:
        raise ValueError(f"record_every={record_every} must divide num_updates={num_updates}")
    state = pool_init(params, rule, times, key)

    def body(state, k):
        return pool_step(
            state,
            jr.fold_in(key, k),
            grad_fn=grad_fn,
            rule=rule,
            times=times,
            num_arrivals=num_arrivals,
        )

    def chunk(state, ks):
        state, arrivals = jax.lax.scan(body, state, ks)
        return state, (arrivals, None if record is None else record(state))

    ks = jnp.arange(num_updates).reshape(num_updates // record_every, record_every)
    state, (arrivals, rec) = jax.lax.scan(chunk, state, ks)
    arrivals = jax.tree.map(lambda a: a.reshape((num_updates,) + a.shape[2:]), arrivals)
    return state, PoolTrace(arrivals, rec)
