"""Tests for experiments.tasks: dataset loaders, models, stacked init, oracles, evaluation."""

import os
import random

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from experiments import tasks
from experiments.tasks import datasets as datasets_module

NUM_FEATURES = 5
NUM_CLASSES = 3
NUM_EXAMPLES = 23
TINY_MLP = tasks.MLP(hidden=(8,), num_classes=NUM_CLASSES)


def _toy_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_EXAMPLES, NUM_FEATURES)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=NUM_EXAMPLES).astype(np.int32)
    return x, y


def _agent(params_stacked, i):
    return jax.tree.map(lambda leaf: leaf[i], params_stacked)


def _assert_trees_close(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(leaf_a, leaf_b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# MNIST-1D and digits
# ---------------------------------------------------------------------------------------------


def _check_dataset(data, name, feature_shape, num_train, num_test):
    assert isinstance(data, tasks.Dataset)
    assert data.name == name and data.num_classes == 10
    assert data.x_train.shape == (num_train, *feature_shape)
    assert data.x_test.shape == (num_test, *feature_shape)
    assert data.y_train.shape == (num_train,) and data.y_test.shape == (num_test,)
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int32 and data.y_test.dtype == np.int32
    for labels in (data.y_train, data.y_test):
        assert labels.min() >= 0 and labels.max() < data.num_classes
    assert np.isfinite(data.x_train).all() and np.isfinite(data.x_test).all()


def test_mnist1d_shapes_and_standardization():
    data = tasks.load_mnist1d()
    _check_dataset(data, "mnist1d", (40,), 4000, 1000)
    assert set(np.unique(data.y_train)) == set(range(10))
    np.testing.assert_allclose(data.x_train.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(), 1.0, rtol=1e-5)


def test_mnist1d_deterministic_and_subsampled():
    full = tasks.load_mnist1d()
    first = tasks.load_mnist1d(num_train=300, seed=3)
    again = tasks.load_mnist1d(num_train=300, seed=3)
    other = tasks.load_mnist1d(num_train=300, seed=4)
    _check_dataset(first, "mnist1d", (40,), 300, 1000)
    for a, b in zip(first[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.y_train, other.y_train)
    np.testing.assert_allclose(first.x_train.std(), 1.0, rtol=1e-5)

    # The subsample is a subset of the full training set: undo each standardization and match.
    raw_x, raw_y, _, _ = datasets_module._generate_mnist1d()
    rng = np.random.default_rng(3)
    keep = np.sort(rng.choice(4000, size=300, replace=False))
    np.testing.assert_array_equal(first.y_train, raw_y[keep])
    np.testing.assert_allclose(
        first.x_train * raw_x[keep].std() + raw_x[keep].mean(), raw_x[keep], atol=1e-5
    )
    np.testing.assert_allclose(full.x_train * raw_x.std() + raw_x.mean(), raw_x, atol=1e-5)


def test_mnist1d_leaves_global_random_state_alone(monkeypatch):
    monkeypatch.setenv("COUPLED_SGD_CACHE", "")  # generate, do not read the disk cache
    datasets_module._generate_mnist1d.cache_clear()
    np.random.seed(123)
    random.seed(123)
    tasks.load_mnist1d(num_train=10)
    after = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert after == (np.random.rand(), random.random())


def test_mnist1d_disk_cache_round_trip_and_bad_files(tmp_path, monkeypatch):
    # The generator is replaced by a cheap stand-in of the right shapes and dtypes that counts
    # its calls: what is tested is the cache (write, read back, reject bad files), not
    # MNIST-1D itself (the other tests load the real arrays).
    rng = np.random.default_rng(0)
    fake = (
        rng.normal(size=(datasets_module.MNIST1D_NUM_TRAIN, datasets_module.MNIST1D_LENGTH)),
        rng.integers(0, 10, datasets_module.MNIST1D_NUM_TRAIN).astype(np.int32),
        rng.normal(size=(7, datasets_module.MNIST1D_LENGTH)),
        rng.integers(0, 10, 7).astype(np.int32),
    )
    calls = []
    monkeypatch.setattr(datasets_module, "_make_mnist1d", lambda: calls.append(1) or fake)
    monkeypatch.setenv("COUPLED_SGD_CACHE", str(tmp_path))
    path = datasets_module.mnist1d_cache_path()
    assert path.startswith(str(tmp_path)) and path.endswith(".npz")
    datasets_module._generate_mnist1d.cache_clear()
    try:
        first = datasets_module._generate_mnist1d()  # generates and writes the file
        assert len(calls) == 1 and os.path.exists(path)
        datasets_module._generate_mnist1d.cache_clear()
        again = datasets_module._generate_mnist1d()  # read back from disk, not regenerated
        assert len(calls) == 1
        for a, b, c in zip(first, again, fake):
            np.testing.assert_array_equal(a, c)
            np.testing.assert_array_equal(b, c)
            assert b.dtype == c.dtype
        # A truncated or foreign file is not trusted: it is regenerated and rewritten.
        with open(path, "wb") as f:
            f.write(b"not an npz")
        assert datasets_module._read_mnist1d_cache(path) is None
        np.savez(path, x=np.zeros((3, 40)), y=np.zeros(3, np.int32), x_test=np.zeros((1, 40)),
                 y_test=np.zeros(1, np.int32))  # fmt: skip
        assert datasets_module._read_mnist1d_cache(path) is None
        datasets_module._generate_mnist1d.cache_clear()
        datasets_module._generate_mnist1d()
        assert len(calls) == 2 and datasets_module._read_mnist1d_cache(path) is not None
        # An empty setting disables the disk cache.
        monkeypatch.setenv("COUPLED_SGD_CACHE", "")
        assert datasets_module.mnist1d_cache_path() is None
    finally:
        datasets_module._generate_mnist1d.cache_clear()


@pytest.mark.parametrize("num_train", [0, 4001, 2.5])
def test_mnist1d_rejects_bad_num_train(num_train):
    with pytest.raises((ValueError, TypeError), match="num_train"):
        tasks.load_mnist1d(num_train=num_train)


def test_digits_shapes_range_and_determinism():
    data = tasks.load_digits(seed=1, test_fraction=0.25)
    num_test = 450  # ceil(0.25 * 1797)
    _check_dataset(data, "digits", (64,), 1797 - num_test, num_test)
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    again = tasks.load_digits(seed=1, test_fraction=0.25)
    for a, b in zip(data[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    other = tasks.load_digits(seed=2, test_fraction=0.25)
    assert not np.array_equal(data.y_test, other.y_test)
    with pytest.raises(ValueError, match="test_fraction"):
        tasks.load_digits(test_fraction=1.0)


def test_load_dispatches_and_rejects_unknown_names():
    data = tasks.load("digits", seed=0)
    assert data.name == "digits"
    with pytest.raises(ValueError, match="'imagenet'.*mnist1d, digits, cifar10"):
        tasks.load("imagenet")


# ---------------------------------------------------------------------------------------------
# CIFAR-10 binary format
# ---------------------------------------------------------------------------------------------

CIFAR_FILES = (*datasets_module.CIFAR10_TRAIN_FILES, datasets_module.CIFAR10_TEST_FILE)


def _cifar_records(file_index, num_records):
    """Known labels and channel-major images for one fake batch file."""
    labels = (np.arange(num_records) + file_index) % 10
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    images = np.stack(
        [(100 * c + 3 * h + w + 7 * r + 11 * file_index) % 256 for r in range(num_records)]
    ).astype(np.uint8)
    return labels.astype(np.uint8), images  # images: (n, 3, 32, 32)


def _write_cifar(directory, num_records=(2, 3, 1, 2, 2, 4)):
    os.makedirs(directory, exist_ok=True)
    expected = {}
    for file_index, (name, count) in enumerate(zip(CIFAR_FILES, num_records)):
        labels, images = _cifar_records(file_index, count)
        records = np.concatenate([labels[:, None], images.reshape(count, -1)], axis=1)
        records.astype(np.uint8).tofile(os.path.join(directory, name))
        expected[name] = (labels, images)
    return expected


def _expected_split(expected, names):
    labels = np.concatenate([expected[name][0] for name in names]).astype(np.int32)
    images = np.concatenate([expected[name][1] for name in names]).transpose(0, 2, 3, 1)
    return labels, images.astype(np.float32) / 255.0


def test_cifar10_reads_labels_and_hwc_pixels(tmp_path):
    expected = _write_cifar(tmp_path)
    data = tasks.load_cifar10(tmp_path, normalize=False)
    _check_dataset(data, "cifar10", (32, 32, 3), 10, 4)
    y_train, x_train = _expected_split(expected, CIFAR_FILES[:5])
    y_test, x_test = _expected_split(expected, CIFAR_FILES[5:])
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.y_test, y_test)
    np.testing.assert_array_equal(data.x_train, x_train)
    np.testing.assert_array_equal(data.x_test, x_test)
    # Spot-check the layout by hand: pixel (h, w, c) of record r in file 0 is 100c + 3h + w + 7r.
    assert data.x_train[1, 5, 9, 2] * 255.0 == pytest.approx((200 + 15 + 9 + 7) % 256)


def test_cifar10_normalizes_per_channel_with_train_stats(tmp_path):
    expected = _write_cifar(tmp_path / "cifar-10-batches-bin")
    data = tasks.load_cifar10(tmp_path)  # finds the nested release folder
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=(0, 1, 2)), 1.0, rtol=1e-5)
    _, x_train = _expected_split(expected, CIFAR_FILES[:5])
    _, x_test = _expected_split(expected, CIFAR_FILES[5:])
    mean, std = x_train.mean(axis=(0, 1, 2)), x_train.std(axis=(0, 1, 2))
    np.testing.assert_allclose(data.x_test, (x_test - mean) / std, rtol=1e-5, atol=1e-5)


def test_cifar10_train_batches_reads_only_the_first_files(tmp_path):
    expected = _write_cifar(tmp_path)
    for name in CIFAR_FILES[2:5]:
        os.remove(tmp_path / name)
    data = tasks.load_cifar10(tmp_path, train_batches=2, normalize=False)
    np.testing.assert_array_equal(data.y_train, _expected_split(expected, CIFAR_FILES[:2])[0])
    with pytest.raises(ValueError, match="train_batches"):
        tasks.load_cifar10(tmp_path, train_batches=6)


def test_cifar10_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        tasks.load_cifar10(missing)


def test_cifar10_missing_files_are_listed(tmp_path):
    _write_cifar(tmp_path)
    os.remove(tmp_path / "data_batch_3.bin")
    os.remove(tmp_path / "test_batch.bin")
    with pytest.raises(FileNotFoundError) as info:
        tasks.load_cifar10(tmp_path)
    message = str(info.value)
    assert "data_batch_3.bin, test_batch.bin" in message and str(tmp_path) in message
    assert "data_batch_2.bin," not in message.split("(expected")[0]


def test_cifar10_truncated_file(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_4.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    with pytest.raises(tasks.CorruptDataError, match=f"data_batch_4.bin has {len(raw) - 5} bytes"):
        tasks.load_cifar10(tmp_path)
    path.write_bytes(b"")
    with pytest.raises(tasks.CorruptDataError, match="data_batch_4.bin has 0 bytes"):
        tasks.load_cifar10(tmp_path)


def test_cifar10_bad_label_byte(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_2.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 10  # label byte of record 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="data_batch_2.bin has label byte 10 > 9 in record 1"):
        tasks.load_cifar10(tmp_path)


# ---------------------------------------------------------------------------------------------
# Models and stacked initialization
# ---------------------------------------------------------------------------------------------


def _num_params(params):
    return sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "model, input_shape, num_params",
    [
        (tasks.MLP(hidden=(16, 8), num_classes=10), (2, 8, 8), 64 * 16 + 16 + 16 * 8 + 8 + 90),
        (tasks.CNN1D(), (2, 40), 8010),
        (tasks.CNN2D(), (2, 32, 32, 3), 89578),
    ],
)
def test_models_give_logits(getkey, model, input_shape, num_params):
    x = jnp.ones(input_shape, jnp.float32)
    params = model.init(getkey(), x)
    assert _num_params(params) == num_params
    logits = jax.jit(model.apply)(params, x)
    assert logits.shape == (input_shape[0], 10)
    assert jnp.isfinite(logits).all()


def test_init_stacked_independent_and_same(getkey):
    x = jnp.zeros((1, NUM_FEATURES), jnp.float32)
    key = getkey()
    independent = tasks.init_stacked(TINY_MLP, key, 3, x)
    same = tasks.init_stacked(TINY_MLP, key, 3, x, same_init=True)
    single = TINY_MLP.init(key, x)
    for stacked in (independent, same):
        assert jax.tree.structure(stacked) == jax.tree.structure(single)
        for leaf, one in zip(jax.tree.leaves(stacked), jax.tree.leaves(single)):
            assert leaf.shape == (3, *one.shape)
    kernels = independent["params"]["Dense_0"]["kernel"]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])
    _assert_trees_close(_agent(independent, 1), TINY_MLP.init(jr.split(key, 3)[1], x), 0, 0)
    for i in range(3):
        _assert_trees_close(_agent(same, i), single, 0, 0)


@pytest.mark.parametrize("num_agents", [0, -2, 1.5])
def test_init_stacked_rejects_bad_num_agents(getkey, num_agents):
    with pytest.raises(ValueError, match="num_agents"):
        tasks.init_stacked(TINY_MLP, getkey(), num_agents, jnp.zeros((1, NUM_FEATURES)))


# ---------------------------------------------------------------------------------------------
# Minibatch oracle
# ---------------------------------------------------------------------------------------------


def _drawn_indices(key, step, agent, batch_size):
    """The documented sampling rule, reconstructed independently of the oracle."""
    agent_key = jr.fold_in(jr.fold_in(key, step), agent)
    return jr.randint(agent_key, (batch_size,), 0, NUM_EXAMPLES)


@pytest.mark.parametrize("legacy_key", [False, True])
def test_oracle_matches_direct_gradients(getkey, legacy_key):
    x, y = _toy_data()
    batch_size, num_agents, step = 4, 3, 7
    params = tasks.init_stacked(TINY_MLP, getkey(), num_agents, x[:1])
    key = jr.PRNGKey(5) if legacy_key else getkey()
    oracle = jax.jit(tasks.minibatch_oracle(TINY_MLP, x, y, batch_size))
    losses, grads = oracle(params, key, jnp.int32(step))
    assert losses.shape == (num_agents,)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params)):
        assert g.shape == p.shape

    loss_fn = tasks.cross_entropy_loss(TINY_MLP)
    for i in range(num_agents):
        idx = _drawn_indices(key, step, i, batch_size)
        loss_i, grad_i = jax.value_and_grad(loss_fn)(_agent(params, i), x[idx], y[idx])
        np.testing.assert_allclose(losses[i], loss_i, rtol=1e-5, atol=1e-6)
        _assert_trees_close(_agent(grads, i), grad_i, rtol=1e-5, atol=1e-6)


