"""Server-side rules for asynchronous SGD as Optax transforms that see each arrival.

A server update receives the `c` gradients that arrived since the last update (`c = ⌊W/n⌋`
for n-softsync, `c = 1` for Downpour/ASGD, `c = W` for hardsync). Every rule here is an
`optax.GradientTransformationExtraArgs` whose

    update(updates, state, params, *, staleness, snapshot, worker) -> (step, state)

sees:

- `updates`: the arrivals' gradients `g_l = ∇L(s_l; ξ_l)`, pytree leaves of shape `(c, ...)`;
- `params`: the current central variable θ (the server's parameters, no leading axis);
- `staleness`: `τ_l` (int, shape `(c,)`), server updates since arrival `l`'s worker pulled;
- `snapshot`: `s_l`, the parameters that worker pulled (leaves `(c, ...)`);
- `worker`: the arriving workers' indices (int, shape `(c,)`), for per-worker state (GEM's m);

and returns the aggregated *step* (no leading axis) that is added to θ
(`optax.apply_updates`), i.e. the learning rate is inside the rule:

    θ ← θ + (1/c) Σ_l scale_l(τ_l, θ, s_l, g_l).

Server momentum composes after any rule: `optax.chain(rule, optax.trace(0.9))`
(`with_server_momentum`), which is Zhang et al.'s momentum on the aggregated step.

References: Zhang, Gupta, Lian, Liu, "Staleness-aware Async-SGD for Distributed Deep Learning";
Hermans & Louppe, "Gradient Energy Matching for Distributed Asynchronous Gradient Descent";
Zheng et al., "Asynchronous Stochastic Gradient Descent with Delay Compensation";
Regatti et al., "Distributed SGD Generalizes Well Under Asynchrony".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

__all__ = [
    "scale_by_arrival_rate",
    "constant_rate",
    "staleness_aware_rate",
    "adaptive_staleness_rate",
    "delay_scaled_learning_rate",
    "delay_scaled_rate",
    "GEMState",
    "gem",
    "DCASGDState",
    "dc_asgd",
    "with_server_momentum",
]


def _check_positive(value, name: str) -> float:
    if isinstance(value, (int, float, np.floating, np.integer)) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _per_arrival(a: jax.Array, leaf: jax.Array) -> jax.Array:
    """Reshape a `(c,)` vector to broadcast against a `(c, ...)` leaf (no rank promotion)."""
    return jnp.reshape(a, a.shape + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)


def _mean_arrivals(tree):
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)


class ArrivalRateState(NamedTuple):
    """Empty state: a staleness-dependent rate keeps nothing between updates."""


def scale_by_arrival_rate(
    rate_fn: Callable[[jax.Array], jax.Array],
) -> optax.GradientTransformationExtraArgs:
    """The n-softsync step `−(1/c) Σ_l α(τ_l) g_l` for a rate schedule α(τ).

    Args:
      rate_fn: maps staleness τ (int, `(c,)`) to learning rates α(τ) (`(c,)`).
    """

    def init_fn(params):
        del params
        return ArrivalRateState()

    def update_fn(updates, state, params=None, *, staleness, **extra_args):
        del params, extra_args
        alpha = rate_fn(jnp.asarray(staleness))
        step = jax.tree.map(lambda g: -jnp.mean(_per_arrival(alpha, g) * g, axis=0), updates)
        return step, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def constant_rate(learning_rate: ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Downpour / ASGD / hardsync: α(τ) = α0 whatever the staleness.

    Args:
      learning_rate: α0 > 0.
    """
    _check_positive(learning_rate, "learning_rate")
    return scale_by_arrival_rate(lambda tau: jnp.full(tau.shape, learning_rate))


def staleness_aware_rate(learning_rate: ArrayLike) -> optax.GradientTransformationExtraArgs:
    """Zhang et al.'s staleness-aware rate: α(τ) = α0/τ for τ > 0 and α0 for τ = 0.

    Args:
      learning_rate: α0 > 0.
    """
    _check_positive(learning_rate, "learning_rate")
    return scale_by_arrival_rate(
        lambda tau: learning_rate / jnp.maximum(tau, 1).astype(jnp.result_type(float))
    )


def adaptive_staleness_rate(learning_rate: ArrayLike) -> optax.GradientTransformationExtraArgs:
    """The "adaptive staleness" baseline of Hermans & Louppe: α(τ) = α0/(τ + 1).

    Args:
      learning_rate: α0 > 0.
    """
    _check_positive(learning_rate, "learning_rate")
    return scale_by_arrival_rate(
        lambda tau: learning_rate / (tau + 1).astype(jnp.result_type(float))
    )


def delay_scaled_learning_rate(learning_rate: float, tau_max: int) -> float:
    """Regatti et al.'s shrinking rate η = η0/(τ_max + 1) (our normalization: η0 at τ_max = 0).

    Args:
      learning_rate: η0 > 0.
      tau_max: the delay bound, an integer >= 0.
    """
    _check_positive(learning_rate, "learning_rate")
    if not isinstance(tau_max, (int, np.integer)) or tau_max < 0:
        raise ValueError(f"tau_max must be an integer >= 0, got {tau_max!r}")
    return learning_rate / (tau_max + 1)


def delay_scaled_rate(learning_rate: float, tau_max: int) -> optax.GradientTransformationExtraArgs:
    """A constant rate that shrinks with the delay bound: α = α0/(τ_max + 1) (Regatti et al.)."""
    return constant_rate(delay_scaled_learning_rate(learning_rate, tau_max))


class GEMState(NamedTuple):
    """State holding each worker's proxy velocity m (leaves `(W, ...)`) and the median of the
    last applied π (a diagnostic)."""

    velocity: object
    pi_median: jax.Array


