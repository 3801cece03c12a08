"""The README tour and the docs/ tutorials: every ```python block runs, in order, per file."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The tutorials are self-contained and run top to bottom; docs/scaling.md shows fragments
# for multi-device and multi-host set-ups, which tests/test_sharding.py and
# tests/test_multiprocess.py exercise instead.
TUTORIALS = (
    "coupling_rules.md", "async_rules.md", "adding_an_experiment.md", "sde_models.md", "delays.md",
)  # fmt: skip
DOCS = [ROOT / "README.md", *(ROOT / "docs" / name for name in TUTORIALS)]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_code_blocks_run(path, capsys):
    blocks = BLOCK.findall(path.read_text())
    if path.name == "README.md":
        assert len(blocks) >= 3, "the README tour lost its code blocks"
    namespace: dict = {"__name__": f"doc_{path.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # re-raise naming the block that failed
            raise AssertionError(f"{path.name} block {i} failed: {e!r}\n{code}") from e
    out = capsys.readouterr().out
    if path.name == "README.md":
        # The tour claims the optimizer's path equals the SDE's to rounding, through
        # solve_discrete (line 1) and through run_agents step by step (line 2).
        lines = out.splitlines()
        assert float(lines[1]) < 1e-10 and float(lines[2]) < 1e-10


def test_readme_table_of_verdicts_matches_the_shipped_results(tmp_path):
    """No verdict or number in the README is typed by hand: its table is the one that
    `python -m experiments table` generates from docs/results/ (`make reproduce`)."""
    from experiments.harness.table import results_table, table_in, write_table
    from experiments.registry import EXPERIMENTS

    readme = (ROOT / "README.md").read_text()
    assert table_in(readme) == results_table(ROOT / "docs" / "results", EXPERIMENTS), (
        "README.md's table is stale: run `python -m experiments table`"
    )
    # and the check can fail: a README whose table disagrees is rewritten
    stale = tmp_path / "README.md"
    table = table_in(readme)
    stale.write_text(readme.replace(table, table + "\n| a row | typed | by | hand | holds |"))
    assert write_table(stale, ROOT / "docs" / "results", EXPERIMENTS)
    assert stale.read_text() == readme


def test_make_reproduce_parts_cover_every_experiment_once():
    """`make reproduce` is split into independent parts: together they run every registered
    experiment exactly once."""
    from experiments.registry import EXPERIMENTS

    makefile = (ROOT / "Makefile").read_text()
    parts = re.findall(r"^REPRODUCE_\d+ = (.*)$", makefile, re.MULTILINE)
    names = [name for part in parts for name in part.split()]
    assert len(parts) >= 2 and sorted(names) == sorted(m.NAME for m in EXPERIMENTS)


def test_readme_benchmark_table_is_generated_from_the_shipped_json():
    from benchmarks import plot

    results = ROOT / "benchmarks" / "results"
    assert sorted(p.stem for p in results.glob("*.json")), "no shipped benchmark results"
    assert plot.update_readme(ROOT / "README.md", results, check=True), (
        "README.md's benchmark table is stale: run `python -m benchmarks.plot --readme README.md`"
    )