def test_oracle_agents_and_steps_draw_different_minibatches(getkey):
    x, y = _toy_data()
    params = tasks.init_stacked(TINY_MLP, getkey(), 3, x[:1], same_init=True)
    key = getkey()
    oracle = jax.jit(tasks.minibatch_oracle(TINY_MLP, x, y, batch_size=5))
    losses, grads = oracle(params, key, 0)
    # Same parameters everywhere, so any difference comes from the minibatches.
    assert len(set(np.asarray(losses).tolist())) == 3
    kernel = grads["params"]["Dense_0"]["kernel"]
    assert not np.allclose(kernel[0], kernel[1])
    next_losses, _ = oracle(params, key, 1)
    assert not np.allclose(losses, next_losses)
    assert not np.array_equal(_drawn_indices(key, 0, 0, 5), _drawn_indices(key, 0, 1, 5))


def test_oracle_agent_stream_does_not_depend_on_num_agents(getkey):
    x, y = _toy_data()
    init_key, key = getkey(), getkey()
    oracle = jax.jit(tasks.minibatch_oracle(TINY_MLP, x, y, batch_size=4))
    two = oracle(tasks.init_stacked(TINY_MLP, init_key, 2, x[:1], same_init=True), key, 3)
    four = oracle(tasks.init_stacked(TINY_MLP, init_key, 4, x[:1], same_init=True), key, 3)
    np.testing.assert_allclose(two[0], four[0][:2], rtol=1e-6)


