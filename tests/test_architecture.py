"""The house plan, checked: one-way dependencies between the packages, and every package the
code imports declared in `pyproject.toml`.

Layers (an arrow is "may import"): experiments → algorithms → dynamics; the experiments'
harness (`experiments/harness/`) and tasks (`experiments/tasks/`) never import an
experiment, and no experiment imports another one.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dynamics", "algorithms", "experiments", "benchmarks")
SHARED = {"harness", "tasks", "registry", "__main__", "__init__"}  # not experiments
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"sklearn": "scikit-learn", "orbax": "orbax-checkpoint", "yaml": "pyyaml"}


def _imports(path: Path) -> set[str]:
    """Absolute dotted names imported by a module (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` imports the submodule x
                names.update(f"{module}.{a.name}" for a in node.names)
                names.add(module)
            else:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def _experiments() -> set[str]:
    return {p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem not in SHARED}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    (("dynamics", ("algorithms", "experiments", "benchmarks")),
     ("algorithms", ("experiments", "benchmarks"))),
)  # fmt: skip
def test_lower_layers_never_import_higher_ones(package, forbidden):
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if name.split(".")[0] in forbidden
    ]
    assert not bad, bad


def test_harness_and_tasks_never_import_an_experiment_and_experiments_never_each_other():
    experiments = _experiments()
    assert {"noise_reduction", "staleness_aware"} <= experiments  # the scan sees them
    bad = []
    for path in _modules("experiments"):
        rel = path.relative_to(ROOT / "experiments")
        own = rel.stem if len(rel.parts) == 1 else None
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "experiments" and len(parts) > 1 and parts[1] in experiments:
                if parts[1] != own and rel.stem not in ("registry", "__main__", "__init__"):
                    bad.append(f"{rel} imports {name}")
    assert not bad, bad


def test_every_imported_third_party_package_is_declared():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        requirements += extra
    declared = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}
    local = set(PACKAGES) | {"tests", "conftest"}
    missing = set()
    for package in (*PACKAGES, "tests"):
        for path in _modules(package):
            for name in _imports(path):
                top = name.split(".")[0]
                if top in local or top in sys.stdlib_module_names or top == "__future__":
                    continue
                if DISTRIBUTIONS.get(top, top).lower() not in declared:
                    missing.add(f"{top} ({path.relative_to(ROOT)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
