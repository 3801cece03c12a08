"""A network's training loss as a landscape, and its minibatch gradient noise as a diffusion.

`ModelLandscape` turns a model and a training set `{(x_j, y_j)}_{j=1..n}` into the landscape
`f(θ) = (1/n) Σ_j ℓ_j(θ)` on the flat parameter vector `θ` `(dim,)` (the raveled pytree of
parameters), so that every part of the library that takes an `AbstractLandscape` (coupling
rules, `CoupledSystem`, `solve`, `euler_optimizer`, `solve_discrete`) trains N copies of the
network. `MinibatchNoise` is the diffusion of SGD with batch size B on that landscape:

    dθ = −η ∇f(θ) dt + σ(θ) dW,      σσᵀ = η² h Σ(θ) = lr·η Σ(θ),      Σ = c_B C(θ) / B,

with `C(θ) = (1/n) Σ_j (g_j − ∇f)(g_j − ∇f)ᵀ` the (population) covariance of the per-example
gradients `g_j = ∇ℓ_j(θ)`, `lr = h·η` the SGD learning rate of `euler_optimizer(system, h)`
and `c_B = 1` (batches drawn with replacement) or `(n − B)/(n − 1)` (without). For η = 1 this
is the usual `dθ = −∇f dt + √lr Σ^{1/2} dW` with time `t = k·lr` (docs/sde_models.md).

The package does not depend on Flax: `ModelLandscape.from_flax` only calls `model.apply`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int

from .landscapes import AbstractLandscape
from .noise import AbstractNoise
from .types import PyTree

__all__ = ["ModelLandscape", "MinibatchNoise", "MINIBATCH_NOISE_KINDS"]

MINIBATCH_NOISE_KINDS = ("exact", "diagonal", "isotropic")

LossFn = Callable[[PyTree, Array, Array], Array]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _cross_entropy(logits, labels):
    """Per-example softmax cross-entropy with integer labels: `(b, classes), (b,) -> (b,)`."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]


def _squared_error(outputs, targets):
    """Per-example `½ ‖output − target‖²`: `(b, ...), (b, ...) -> (b,)`."""
    r = outputs - targets.reshape(outputs.shape)
    return 0.5 * jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1)


_LOSSES = {"cross_entropy": _cross_entropy, "squared_error": _squared_error}