def test_oracle_inside_scan_matches_python_loop(getkey):
    x, y = _toy_data()
    params = tasks.init_stacked(TINY_MLP, getkey(), 2, x[:1])
    key = getkey()
    oracle = tasks.minibatch_oracle(TINY_MLP, x, y, batch_size=6)
    learning_rate = 0.1

    def sgd_step(params, step):
        losses, grads = oracle(params, key, step)
        return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), losses

    final, losses = jax.jit(lambda p: jax.lax.scan(sgd_step, p, jnp.arange(5)))(params)
    assert losses.shape == (5, 2)
    looped = params
    for step in range(5):
        looped, step_losses = jax.jit(sgd_step)(looped, jnp.int32(step))
        np.testing.assert_allclose(losses[step], step_losses, rtol=1e-5, atol=1e-6)
    _assert_trees_close(final, looped, rtol=1e-5, atol=1e-6)


def test_oracle_validation():
    x, y = _toy_data()
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        tasks.minibatch_oracle(TINY_MLP, x, y, 0)
    with pytest.raises(ValueError, match=f"batch_size 24 exceeds the training set size {23}"):
        tasks.minibatch_oracle(TINY_MLP, x, y, 24)
    with pytest.raises(ValueError, match="x_train has 22 examples but y_train has 23"):
        tasks.minibatch_oracle(TINY_MLP, x[:-1], y, 4)
    with pytest.raises(ValueError, match="integer labels"):
        tasks.minibatch_oracle(TINY_MLP, x, y.astype(np.float32), 4)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 5, 23, 100])