def gem(
    learning_rate: ArrayLike,
    num_workers: int,
    *,
    momentum: float = 0.9,
    kappa: float = 1.0,
    eps: float = 1e-16,
    clamp: tuple[float, float] | None = (0.0, 5.0),
    track_median: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Gradient Energy Matching (Hermans & Louppe), element-wise, per arrival l of worker w:

        Δθ_l = −η g_l,   m_w ← μ m_w + Δθ_l,
        π_l  = (κ|m_w| − |θ − s_l|) / (|Δθ_l| + ε)      (optionally clamped to [lo, hi]),
        step = (1/c) Σ_l π_l ⊙ Δθ_l.

    θ is the current central variable (`params`), s_l the arrival's snapshot. The worker-local
    m of the paper lives here, indexed by `worker`; memory O(W × params).

    Args:
      learning_rate: η > 0.
      num_workers: W >= 1 (rows of the velocity state).
      momentum: μ of the proxy (sequential momentum SGD), in [0, 1).
      kappa: κ > 0, the energy-matching factor (1 in the paper; > 3 diverges there).
      eps: ε > 0 in the denominator.
      clamp: `(lo, hi)` to clip π (the authors' code uses (0, 5)), or None for no clamp.
      track_median: record the median of the applied π over all elements in the state.
    """
    _check_positive(learning_rate, "learning_rate")
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    _check_positive(kappa, "kappa")
    _check_positive(eps, "eps")
    if clamp is not None and not clamp[0] <= clamp[1]:
        raise ValueError(f"clamp must be (lo, hi) with lo <= hi, got {clamp!r}")

    def init_fn(params):
        velocity = jax.tree.map(lambda p: jnp.zeros((num_workers,) + jnp.shape(p), p.dtype), params)
        return GEMState(velocity, jnp.zeros((), jnp.result_type(float)))

    def update_fn(updates, state, params=None, *, snapshot, worker, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("gem needs the central variable θ as `params`")
        worker = jnp.asarray(worker)

        def one_leaf(g, m_all, theta, s):
            delta = -learning_rate * g  # (c, ...)
            m = momentum * m_all[worker] + delta
            pi = (kappa * jnp.abs(m) - jnp.abs(theta[None] - s)) / (jnp.abs(delta) + eps)
            if clamp is not None:
                pi = jnp.clip(pi, clamp[0], clamp[1])
            return jnp.mean(pi * delta, axis=0), m_all.at[worker].set(m), pi

        out = jax.tree.map(one_leaf, updates, state.velocity, params, snapshot)
        treedef = jax.tree.structure(updates)
        leaves = treedef.flatten_up_to(out)
        step = treedef.unflatten([o[0] for o in leaves])
        velocity = treedef.unflatten([o[1] for o in leaves])
        if track_median:
            pi_median = jnp.median(jnp.concatenate([jnp.ravel(o[2]) for o in leaves]))
        else:
            pi_median = state.pi_median
        return step, GEMState(velocity, pi_median.astype(state.pi_median.dtype))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class DCASGDState(NamedTuple):
    """State holding the running mean square of gradients (adaptive λ only; else zeros)."""

    mean_square: object


def dc_asgd(
    learning_rate: ArrayLike,
    lam: float = 0.04,
    *,
    adaptive: bool = False,
    decay: float = 0.95,
    eps: float = 1e-7,
) -> optax.GradientTransformationExtraArgs:
    """Delay-compensated ASGD (Zheng et al.): per arrival l, with θ central and s_l its snapshot,

        g̃_l = g_l + λ g_l ⊙ g_l ⊙ (θ − s_l),      step = −η (1/c) Σ_l g̃_l.

    Constant λ, or adaptive (DC-ASGD-a) λ_t = λ0 / sqrt(M_t + ε) element-wise with
    M_t = decay · M_{t−1} + (1 − decay) · mean_l g_l², updated before use.

    Args:
      learning_rate: η > 0.
      lam: λ (or λ0 when adaptive) >= 0; 0.04 in the paper.
      adaptive: use the adaptive λ_t.
      decay: the mean-square decay in [0, 1).
      eps: ε > 0.
    """
    _check_positive(learning_rate, "learning_rate")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam!r}")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    _check_positive(eps, "eps")

    def init_fn(params):
        return DCASGDState(jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None, *, snapshot, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("dc_asgd needs the central variable θ as `params`")
        if adaptive:
            mean_square = jax.tree.map(
                lambda ms, g: decay * ms + (1.0 - decay) * jnp.mean(g * g, axis=0),
                state.mean_square,
                updates,
            )
            lam_t = jax.tree.map(lambda ms: lam / jnp.sqrt(ms + eps), mean_square)
        else:
            mean_square = state.mean_square
            lam_t = jax.tree.map(lambda p: jnp.full(jnp.shape(p), lam, p.dtype), params)
        step = jax.tree.map(
            lambda g, theta, s, lt: (
                -learning_rate * jnp.mean(g + lt[None] * g * g * (theta[None] - s), axis=0)
            ),
            updates,
            params,
            snapshot,
            lam_t,
        )
        return step, DCASGDState(mean_square)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_server_momentum(
    rule: optax.GradientTransformation, momentum: float = 0.9, nesterov: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Heavy-ball momentum at the server on the aggregated step: v ← μ v + step; θ ← θ + v.

    Args:
      rule: any server rule above.
      momentum: μ in [0, 1); 0 returns the rule unchanged (in a chain).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return optax.chain(rule, optax.trace(decay=momentum, nesterov=nesterov))
