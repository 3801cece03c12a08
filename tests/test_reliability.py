"""Reliability: bad configs, killed and resumed runs, checkpointed segments."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments.harness.cache as cache_module
from algorithms import easgd, landscape_oracle, run_agents
from dynamics import IsotropicNoise, LogCoshQuadratic
from experiments.__main__ import main

TINY_NOISE = [
    "--set", "agent_counts=1,2", "--set", "gains=0,1", "--set", "runs=4",
    "--set", "burn_in=0.5", "--set", "sample_time=1", "--set", "spread_agents=2",
]  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "message"),
    (
        ("learning_rate=-0.1", "learning_rate must be > 0"),
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


def test_killed_experiment_resumes_with_the_same_metrics(tmp_path, monkeypatch, capsys):
    args = ["run", "noise_reduction", "--quick", "--quiet", "--seed", "1", *TINY_NOISE]
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / "clean/noise_reduction/metrics.json").read_text())

    # Kill the second run after three finished pieces.
    original = cache_module.RunCache.cached
    count = {"n": 0}

    def dying(self, name, fn):
        if count["n"] == 3:
            raise KeyboardInterrupt
        count["n"] += 1
        return original(self, name, fn)

    monkeypatch.setattr(cache_module.RunCache, "cached", dying)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(tmp_path / "killed")])
    assert not (tmp_path / "killed/noise_reduction/metrics.json").exists()
    monkeypatch.setattr(cache_module.RunCache, "cached", original)

    computed = []
    monkeypatch.setattr(
        cache_module.RunCache,
        "cached",
        lambda self, name, fn: original(self, name, lambda: computed.append(name) or fn()),
    )
    assert main([*args, "--out", str(tmp_path / "killed")]) == 0
    resumed = json.loads((tmp_path / "killed/noise_reduction/metrics.json").read_text())
    assert len(computed) == 12 - 3  # the three finished pieces were not recomputed
    for key in ("var_mean_rel_err_max", "spread_rel_err_max", "claims"):
        assert resumed[key] == clean[key]


def test_checkpointed_segments_resume_to_the_uninterrupted_result(tmp_path, monkeypatch):
    f = LogCoshQuadratic(2, 0.1)
    x0, key = jnp.ones((4, 2)), jax.random.key(0)
    oracle = landscape_oracle(f, IsotropicNoise(0.5))
    opt = easgd(0.1, 1.0, momentum=0.9)
    full = run_agents(opt, x0, oracle, num_steps=60, key=key, record_every=5)

    calls = {"n": 0}
    original = cache_module.run_agents

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # killed during the third of four segments
            raise KeyboardInterrupt
        return original(*a, **k)

    kwargs = dict(num_steps=60, key=key, record_every=5, checkpoint_every=15)
    monkeypatch.setattr(cache_module, "run_agents", dying)
    with pytest.raises(KeyboardInterrupt):
        cache_module.RunCache(tmp_path, quiet=True).run_agents("train", opt, x0, oracle, **kwargs)
    assert (tmp_path / "train.ckpt" / "done_000002").exists()
    monkeypatch.setattr(cache_module, "run_agents", original)
    resumed = cache_module.RunCache(tmp_path, quiet=True).run_agents(
        "train", opt, x0, oracle, **kwargs
    )
    np.testing.assert_array_equal(resumed.metrics["params"], full.metrics["params"])
    np.testing.assert_array_equal(resumed.steps, full.steps)
    np.testing.assert_array_equal(resumed.params, full.params)
    # Finished: the next call loads the stored result without running anything.
    again = cache_module.RunCache(tmp_path, quiet=True).run_agents(
        "train", opt, x0, oracle, **kwargs
    )
    np.testing.assert_array_equal(again.metrics["losses"], full.metrics["losses"])


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


def test_report_shows_a_claim_that_does_not_hold(tmp_path):
    import types

    from experiments.harness.report import write_report

    module = types.SimpleNamespace(NAME="toy", DESCRIPTION="a toy experiment")
    d = tmp_path / "toy"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"config": {"a": 1}}))
    claims = [
        {"id": "good", "statement": "s", "value": 0.1, "target": "< 1", "holds": True},
        {"id": "bad", "statement": "s", "value": 2.0, "target": "< 1", "holds": False},
    ]
    metrics = {"experiment": "toy", "quick": True, "seed": 4, "wall_seconds": 1.5,
               "claims": claims, "figures": []}  # fmt: skip
    (d / "metrics.json").write_text(json.dumps(metrics))
    missing = types.SimpleNamespace(NAME="never_run", DESCRIPTION="not run")
    html_path, md_path = write_report(tmp_path, (module, missing))
    page, md = html_path.read_text(), md_path.read_text()
    assert "SOME CLAIMS DO NOT HOLD" in page and "<tr class='fail'>" in page
    assert "| bad | s | 2 | < 1 | DOES NOT HOLD |" in md and "seed 4" in md
    assert "never_run: not run" in md and "jax" in md  # missing runs and package versions


def test_more_softsync_groups_than_workers_is_rejected(tmp_path, capsys):
    args = ["run", "staleness_aware", "--quick", "--out", str(tmp_path), "--set", "softsync=1,40"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "got 40" in err and "num_workers=30" in err
    assert not any(tmp_path.iterdir())
