"""Asynchronous coupled SGD on the virtual clock: asynchronous EASGD, EAMSGD, quorum SGD with a
stale quorum variable, and any coupling rule with a server-held auxiliary state.

W workers (`num_workers`) each hold their own parameters x_i (leaves `(W, ...)`, the worker
axis first like the agent axis N elsewhere), optionally a velocity v_i, a local step count
t_i, and their view ẑ_i of the server's auxiliary state z (the EASGD center x̃, the quorum
variable). The server holds z. Worker i runs local SGD steps on its own clock and exchanges
with the server after every τ (`period`) of ITS OWN local steps; between exchanges it never
sees z (only ẑ_i, z as of its last exchange).

Units. An *event* (one step k of the scan) is one worker finishing one local step (and
exchanging if its count reaches a multiple of τ); `num_steps` counts events, so W workers
take about `num_steps / W` local steps each. Local steps t_i are per worker. The virtual
clock is in units of the mean compute time (`ComputeTime`); an exchange takes no time.
`learning_rate` η is per local step; the exchange's coupling step is also η per exchange
(EASGD's α = ηρ per exchange, whatever τ).

The event k (the recursion as implemented):

1. the worker i with the earliest finish time T_i arrives (ties: the smallest index, the
   pool's rule); the clock moves to T_i;
2. its gradient point is p_i = x_i + δ v_i (Nesterov look-ahead; p_i = x_i without momentum)
   and `(ℓ_i, g_i) = grad_fn(p_i, key(i, t_i))`;
3. u_i = g_i − F_i(p_i, ẑ_i) with `force_at="step"` (the force read from the stale view, at
   every local step), u_i = g_i otherwise;
4. local step: `x_i ← x_i − η u_i`, or with momentum δ `v_i ← δ v_i − η u_i, x_i ← x_i + v_i`;
5. t_i ← t_i + 1 and the next finish time T_i ← T_i + Δ(i, t_i);
6. if t_i ≡ 0 (mod τ), the exchange at virtual time T_i, from the post-step x_i and the
   server's current z (both right-hand sides from the values before the exchange):
   - `async_easgd` / `async_eamsgd`: `e = α (x_i − z)`, `x_i ← x_i − e`, `z ← z + e`;
   - `async_coupled(rule, force_at="exchange")`: `x_i ← x_i + η F_i`,
     `z ← z + (η/W) A`;
   - `async_coupled(rule, force_at="step")`: `z ← z + (η/W) A` (x_i unchanged);

   then ẑ_i ← z (the worker reads the server's reply). Between exchanges z does not move.

Here F_i and A are the rule's `force` (row i) and `aux_drift`, evaluated on the population
of W copies of x_i (losses W copies of ℓ_i) and the server's z: worker i speaks for itself.
For a rule whose aux drift is a sum or mean over agents of per-agent terms (plus terms in z
alone), one exchange of every worker moves z by η A(x, z) to first order, as one synchronous
step does: with `elastic(ρ)` (sum pull, `A = ρ Σ_j (x_j − z)`) an exchange moves z by
`η ρ (x_i − z) = α (x_i − z)` and x_i by `η ρ (z − x_i) = −α (x_i − z)`, asynchronous EASGD
exactly; the mean pull `k_z (x̄ − z)` gives `(η k_z / W)(x_i − z)` per exchange.

Conventions and where they depart from Zhang, Choromanska & LeCun (2015), Algorithms 1 and 2:

- the exchange that starts the worker's iteration t_i ≡ 0 (mod τ) is step 6 of the event that
  ends iteration t_i − 1 (nothing happens in between); the paper's exchange at t_i = 0 is
  omitted: it is a no-op when every worker starts at the center, as in the paper;
- the gradient of the iteration that starts with an exchange is taken at the post-exchange
  point (Algorithm 2's order, `v ← δ v − η g(x + δ v)` after the elastic step). Algorithm 1
  takes it at the pre-exchange x; ours is Algorithm 2 at δ = 0, which makes EAMSGD at δ = 0
  exactly asynchronous EASGD. The two orders differ by O(ηα) per exchange;
- randomness depends on the worker and its local step, not on the event order: with
  `key_grad, key_time = split(key)`, worker i's local step t uses the gradient key
  `fold_in(fold_in(key_grad, i), t)` and lasts `Δ(i, t) = times.sample(fold_in(fold_in(
  key_time, i), t), [i])`. So a worker's noise sequence is the same under every compute-time
  model (common random numbers across schedules).

Memory: O(W × params) for the workers (plus W velocities with momentum and W views of z);
the general form evaluates the rule on W copies of one worker, O(W × params) per exchange.
Everything is fixed-shape and traceable (`jit`, `vmap` over keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from algorithms.asynchrony.pool import ComputeTime
from algorithms.loop import RunResult, check_steps, finite_below, recorded_scan, state_hook
from dynamics.coupling import AbstractCoupling, Quorum, agent_mean
from dynamics.types import GradFn, GradientField, PyTree

__all__ = [
    "FORCE_AT",
    "AsyncCoupling",
    "AsyncCoupledState",
    "AsyncCoupledTrace",
    "AsyncCoupledRecord",
    "async_coupled",
    "async_easgd",
    "async_eamsgd",
    "async_quorum_sgd",
    "async_coupled_init",
    "async_coupled_step",
    "async_coupled_record",
    "run_async_coupled",
]

FORCE_AT = ("exchange", "step")

# exchange(x_i, z, ℓ_i, i, W) -> (x_i, z): one worker's parameters (no worker axis), the
# server's auxiliary state, its loss (), its index (int ()), the number of workers (static).
ExchangeFn = Callable[[PyTree, PyTree, jax.Array, jax.Array, int], tuple[PyTree, PyTree]]
# local_force(p_i, ẑ_i, ℓ_i, i, W) -> F_i (same structure as p_i).
LocalForceFn = Callable[[PyTree, PyTree, jax.Array, jax.Array, int], PyTree]


class AsyncCoupling(NamedTuple):
    """An asynchronous coupled optimizer, run by `run_async_coupled`.

    `init(params)`: the server's z from the workers' initial parameters (leaves `(W, ...)`);
    `exchange`: the exchange of one worker with the server (step 6 of the module docstring);
    `local_force`: the force added to every local step from the worker's view ẑ_i (None: no
    force between exchanges); `learning_rate` η per local step; `momentum` δ (Nesterov) or
    None; `period` τ, local steps between exchanges.
    """

    init: Callable[[PyTree], PyTree]
    exchange: ExchangeFn
    local_force: LocalForceFn | None
    learning_rate: float
    momentum: float | None
    period: int


class AsyncCoupledState(NamedTuple):
    """State of the server and the W workers after some events.

    `params`: the workers' x_i (leaves `(W, ...)`); `velocity`: their v_i (same shapes) or
    None without momentum; `aux`: the server's z (the center x̃); `aux_view`: each worker's ẑ_i,
    z as of its last exchange (leaves `(W, ...)` of z's); `local_step` (int `(W,)`): t_i, local
    steps done; `finish_time` (`(W,)`): virtual time the current local step of each worker
    ends; `clock` (): the virtual time of the last event.
    """

    params: PyTree
    velocity: PyTree
    aux: PyTree
    aux_view: PyTree
    local_step: jax.Array
    finish_time: jax.Array
    clock: jax.Array


class AsyncCoupledTrace(NamedTuple):
    """One event: the `worker` i (int), whether it `exchanged` (bool), the virtual `time` of
    the event and the `loss` ℓ_i at its gradient point. Each `()`, stacked `(num_steps,)`."""

    worker: jax.Array
    exchanged: jax.Array
    time: jax.Array
    loss: jax.Array


class AsyncCoupledRecord(NamedTuple):
    """The default record: the server's `center` z, the workers' `params` x (`(W, ...)`) and
    the virtual `time` of the last event."""

    center: PyTree
    params: PyTree
    time: jax.Array


def async_coupled_record(state: AsyncCoupledState) -> AsyncCoupledRecord:
    """The default `metrics_fn` of `run_async_coupled`: z, x and the virtual time."""
    return AsyncCoupledRecord(state.aux, state.params, state.clock)


# ----------------------------------------------------------------------------- checks


def _check_period(period) -> int:
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1:
        raise ValueError(f"period (τ) must be an integer >= 1, got {period!r}")
    return int(period)


def _check_positive(name: str, value) -> float:
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def _check_momentum(momentum) -> float | None:
    if momentum is None:
        return None
    m = float(momentum)
    if not 0 <= m < 1:
        raise ValueError(f"momentum (δ) must be in [0, 1) or None, got {momentum!r}")
    return m


def _check_force_at(force_at: str) -> str:
    if force_at not in FORCE_AT:
        raise ValueError(f"force_at must be one of {FORCE_AT}, got {force_at!r}")
    return force_at


# ----------------------------------------------------------------------------- rules


def async_easgd(
    learning_rate: float, rho: float, *, period: int = 1, momentum: float | None = None
) -> AsyncCoupling:
    """Asynchronous EASGD (Zhang, Choromanska & LeCun 2015, Algorithm 1; with `momentum` δ,
    EAMSGD, Algorithm 2), written directly.

    Local step: `x_i ← x_i − η g_i(x_i)` (EAMSGD: `v_i ← δ v_i − η g_i(x_i + δ v_i)`,
    `x_i ← x_i + v_i`). Every τ local steps of worker i, from the current center x̃:
    `e = α (x_i − x̃)`, `x_i ← x_i − e`, `x̃ ← x̃ + e` with `α = ηρ`. The center starts at the
    workers' mean. See the module docstring for the event order and our conventions.

    Args:
      learning_rate: η > 0, per local step.
      rho: ρ >= 0, with α = ηρ <= 1.
      period: τ >= 1, local steps between exchanges (per worker).
      momentum: δ in [0, 1) (Nesterov, EAMSGD) or None (plain local SGD).
    """
    eta = _check_positive("learning_rate (η)", learning_rate)
    rho = float(rho)
    if not np.isfinite(rho) or rho < 0:
        raise ValueError(f"rho (ρ) must be a finite number >= 0, got {rho!r}")
    alpha = eta * rho
    if alpha > 1:
        raise ValueError(f"alpha = learning_rate · rho must be <= 1, got {alpha!r}")

    def exchange(x, center, loss, worker, num_workers):
        del loss, worker, num_workers
        e = jax.tree.map(lambda xi, c: alpha * (xi - c), x, center)
        return (
            jax.tree.map(lambda xi, ei: xi - ei, x, e),
            jax.tree.map(lambda c, ei: c + ei, center, e),
        )

    return AsyncCoupling(
        init=agent_mean,
        exchange=exchange,
        local_force=None,
        learning_rate=eta,
        momentum=_check_momentum(momentum),
        period=_check_period(period),
    )


def async_eamsgd(
    learning_rate: float, rho: float, *, momentum: float = 0.9, period: int = 1
) -> AsyncCoupling:
    """Asynchronous EAMSGD (Algorithm 2): `async_easgd` with Nesterov momentum δ on the local
    steps, `v_i ← δ v_i − η g_i(x_i + δ v_i)`, `x_i ← x_i + v_i`; δ = 0 is asynchronous EASGD."""
    if momentum is None:
        raise ValueError("momentum (δ) must be in [0, 1), got None (use async_easgd)")
    return async_easgd(learning_rate, rho, period=period, momentum=momentum)


def _copies(tree: PyTree, num_workers: int) -> PyTree:
    """W copies of one worker's pytree, stacked on a new leading axis."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a[None], (num_workers,) + a.shape), tree)


def async_coupled(
    rule: AbstractCoupling,
    learning_rate: float,
    *,
    period: int = 1,
    momentum: float | None = None,
    force_at: str = "exchange",
    aux_gradient_fn: GradientField | None = None,
) -> AsyncCoupling:
    """Any coupling rule run asynchronously, its auxiliary state z held by the server.

    At an exchange of worker i the rule is evaluated on the population of W copies of x_i
    (losses W copies of ℓ_i) and the server's z: with `F = rule.force(...)[i]` and
    `A = rule.aux_drift(...)`,

    - `force_at="exchange"` (the elastic form): `x_i ← x_i + η F`, `z ← z + (η/W) A`, both
      from the values before the exchange; with `elastic(ρ)` this is asynchronous EASGD;
    - `force_at="step"`: `z ← z + (η/W) A` at the exchange, and every local step adds the
      force read from the stale view, `u_i = g_i − F_i(p_i, ẑ_i)` (`p_i` the gradient point).

    Then ẑ_i ← z. The 1/W makes W exchanges (one per worker) move z as one synchronous Euler
    step of size η does, for aux drifts that are sums or means over agents of per-agent terms.

    What is exact and what is not: the form is exact for rules whose force on agent i reads
    only (x_i, z, ℓ_i) and whose aux drift is a sum or mean over agents of per-agent terms plus
    a term in z alone: `Uncoupled`, `Quorum` (both pulls, any η_z), `elastic`. A rule whose
    force reads the other agents directly (`MeanField`, `broadcast.LossWeightedGains`,
    `broadcast.Leader`, a ring) has no channel here, since a worker only talks to z: on W
    copies of x_i its force is that of a population in consensus (0 for `MeanField`). A rule
    whose aux drift weighs the agents against each other (`broadcast.SuccessWeightedQuorum`,
    `r = N softmax(−βℓ)`) sees equal weights (r ≡ 1) and becomes plain quorum. Those need the
    server to hold stale copies of every worker, not just z.

    Args:
      rule: a coupling rule; its `init` gives z from the workers' initial parameters.
      learning_rate: η > 0 per local step; also the coupling step per exchange.
      period: τ >= 1, local steps between exchanges.
      momentum: δ in [0, 1) (Nesterov on `u_i`) or None.
      force_at: "exchange" or "step" (above).
      aux_gradient_fn: ∇f at z, for rules with `needs_aux_gradient`.
    """
    if not isinstance(rule, AbstractCoupling):
        raise TypeError(f"rule must be an AbstractCoupling, got {type(rule)}")
    eta = _check_positive("learning_rate (η)", learning_rate)
    force_at = _check_force_at(force_at)
    if rule.needs_aux_gradient and aux_gradient_fn is None:
        raise ValueError(f"{type(rule).__name__} needs aux_gradient_fn (∇f at the auxiliary state)")

    def population(x, loss, num_workers):
        losses = jnp.broadcast_to(loss, (num_workers,)) if rule.needs_losses else None
        return _copies(x, num_workers), losses

    def force(x, aux, loss, worker, num_workers):
        xs, losses = population(x, loss, num_workers)
        return jax.tree.map(lambda f: f[worker], rule.force(xs, aux, losses))

    def aux_step(x, aux, loss, num_workers):
        xs, losses = population(x, loss, num_workers)
        drift = rule.aux_drift(xs, aux, losses, aux_gradient_fn)
        return jax.tree.map(lambda a, d: a + (eta / num_workers) * d, aux, drift)

    if force_at == "exchange":

        def exchange(x, aux, loss, worker, num_workers):
            f = force(x, aux, loss, worker, num_workers)
            new_aux = aux_step(x, aux, loss, num_workers)
            return jax.tree.map(lambda xi, fi: xi + eta * fi, x, f), new_aux

        local_force = None
    else:

        def exchange(x, aux, loss, worker, num_workers):
            del worker
            return x, aux_step(x, aux, loss, num_workers)

        local_force = force

    return AsyncCoupling(
        init=rule.init,
        exchange=exchange,
        local_force=local_force,
        learning_rate=eta,
        momentum=_check_momentum(momentum),
        period=_check_period(period),
    )


def async_quorum_sgd(
    learning_rate: float,
    gain: float,
    quorum_gain: float,
    *,
    period: int = 1,
    quorum_pull: str = "sum",
    momentum: float | None = None,
    force_at: str = "step",
    center_gradient_scale: float = 0.0,
    aux_gradient_fn: GradientField | None = None,
) -> AsyncCoupling:
    """Quorum SGD with a stale z: `async_coupled(Quorum(k, k_z, η_z, quorum_pull), …)`.

    With the default `force_at="step"` every local step of worker i pulls toward z as read at
    its last exchange, `x_i ← x_i − η(g_i + k (x_i − ẑ_i))`, and each exchange moves z by
    `η k_z (x_i − z)` (`quorum_pull="sum"`) or `(η k_z / W)(x_i − z)` ("mean"), minus
    `(η/W) η_z ∇f(z)` when η_z > 0, then ẑ_i ← z. `force_at="exchange"` is the elastic form
    instead: `x_i ← x_i − η k (x_i − z)` at the exchange only (k = k_z = ρ: asynchronous EASGD).

    The coupling step is η per exchange, not τη: with period τ, z relaxes toward the workers τ
    times more slowly per local step than synchronous quorum SGD; pass `τ · quorum_gain` for
    the same rate per local step.
    """
    rule = Quorum(gain, quorum_gain, center_gradient_scale, quorum_pull=quorum_pull)
    return async_coupled(
        rule,
        learning_rate,
        period=period,
        momentum=momentum,
        force_at=force_at,
        aux_gradient_fn=aux_gradient_fn,
    )


# ----------------------------------------------------------------------------- runner


def _keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    key_grad, key_time = jr.split(key)
    return key_grad, key_time


def _step_time(times: ComputeTime, key_time, worker, local_step) -> jax.Array:
    """Δ(i, t): the compute time of worker i's local step t."""
    k = jr.fold_in(jr.fold_in(key_time, worker), local_step)
    return times.sample(k, jnp.reshape(worker, (1,)))[0]


def _check_workers(params: PyTree, times: ComputeTime) -> int:
    if not isinstance(times, ComputeTime):
        raise TypeError(f"times must be a ComputeTime, got {type(times)}")
    num_workers = times.num_workers
    if num_workers < 1:
        raise ValueError(f"the number of workers W must be >= 1, got W = {num_workers}")
    for leaf in jax.tree.leaves(params):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != num_workers:
            raise ValueError(
                f"every leaf of params must have the W = {num_workers} workers of `times` "
                f"on its leading axis, got a leaf of shape {jnp.shape(leaf)}"
            )
    return num_workers


def async_coupled_init(
    params: PyTree, rule: AsyncCoupling, times: ComputeTime, key: jax.Array
) -> AsyncCoupledState:
    """The state before the first event: workers at `params` (leaves `(W, ...)`), z =
    `rule.init(params)`, every view ẑ_i = z, zero velocities, and each worker's first finish
    time Δ(i, 0) (clock 0)."""
    num_workers = _check_workers(params, times)
    params = jax.tree.map(jnp.asarray, params)
    aux = rule.init(params)
    _, key_time = _keys(key)
    workers = jnp.arange(num_workers)
    finish = jax.vmap(lambda w: _step_time(times, key_time, w, 0))(workers)
    velocity = None if rule.momentum is None else jax.tree.map(jnp.zeros_like, params)
    return AsyncCoupledState(
        params=params,
        velocity=velocity,
        aux=aux,
        aux_view=_copies(aux, num_workers),
        local_step=jnp.zeros(num_workers, jnp.int32),
        finish_time=finish,
        clock=jnp.zeros((), finish.dtype),
    )


def _row(tree: PyTree, i) -> PyTree:
    return jax.tree.map(lambda a: a[i], tree)


def _set_row(tree: PyTree, i, row: PyTree) -> PyTree:
    return jax.tree.map(lambda a, r: a.at[i].set(r), tree, row)


def async_coupled_step(
    state: AsyncCoupledState,
    key: jax.Array,
    *,
    grad_fn: GradFn,
    rule: AsyncCoupling,
    times: ComputeTime,
) -> tuple[AsyncCoupledState, AsyncCoupledTrace]:
    """One event: the earliest worker finishes a local step and exchanges if it is due.

    `key` is the run's key (not per event): the keys of worker i's local step t derive from it
    and (i, t) alone (module docstring).
    """
    num_workers = times.num_workers
    eta, delta = rule.learning_rate, rule.momentum
    key_grad, key_time = _keys(key)
    # argmin returns the first minimum: ties go to the smallest index, as in `pool_step`.
    worker = jnp.argmin(state.finish_time)
    clock = state.finish_time[worker]
    t = state.local_step[worker]
    x = _row(state.params, worker)
    view = _row(state.aux_view, worker)
    if delta is None:
        v = None
        point = x
    else:
        v = _row(state.velocity, worker)
        point = jax.tree.map(lambda xi, vi: xi + delta * vi, x, v)
    loss, grad = grad_fn(point, jr.fold_in(jr.fold_in(key_grad, worker), t))
    if rule.local_force is not None:
        force = rule.local_force(point, view, loss, worker, num_workers)
        grad = jax.tree.map(lambda g, f: g - f, grad, force)
    if v is None:
        x = jax.tree.map(lambda xi, g: xi - eta * g, x, grad)
    else:
        v = jax.tree.map(lambda vi, g: delta * vi - eta * g, v, grad)
        x = jax.tree.map(lambda xi, vi: xi + vi, x, v)
    t = t + 1
    exchanged = (t % rule.period) == 0

    def do_exchange(operands):
        x, aux, _ = operands
        x, aux = rule.exchange(x, aux, loss, worker, num_workers)
        return x, aux, aux  # the worker reads the server's reply: ẑ_i ← z

    # A cond, not a select: the exchange (O(W × params) in the general form) is evaluated
    # only at exchanges (under vmap both branches run, as a select would).
    x, aux, view = jax.lax.cond(exchanged, do_exchange, lambda ops: ops, (x, state.aux, view))
    finish = state.finish_time.at[worker].set(clock + _step_time(times, key_time, worker, t))
    new_state = AsyncCoupledState(
        params=_set_row(state.params, worker, x),
        velocity=None if v is None else _set_row(state.velocity, worker, v),
        aux=aux,
        aux_view=_set_row(state.aux_view, worker, view),
        local_step=state.local_step.at[worker].set(t),
        finish_time=finish,
        clock=clock,
    )
    return new_state, AsyncCoupledTrace(worker, exchanged, clock, loss)


def run_async_coupled(
    grad_fn: GradFn,
    rule: AsyncCoupling,
    params: PyTree,
    key: jax.Array,
    *,
    times: ComputeTime,
    num_steps: int,
    metrics_fn: Callable[[AsyncCoupledState], PyTree] | None = async_coupled_record,
    record_every: int = 1,
    state: AsyncCoupledState | None = None,
    start_step: int = 0,
    diverged_step: int = -1,
    divergence_threshold: float | None = None,
) -> RunResult:
    """Run `num_steps` events of an asynchronous coupled optimizer on the virtual clock.

    A recorded scan (`algorithms.loop.recorded_scan`) over events k (one event = one worker
    finishing one local step, and exchanging if due): records, divergence and continuation
    follow its conventions. Traceable (wrap in `jit`, `vmap` over keys).

    Args:
      grad_fn: `grad_fn(params, key) -> (loss, grad)` for one worker's parameters (no worker
        axis), at its gradient point.
      rule: an `AsyncCoupling` (`async_easgd`, `async_eamsgd`, `async_quorum_sgd`,
        `async_coupled`).
      params: the workers' initial x_i, every leaf `(W, ...)` with W = `times.num_workers`
        (not used when `state` is given). z starts at `rule.init(params)` (the mean).
      key: PRNG key; gradients and compute times derive from it and (worker, local step).
      times: the compute-time model of the W workers (`compute_time`).
      num_steps: K events (static), a multiple of `record_every`.
      metrics_fn: `metrics_fn(state) -> pytree`, recorded at `start_step` and after every
        `record_every` events; default `async_coupled_record` (z, x, virtual time); None
        records nothing.
      record_every: events between records.
      state, start_step, diverged_step: continue an earlier run from its `result.state`, its
        next event index and its `diverged_step` (K then K' events = K + K' bitwise).
      divergence_threshold: if given, an event after which some |x_i| or |z| >= threshold or
        whose loss is not finite is recorded as `diverged_step` and its block undone; None
        never checks.

    Returns:
      A `RunResult`: `state` the final `AsyncCoupledState` (`result.params` = the workers' x,
      `result.state.aux` = z), `metrics` the records, `trace` the `AsyncCoupledTrace` of
      every event (leaves `(K,)`).
    """
    if not isinstance(rule, AsyncCoupling):
        raise TypeError(f"rule must be an AsyncCoupling, got {type(rule)}")
    _check_period(rule.period)
    check_steps(num_steps, record_every, start_step)
    if state is None:
        state = async_coupled_init(params, rule, times, key)
    else:
        _check_workers(state.params, times)
    healthy = None
    if divergence_threshold is not None:
        check = finite_below(float(divergence_threshold))

        def healthy(state: AsyncCoupledState, out: AsyncCoupledTrace) -> Any:
            return check((state.params, state.aux), out.loss)

    def step(state, k):
        del k  # the event index does not enter: keys follow (worker, local step)
        return async_coupled_step(state, key, grad_fn=grad_fn, rule=rule, times=times)

    return recorded_scan(
        step, state, num_steps=num_steps, record_every=record_every,
        metrics_fn=state_hook(metrics_fn), start_step=start_step, diverged_step=diverged_step,
        healthy=healthy,
    )  # fmt: skip
