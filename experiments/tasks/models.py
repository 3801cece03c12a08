"""Flax models, losses and per-agent minibatch gradient oracles for the experiments.

Parameters are Flax variable dicts (`{"params": ...}`, as returned by `model.init` and taken
by `model.apply`). A *stacked* parameter pytree holds N agents: every leaf has a leading axis
of size N. Everything that acts on one agent is written for one agent and lifted with
`jax.vmap`, so the functions here are `jit`-able and usable inside `lax.scan`: the minibatch
gradient is a single-agent `GradFn` (`minibatch_grad_fn`), lifted to all agents by
`algorithms.agent_oracle` (`minibatch_oracle`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jax import Array
from jax.typing import ArrayLike

from algorithms.oracles import agent_oracle
from dynamics.types import GradFn, Oracle, PyTree

__all__ = [
    "MLP",
    "CNN1D",
    "PatchCNN1D",
    "CNN2D",
    "init_stacked",
    "cross_entropy_loss",
    "accuracy",
    "minibatch_grad_fn",
    "minibatch_oracle",
    "evaluate",
]

# A pytree of arrays (a Flax variable dict).
Params = PyTree


class MLP(nn.Module):
    """Fully connected ReLU network; inputs `(batch, ...)` are flattened per example.

    Attributes:
      hidden: widths of the hidden layers (may be empty: multinomial logistic regression);
        pass a tuple so the module stays hashable (a static argument under `jax.jit`).
      num_classes: number of output logits.
    """

    hidden: Sequence[int]
    num_classes: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Logits `(batch, num_classes)` of inputs `(batch, ...)`."""
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class CNN1D(nn.Module):
    """Small 1-D convolutional network for MNIST-1D signals.

    One stride-2 ReLU convolution per entry of `features` (kernel 5 for the first, 3 after)
    halves the length each time (40 -> 20 -> 10 -> 5), then one dense layer gives the logits.
    With the default `features=(32, 32, 32)` and length-40 inputs it has 8,010 parameters, in
    the spirit of the convolutional baseline of the MNIST-1D paper.

    Attributes:
      num_classes: number of output logits.
      features: channels of the convolutions, one layer each.
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 32, 32)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Logits `(batch, num_classes)` of signals `(batch, length)` or `(batch, length, c)`."""
        if x.ndim == 2:
            x = x[..., None]
        for layer, channels in enumerate(self.features):
            kernel = 5 if layer == 0 else 3
            x = nn.relu(nn.Conv(channels, (kernel,), strides=(2,), padding="SAME")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes)(x)


class _PatchConv1D(nn.Module):
    """`nn.Conv(features, (kernel,), strides=(stride,), padding="SAME")` on `(batch, length,
    channels)`, computed as one matrix product over gathered input patches (same parameters
    `kernel (kernel, channels, features)` and `bias (features,)`, same initializers)."""

    features: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        length, channels = x.shape[-2], x.shape[-1]
        shape = (self.kernel, channels, self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        # XLA's "SAME": ceil(length / stride) outputs, the padding split low-first.
        out = -(-length // self.stride)
        pad = max((out - 1) * self.stride + self.kernel - length, 0)
        x = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
        last = (out - 1) * self.stride + 1
        patches = jnp.stack(
            [x[:, j : j + last : self.stride] for j in range(self.kernel)], axis=2
        )  # (batch, out, kernel, channels)
        return jnp.einsum("bokc,kcf->bof", patches, kernel) + bias[None, None, :]


class PatchCNN1D(nn.Module):
    """`CNN1D` with its convolutions written as matrix products over input patches.

    The same network as `CNN1D` (same parameter tree, so `CNN1D().init` and
    `PatchCNN1D().init` give the same parameters from the same key, and the same logits up
    to float rounding), but several times faster on CPU, and it stays fast under
    `jax.vmap` over independent parameter sets (seeds), where a vmapped `nn.Conv` becomes a
    slow grouped convolution.

    Attributes:
      num_classes: number of output logits.
      features: channels of the convolutions, one layer each.
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 32, 32)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Logits `(batch, num_classes)` of signals `(batch, length)` or `(batch, length, c)`."""
        if x.ndim == 2:
            x = x[..., None]
        for layer, channels in enumerate(self.features):
            kernel = 5 if layer == 0 else 3
            x = nn.relu(_PatchConv1D(channels, kernel, 2, name=f"Conv_{layer}")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes)(x)


class CNN2D(nn.Module):
    """Three-convolution CIFAR-10 network (Caffe's `cifar10_full` without LRN), ~90K params.

    conv5x5(32) -> max-pool 3/2 -> ReLU -> conv5x5(32) -> ReLU -> avg-pool 3/2 ->
    conv5x5(64) -> ReLU -> avg-pool 3/2 -> dense(num_classes). On 32x32x3 inputs the spatial
    size goes 32 -> 16 -> 8 -> 4 and the network has 89,578 parameters, the ~90K-parameter
    CNN of "Staleness-aware Async-SGD for Distributed Deep Learning" (Zhang et al. 2016,
    https://arxiv.org/abs/1511.05950).

    Attributes:
      num_classes: number of output logits.
      features: channels of the three convolutions.
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 32, 64)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Logits `(batch, num_classes)` of images `(batch, height, width, channels)`."""
        first, second, third = self.features
        pool = dict(window_shape=(3, 3), strides=(2, 2), padding="SAME")
        x = nn.Conv(first, (5, 5), padding="SAME")(x)
        x = nn.relu(nn.max_pool(x, **pool))
        x = nn.relu(nn.Conv(second, (5, 5), padding="SAME")(x))
        x = nn.avg_pool(x, **pool)
        x = nn.relu(nn.Conv(third, (5, 5), padding="SAME")(x))
        x = nn.avg_pool(x, **pool)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes)(x)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _num_agents(params_stacked: Params) -> int:
    """The common leading-axis size N of a stacked pytree (static at trace time)."""
    leaves = jax.tree.leaves(params_stacked)
    if not leaves:
        raise ValueError("params_stacked has no array leaves")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) > 0 else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            "every leaf of params_stacked must have the same leading agent axis; "
            f"got leading sizes {sorted(str(s) for s in sizes)}"
        )
    return sizes.pop()


