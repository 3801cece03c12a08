"""Resumable runs: finished pieces cached on disk, long runs checkpointed with Orbax.

`run_experiment` gives an experiment's `run(config, key, cache)` a `RunCache` keyed by
(experiment, config, seed, quick). `cache.cached(name, fn)` computes `fn()` once and stores
its arrays atomically, so a killed run resumes without redoing any finished piece.
`cache.run_agents(name, ...)` is `algorithms.runner.run_agents` cut into segments of
`checkpoint_every` steps, saving the optimizer state with Orbax after each, so a kill loses
at most one segment and the resumed run gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from algorithms.runner import RunResult, run_agents

from .files import atomic_write

__all__ = ["RunCache", "run_key"]


def run_key(stamp: dict) -> str:
    """A short stable hash of a run's identity (experiment, config, seed, mode)."""
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def _save_npz(path: Path, arrays: dict) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()}))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


class RunCache:
    """Finished pieces of one run, under `directory` (one directory per run key).

    Args:
        directory: where pieces and checkpoints live.
        quiet: no progress bars (they are also off when stderr is not a terminal).
    """

    def __init__(self, directory: Path, quiet: bool = False):
        self.directory = Path(directory)  # created on the first write
        self.quiet = quiet
        self.computed: list[str] = []  # names computed (not loaded) in this process

    def _path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad cache entry name {name!r}")
        return self.directory / f"{name}.npz"

    def cached(self, name: str, fn: Callable[[], dict]) -> dict[str, np.ndarray]:
        """`fn()` (a dict of arrays), computed once per run and stored as `name`."""
        path = self._path(name)
        if path.exists():
            return _load_npz(path)
        out = {k: np.asarray(v) for k, v in fn().items()}
        _save_npz(path, out)
        self.computed.append(name)
        return out

    def progress(self, iterable: Iterable, desc: str, total: int | None = None, unit="it"):
        """A tqdm bar (steps, rate, time left), off with `quiet` or without a terminal."""
        return tqdm(
            iterable, desc=desc, total=total, unit=unit, disable=True if self.quiet else None
        )

    def run_agents(
        self, name: str, optimizer, params, oracle, *, num_steps: int, key, record_every: int,
        checkpoint_every: int, metrics_fn=None, **kwargs,
    ) -> RunResult:  # fmt: skip
        """`run_agents` in segments of `checkpoint_every` steps, checkpointed after each.

        `checkpoint_every` must be a multiple of `record_every` and divide `num_steps`.
        Returns the same `RunResult` as one uninterrupted `run_agents` call.
        """
        if checkpoint_every % record_every or num_steps % checkpoint_every:
            raise ValueError(
                f"checkpoint_every ({checkpoint_every}) must be a multiple of record_every "
                f"({record_every}) and divide num_steps ({num_steps})"
            )
        final = self._path(name)
        if final.exists():
            return _unpack(_load_npz(final), params, optimizer)
        ckpt_root = self.directory / f"{name}.ckpt"
        segments = num_steps // checkpoint_every
        done, state, chunks = self._restore(ckpt_root, params, optimizer, segments)
        bar = self.progress(range(done, segments), desc=name, total=segments, unit="segment")
        for seg in bar:
            p, s, div = state
            res = run_agents(
                optimizer, p, oracle, num_steps=checkpoint_every, key=key,
                record_every=record_every, metrics_fn=metrics_fn, opt_state=s,
                start_step=seg * checkpoint_every, diverged_step=int(div), **kwargs,
            )  # fmt: skip
            # Every segment's first record repeats the previous segment's last one.
            chunk = jax.tree.map(lambda a: np.asarray(a if seg == 0 else a[1:]), res.metrics)
            steps = np.asarray(res.steps if seg == 0 else res.steps[1:])
            chunks.append((steps, chunk))
            state = (res.params, res.opt_state, res.diverged_step)
            self._checkpoint(ckpt_root, seg + 1, state, steps, chunk)
        steps = np.concatenate([c[0] for c in chunks])
        metrics = jax.tree.map(lambda *a: np.concatenate(a), *[c[1] for c in chunks])
        result = RunResult(state[0], state[1], steps, metrics, jnp.asarray(state[2]))
        _save_npz(final, _pack(result))
        shutil.rmtree(ckpt_root, ignore_errors=True)
        self.computed.append(name)
        return result

    def _checkpoint(self, root: Path, seg: int, state, steps, chunk) -> None:
        _save_npz(root / f"metrics_{seg:06d}.npz", {"__steps__": steps, **_flat(chunk)})
        ckpt = ocp.StandardCheckpointer()
        target = root / f"state_{seg:06d}"
        ckpt.save(target.absolute(), {"params": state[0], "opt_state": state[1],
                                      "diverged_step": state[2]}, force=True)  # fmt: skip
        ckpt.wait_until_finished()
        ckpt.close()
        # The marker is written last: a segment counts only when both files are complete.
        atomic_write(root / f"done_{seg:06d}", lambda fh: fh.write(b"ok"))

    def _restore(self, root: Path, params, optimizer, segments: int):
        init = (params, optimizer.init(params), -1)
        if not root.exists():
            return 0, init, []
        done = sorted(int(p.name[5:]) for p in root.glob("done_*"))
        done = [d for d in done if d <= segments]
        if not done:
            return 0, init, []
        last = done[-1]
        target = {"params": init[0], "opt_state": init[1], "diverged_step": jnp.int32(-1)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        ckpt = ocp.StandardCheckpointer()
        restored = ckpt.restore((root / f"state_{last:06d}").absolute(), abstract)
        ckpt.close()
        chunks = []
        for seg in range(1, last + 1):
            data = _load_npz(root / f"metrics_{seg:06d}.npz")
            chunks.append((data.pop("__steps__"), _unflat(data)))
        state = (restored["params"], restored["opt_state"], restored["diverged_step"])
        return last, state, chunks


def _flat(metrics: dict) -> dict:
    """Metrics dict (possibly nested pytrees) → flat {"m/<path>": array}."""
    leaves = jax.tree_util.tree_leaves_with_path(metrics)
    return {"m/" + jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}


def _unflat(flat: dict) -> dict:
    """Inverse of `_flat` for dicts of arrays keyed by strings (the metrics we record)."""
    out: dict = {}
    for k, v in flat.items():
        parts = [p for p in k[2:].replace("['", "/").replace("']", "").split("/") if p]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def _pack(result: RunResult) -> dict:
    out = {"__steps__": result.steps, "__diverged_step__": result.diverged_step}
    out.update(_flat(result.metrics))
    flat_params, _ = jax.tree_util.tree_flatten(result.params)
    out.update({f"p/{i}": np.asarray(v) for i, v in enumerate(flat_params)})
    return out


def _unpack(data: dict, params_like, optimizer) -> RunResult:
    steps = data.pop("__steps__")
    diverged = data.pop("__diverged_step__")
    leaves = [data.pop(f"p/{i}") for i in range(len(jax.tree.leaves(params_like)))]
    params = jax.tree_util.tree_unflatten(jax.tree.structure(params_like), leaves)
    # The final optimizer state is not kept once a run has finished: pieces use metrics.
    return RunResult(params, None, steps, _unflat(data), jnp.asarray(diverged))
