"""Classification datasets for the experiments, as NumPy arrays held in memory.

Every loader returns a `Dataset` with float32 inputs and int32 labels in `[0, num_classes)`.
Nothing is downloaded: MNIST-1D is generated locally with the `mnist1d` package, the digits
ship with scikit-learn, and CIFAR-10 is read from a local copy of its binary release.
"""

from __future__ import annotations

import functools
import os
import random
from typing import NamedTuple

import numpy as np

__all__ = [
    "Dataset",
    "CorruptDataError",
    "load_mnist1d",
    "load_digits",
    "load_cifar10",
    "load",
    "DATASET_NAMES",
]


class Dataset(NamedTuple):
    """A train/test split: float32 inputs `(n, *feature_shape)`, int32 labels `(n,)`."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str


class CorruptDataError(ValueError):
    """A dataset file exists but its contents do not match the expected format."""


# ---------------------------------------------------------------------------------------------
# MNIST-1D
# ---------------------------------------------------------------------------------------------

MNIST1D_NUM_TRAIN = 4000
MNIST1D_LENGTH = 40


def mnist1d_cache_path() -> str | None:
    """Where the generated MNIST-1D arrays are kept between processes, or None (no disk cache).

    `$COUPLED_SGD_CACHE/mnist1d-<mnist1d version>.npz`; the directory defaults to
    `$XDG_CACHE_HOME/coupled-sgd` (`~/.cache/coupled-sgd`). Set `COUPLED_SGD_CACHE` to an
    empty string to generate in every process.
    """
    import importlib.metadata

    root = os.environ.get("COUPLED_SGD_CACHE")
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "coupled-sgd")
    if not root:
        return None
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return os.path.join(root, f"mnist1d-{version}.npz")


_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def _make_mnist1d() -> tuple[np.ndarray, ...]:
    import mnist1d.data

    # `make_dataset` reseeds Python's and NumPy's global generators; restore them so that
    # loading a dataset does not change the random state seen by unrelated code.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        raw = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return tuple(
        np.asarray(raw[k], dtype=np.float64 if k.startswith("x") else np.int32)
        for k in _MNIST1D_KEYS
    )


def _read_mnist1d_cache(path: str) -> tuple[np.ndarray, ...] | None:
    """The cached arrays, or None if the file is missing or not what `_make_mnist1d` writes
    (a bad cache is regenerated, never trusted)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = tuple(np.array(f[k]) for k in _MNIST1D_KEYS)
    except (OSError, KeyError, ValueError):
        return None
    x, y, xt, yt = arrays
    n_test = len(yt)
    ok = (
        x.dtype == np.float64 and xt.dtype == np.float64 and y.dtype == np.int32
        and yt.dtype == np.int32 and x.shape == (MNIST1D_NUM_TRAIN, MNIST1D_LENGTH)
        and y.shape == (MNIST1D_NUM_TRAIN,) and xt.shape == (n_test, MNIST1D_LENGTH)
        and np.all(np.isfinite(x)) and np.all(np.isfinite(xt))
    )  # fmt: skip
    return arrays if ok else None


@functools.lru_cache(maxsize=1)
def _generate_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The canonical MNIST-1D arrays (package default arguments, generation seed 42).

    Generating takes several seconds, so the arrays are kept in memory and, unless disabled,
    in `mnist1d_cache_path()` (an `.npz` of plain arrays, read without pickle).
    """
    path = mnist1d_cache_path()
    arrays = _read_mnist1d_cache(path) if path and os.path.exists(path) else None
    if arrays is None:
        arrays = _make_mnist1d()
        if path:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                # Written under a unique name and renamed: parallel processes never read a
                # half-written file.
                tmp = f"{path}.{os.getpid()}.tmp.npz"
                np.savez(tmp, **dict(zip(_MNIST1D_KEYS, arrays)))
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only home: generate again next time
    for array in arrays:
        # The cache hands out the same objects on every call; make accidental writes fail.
        array.setflags(write=False)
    return arrays


def load_mnist1d(num_train: int | None = None, seed: int = 0) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated locally: 10 classes of length-40 signals.

    The dataset itself is always the canonical one (4000 train, 1000 test examples, the
    package's generation seed 42); `seed` only chooses the training subsample. Inputs are
    standardized with a single scalar mean and standard deviation of the returned training
    set, so the signal's shape along its length is preserved for convolutional models.
    The generated arrays are cached in memory and on disk (`mnist1d_cache_path`).

    Args:
      num_train: size of a training subset drawn without replacement (must be in
        [1, 4000]); None keeps all 4000. A small training set makes the generalization gap
        visible.
      seed: seed of the subsample; unused when `num_train` is None.

    Returns:
      A `Dataset` with `x_train (num_train, 40)`, `x_test (1000, 40)` float32 and int32 labels.
    """
    x_train, y_train, x_test, y_test = _generate_mnist1d()
    if num_train is not None:
        if isinstance(num_train, bool) or not isinstance(num_train, (int, np.integer)):
            raise TypeError(f"num_train must be an int or None, got {num_train!r}")
        if not 1 <= num_train <= len(y_train):
            raise ValueError(f"num_train must be in [1, {len(y_train)}], got {num_train}")
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(y_train), size=int(num_train), replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    mean, std = x_train.mean(), x_train.std()
    # A one-example subset has zero spread; centring alone is then the only sensible scaling.
    scale = std if std > 0 else 1.0
    return Dataset(
        x_train=((x_train - mean) / scale).astype(np.float32),
        y_train=np.array(y_train, dtype=np.int32),
        x_test=((x_test - mean) / scale).astype(np.float32),
        y_test=np.array(y_test, dtype=np.int32),
        num_classes=10,
        name="mnist1d",
    )