def init_stacked(
    model: nn.Module,
    key: Array,
    num_agents: int,
    sample_input: ArrayLike,
    same_init: bool = False,
) -> Params:
    """Initialize N agents' parameters, stacked along a leading agent axis.

    With `same_init=False` agent i is initialized with `jax.random.split(key, N)[i]`
    (independent initializations); with `same_init=True` every agent gets the single
    initialization `model.init(key, sample_input)`, a common start in EASGD experiments.

    Args:
      model: a Flax module without mutable collections (e.g. no batch statistics).
      key: PRNG key.
      num_agents: N, must be >= 1.
      sample_input: a batch of inputs `(batch, ...)` used only for its shape and dtype.
      same_init: start every agent from the same parameters.

    Returns:
      The variable dict `{"params": ...}` of one agent with each leaf given a leading axis N.
    """
    _check_positive_int("num_agents", num_agents)
    sample_input = jnp.asarray(sample_input)
    if same_init:
        variables = model.init(key, sample_input)
        stacked = jax.tree.map(lambda leaf: jnp.stack([leaf] * num_agents), variables)
    else:
        keys = jr.split(key, num_agents)
        stacked = jax.vmap(model.init, in_axes=(0, None))(keys, sample_input)
    extra = sorted(set(stacked) - {"params"})
    if extra:
        raise ValueError(
            f"model {type(model).__name__} has mutable collections {extra}; only models whose "
            "variables are all in 'params' are supported"
        )
    return stacked


def cross_entropy_loss(
    model: nn.Module,
) -> Callable[[Params, ArrayLike, ArrayLike], Array]:
    """Mean softmax cross-entropy of one agent's model on a batch.

    Args:
      model: a Flax module returning logits `(batch, classes)`.

    Returns:
      `loss(params, x, y)`: params of one agent, inputs `(batch, ...)`, integer labels
      `(batch,)`; returns a scalar.
    """

    def loss(params: Params, x: ArrayLike, y: ArrayLike) -> Array:
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

    return loss


def accuracy(model: nn.Module) -> Callable[[Params, ArrayLike, ArrayLike], Array]:
    """Fraction of a batch whose arg-max logit is the label, for one agent.

    Args:
      model: a Flax module returning logits `(batch, classes)`.

    Returns:
      `accuracy(params, x, y)`: params of one agent, inputs `(batch, ...)`, integer labels
      `(batch,)`; returns a scalar in [0, 1].
    """

    def accuracy_fn(params: Params, x: ArrayLike, y: ArrayLike) -> Array:
        logits = model.apply(params, x)
        return (jnp.argmax(logits, axis=-1) == jnp.asarray(y)).mean(dtype=logits.dtype)

    return accuracy_fn


