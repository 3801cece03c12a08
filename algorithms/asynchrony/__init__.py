"""Simulated asynchrony, deterministic inside `jit` (a virtual clock).

- `delays`: delay models p(τ) and the delayed-iterate recursion with a ring buffer
  (O(τ_max × params));
- `pool`: W workers on a virtual clock (or a given arrival order) with n-softsync
  aggregation (O(W × params));
- `server`: server-side rules as Optax transforms that see each arrival's staleness and
  snapshot (constant, staleness-aware α0/τ, 1/(τ + 1), GEM, DC-ASGD, Regatti's shrinking rate);
- `decentralized`: DASGD and gossip over topologies with delayed views;
- `coupled`: asynchronous coupled SGD on the virtual clock: asynchronous EASGD and EAMSGD,
  quorum SGD with a stale quorum variable, and any rule with a server-held auxiliary state
  (O(W × params)).

Every runner (`delayed_sgd`, `run_pool`, `run_dasgd`, `run_gossip`, `run_async_coupled`) is a
recorded scan
(`algorithms.loop.recorded_scan`) and returns an `algorithms.RunResult`: the final `state`,
`metrics` from a `metrics_fn(state)` hook, the per-step `trace`, `diverged_step` (−1 when
healthy) and continuation from a given `state`, `start_step` and `diverged_step`.
"""

from algorithms.asynchrony.coupled import (
    FORCE_AT,
    AsyncCoupledRecord,
    AsyncCoupledState,
    AsyncCoupledTrace,
    AsyncCoupling,
    async_coupled,
    async_coupled_init,
    async_coupled_record,
    async_coupled_step,
    async_eamsgd,
    async_easgd,
    async_quorum_sgd,
    run_async_coupled,
)
from algorithms.asynchrony.decentralized import (
    TOPOLOGIES,
    DASGDState,
    DASGDTrace,
    GossipState,
    GossipTrace,
    dasgd_init,
    dasgd_step,
    gossip_init,
    gossip_step,
    metropolis_weights,
    run_dasgd,
    run_gossip,
    topology,
)
from algorithms.asynchrony.delays import (
    DelayedState,
    DelayedTrace,
    DelayModel,
    RingBuffer,
    categorical_delay,
    constant_delay,
    delayed_sgd,
    divergence_step,
    geometric_delay,
    ring_buffer_init,
    ring_buffer_push,
    ring_buffer_read,
    uniform_delay,
)
from algorithms.asynchrony.pool import (
    Arrivals,
    ComputeTime,
    PoolState,
    compute_time,
    pool_init,
    pool_step,
    run_pool,
    softsync_arrivals,
)
from algorithms.asynchrony.server import (
    ArrivalRateState,
    DCASGDState,
    GEMState,
    adaptive_staleness_rate,
    constant_rate,
    dc_asgd,
    delay_scaled_learning_rate,
    gem,
    scale_by_arrival_rate,
    select_rule,
    staleness_aware_rate,
    with_server_momentum,
)

__all__ = [
    "ArrivalRateState",
    "Arrivals",
    "AsyncCoupledRecord",
    "AsyncCoupledState",
    "AsyncCoupledTrace",
    "AsyncCoupling",
    "ComputeTime",
    "DASGDState",
    "DASGDTrace",
    "DCASGDState",
    "DelayModel",
    "DelayedState",
    "DelayedTrace",
    "FORCE_AT",
    "GEMState",
    "GossipState",
    "GossipTrace",
    "PoolState",
    "RingBuffer",
    "TOPOLOGIES",
    "adaptive_staleness_rate",
    "async_coupled",
    "async_coupled_init",
    "async_coupled_record",
    "async_coupled_step",
    "async_eamsgd",
    "async_easgd",
    "async_quorum_sgd",
    "categorical_delay",
    "compute_time",
    "constant_delay",
    "constant_rate",
    "dasgd_init",
    "dasgd_step",
    "dc_asgd",
    "delay_scaled_learning_rate",
    "delayed_sgd",
    "divergence_step",
    "gem",
    "geometric_delay",
    "gossip_init",
    "gossip_step",
    "metropolis_weights",
    "pool_init",
    "pool_step",
    "ring_buffer_init",
    "ring_buffer_push",
    "ring_buffer_read",
    "run_async_coupled",
    "run_dasgd",
    "run_gossip",
    "run_pool",
    "scale_by_arrival_rate",
    "select_rule",
    "softsync_arrivals",
    "staleness_aware_rate",
    "topology",
    "uniform_delay",
    "with_server_momentum",
]
