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
from jaxtyping import Array, Int

from algorithms.loop import RunResult, check_steps, divergence_check, recorded_scan, state_hook
from dynamics.types import GradFn, PyTree

__all__ = [
    "ComputeTime",
    "compute_time",
    "softsync_arrivals",
    "PoolState",
    "Arrivals",
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

    params: PyTree
    opt_state: PyTree
    snapshots: PyTree
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


def _worker_key(key, worker, version):
    """The minibatch key of `worker`'s gradient at the parameters of `version`."""
    return jr.fold_in(jr.fold_in(key, worker), version)


def _worker_keys(key, workers, versions):
    return jax.vmap(lambda w, v: _worker_key(key, w, v))(workers, versions)


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
    grad_fn: GradFn,
    rule: optax.GradientTransformationExtraArgs,
    times: ComputeTime,
    num_arrivals: int,
    workers: Int[Array, " c"] | None = None,
) -> tuple[PoolState, Arrivals]:
    """One server update: the next `c = num_arrivals` arrivals in completion order.

    With `key_grad, key_time = split(key)`, the gradient of worker w pulled at version v uses
    `fold_in(fold_in(key_grad, w), v)`; the new compute times use `key_time`.

    `workers`: the c distinct workers that arrive now, given instead of the virtual clock's
    order (their compute times are still drawn, and the clock moves to the latest of their
    completion times, so `Arrivals.time` is then not a meaningful time).
    """
    key_grad, key_time = jr.split(key)
    if workers is None:
        if num_arrivals == 1:
            # argmin returns the first minimum: the first of the stable order, without a sort.
            workers = jnp.argmin(state.finish_time)[None]
        else:
            workers = jnp.argsort(state.finish_time, stable=True)[:num_arrivals]
    pulled = state.pull_version[workers]
    staleness = state.version - pulled
    if num_arrivals == 1:
        # One arrival: a dynamic slice (no gather) of the worker's row, its key and one
        # gradient call without an arrival axis; a batch of one through `vmap` leads XLA to
        # compute the weight gradients transposed and transpose them again in the update.
        # Bitwise the same numbers on CPU (tests/test_asynchrony.py).
        worker = workers[0]
        snap = jax.tree.map(
            lambda s: jax.lax.dynamic_index_in_dim(s, worker, keepdims=False), state.snapshots
        )
        loss, grad = grad_fn(snap, _worker_key(key_grad, worker, pulled[0]))
        snaps, losses, grads = jax.tree.map(lambda a: a[None], (snap, loss, grad))
    else:
        snaps = jax.tree.map(lambda s: s[workers], state.snapshots)
        losses, grads = jax.vmap(grad_fn)(snaps, _worker_keys(key_grad, workers, pulled))
    step, opt_state = rule.update(
        grads, state.opt_state, state.params, staleness=staleness, snapshot=snaps, worker=workers
    )
    params = optax.apply_updates(state.params, step)
    clock = jnp.max(state.finish_time[workers])
    new_times = times.sample(key_time, workers)
    finish_time = state.finish_time.at[workers].set(clock + new_times)
    if num_arrivals == 1:
        # In place in the scan's carry (dynamic-update-slice, not a scatter); bitwise the same.
        snapshots = jax.tree.map(
            lambda s, p: jax.lax.dynamic_update_slice_in_dim(s, p[None].astype(s.dtype),
                                                             workers[0], 0),
            state.snapshots,
            params,
        )  # fmt: skip
    else:
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
    grad_fn: GradFn,
    rule: optax.GradientTransformationExtraArgs,
    params: PyTree,
    key: jax.Array,
    *,
    times: ComputeTime,
    num_arrivals: int,
    num_steps: int,
    metrics_fn: Callable[[PoolState], PyTree] | None = None,
    record_every: int = 1,
    order: ArrayLike | None = None,
    state: PoolState | None = None,
    start_step: int = 0,
    diverged_step: int = -1,
    divergence_threshold: float | None = None,
) -> RunResult:
    """Run `num_steps` server updates of an asynchronous worker pool (traceable).

    A recorded scan (`algorithms.loop.recorded_scan`) over server updates k: records,
    divergence and continuation follow its conventions.

    Args:
      grad_fn: `grad_fn(params, key) -> (loss, grad)` for one worker at its snapshot.
      rule: a server rule from `algorithms.asynchrony.server` (optionally chained with
        server momentum); it receives `staleness`, `snapshot` and `worker` extras.
      params: θ_0 (not used when `state` is given).
      key: PRNG key (minibatches and compute times derive from it); update k uses
        `fold_in(key, k)`.
      times: the compute-time model; its length is the number of workers W.
      num_arrivals: c, gradients per server update, 1 <= c <= W (`softsync_arrivals(W, n)`).
      num_steps: T, server updates (static). Worker steps = c·T.
      metrics_fn: optional `metrics_fn(state) -> pytree` (state a `PoolState`), recorded at
        `start_step` and after every `record_every` updates; use `record_every` for costly
        records such as a test-set evaluation.
      record_every: updates between records (>= 1, must divide `num_steps`).
      order: optional int array `(num_steps, c)`: row i lists the c distinct workers that
        arrive at update `start_step + i`, instead of the virtual clock's completion order
        (e.g. a recorded or adversarial schedule); staleness then follows from it.
      state, start_step, diverged_step: continue an earlier run from its `result.state`, the
        index of its next update and its `diverged_step`; T updates then T' more give
        bitwise the numbers of T + T' at once.
      divergence_threshold: if given, an update that makes some |θ| >= threshold or an
        arrival's loss non-finite is recorded as `diverged_step` and its block undone; None
        (default) never checks.

    Returns:
      A `RunResult`: `state` the final `PoolState` (`result.params` = θ), `trace` the
      `Arrivals` of every update (leaves `(T, c)`, time `(T,)`). Memory O(W × params).
    """
    num_workers = times.num_workers
    if not isinstance(num_arrivals, (int, np.integer)) or not 1 <= num_arrivals <= num_workers:
        raise ValueError(
            f"num_arrivals must be an integer in [1, num_workers={num_workers}], "
            f"got {num_arrivals!r}"
        )
    check_steps(num_steps, record_every, start_step)
    if order is not None:
        order = jnp.asarray(order)
        if order.shape != (num_steps, num_arrivals) or not jnp.issubdtype(order.dtype, jnp.integer):
            raise ValueError(
                f"order must be an integer array of shape (num_steps, num_arrivals) = "
                f"({num_steps}, {num_arrivals}), got {order.dtype} {order.shape}"
            )
        if not isinstance(order, jax.core.Tracer):
            rows = np.asarray(order)
            if rows.min(initial=0) < 0 or rows.max(initial=0) >= num_workers:
                raise ValueError(f"order must hold worker indices in [0, {num_workers})")
            if any(len(set(row)) != row.size for row in rows):
                raise ValueError("each row of order must list distinct workers")
    if state is None:
        state = pool_init(params, rule, times, key)
    first = jnp.asarray(start_step, jnp.int32)

    def step(state, k):
        workers = None if order is None else order[k - first]
        return pool_step(
            state, jr.fold_in(key, k), grad_fn=grad_fn, rule=rule, times=times,
            num_arrivals=num_arrivals, workers=workers,
        )  # fmt: skip

    return recorded_scan(
        step, state, num_steps=num_steps, record_every=record_every,
        metrics_fn=state_hook(metrics_fn), start_step=start_step, diverged_step=diverged_step,
        healthy=divergence_check(divergence_threshold),
    )  # fmt: skip