def minibatch_grad_fn(
    model: nn.Module, x_train: ArrayLike, y_train: ArrayLike, batch_size: int
) -> GradFn:
    """One agent's stochastic gradient on a minibatch of the training set.

    `grad_fn(params, key)` draws `batch_size` indices uniformly *with replacement*
    (`jax.random.randint(key, (batch_size,), 0, n_train)`) and returns the mean cross-entropy
    `()` and its gradient (the structure of `params`) on those examples. The training arrays
    are converted to device arrays once and closed over, so it makes no host round-trips; it
    can be jitted, vmapped and called inside `lax.scan`.

    Args:
      model: a Flax module returning logits `(batch, classes)`.
      x_train: training inputs `(n_train, ...)`.
      y_train: integer training labels `(n_train,)`.
      batch_size: examples per gradient, in [1, n_train].

    Returns:
      `grad_fn(params, key) -> (loss, grad)` for one agent's parameters (no agent axis).
    """
    x_train = jnp.asarray(x_train)
    y_train = jnp.asarray(y_train)
    if x_train.ndim < 1 or y_train.ndim != 1:
        raise ValueError(
            f"expected x_train (n, ...) and y_train (n,), got shapes {x_train.shape} "
            f"and {y_train.shape}"
        )
    num_train = y_train.shape[0]
    if x_train.shape[0] != num_train:
        raise ValueError(f"x_train has {x_train.shape[0]} examples but y_train has {num_train}")
    if not jnp.issubdtype(y_train.dtype, jnp.integer):
        raise ValueError(f"y_train must hold integer labels, got dtype {y_train.dtype}")
    _check_positive_int("batch_size", batch_size)
    if batch_size > num_train:
        raise ValueError(f"batch_size {batch_size} exceeds the training set size {num_train}")
    value_and_grad = jax.value_and_grad(cross_entropy_loss(model))

    def grad_fn(params: Params, key: Array) -> tuple[Array, Params]:
        indices = jr.randint(key, (batch_size,), 0, num_train)
        return value_and_grad(params, x_train[indices], y_train[indices])

    return grad_fn


def minibatch_oracle(
    model: nn.Module, x_train: ArrayLike, y_train: ArrayLike, batch_size: int
) -> Oracle:
    """Per-agent stochastic gradients on independent minibatches of the training set.

    `agent_oracle(minibatch_grad_fn(...))`: at step `k`, agent i draws its minibatch with the
    key `fold_in(fold_in(key, k), i)`. Keying by agent index (rather than splitting into N
    keys) means agent i's minibatches do not depend on N.

    Args:
      model: a Flax module returning logits `(batch, classes)`.
      x_train: training inputs `(n_train, ...)`.
      y_train: integer training labels `(n_train,)`.
      batch_size: examples per agent per step, in [1, n_train].

    Returns:
      `oracle(params_stacked, key, step) -> (losses, grads)`: `params_stacked` has leading
      agent axis N, `key` is a PRNG key, `step` an integer (may be traced); `losses` has
      shape `(N,)` and `grads` the structure and shapes of `params_stacked`.
    """
    oracle = agent_oracle(minibatch_grad_fn(model, x_train, y_train, batch_size))

    def checked(params_stacked: Params, key: Array, step: ArrayLike) -> tuple[Array, Params]:
        _num_agents(params_stacked)  # a clear error for leaves without one agent axis
        return oracle(params_stacked, key, step)

    return checked


def evaluate(
    model: nn.Module,
    params_stacked: Params,
    x: ArrayLike,
    y: ArrayLike,
    batch_size: int | None = None,
) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of every agent on a whole dataset.

    Jit with the model and `batch_size` static, e.g.
    `jax.jit(evaluate, static_argnums=0, static_argnames="batch_size")`.

    Args:
      model: a Flax module returning logits `(batch, classes)`.
      params_stacked: parameters with leading agent axis N.
      x: inputs `(n, ...)`, n >= 1.
      y: integer labels `(n,)`.
      batch_size: evaluate in chunks of this many examples (>= 1) to bound memory; the
        result is the same as one pass over all n examples. None evaluates in one pass.

    Returns:
      `(loss, accuracy)`, each of shape `(N,)`.
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(
            f"expected x (n, ...) and y (n,) with n >= 1, got shapes {x.shape} and {y.shape}"
        )
    if batch_size is not None:
        _check_positive_int("batch_size", batch_size)
    num_examples = y.shape[0]
    _num_agents(params_stacked)

    def sums(params: Params, xb: Array, yb: Array) -> tuple[Array, Array]:
        logits = model.apply(params, xb)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        correct = (jnp.argmax(logits, axis=-1) == yb).astype(losses.dtype)
        return losses.sum(), correct.sum()

    def agent_totals(params: Params) -> tuple[Array, Array]:
        if batch_size is None or batch_size >= num_examples:
            return sums(params, x, y)
        num_chunks, tail = divmod(num_examples, batch_size)
        split = num_chunks * batch_size
        x_chunks = x[:split].reshape(num_chunks, batch_size, *x.shape[1:])
        y_chunks = y[:split].reshape(num_chunks, batch_size)
        chunk_loss, chunk_correct = jax.lax.map(lambda xy: sums(params, *xy), (x_chunks, y_chunks))
        loss_total, correct_total = chunk_loss.sum(), chunk_correct.sum()
        if tail:
            tail_loss, tail_correct = sums(params, x[split:], y[split:])
            loss_total, correct_total = loss_total + tail_loss, correct_total + tail_correct
        return loss_total, correct_total

    loss_total, correct_total = jax.vmap(agent_totals)(params_stacked)
    return loss_total / num_examples, correct_total / num_examples
