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

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike
from jaxtyping import Array, Int

from dynamics.types import PyTree

__all__ = [
    "ArrivalRateState",
    "scale_by_arrival_rate",
    "constant_rate",
    "staleness_aware_rate",
    "adaptive_staleness_rate",
    "delay_scaled_learning_rate",
    "select_rule",
    "GEMState",
    "gem",
    "DCASGDState",
    "dc_asgd",
    "with_server_momentum",
]


def _check_positive(value, name: str):
    if isinstance(value, (int, float, np.floating, np.integer)) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array):
    """η at server update `count`: the schedule's value, or the scalar itself."""
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _per_arrival(a: jax.Array, leaf: jax.Array) -> jax.Array:
    """Reshape a `(c,)` vector to broadcast against a `(c, ...)` leaf (no rank promotion)."""
    return jnp.reshape(a, a.shape + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)


class ArrivalRateState(NamedTuple):
    """State holding the number of server updates so far (the argument of a schedule)."""

    count: Int[Array, ""]


def _scale_by_rate(
    rate_fn: Callable[[jax.Array, jax.Array], jax.Array],
) -> optax.GradientTransformationExtraArgs:
    """The step `−(1/c) Σ_l α_l g_l` with `α = rate_fn(τ (c,), count ())`."""

    def init_fn(params):
        del params
        return ArrivalRateState(jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, staleness, **extra_args):
        del params, extra_args
        alpha = rate_fn(jnp.asarray(staleness), state.count)
        step = jax.tree.map(lambda g: -jnp.mean(_per_arrival(alpha, g) * g, axis=0), updates)
        return step, ArrivalRateState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_arrival_rate(
    rate_fn: Callable[[jax.Array], jax.Array],
) -> optax.GradientTransformationExtraArgs:
    """The n-softsync step `−(1/c) Σ_l α(τ_l) g_l` for a rate schedule α(τ).

    Args:
      rate_fn: maps staleness τ (int, `(c,)`) to learning rates α(τ) (`(c,)`).
    """
    return _scale_by_rate(lambda tau, count: rate_fn(tau))


