"""Reliability: bad configs, killed and resumed runs, checkpointed segments."""

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

import experiments.harness.cache as cache_module
from algorithms import easgd, landscape_oracle, run_agents
from dynamics import IsotropicNoise, LogCoshQuadratic
from experiments.__main__ import main
from experiments.harness.cli import main as harness_main
from experiments.harness.contract import claim_less


@pytest.mark.parametrize(
    ("setting", "message"),
    (
        ("gradient_scale=-0.1", "gradient_scale must be > 0"),
        ("agent_counts=0,2", "N >= 1"),
        ("gains=-1,1", "gains must be >= 0"),
        ("no_such_field=3", "unknown config key 'no_such_field'"),
        ("runs=2.5", "runs must be int"),
    ),
)
def test_bad_config_is_rejected_before_running(setting, message, tmp_path, capsys):
    assert main(["run", "noise_reduction", "--out", str(tmp_path), "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


# A small real experiment with five cached pieces (two schedules × two delays, and a
# control), each a few compiled programs, for the kill-and-resume check in `make test-slow`.
TINY_ASYNC_GENERALIZATION = [
    "--set", "tau_maxes=0,2", "--set", "num_train=32", "--set", "hidden=8",
    "--set", "num_steps=20", "--set", "scaled_num_steps=10", "--set", "evals=2",
    "--set", "seeds=2", "--set", "batch_size=8", "--set", "loss_level=2.0",
]  # fmt: skip


def _toy_experiment():
    """A complete experiment module in miniature: five cached pieces of random draws."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        pieces: int = 5
        draws: int = 64

    def run(config, key, cache):
        rows = [
            cache.cached(
                f"piece{i}",
                lambda i=i: {"x": np.asarray(jax.random.normal(jax.random.fold_in(key, i),
                                                               (config.draws,)))},
            )["x"]
            for i in range(config.pieces)
        ]  # fmt: skip
        return {"x": np.stack(rows)}

    def metrics(results, config):
        return {"mean": float(results["x"].mean()), "std": float(results["x"].std())}

    def claims(results, config):
        return [claim_less("mean_small", "|mean| < 1", abs(float(results["x"].mean())), 1.0)]

    def plot(results, config):
        fig = Figure()
        fig.add_subplot().hist(results["x"].ravel())
        return {"toy": fig}

    return types.SimpleNamespace(
        NAME="toy", DESCRIPTION="five cached pieces", Config=Config, QUICK={}, run=run,
        metrics=metrics, claims=claims, plot=plot,
    )  # fmt: skip


def _kill_and_resume(run_cli, name, args, tmp_path, monkeypatch):
    """Run clean; run again killed after two finished pieces; resume. Returns the two
    metrics (without wall time) and checks that the resumed run computed only the rest."""
    original = cache_module.RunCache.cached

    def counting(into):
        def cached(self, piece, fn):
            return original(self, piece, lambda: into.append(piece) or fn())

        return cached

    pieces = []
    monkeypatch.setattr(cache_module.RunCache, "cached", counting(pieces))
    assert run_cli([*args, "--out", str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / f"clean/{name}/metrics.json").read_text())
    assert len(pieces) == len(set(pieces)) >= 4

    # Kill the second run after two finished pieces.
    count = {"n": 0}

    def dying(self, piece, fn):
        if count["n"] == 2:
            raise KeyboardInterrupt
        count["n"] += 1
        return original(self, piece, fn)

    monkeypatch.setattr(cache_module.RunCache, "cached", dying)
    with pytest.raises(KeyboardInterrupt):
        run_cli([*args, "--out", str(tmp_path / "killed")])
    assert not (tmp_path / f"killed/{name}/metrics.json").exists()

    computed = []
    monkeypatch.setattr(cache_module.RunCache, "cached", counting(computed))
    assert run_cli([*args, "--out", str(tmp_path / "killed")]) == 0
    resumed = json.loads((tmp_path / f"killed/{name}/metrics.json").read_text())
    assert computed == pieces[2:]  # the two finished pieces were not recomputed
    del clean["wall_seconds"], resumed["wall_seconds"]
    return clean, resumed


def test_killed_experiment_resumes_with_the_same_metrics(tmp_path, monkeypatch):
    toy = _toy_experiment()
    clean, resumed = _kill_and_resume(
        lambda argv: harness_main(argv, (toy,)), "toy", ["run", "toy", "--quiet", "--seed", "1"],
        tmp_path, monkeypatch,
    )  # fmt: skip
    assert resumed == clean and clean["claims"][0]["verdict"] == "holds"
    saved = np.load(tmp_path / "killed/toy/results.npz")["x"]
    assert np.array_equal(saved, np.load(tmp_path / "clean/toy/results.npz")["x"])


@pytest.mark.slow  # 25-50 s on two cores; the toy experiment above checks the same in 2 s
def test_killed_real_experiment_resumes_with_the_same_metrics(tmp_path, monkeypatch):
    name = "async_generalization"
    args = ["run", name, "--quick", "--quiet", "--seed", "1", *TINY_ASYNC_GENERALIZATION]
    clean, resumed = _kill_and_resume(main, name, args, tmp_path, monkeypatch)
    assert resumed == clean


@pytest.mark.parametrize("batched", (False, True), ids=("one_run", "batched_seeds"))
def test_checkpointed_segments_resume_to_the_uninterrupted_result(batched, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    f = LogCoshQuadratic(2, 0.1)
    oracle = landscape_oracle(f, IsotropicNoise(0.5))
    opt = easgd(0.1, 1.0, momentum=0.9)
    if batched:  # three independent runs (seeds), each of four agents
        x0 = jax.random.normal(jax.random.key(1), (3, 4, 2))
        key = jax.random.split(jax.random.key(0), 3)
        full = jax.vmap(
            lambda p, k: run_agents(opt, p, oracle, num_steps=60, key=k, record_every=5)
        )(x0, key)
    else:
        x0, key = jnp.ones((4, 2)), jax.random.key(0)
        full = run_agents(opt, x0, oracle, num_steps=60, key=key, record_every=5)

    calls = {"n": 0}
    original = cache_module.run_agents

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # killed during the third of four segments
            raise KeyboardInterrupt
        return original(*a, **k)

    kwargs = dict(num_steps=60, key=key, record_every=5, checkpoint_every=15, batched=batched)
    monkeypatch.setattr(cache_module, "run_agents", dying)
    with pytest.raises(KeyboardInterrupt):
        cache_module.RunCache(tmp_path, quiet=True).run_agents("train", opt, x0, oracle, **kwargs)
    # Two segments were finished and checkpointed; the third is lost.
    with ocp.CheckpointManager((tmp_path / "train.ckpt").absolute()) as manager:
        assert manager.all_steps() == [2]
    monkeypatch.setattr(cache_module, "run_agents", original)
    cache = cache_module.RunCache(tmp_path, quiet=True)
    resumed = cache.run_agents("train", opt, x0, oracle, **kwargs)
    assert cache.computed == ["train"]
    for field in ("params", "steps", "metrics", "trace", "diverged_step", "opt_state"):
        got, want = getattr(resumed, field), getattr(full, field)
        if field == "steps" and batched:
            want = want[0]
        jax.tree.map(np.testing.assert_array_equal, got, want)  # bitwise, every leaf
    # Finished: the next call restores the stored result without running anything.
    monkeypatch.setattr(cache_module, "run_agents", lambda *a, **k: 1 / 0)
    cache = cache_module.RunCache(tmp_path, quiet=True)
    again = cache.run_agents("train", opt, x0, oracle, **kwargs)
    assert cache.computed == []
    np.testing.assert_array_equal(again.metrics["losses"], full.metrics["losses"])
    jax.tree.map(np.testing.assert_array_equal, again.opt_state, full.opt_state)


def test_checkpointing_needs_whole_segments_and_a_cache_without_directory_writes_nothing(
    tmp_path, monkeypatch
):
    f = LogCoshQuadratic(2, 0.1)
    oracle, opt = landscape_oracle(f, IsotropicNoise(0.5)), easgd(0.1, 1.0)
    x0, key = jnp.ones((4, 2)), jax.random.key(0)
    cache = cache_module.RunCache(tmp_path, quiet=True)
    for every in (7, 40, 0):
        with pytest.raises(ValueError, match=f"checkpoint_every \\({every}\\)"):
            cache.run_agents(
                "x", opt, x0, oracle, num_steps=60, key=key, record_every=5, checkpoint_every=every
            )
    monkeypatch.chdir(tmp_path)
    memory = cache_module.RunCache(None, quiet=True)
    res = memory.run_agents(
        "x", opt, x0, oracle, num_steps=60, key=key, record_every=5, checkpoint_every=20
    )
    full = run_agents(opt, x0, oracle, num_steps=60, key=key, record_every=5)
    np.testing.assert_array_equal(res.metrics["params"], full.metrics["params"])
    assert memory.cached("piece", lambda: {"a": 1.0})["a"] == 1.0
    assert not any(tmp_path.iterdir())  # nothing written anywhere


def test_corrupt_dataset_gives_a_clear_error_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "cifar"
    data.mkdir()
    record = bytes([3]) + bytes(3072)  # one valid record: label byte + 3×32×32 pixels
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (data / name).write_bytes(record * 2)
    (data / "data_batch_3.bin").write_bytes(record * 2 + b"\x01\x02")  # truncated record
    out = tmp_path / "results"
    args = ["run", "easgd_regularization", "--quick", "--quiet", "--out", str(out),
            "--set", "tasks=cifar10", "--set", f"data_dir={data}"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "data_batch_3.bin" in err and "3073" in err
    assert not out.exists()  # nothing written: no directory, no cache, no partial results


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    from experiments.harness.files import atomic_write

    target = tmp_path / "metrics.json"
    target.write_text("old")

    def failing(fh):
        fh.write(b"half of the new cont")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left


def test_progress_bar_shows_rate_and_time_left_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    import sys

    cache = cache_module.RunCache(tmp_path)
    assert cache.progress(range(3), desc="x").disable  # pytest's stderr is not a terminal
    assert cache_module.RunCache(tmp_path, quiet=True).progress(range(3), desc="x").disable
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = cache.progress(range(3), desc="cells", unit="cell")
    assert not bar.disable
    list(bar)
    err = capsys.readouterr().err
    assert "cells" in err and "3/3" in err and "cell/s" in err and "<" in err  # rate, time left


def test_report_shows_every_verdict_distinctly(tmp_path):
    import types

    from experiments.harness.report import write_report

    module = types.SimpleNamespace(NAME="toy", DESCRIPTION="a toy experiment")
    d = tmp_path / "toy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"config": {"a": 1}}))
    claims = [
        {"id": "good", "statement": "s", "value": 0.1, "target": "< 1", "interval": None,
         "verdict": "holds"},
        {"id": "bad", "statement": "s", "value": 2.0, "target": "< 1", "interval": [1.5, 2.5],
         "verdict": "fails"},
        {"id": "unsure", "statement": "s", "value": 0.9, "target": "< 1",
         "interval": [0.7, 1.1], "verdict": "inconclusive"},
    ]  # fmt: skip
    metrics = {"experiment": "toy", "quick": True, "seed": 4, "wall_seconds": 1.5,
               "claims": claims, "figures": []}  # fmt: skip
    (d / "metrics.json").write_text(json.dumps(metrics))
    missing = types.SimpleNamespace(NAME="never_run", DESCRIPTION="not run")
    html_path, md_path = write_report(tmp_path, (module, missing))
    page, md = html_path.read_text(), md_path.read_text()
    assert "toy: 1/3 hold, 1 fail, 1 inconclusive" in md
    assert "<tr class='fails'>" in page and "<tr class='inconclusive'>" in page
    assert "| bad | s | 2 | [1.5, 2.5] | < 1 | FAILS |" in md and "seed 4" in md
    assert "| unsure | s | 0.9 | [0.7, 1.1] | < 1 | inconclusive |" in md
    assert "| good | s | 0.1 | — | < 1 | holds |" in md
    assert "never_run: not run" in md and "jax" in md  # missing runs and package versions


def test_more_softsync_groups_than_workers_is_rejected(tmp_path, capsys):
    args = ["run", "staleness_aware", "--quick", "--out", str(tmp_path), "--set", "softsync=1,40"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "got 40" in err and "num_workers=30" in err
    assert not any(tmp_path.iterdir())


def test_cached_pieces_keep_their_nesting_and_flat_ones_stay_flat(tmp_path):
    nested = {"quorum": {"sde": {"var": np.arange(3.0)}, "n": np.int32(4)}, "ts": [0.0, 1.0]}
    calls = []

    def compute():
        calls.append(1)
        return nested

    first = cache_module.RunCache(tmp_path, quiet=True).cached("piece", compute)
    again = cache_module.RunCache(tmp_path, quiet=True).cached("piece", compute)
    assert len(calls) == 1  # the second call loaded the stored piece
    for out in (first, again):
        assert set(out) == {"quorum", "ts"} and set(out["quorum"]) == {"sde", "n"}
        np.testing.assert_array_equal(out["quorum"]["sde"]["var"], np.arange(3.0))
        assert out["quorum"]["n"].dtype == np.int32 and out["ts"].tolist() == [0.0, 1.0]
    with np.load(tmp_path / "piece.npz") as data:  # one array per "/"-joined path
        assert sorted(data.files) == ["quorum/n", "quorum/sde/var", "ts"]
    # A flat file (as written before nesting existed) loads as the same flat dict.
    np.savez(tmp_path / "old.npz", a=np.ones(2), b_c=np.zeros(1))
    old = cache_module.RunCache(tmp_path, quiet=True).cached("old", lambda: 1 / 0)
    assert set(old) == {"a", "b_c"} and old["a"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="without '/'"):
        cache_module.RunCache(tmp_path, quiet=True).cached("bad", lambda: {"a/b": 1.0})


def test_results_store_writes_nested_results_and_loads_them_nested(tmp_path):
    import dataclasses
    import types

    from experiments.harness.contract import claim_less
    from experiments.harness.store import load_results, run_experiment

    @dataclasses.dataclass(frozen=True)
    class Config:
        scale: float = 2.0

    seen = {}

    def run(config, key):
        del key
        return {"quorum": {"sde": {"var": config.scale * np.ones(2)}}, "steps": np.arange(2)}

    def claims(results, config):
        seen["claims"] = results
        return [claim_less("var", "s", results["quorum"]["sde"]["var"].max(), 3.0)]

    module = types.SimpleNamespace(
        NAME="toy", Config=Config, run=run, claims=claims, plot=lambda results, config: {},
        metrics=lambda results, config: {"var": results["quorum"]["sde"]["var"][0]},
    )  # fmt: skip
    metrics, reused = run_experiment(module, Config(), seed=0, quick=True, out=tmp_path)
    assert not reused and metrics["var"] == 2.0 and metrics["claims"][0]["verdict"] == "holds"
    assert isinstance(seen["claims"]["quorum"]["sde"]["var"], np.ndarray)
    loaded = load_results(tmp_path / "toy")
    assert set(loaded) == {"quorum", "steps"}
    np.testing.assert_array_equal(loaded["quorum"]["sde"]["var"], [2.0, 2.0])
    with np.load(tmp_path / "toy" / "results.npz") as data:
        assert sorted(data.files) == ["quorum/sde/var", "steps"]