# ---------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Pixels (integers 0..16) are scaled to [0, 1]; the split is stratified by class and
    deterministic given `seed`.

    Args:
      seed: seed of the train/test split.
      test_fraction: fraction of the examples held out for testing, must be in (0, 1).

    Returns:
      A `Dataset` with inputs `(n, 64)` float32 in [0, 1] and int32 labels.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    import sklearn.datasets
    import sklearn.model_selection

    bunch = sklearn.datasets.load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int32)
    x_train, x_test, y_train, y_test = sklearn.model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset(x_train, y_train, x_test, y_test, num_classes=10, name="digits")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 (binary release)
# ---------------------------------------------------------------------------------------------

CIFAR10_SUBDIR = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
_CIFAR10_IMAGE_BYTES = 3 * 32 * 32
_CIFAR10_RECORD_BYTES = 1 + _CIFAR10_IMAGE_BYTES


def _read_cifar10_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch file as (uint8 images `(n, 32, 32, 3)`, int32 labels `(n,)`)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR10_RECORD_BYTES != 0:
        raise CorruptDataError(
            f"CIFAR-10 file {path} has {raw.size} bytes, which is not a positive multiple of "
            f"the record size {_CIFAR10_RECORD_BYTES} (1 label byte + 3072 pixel bytes); "
            "the file is truncated or not a CIFAR-10 binary batch"
        )
    records = raw.reshape(-1, _CIFAR10_RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise CorruptDataError(
            f"CIFAR-10 file {path} has label byte {int(labels[bad[0]])} > 9 in record "
            f"{int(bad[0])} ({bad.size} bad records in total)"
        )
    # Each record stores the image channel-major (R plane, G plane, B plane, rows of 32).
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int32)


def _cifar10_directory(data_dir: str | os.PathLike) -> str:
    """The directory holding the batch files: `data_dir/cifar-10-batches-bin` or `data_dir`."""
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"CIFAR-10 data directory {data_dir} does not exist")
    nested = os.path.join(data_dir, CIFAR10_SUBDIR)
    return nested if os.path.isdir(nested) else data_dir


def load_cifar10(
    data_dir: str | os.PathLike, train_batches: int = 5, normalize: bool = True
) -> Dataset:
    """CIFAR-10 from a local copy of its binary release, parsed with NumPy only.

    The files `data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin` are looked up in
    `data_dir/cifar-10-batches-bin` when that folder exists, else in `data_dir` itself. Each
    file is a sequence of 3073-byte records: one label byte (0..9), then 3072 pixel bytes
    stored channel-major (3, 32, 32). Pixels are scaled to [0, 1] and, when `normalize`,
    standardized per channel with the mean and standard deviation of the training images.

    Args:
      data_dir: directory containing the batch files (or their `cifar-10-batches-bin` folder).
      train_batches: read only the first `train_batches` training files, in [1, 5]; only
        those files and the test file need to exist.
      normalize: standardize each channel with training statistics; False leaves [0, 1].

    Returns:
      A `Dataset` with images `(n, 32, 32, 3)` float32 (height, width, channel) and int32
      labels.

    Raises:
      FileNotFoundError: `data_dir` or some of the required files do not exist (all missing
        files are named).
      CorruptDataError: a file's size is not a positive multiple of 3073 bytes, or a label
        byte is greater than 9.
    """
    if isinstance(train_batches, bool) or not isinstance(train_batches, (int, np.integer)):
        raise TypeError(f"train_batches must be an int, got {train_batches!r}")
    if not 1 <= train_batches <= len(CIFAR10_TRAIN_FILES):
        raise ValueError(f"train_batches must be in [1, 5], got {train_batches}")
    directory = _cifar10_directory(data_dir)
    train_files = CIFAR10_TRAIN_FILES[:train_batches]
    required = (*train_files, CIFAR10_TEST_FILE)
    missing = [name for name in required if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 binary files missing from {directory}: {', '.join(missing)} "
            f"(expected {', '.join(required)})"
        )

    train_parts = [_read_cifar10_file(os.path.join(directory, name)) for name in train_files]
    test_images, y_test = _read_cifar10_file(os.path.join(directory, CIFAR10_TEST_FILE))
    train_images = np.concatenate([images for images, _ in train_parts])
    y_train = np.concatenate([labels for _, labels in train_parts])

    x_train = train_images.astype(np.float32) / np.float32(255.0)
    x_test = test_images.astype(np.float32) / np.float32(255.0)
    if normalize:
        # Statistics in float64: a float32 sum over 5e7 pixels loses digits.
        mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64)
        std = x_train.std(axis=(0, 1, 2), dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        x_train = ((x_train - mean) / std).astype(np.float32)
        x_test = ((x_test - mean) / std).astype(np.float32)
    return Dataset(x_train, y_train, x_test, y_test, num_classes=10, name="cifar10")


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------

_LOADERS = {"mnist1d": load_mnist1d, "digits": load_digits, "cifar10": load_cifar10}
DATASET_NAMES = tuple(_LOADERS)


def load(name: str, **kwargs) -> Dataset:
    """Load a dataset by name, passing `kwargs` to its loader.

    Args:
      name: one of "mnist1d", "digits", "cifar10".
      **kwargs: keyword arguments of `load_mnist1d`, `load_digits` or `load_cifar10`.

    Returns:
      The `Dataset`.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")
    return _LOADERS[name](**kwargs)