def constant_rate(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    """Downpour / ASGD / hardsync: α = η_k whatever the staleness.

    Args:
      learning_rate: α0 > 0, or an Optax schedule of the server update k.
    """
    _check_positive(learning_rate, "learning_rate")
    return _scale_by_rate(lambda tau, k: jnp.full(tau.shape, _rate_at(learning_rate, k)))


def staleness_aware_rate(
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
    """Zhang et al.'s staleness-aware rate: α(τ) = α0 · (1/τ) for τ > 0 and α0 for τ = 0.

    Args:
      learning_rate: α0 > 0, or an Optax schedule of the server update k.
    """
    _check_positive(learning_rate, "learning_rate")
    return _scale_by_rate(
        lambda tau, k: (
            _rate_at(learning_rate, k) * (1.0 / jnp.maximum(tau, 1).astype(jnp.result_type(float)))
        )
    )


def adaptive_staleness_rate(
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
    """The "adaptive staleness" baseline of Hermans & Louppe: α(τ) = α0/(τ + 1).

    Args:
      learning_rate: α0 > 0, or an Optax schedule of the server update k.
    """
    _check_positive(learning_rate, "learning_rate")
    return _scale_by_rate(
        lambda tau, k: _rate_at(learning_rate, k) / (tau + 1).astype(jnp.result_type(float))
    )


def select_rule(
    index: ArrayLike, rules: Sequence[optax.GradientTransformationExtraArgs]
) -> optax.GradientTransformationExtraArgs:
    """The server rule `rules[index]`, with `index` an int that may be traced.

    Lets one compiled program (`vmap` over `index`) run several rules: every rule's update is
    evaluated and the chosen one's step and state are kept (the others' states stay as they
    were), so a rule's numbers are exactly those it gives on its own.

    Args:
      index: the rule to apply, 0 <= index < len(rules) (int or bool; may be traced).
      rules: the server rules, all taking the pool's extras.
    """
    rules = tuple(rules)
    if not rules:
        raise ValueError("rules must not be empty")
    if isinstance(index, (int, np.integer)) and not 0 <= index < len(rules):
        raise ValueError(f"index must be in [0, {len(rules)}), got {index!r}")

    def init_fn(params):
        return tuple(rule.init(params) for rule in rules)

    def update_fn(updates, state, params=None, **extra_args):
        which = jnp.asarray(index, jnp.int32)
        outs = [rule.update(updates, s, params, **extra_args) for rule, s in zip(rules, state)]
        step = jax.tree.map(lambda *xs: jnp.stack(xs)[which], *[out[0] for out in outs])
        new_state = tuple(
            jax.tree.map(lambda new, old, i=i: jnp.where(which == i, new, old), out[1], old)
            for i, (out, old) in enumerate(zip(outs, state))
        )
        return step, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def delay_scaled_learning_rate(
    learning_rate: optax.ScalarOrSchedule, tau_max: int
) -> optax.ScalarOrSchedule:
    """Regatti et al.'s shrinking rate η = η0/(τ_max + 1) (our normalization: η0 at τ_max = 0).

    Args:
      learning_rate: η0 > 0, or an Optax schedule (then the result is the schedule
        k ↦ η0(k)/(τ_max + 1)).
      tau_max: the delay bound, an integer >= 0.
    """
    _check_positive(learning_rate, "learning_rate")
    if not isinstance(tau_max, (int, np.integer)) or tau_max < 0:
        raise ValueError(f"tau_max must be an integer >= 0, got {tau_max!r}")
    if callable(learning_rate):
        return lambda count: learning_rate(count) / (tau_max + 1)
    return learning_rate / (tau_max + 1)


def _order_key(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Integers with the order of the floats `x` (not NaN): the bit pattern, with the magnitude
    bits of negative numbers flipped. Returns the keys and the flip mask (its own inverse)."""
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(x, itype)
    mask = jnp.array(np.iinfo(np.dtype(itype)).max, itype)
    return jnp.where(bits < 0, bits ^ mask, bits), mask


def _median(x: jax.Array) -> jax.Array:
    """`jnp.median` of all elements of a float array without sorting them.

    Bisection over the floats' order-preserving integer keys finds the order statistics (one
    counting pass per bit, O(bits × size) work), several times cheaper than XLA's sort on
    CPU; NaN anywhere gives NaN, as in `jnp.median`.
    """
    x = jnp.ravel(x)
    n = x.size
    key, mask = _order_key(x)
    rank = n // 2 + 1 if n % 2 else n // 2  # 1-based rank of the (lower) middle element

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # ⌊(lo + hi)/2⌋ without overflow
        enough = jnp.sum(key <= mid) >= rank
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lower, _ = jax.lax.fori_loop(0, 8 * x.dtype.itemsize, halve, (key.min(), key.max()))

    def value(k):
        return jax.lax.bitcast_convert_type(jnp.where(k < 0, k ^ mask, k), x.dtype)

    if n % 2:
        middle = value(lower)
    else:
        above = jnp.min(jnp.where(key > lower, key, key.max()))
        upper = jnp.where(jnp.sum(key <= lower) > rank, lower, above)
        middle = (value(lower) + value(upper)) / 2
    return jnp.where(jnp.any(jnp.isnan(x)), jnp.nan, middle).astype(x.dtype)


class GEMState(NamedTuple):
    """State holding each worker's proxy velocity m (leaves `(W, ...)`), the median of the
    last applied π (a diagnostic) and the number of server updates (for a schedule)."""

    velocity: PyTree
    pi_median: jax.Array
    count: Int[Array, ""]


def gem(
    learning_rate: optax.ScalarOrSchedule,
    num_workers: int,
    *,
    momentum: float = 0.9,
    kappa: float = 1.0,
    eps: float = 1e-16,
    clamp: tuple[float, float] | None = (0.0, 5.0),
    track_median: bool = True,
    initial_velocity: PyTree | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Gradient Energy Matching (Hermans & Louppe), element-wise, per arrival l of worker w:

        Δθ_l = −η g_l,   m_w ← μ m_w + Δθ_l,
        π_l  = (κ|m_w| − |θ − s_l|) / (|Δθ_l| + ε)      (optionally clamped to [lo, hi]),
        step = (1/c) Σ_l π_l ⊙ Δθ_l.

    θ is the current central variable (`params`), s_l the arrival's snapshot. The worker-local
    m of the paper lives here, indexed by `worker` (the c arriving workers are distinct, as in
    `run_pool`); memory O(W × params), updated in place (O(c × params) per update).

    Args:
      learning_rate: η > 0, or an Optax schedule of the server update k.
      num_workers: W >= 1 (rows of the velocity state).
      momentum: μ of the proxy (sequential momentum SGD), in [0, 1).
      kappa: κ > 0, the energy-matching factor (1 in the paper, whose κ sweep found κ = 4
        suboptimal and even divergent); may be an array (traced under `vmap`).
      eps: ε > 0 in the denominator.
      clamp: `(lo, hi)` to clip π (the authors' code uses (0, 5)), or None for no clamp
        (Algorithm 1). The bounds may be arrays (e.g. traced under `vmap`, so clamped and
        unclamped runs share one program: `(−inf, inf)` clips nothing and equals None).
      track_median: record the median of the applied π over all elements in the state (a
        bisection, O(32 × params) per update; False saves it).
      initial_velocity: the proxy velocities m to start from (leaves `(W, ...)` like the
        params with a worker axis, e.g. `GEMState.velocity` of an earlier run); default 0.
    """
    _check_positive(learning_rate, "learning_rate")
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 1:
        raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    _check_positive(kappa, "kappa")
    _check_positive(eps, "eps")
    if clamp is not None:
        if len(clamp) != 2:
            raise ValueError(f"clamp must be (lo, hi) or None, got {clamp!r}")
        concrete = all(isinstance(b, (int, float, np.integer, np.floating)) for b in clamp)
        if concrete and not clamp[0] <= clamp[1]:
            raise ValueError(f"clamp must be (lo, hi) with lo <= hi, got {clamp!r}")

    def init_fn(params):
        zeros = jax.tree.map(lambda p: jnp.zeros((num_workers,) + jnp.shape(p), p.dtype), params)
        if initial_velocity is None:
            velocity = zeros
        else:
            if jax.tree.structure(initial_velocity) != jax.tree.structure(zeros) or any(
                jnp.shape(v) != z.shape for v, z in zip(jax.tree.leaves(initial_velocity),
                                                        jax.tree.leaves(zeros))
            ):  # fmt: skip
                raise ValueError(
                    "initial_velocity must have the params' structure with a leading worker "
                    f"axis W={num_workers} on every leaf"
                )
            velocity = jax.tree.map(lambda v, z: jnp.asarray(v, z.dtype), initial_velocity, zeros)
        return GEMState(velocity, jnp.zeros((), jnp.result_type(float)), jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, snapshot, worker, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("gem needs the central variable θ as `params`")
        worker = jnp.asarray(worker)
        eta = _rate_at(learning_rate, state.count)

        def one_leaf(g, m_all, theta, s):
            delta = -eta * g  # (c, ...)
            m_all = m_all.at[worker].set(momentum * m_all[worker] + delta)
            # Read m back from the updated rows (the workers are distinct): using the value
            # computed from the old rows after the scatter would make XLA copy all W rows.
            m = m_all[worker]
            pi = (kappa * jnp.abs(m) - jnp.abs(theta[None] - s)) / (jnp.abs(delta) + eps)
            if clamp is not None:
                pi = jnp.clip(pi, clamp[0], clamp[1])
            return jnp.mean(pi * delta, axis=0), m_all, pi

        out = jax.tree.map(one_leaf, updates, state.velocity, params, snapshot)
        treedef = jax.tree.structure(updates)
        leaves = treedef.flatten_up_to(out)
        step = treedef.unflatten([o[0] for o in leaves])
        velocity = treedef.unflatten([o[1] for o in leaves])
        if track_median:
            pi_median = _median(jnp.concatenate([jnp.ravel(o[2]) for o in leaves]))
        else:
            pi_median = state.pi_median
        pi_median = pi_median.astype(state.pi_median.dtype)
        return step, GEMState(velocity, pi_median, optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class DCASGDState(NamedTuple):
    """State holding the running mean square of gradients (adaptive λ only; else zeros) and
    the number of server updates (for a schedule)."""

    mean_square: PyTree
    count: Int[Array, ""]


def dc_asgd(
    learning_rate: optax.ScalarOrSchedule,
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
      learning_rate: η > 0, or an Optax schedule of the server update k.
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
        return DCASGDState(jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))

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
        eta = _rate_at(learning_rate, state.count)
        step = jax.tree.map(
            lambda g, theta, s, lt: (
                -eta * jnp.mean(g + lt[None] * g * g * (theta[None] - s), axis=0)
            ),
            updates,
            params,
            snapshot,
            lam_t,
        )
        return step, DCASGDState(mean_square, optax.safe_increment(state.count))

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
