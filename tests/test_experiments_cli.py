"""The experiments contract: CLI, typed overrides, results store, report."""

import json

import pytest

from experiments.__main__ import main
from experiments.harness.config import ConfigError, apply_overrides
from experiments.registry import EXPERIMENTS, get

TINY = {
    "noise_reduction": [
        "agent_counts=1,2", "gains=0,1", "runs=4", "burn_in=0.5", "sample_time=1",
        "spread_agents=2",
    ],
    "continuous_vs_discrete": ["samples=8", "path_time=0.5", "step_sizes=0.125,0.0625"],
}  # fmt: skip


def _sets(name):
    return [a for item in TINY.get(name, []) for a in ("--set", item)]


def test_list_names_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for module in EXPERIMENTS:
        assert module.NAME in out and module.DESCRIPTION in out


# One experiment end to end through the CLI is enough for the contract files (noise_reduction,
# 40 s of compiles, runs in `make test-slow`; its claims' statistics are tested in
# tests/test_experiments_continuous.py).
@pytest.mark.parametrize(
    "name", [pytest.param("noise_reduction", marks=pytest.mark.slow), "continuous_vs_discrete"]
)
def test_run_writes_the_contract_files_and_reuses_them(name, tmp_path, capsys):
    args = ["run", name, "--quick", "--out", str(tmp_path), "--seed", "3", *_sets(name)]
    assert main(args) == 0
    d = tmp_path / name
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["experiment"] == name and metrics["quick"] is True and metrics["seed"] == 3
    assert metrics["wall_seconds"] > 0 and metrics["claims"]
    for c in metrics["claims"]:
        assert set(c) == {"id", "statement", "value", "target", "interval", "verdict"}
        assert c["verdict"] in ("holds", "fails", "inconclusive")
    assert (d / "results.npz").exists() and (d / "config.json").exists()
    for fig in metrics["figures"]:
        assert (d / f"{fig}.png").stat().st_size > 0 and (d / f"{fig}.pdf").exists()
    capsys.readouterr()
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out
    assert main(["report", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert name in page and f"{name}/{metrics['figures'][0]}.png" in page
    md = (tmp_path / "report.md").read_text()
    assert all(c["id"] in md for c in metrics["claims"])


def test_unknown_key_and_wrong_type_are_rejected_with_names(tmp_path, capsys):
    assert main(["run", "noise_reduction", "--out", str(tmp_path), "--set", "sigmaa=1"]) == 2
    err = capsys.readouterr().err
    assert "sigmaa" in err and "allowed" in err and "sigma" in err
    assert main(["run", "noise_reduction", "--out", str(tmp_path), "--set", "runs=many"]) == 2
    assert "runs must be int" in capsys.readouterr().err
    assert main(["run", "noise_reduction", "--out", str(tmp_path), "--set", "sigma=-1"]) == 2
    assert "sigma must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "noise_reduction").exists()  # nothing written for a bad config
    assert main(["run", "no_such_experiment", "--out", str(tmp_path)]) == 2
    assert "known:" in capsys.readouterr().err


def test_overrides_parse_tuples_bools_and_optionals():
    module = get("noise_reduction")
    cfg = apply_overrides(module.Config(), {"agent_counts": "1,4", "sigma": "0.25"})
    assert cfg.agent_counts == (1, 4) and cfg.sigma == 0.25
    with pytest.raises(ConfigError, match="not a nested config"):
        apply_overrides(module.Config(), {"sigma.x": "1"})


def test_show_config_lists_fields(capsys):
    assert main(["run", "continuous_vs_discrete", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "step_sizes" in out and "default" in out