def test_evaluate_matches_loop_over_agents(getkey, batch_size):
    x, y = _toy_data(seed=1)
    params = tasks.init_stacked(TINY_MLP, getkey(), 3, x[:1])
    evaluate = jax.jit(tasks.evaluate, static_argnums=0, static_argnames="batch_size")
    loss, acc = evaluate(TINY_MLP, params, x, y, batch_size=batch_size)
    assert loss.shape == (3,) and acc.shape == (3,)
    loss_fn = tasks.cross_entropy_loss(TINY_MLP)
    accuracy_fn = tasks.accuracy(TINY_MLP)
    for i in range(3):
        np.testing.assert_allclose(loss[i], loss_fn(_agent(params, i), x, y), rtol=1e-5)
        logits = TINY_MLP.apply(_agent(params, i), x)
        by_hand = np.mean(np.argmax(np.asarray(logits), axis=1) == y)
        np.testing.assert_allclose(acc[i], by_hand, rtol=1e-6)
        np.testing.assert_allclose(acc[i], accuracy_fn(_agent(params, i), x, y), rtol=1e-6)


def test_evaluate_validation(getkey):
    x, y = _toy_data()
    params = tasks.init_stacked(TINY_MLP, getkey(), 2, x[:1])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        tasks.evaluate(TINY_MLP, params, x, y, batch_size=0)
    with pytest.raises(ValueError, match="shapes"):
        tasks.evaluate(TINY_MLP, params, x[:-1], y)


@pytest.mark.parametrize("input_shape", [(3, 40), (2, 13, 2), (2, 41, 1)])
def test_patch_cnn1d_is_cnn1d(getkey, input_shape):
    # Oracle: CNN1D's XLA convolutions. Same parameters from the same key, same logits and
    # gradients on any length (odd lengths exercise the asymmetric SAME padding).
    x = jr.normal(getkey(), input_shape, jnp.float32)
    key = getkey()
    params = tasks.CNN1D().init(key, x)
    _assert_trees_close(tasks.PatchCNN1D().init(key, x), params, rtol=0, atol=0)
    np.testing.assert_allclose(
        jax.jit(tasks.PatchCNN1D().apply)(params, x),
        jax.jit(tasks.CNN1D().apply)(params, x),
        rtol=1e-5,
        atol=1e-5,
    )
    y = jnp.arange(input_shape[0]) % 10
    grads = [
        jax.jit(jax.grad(tasks.cross_entropy_loss(m)))(params, x, y)
        for m in (tasks.PatchCNN1D(), tasks.CNN1D())
    ]
    _assert_trees_close(*grads, rtol=1e-4, atol=1e-5)
