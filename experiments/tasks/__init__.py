"""Tasks for the experiments: datasets (NumPy, loaded locally) and Flax models with
single-agent minibatch gradients, lifted to per-agent oracles over stacked parameters."""

from experiments.tasks.datasets import (
    DATASET_NAMES,
    CorruptDataError,
    Dataset,
    load,
    load_cifar10,
    load_digits,
    load_mnist1d,
)
from experiments.tasks.models import (
    CNN1D,
    CNN2D,
    MLP,
    PatchCNN1D,
    accuracy,
    cross_entropy_loss,
    evaluate,
    init_stacked,
    minibatch_grad_fn,
    minibatch_oracle,
)

__all__ = [
    "DATASET_NAMES",
    "CorruptDataError",
    "Dataset",
    "load",
    "load_cifar10",
    "load_digits",
    "load_mnist1d",
    "CNN1D",
    "CNN2D",
    "MLP",
    "PatchCNN1D",
    "accuracy",
    "cross_entropy_loss",
    "evaluate",
    "init_stacked",
    "minibatch_grad_fn",
    "minibatch_oracle",
]
