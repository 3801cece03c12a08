"""The results store: one directory per experiment with config, metrics, arrays, figures.

`DIR/NAME/config.json`, `metrics.json`, `results.npz`, `*.png` and `*.pdf`. `run` may return
nested dicts of arrays (`{"quorum": {"sde": {"var": a}}}`): `results.npz` holds them under
"/"-joined keys (`"quorum/sde/var"`) and `load_results` nests them again. Files are
written atomically (temporary file, then rename), only after the run has succeeded, and
`metrics.json` is written last, so its presence marks a finished run. A finished run with the
same config and seed is reused; pieces of unfinished runs live in `DIR/NAME/.cache/<key>/`,
keyed by (experiment, config, seed, mode).
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from .cache import RunCache, run_key
from .config import config_to_json
from .contract import Claim
from .files import atomic_write, load_arrays, save_arrays, to_numpy, write_json

__all__ = ["run_experiment", "load_metrics", "load_results"]


def load_metrics(directory: Path) -> dict | None:
    """`DIR/NAME/metrics.json` as a dict, or None when the run has not finished."""
    path = Path(directory) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_results(directory: Path) -> dict:
    """`DIR/NAME/results.npz` as the (nested) dict of arrays that the experiment's `run`
    returned."""
    return load_arrays(Path(directory) / "results.npz")


def _to_float(value) -> float | str:
    v = float(np.asarray(value))
    return v if np.isfinite(v) else str(v)


def run_experiment(
    module, config, *, seed: int, quick: bool, out: Path, force: bool = False, quiet: bool = False
):
    """Run `module` with `config` and `seed` into `out/NAME`, or reuse a finished run.

    Experiments whose `run` takes a `cache` argument get a `RunCache` under
    `out/NAME/.cache/<run key>/`, keyed by (experiment, config, seed, mode): an interrupted
    run resumes from its finished pieces, and `force` discards them.

    Returns `(metrics, reused)`.
    """
    directory = Path(out) / module.NAME
    stamp = {
        "experiment": module.NAME,
        "quick": quick,
        "seed": seed,
        "config": config_to_json(config),
    }
    old = directory / "config.json"
    if not force and old.exists() and json.loads(old.read_text()) == stamp:
        metrics = load_metrics(directory)
        if metrics is not None:
            return metrics, True
    kwargs = {}
    if "cache" in inspect.signature(module.run).parameters:
        cache_dir = directory / ".cache" / run_key(stamp)
        if force and cache_dir.exists():
            shutil.rmtree(cache_dir)
        kwargs["cache"] = RunCache(cache_dir, quiet=quiet)
    start = time.perf_counter()
    results = module.run(config, jax.random.key(seed), **kwargs)
    results = to_numpy(results)  # nested dicts of arrays, as `run` returned them
    wall = time.perf_counter() - start

    # Nothing is written before the run succeeds (a bad config or a corrupt dataset leaves
    # the directory as it was). From here on metrics.json, written last, marks completion.
    if (directory / "metrics.json").exists():
        (directory / "metrics.json").unlink()
    save_arrays(directory / "results.npz", results, compressed=True)
    figures = module.plot(results, config)
    for name, fig in figures.items():
        for ext in ("png", "pdf"):
            atomic_write(
                directory / f"{name}.{ext}",
                lambda fh, fig=fig, ext=ext: fig.savefig(
                    fh, format=ext, dpi=120, bbox_inches="tight"
                ),
            )
    claims: list[Claim] = module.claims(results, config)
    metrics = {
        "experiment": module.NAME,
        "quick": quick,
        "seed": seed,
        "wall_seconds": wall,
        "claims": [c.to_json() for c in claims],
        **{k: _to_float(v) for k, v in module.metrics(results, config).items()},
        "figures": sorted(figures),
    }
    write_json(old, stamp)
    write_json(directory / "metrics.json", metrics)
    return metrics, False