class ModelLandscape(AbstractLandscape):
    """The full-batch training loss `f(θ) = (1/n) Σ_j ℓ(params(θ), x_j, y_j)` of a model.

    `θ` `(dim,)` is the parameter pytree raveled by `jax.flatten_util.ravel_pytree` (leaves in
    tree order); `ravel(params)` and `unravel(θ)` convert. Everything acts on one agent's
    `θ`, like every landscape; lift to N agents `(N, dim)` with `jax.vmap` (the solvers and
    oracles do this).

    Computation is in chunks of `chunk_size` examples (a `lax.scan` / `lax.map` over
    `ceil(n / chunk_size)` chunks; a last partial chunk is padded with copies of the last
    example at weight 0), so memory is bounded independently of n:

    - `value`, `grad`, `weighted_grad`: O(dim) plus the model's activations (and their
      backward pass) for one chunk; cost about one pass over the n examples.
    - `per_example_grads`: the `(n, dim)` output, plus O(chunk_size × dim) for one chunk's
      `vmap(grad)` and that chunk's activations.
    - `batch_loss` (the minibatch oracle): the activations of B examples.

    Not known for a network, so these raise NotImplementedError: `minimizer`,
    `curvature_bounds` and `in_global_basin`. Nothing in `CoupledSystem`, `solve`,
    `euler_optimizer` or `solve_discrete` uses them; `dynamics.theory`'s linearizations
    (`linearize`, `stationary_moments`, `euler_map`, `linear_moments`) linearize at the
    minimizer and so do not apply. `hessian` is `jax.hessian(value)`, a dense `(dim, dim)`
    matrix: for small models only.

    Dtype: `unravel` casts θ to the template's leaf dtypes, so the model computes in those;
    for float64 paths cast the template to float64 (under `jax_enable_x64`).

    Args:
        loss_fn: `loss_fn(params, x_batch, y_batch) -> (b,)`, the per-example losses ℓ_j of a
            batch of b examples (not their mean), for a pytree `params` shaped like
            `params_template`.
        inputs: `x`, shape `(n, ...)`.
        targets: `y`, shape `(n, ...)` (e.g. integer labels `(n,)`).
        params_template: a parameter pytree; fixes the structure, shapes, dtypes and `dim`.
        chunk_size: examples per chunk (>= 1; values above n mean one chunk). Default
            `min(n, 128)`.
    """

    padded_inputs: Array
    padded_targets: Array
    example_weights: Array
    loss_fn: LossFn = eqx.field(static=True)
    unravel_fn: Callable = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    num_examples: int = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)

    def __init__(
        self,
        loss_fn: LossFn,
        inputs,
        targets,
        params_template: PyTree,
        chunk_size: int | None = None,
    ):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn)}")
        x, y = jnp.asarray(inputs), jnp.asarray(targets)
        if x.ndim < 1 or y.ndim < 1:
            raise ValueError(
                f"inputs and targets need a leading example axis, got shapes {x.shape}, {y.shape}"
            )
        n = x.shape[0]
        if y.shape[0] != n:
            raise ValueError(f"inputs have {n} examples but targets have {y.shape[0]}")
        if n < 1:
            raise ValueError("need at least one example, got n=0")
        chunk = min(n, 128) if chunk_size is None else _positive_int("chunk_size", chunk_size)
        chunk = min(chunk, n)
        flat, unravel = ravel_pytree(params_template)
        if flat.ndim != 1 or flat.shape[0] < 1:
            raise ValueError("params_template has no parameters")
        pad = -n % chunk
        # Pad with copies of the last example (finite losses) at weight 0, so that chunks
        # have one static shape and padded examples contribute nothing.
        self.padded_inputs = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
        self.padded_targets = jnp.concatenate([y, jnp.repeat(y[-1:], pad, axis=0)])
        self.example_weights = jnp.concatenate(
            [jnp.ones(n, flat.dtype), jnp.zeros(pad, flat.dtype)]
        )
        self.loss_fn, self.unravel_fn = loss_fn, unravel
        self.dim, self.num_examples, self.chunk_size = int(flat.shape[0]), int(n), int(chunk)
        # Trace (not compile) once so that a loss returning a mean instead of per-example
        # losses fails here, with its shape named.
        out = jax.eval_shape(loss_fn, params_template, x[:chunk], y[:chunk])
        if getattr(out, "shape", None) != (chunk,):
            raise ValueError(
                f"loss_fn must return per-example losses of shape (batch,) = ({chunk},), "
                f"got {getattr(out, 'shape', out)}"
            )

    @classmethod
    def from_flax(
        cls,
        model,
        inputs,
        targets,
        params_template: PyTree,
        loss: str | Callable[[Array, Array], Array] = "cross_entropy",
        chunk_size: int | None = None,
    ) -> ModelLandscape:
        """The landscape of a Flax module (anything with `model.apply(params, x) -> outputs`).

        `loss` is "cross_entropy" (softmax cross-entropy of logits `(b, classes)` against
        integer labels `(b,)`), "squared_error" (`½ ‖output − target‖²` per example), or a
        callable `(outputs (b, ...), targets (b, ...)) -> (b,)`. `params_template` is the
        variable dict from `model.init`.
        """
        if callable(loss):
            per_example = loss
        elif isinstance(loss, str) and loss in _LOSSES:
            per_example = _LOSSES[loss]
        else:
            raise ValueError(f"loss must be one of {tuple(_LOSSES)} or a callable, got {loss!r}")

        def loss_fn(params, xb, yb):
            return per_example(model.apply(params, xb), yb)

        return cls(loss_fn, inputs, targets, params_template, chunk_size)

    # ------------------------------------------------------------------ conversions, data

    def ravel(self, params: PyTree) -> Float[Array, " dim"]:
        """The flat parameter vector θ `(dim,)` of a pytree shaped like the template."""
        flat, _ = ravel_pytree(params)
        if flat.shape != (self.dim,):
            raise ValueError(f"params ravel to shape {flat.shape}, the landscape has ({self.dim},)")
        return flat

    def unravel(self, theta: Float[Array, " dim"]) -> PyTree:
        """The parameter pytree of θ `(dim,)` (leaves in the template's dtypes)."""
        return self.unravel_fn(theta)

    @property
    def inputs(self) -> Array:
        """The training inputs x `(n, ...)`."""
        return self.padded_inputs[: self.num_examples]

    @property
    def targets(self) -> Array:
        """The training targets y `(n, ...)`."""
        return self.padded_targets[: self.num_examples]

    def _chunked(self, *arrays):
        """Arrays with leading axis `n_pad` reshaped to `(num_chunks, chunk_size, ...)`."""
        c = self.chunk_size
        return tuple(a.reshape(a.shape[0] // c, c, *a.shape[1:]) for a in arrays)

    def _pad(self, w: Array) -> Array:
        """A per-example vector `(n,)` padded with zeros to `(n_pad,)`."""
        pad = self.padded_inputs.shape[0] - self.num_examples
        return jnp.concatenate([w, jnp.zeros(pad, w.dtype)])

    def _chunk_sum(self, theta, xc, yc, wc):
        """`Σ_j w_j ℓ_j(θ)` over one chunk."""
        losses = self.loss_fn(self.unravel(theta), xc, yc)
        return jnp.sum(wc.astype(losses.dtype) * losses)

    def _weighted_sum_and_grad(self, theta, weights):
        """`(Σ_j w_j ℓ_j(θ), ∇_θ Σ_j w_j ℓ_j(θ))` with `weights` `(n_pad,)`, chunk by chunk.

        Each chunk's gradient is taken inside the scan (not the gradient of the scan), so no
        activations are kept across chunks.
        """
        xs = self._chunked(self.padded_inputs, self.padded_targets, weights)
        vg = jax.value_and_grad(self._chunk_sum)

        def body(carry, chunk):
            value, grad = vg(theta, *chunk)
            return (carry[0] + value, carry[1] + grad), None

        zero = (jnp.zeros((), theta.dtype), jnp.zeros_like(theta))
        (value, grad), _ = jax.lax.scan(body, zero, xs)
        return value, grad

    # ------------------------------------------------------------------ the landscape

    def value(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        """`f(θ) = (1/n) Σ_j ℓ_j(θ)`, a scalar (θ = `x`, shape `(dim,)`)."""
        xs = self._chunked(self.padded_inputs, self.padded_targets, self.example_weights)
        sums = jax.lax.map(lambda chunk: self._chunk_sum(x, *chunk), xs)
        return jnp.sum(sums) / self.num_examples

    def grad(self, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """`∇f(θ) = (1/n) Σ_j ∇ℓ_j(θ)`, shape `(dim,)`."""
        return self._weighted_sum_and_grad(x, self.example_weights)[1] / self.num_examples

    def weighted_grad(
        self, x: Float[Array, " dim"], weights: Float[Array, " n"]
    ) -> Float[Array, " dim"]:
        """`Σ_j w_j ∇ℓ_j(θ) = Gᵀ w`, shape `(dim,)`, for weights `w` `(n,)`.

        One reverse pass over the data (G, the `(n, dim)` per-example gradients, is never
        formed): the gradient of the reweighted loss `Σ_j w_j ℓ_j`.
        """
        w = jnp.asarray(weights, x.dtype)
        if w.shape != (self.num_examples,):
            raise ValueError(f"weights must have shape ({self.num_examples},), got {w.shape}")
        return self._weighted_sum_and_grad(x, self._pad(w))[1]

    def per_example_grads(self, x: Float[Array, " dim"]) -> Float[Array, "n dim"]:
        """G: the per-example gradients `∇ℓ_j(θ)`, shape `(n, dim)`.

        `vmap(grad)` over one chunk of `chunk_size` examples at a time (`lax.map` over the
        chunks): working memory O(chunk_size × dim) plus one chunk's activations, on top of
        the `(n, dim)` result.
        """

        def example_loss(theta, xj, yj):
            return self.loss_fn(self.unravel(theta), xj[None], yj[None])[0]

        per_chunk = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))
        xs = self._chunked(self.padded_inputs, self.padded_targets)
        grads = jax.lax.map(lambda chunk: per_chunk(x, *chunk), xs)
        return grads.reshape(-1, self.dim)[: self.num_examples]

    def batch_loss(self, x: Float[Array, " dim"], indices: Int[Array, " batch"]) -> Array:
        """The minibatch loss `(1/B) Σ_{j ∈ batch} ℓ_j(θ)` of examples `indices` `(B,)`."""
        xb = jnp.take(self.padded_inputs, indices, axis=0)
        yb = jnp.take(self.padded_targets, indices, axis=0)
        return jnp.mean(self.loss_fn(self.unravel(x), xb, yb))

    def minimizer(self):
        raise NotImplementedError(
            "a network's minimizer is unknown: ModelLandscape has no minimizer(), so "
            "dynamics.theory's linearizations at x* do not apply"
        )

    def curvature_bounds(self):
        raise NotImplementedError(
            "a network's Hessian bounds (m, L) are unknown: ModelLandscape has no "
            "curvature_bounds()"
        )

    def in_global_basin(self, x):
        raise NotImplementedError("a network's global basin is unknown (ModelLandscape)")


class MinibatchNoise(AbstractNoise):
    """The diffusion of minibatch SGD with batch size B on a `ModelLandscape`.

    SGD with learning rate `lr` per step and minibatch gradients of covariance Σ(θ) is, with
    gradient scale η and step h = lr/η in time (`euler_optimizer(system, h)` on
    `CoupledSystem(landscape, rule, this, gradient_scale=η)`), the Euler–Maruyama chain of
    `dθ = −η ∇f dt + σ dW` with

        σ(θ)σ(θ)ᵀ = η² h Σ(θ) = lr·η Σ(θ),      Σ(θ) = c_B C(θ) / B,

    `C(θ) = (1/n) G_cᵀ G_c` the population covariance of the per-example gradients (G_c: the
    rows `g_j − ∇f`, shape `(n, dim)`) and `c_B = 1` with replacement, `(n − B)/(n − 1)`
    without. The population form (divide by n, not n − 1) is exact: the mean of B examples
    drawn uniformly with replacement from the n has covariance exactly `C / B`, and without
    replacement `C/B · (n − B)/(n − 1)` (the finite-population correction). For η = 1 it is
    `σ = √lr Σ^{1/2}`, time `t = k·lr`. Σ is evaluated at the current θ (state-dependent);
    the Gaussian increment is the SDE's approximation of the minibatch noise.

    Kinds (`apply(θ, n) = σ(θ) n`, with `s = sqrt(lr·η·c_B / B)`):

    - "exact": `σ(θ) n = s G_c(θ)ᵀ n / √n` with `n` in R^n, one Brownian coordinate per
      training example (`brownian_shape(dim) = (n,)`). Computed as the gradient of the
      reweighted loss `Σ_j (n_j − n̄) ℓ_j(θ)` (`G_cᵀ n = Σ_j (n_j − n̄) g_j`): one pass over
      the data like a full gradient, O(dim) memory plus one chunk's activations; no `dim ×
      dim` matrix and not even G is formed. `σσᵀ = s² G_cᵀ G_c / n = lr·η Σ` exactly.
    - "diagonal": `s · sqrt(diag C(θ)) ⊙ n`, `n` in R^dim: the per-coordinate variances
      only. Needs the n per-example gradients (`per_example_grads`, chunked).
    - "isotropic": `s · sqrt(tr C(θ) / dim) n`: the same total variance spread evenly. Needs
      the n per-example gradients too.

    Per step of `solve` (Euler) each agent costs one full gradient for the drift plus the
    noise: about one more gradient pass ("exact") or n per-example gradients ("diagonal",
    "isotropic"). `covariance` and `gradient_covariance` form dense `(dim, dim)` matrices:
    for tests and small models.

    Args:
        landscape: the `ModelLandscape` whose per-example gradients define C(θ).
        batch_size: B, examples per SGD step, in [1, n].
        learning_rate: lr = h·η > 0, the SGD learning rate per step.
        gradient_scale: η > 0, must equal the `CoupledSystem`'s (checked there). Default 1,
            so that h = lr and t = k·lr.
        kind: "exact", "diagonal" or "isotropic".
        replacement: whether the SGD being modelled draws its batch with replacement
            (`c_B = 1`) or without (`c_B = (n − B)/(n − 1)`; B = n is then noiseless).
    """

    landscape: ModelLandscape
    batch_size: int = eqx.field(static=True)
    learning_rate: float = eqx.field(static=True)
    gradient_scale: float = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    replacement: bool = eqx.field(static=True)

    def __init__(
        self,
        landscape: ModelLandscape,
        batch_size: int,
        learning_rate: float,
        *,
        gradient_scale: float = 1.0,
        kind: str = "exact",
        replacement: bool = True,
    ):
        if not isinstance(landscape, ModelLandscape):
            raise TypeError(f"landscape must be a ModelLandscape, got {type(landscape)}")
        if kind not in MINIBATCH_NOISE_KINDS:
            raise ValueError(f"kind must be one of {MINIBATCH_NOISE_KINDS}, got {kind!r}")
        batch = _positive_int("batch_size", batch_size)
        if batch > landscape.num_examples:
            raise ValueError(
                f"batch_size must be in [1, n={landscape.num_examples}], got {batch_size!r}"
            )
        for name, value in (("learning_rate", learning_rate), ("gradient_scale", gradient_scale)):
            if not math.isfinite(float(value)) or float(value) <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.landscape, self.batch_size, self.kind = landscape, batch, kind
        self.learning_rate, self.gradient_scale = float(learning_rate), float(gradient_scale)
        self.replacement = bool(replacement)

    @property
    def _dim(self):
        return self.landscape.dim

    @property
    def sampling_factor(self) -> float:
        """`c_B`: 1 with replacement, `(n − B)/(n − 1)` without (1 when n = 1)."""
        n, b = self.landscape.num_examples, self.batch_size
        return 1.0 if self.replacement or n == 1 else (n - b) / (n - 1)

    @property
    def scale_sq(self) -> float:
        """`s² = lr·η·c_B / B`, so that `σσᵀ = s² C(θ)` (units of time per parameter²)."""
        return self.learning_rate * self.gradient_scale * self.sampling_factor / self.batch_size

    def brownian_shape(self, dim: int) -> tuple[int, ...]:
        return (self.landscape.num_examples,) if self.kind == "exact" else (dim,)

    def check_system(self, landscape, gradient_scale: float) -> None:
        self.check_dim(landscape.dim)
        if not math.isclose(float(gradient_scale), self.gradient_scale, rel_tol=1e-12):
            raise ValueError(
                f"MinibatchNoise was built for gradient_scale η={self.gradient_scale}, the "
                f"system has η={gradient_scale}: σσᵀ = lr·η Σ needs the system's η"
            )

    def is_zero(self) -> bool:
        # State-dependent: zero only when the factor is (B = n without replacement).
        return self.scale_sq == 0.0

    def _centred_variances(self, x):
        """`diag C(θ)` `(dim,)`: mean over examples of `(g_j − ∇f)²`, from G."""
        g = self.landscape.per_example_grads(x)
        return jnp.mean((g - jnp.mean(g, axis=0, keepdims=True)) ** 2, axis=0)

    def apply(self, x, n):
        s2 = self.scale_sq
        if self.kind == "exact":
            num = self.landscape.num_examples
            n = n - jnp.mean(n)  # G_cᵀ n = Σ_j (n_j − n̄) g_j
            return math.sqrt(s2 / num) * self.landscape.weighted_grad(x, n)
        var = self._centred_variances(x)
        if self.kind == "diagonal":
            return jnp.sqrt(s2 * var) * n
        return jnp.sqrt(s2 * jnp.sum(var) / self.landscape.dim) * n

    def gradient_covariance(self, x: Float[Array, " dim"]) -> Float[Array, "dim dim"]:
        """The kind's Σ(θ) as a dense `(dim, dim)` array: `c_B C/B`, its diagonal, or
        `c_B tr(C)/(B dim) I` (per-step gradient-noise covariance, gradient units²)."""
        g = self.landscape.per_example_grads(x)
        gc = g - jnp.mean(g, axis=0, keepdims=True)
        c = gc.T @ gc / self.landscape.num_examples
        factor = self.sampling_factor / self.batch_size
        if self.kind == "exact":
            return factor * c
        if self.kind == "diagonal":
            return factor * jnp.diag(jnp.diag(c))
        return factor * jnp.trace(c) / self.landscape.dim * jnp.eye(self.landscape.dim)

    def covariance(self, dim):
        """`σσᵀ = lr·η Σ` at θ = 0 as a `(dim, dim)` NumPy array (small models only)."""
        self.check_dim(dim)
        x0 = jnp.zeros(dim, self.landscape.example_weights.dtype)
        return self.learning_rate * self.gradient_scale * np.asarray(self.gradient_covariance(x0))
