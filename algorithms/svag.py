"""SVAG: stochastic variance amplified gradients (Li, Malladi & Arora, NeurIPS 2021).

*On the validity of modeling SGD with SDEs* simulates the SDE limit of SGD with the data
and the network as they are. With an amplification factor l >= 1, each step draws two
independent minibatch gradients g1, g2 at the same parameters and combines them as

    g = c1 g1 + c2 g2,      c1 = (1 + √(2l − 1))/2,      c2 = (1 − √(2l − 1))/2,

so `c1 + c2 = 1` (the same mean ∇f) and `c1² + c2² = l` (covariance l Σ), and takes a step
of `lr/l`. Step k sits at time `t = k·lr/l` (in the units where SGD's step k sits at
`t = k·lr`): per unit time the drift is unchanged and the noise variance is
`(lr/l)² l Σ · (l/lr) = lr Σ`, so as l → ∞ the chain converges weakly to

    dX = −∇f(X) dt + √lr Σ^{1/2}(X) dW,

while `l = 1` is plain SGD. A result that holds for every l is therefore a property of the
SDE; one that changes with l is not (their test of when the SDE models SGD).

Design. SVAG touches two things only, the gradients and the step, so it is two pieces:

- `svag(oracle, l)`, an oracle transformer (`dynamics.types.Oracle`), not an Optax
  transform: the second draw needs a fresh minibatch at the *same* parameters, which only
  the oracle can give. The combination is per agent, elementwise on every leaf, so every
  coupling rule and optimizer works unchanged on top of it.
- `svag_learning_rate(lr, l)` gives `lr/l` (a constant, or a schedule stretched in steps),
  and `run_svag(make_optimizer, …, amplification=l)` runs `make_optimizer(lr/l)` on
  `svag(oracle, l)` for l times as many steps, recording at the same times as the l = 1
  run: any named optimizer built from a learning rate (`quorum_sgd`, `easgd`,
  `coupled_sgd`, …) is a `make_optimizer`. For a coupling rule the auxiliary state
  advances by `(lr/l)·A` per step, i.e. at the same rate per unit time, so the rule's gains
  keep their meaning.

Momentum. SVAG as published is for SGD. A momentum optimizer (`coupled_sgd(…, momentum=β)`,
`momentum_quorum_sgd`) given `lr/l` by `run_svag` keeps its β, and as l → ∞ it converges to
the *first-order* SDE of SGD with rate `lr/(1 − β)`: `dX = (−∇f + F)/(1 − β) dt +
√lr Σ^{1/2}/(1 − β) dW` in time `t = k·lr/l` (the overdamped limit; the momentum is
forgotten). To keep the heavy-ball SDE of the library's mapping instead (`coupled_sgd`:
h = √lr, γ = (1 − β)/√lr, σσᵀ = √lr Σ), use `svag_momentum`: rate `lr/l²` and
`β' = 1 − (1 − β)/l`, time `t = k·√lr/l`; the auxiliary state, which advances by the rate
per step, is then l times slower, so a rule's auxiliary gains (e.g. `quorum_gain`) must be
multiplied by l as well. `run_svag` takes the first route only.

Random numbers. Draw 1 uses the wrapped oracle with the runner's key, exactly as without
SVAG; draw 2 uses `fold_in(key, 0xFFFFFFFF)`, a key no int32 step index can equal, so the two
draws are independent for every oracle that derives step k's randomness from
`fold_in(key, k)` (all of this library's). `svag(oracle, 1)` returns `oracle` itself, so l = 1
reproduces the wrapped oracle's stream and the optimizer's path bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np
import optax

from dynamics.types import Oracle, PyTree

from .loop import RunResult
from .runner import run_agents

__all__ = [
    "run_svag",
    "svag",
    "svag_coefficients",
    "svag_learning_rate",
    "svag_momentum",
]

# fold_in data of the second draw's key: above every int32 step index k.
SECOND_DRAW = 0xFFFFFFFF


def _check_amplification(amplification) -> float:
    if isinstance(amplification, bool):
        raise ValueError(f"amplification (l) must be a number >= 1, got {amplification!r}")
    try:
        value = float(amplification)
    except TypeError as e:  # a tracer or an array: l fixes the coefficients, so be static
        raise TypeError(
            f"amplification (l) must be a concrete number >= 1, got {amplification!r}"
        ) from e
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"amplification (l) must be a finite number >= 1, got {amplification!r}")
    return value


def svag_coefficients(amplification: float) -> tuple[float, float]:
    """`(c1, c2) = ((1 + √(2l − 1))/2, (1 − √(2l − 1))/2)`: `c1 + c2 = 1`, `c1² + c2² = l`.

    `l = 1` gives exactly `(1.0, 0.0)`.
    """
    root = math.sqrt(2 * _check_amplification(amplification) - 1)
    return (1 + root) / 2, (1 - root) / 2


def svag(oracle: Oracle, amplification: float) -> Oracle:
    """The SVAG oracle: gradients `c1 g1 + c2 g2` of two independent draws of `oracle`.

    At step k (an integer step index), `losses, g1 = oracle(params, key, k)` and
    `_, g2 = oracle(params, fold_in(key, 0xFFFFFFFF), k)`; returns `(losses, c1 g1 + c2 g2)`
    with `svag_coefficients(l)`, leaf by leaf, so agent i's gradient combines agent i's own
    two draws (every leaf keeps the agent axis N first). If g1, g2 are independent with mean
    ∇f and covariance Σ, the result has mean ∇f and covariance l Σ. The losses are those of
    draw 1, never amplified (what loss-reading rules and the records see). An oracle whose
    noise does not come from its key (`landscape_oracle` with a `noise_table` or a
    `brownian` path) gives g1 = g2, hence no amplification: give it a key-driven oracle.

    Pair it with a learning rate `lr/l` (`svag_learning_rate`) and `l` times the steps, or use
    `run_svag`. Each step costs two oracle calls for l > 1.

    Args:
        oracle: `(params, key, step) -> (losses (N,), grads)`.
        amplification: l, the variance amplification, a concrete number >= 1 (not traced).

    Returns:
        An oracle of the same signature; for `l = 1`, `oracle` itself.
    """
    c1, c2 = svag_coefficients(amplification)
    if c2 == 0.0:
        return oracle

    def amplified(params, key, step):
        losses, g1 = oracle(params, key, step)
        _, g2 = oracle(params, jax.random.fold_in(key, SECOND_DRAW), step)
        return losses, jax.tree.map(lambda a, b: c1 * a + c2 * b, g1, g2)

    return amplified


def svag_learning_rate(
    learning_rate: optax.ScalarOrSchedule, amplification: float
) -> optax.ScalarOrSchedule:
    """The SVAG learning rate `lr/l` per step (SGD; see the module docstring for momentum).

    A constant lr gives the constant `lr/l`. A schedule `lr(k)` of SGD's step k gives
    `k' ↦ lr(k'/l)/l` of the SVAG step k', the same rate at the same time `t = k'·lr/l`
    (the schedule is evaluated at a fractional step; optax's schedules accept that). For
    `l = 1` the schedule itself is returned.
    """
    ell = _check_amplification(amplification)
    if callable(learning_rate):
        if ell == 1:
            return learning_rate
        schedule = learning_rate

        def stretched(count):
            return schedule(count / ell) / ell

        return stretched
    lr = float(learning_rate)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    return lr / ell


def svag_momentum(
    learning_rate: float, momentum: float, amplification: float
) -> tuple[float, float]:
    """`(lr/l², 1 − (1 − β)/l)`: heavy-ball SGD's rate and momentum under SVAG-l.

    `optax.sgd(lr, momentum=β)` with gradient covariance Σ is the semi-implicit Euler step
    `h = √lr` of `dx = v dt, dv = (−γ v − ∇f) dt + σ dW` with `γ = (1 − β)/√lr` and
    `σσᵀ = √lr Σ` (`algorithms.coupled_sgd`). With covariance l Σ (`svag`), the returned rate
    and momentum keep γ and σ, with step `h/l` (time `t = k·√lr/l`), so the chain converges
    weakly to that SDE as l → ∞. A rule's auxiliary state advances by the rate per step, so
    its gains (e.g. `quorum_gain`) must be multiplied by l to keep its continuous rate.
    """
    ell = _check_amplification(amplification)
    lr, beta = float(learning_rate), float(momentum)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if not 0 <= beta < 1:
        raise ValueError(f"momentum (β) must be in [0, 1), got {momentum!r}")
    if ell == 1:  # exactly the inputs (1 − (1 − β) need not round to β)
        return lr, beta
    return lr / ell**2, 1 - (1 - beta) / ell


def run_svag(
    make_optimizer: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation],
    params: PyTree,
    oracle: Oracle,
    *,
    amplification: float,
    learning_rate: optax.ScalarOrSchedule,
    num_steps: int,
    key: jax.Array,
    record_every: int = 1,
    metrics_fn: Callable[..., PyTree] | None = None,
    divergence_threshold: float = 1e12,
    mesh: jax.sharding.Mesh | None = None,
) -> RunResult:
    """SVAG-l of the SGD run `run_agents(make_optimizer(lr), params, oracle, …)`.

    Runs `make_optimizer(svag_learning_rate(lr, l))` on `svag(oracle, l)` with `run_agents`
    for `l·num_steps` steps, recording every `l·record_every` steps, so record j sits at the
    same time `t = j·record_every·lr` (SGD's steps counted in units of lr) as record j of the
    l = 1 run, which this is exactly (bitwise). `result.steps` counts SVAG steps k' (time
    `k'·lr/l`).

    Args:
        make_optimizer: learning rate -> Optax transform, e.g.
            `lambda lr: quorum_sgd(lr, gain=1.0, quorum_gain=0.5)`; it receives `lr/l` (a
            constant or a stretched schedule). For momentum optimizers see `svag_momentum`.
        params: initial parameters, every leaf with the agent axis N first.
        oracle: `(params, key, step) -> (losses (N,), grads)`.
        amplification: l >= 1, the variance amplification; `l·record_every` must be an
            integer.
        learning_rate: lr of the SGD run being modelled, per SGD step.
        num_steps: SGD steps K of the run being modelled (the SVAG run takes `l·K`).
        key, metrics_fn, divergence_threshold, mesh: as in `run_agents`.
        record_every: SGD steps between records (the SVAG run records every `l·record_every`).

    Returns:
        The `RunResult` of the SVAG run, `num_steps // record_every + 1` records.
    """
    ell = _check_amplification(amplification)
    for name, value in (("num_steps", num_steps), ("record_every", record_every)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    every = ell * record_every
    if abs(every - round(every)) > 1e-9:
        raise ValueError(
            f"amplification·record_every (l·record_every) must be an integer, got "
            f"amplification={amplification!r} and record_every={record_every!r}"
        )
    if num_steps % record_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a multiple of record_every ({record_every})"
        )
    every = int(round(every))
    # Validate the rate before anything is traced or compiled.
    learning_rate = svag_learning_rate(learning_rate, ell)
    return run_agents(
        make_optimizer(learning_rate), params, svag(oracle, ell),
        num_steps=every * (num_steps // record_every), key=key, record_every=every,
        metrics_fn=metrics_fn, divergence_threshold=divergence_threshold, mesh=mesh,
    )  # fmt: skip
