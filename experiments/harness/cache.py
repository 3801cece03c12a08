"""Resumable runs: finished pieces cached on disk, long runs checkpointed with Orbax.

`run_experiment` gives an experiment's `run(config, key, cache)` a `RunCache` keyed by
(experiment, config, seed, quick). `cache.cached(name, fn)` computes `fn()` once and stores
its arrays atomically, so a killed run resumes without redoing any finished piece.
`cache.run_agents(name, ...)` is `algorithms.runner.run_agents` cut into segments of
`checkpoint_every` steps; after each segment an Orbax `CheckpointManager` saves the state
(params, optimizer state, `diverged_step`) and the records so far, so a kill loses at most
one segment and the resumed run gives bitwise the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from algorithms.runner import AgentState, RunResult, run_agents

from .files import ArrayTree, load_arrays, save_arrays, to_numpy

__all__ = ["RunCache", "run_key"]


def run_key(stamp: dict) -> str:
    """A short stable hash of a run's identity (experiment, config, seed, mode)."""
    return hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


class RunCache:
    """Finished pieces of one run, under `directory` (one directory per run key).

    Args:
        directory: where pieces and checkpoints live; None keeps nothing (every piece is
            computed and nothing is written), for runs outside the harness.
        quiet: no progress bars (they are also off when stderr is not a terminal).
    """

    def __init__(self, directory: Path | None, quiet: bool = False):
        self.directory = None if directory is None else Path(directory)  # made on first write
        self.quiet = quiet
        self.computed: list[str] = []  # names computed (not loaded) in this process

    def _path(self, name: str, suffix: str) -> Path | None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad cache entry name {name!r}")
        return None if self.directory is None else self.directory / f"{name}{suffix}"

    def cached(self, name: str, fn: Callable[[], ArrayTree]) -> dict:
        """`fn()`, computed once per run and stored as `name`.

        `fn()` returns a dict of arrays, possibly nested (`{"sde": {"var": a}}`); the result
        (NumPy arrays, same nesting) is the same whether computed now or loaded.
        """
        path = self._path(name, ".npz")
        if path is not None and path.exists():
            return load_arrays(path)
        out = to_numpy(fn())
        if path is not None:
            save_arrays(path, out)
        self.computed.append(name)
        return out

    def progress(self, iterable: Iterable, desc: str, total: int | None = None, unit="it"):
        """A tqdm bar (steps, rate, time left), off with `quiet` or without a terminal."""
        return tqdm(
            iterable, desc=desc, total=total, unit=unit, disable=True if self.quiet else None
        )

    def run_agents(
        self, name: str, optimizer: optax.GradientTransformation, params, oracle, *,
        num_steps: int, key: jax.Array, record_every: int, checkpoint_every: int,
        metrics_fn=None, batched: bool = False, **kwargs,
    ) -> RunResult:  # fmt: skip
        """`run_agents` in segments of `checkpoint_every` steps, checkpointed after each.

        Segment s runs steps `[s·c, (s+1)·c)` (c = `checkpoint_every`) from the state that
        segment s − 1 left, with the same `key` (oracles fold in the absolute step), so the
        records and the final state equal those of one uninterrupted `run_agents` call. After
        each segment, checkpoint s + 1 of an Orbax `CheckpointManager` in `DIR/name.ckpt/`
        holds the state and every record so far (the manager renames a checkpoint into place
        only once it is complete, so a kill mid-save leaves the previous one). A finished run
        is its last checkpoint: calling again restores it without running anything.

        Args:
            name: the entry's name in this cache.
            optimizer, params, oracle, num_steps, key, record_every, metrics_fn, kwargs: as
                for `algorithms.runner.run_agents` (`num_steps` in steps).
            checkpoint_every: steps per segment; a multiple of `record_every` that divides
                `num_steps`.
            batched: `params` and `key` carry a leading axis of independent runs (seeds),
                trained together under `jax.vmap`; every output then carries that axis too
                (except `steps`).

        Returns:
            The `RunResult` of the whole run (records at steps 0, k, …, `num_steps`).
        """
        if checkpoint_every < 1 or checkpoint_every % record_every or num_steps % checkpoint_every:
            raise ValueError(
                f"checkpoint_every ({checkpoint_every}) must be a multiple of record_every "
                f"({record_every}) and divide num_steps ({num_steps})"
            )
        segments = num_steps // checkpoint_every
        init = jax.vmap(optimizer.init) if batched else optimizer.init
        no_divergence = np.full(np.shape(key)[:1] if batched else (), -1, np.int32)
        state = {"params": params, "opt_state": init(params), "diverged_step": no_divergence}

        def segment(state, start_step):
            def one(params, opt_state, diverged_step, key):
                return run_agents(
                    optimizer, params, oracle, num_steps=checkpoint_every, key=key,
                    record_every=record_every, metrics_fn=metrics_fn, opt_state=opt_state,
                    start_step=start_step, diverged_step=diverged_step, **kwargs,
                )  # fmt: skip

            run = jax.vmap(one) if batched else one
            res = run(state["params"], state["opt_state"], state["diverged_step"], key)
            new = {"params": res.params, "opt_state": res.opt_state}
            new["diverged_step"] = np.asarray(res.diverged_step, np.int32)
            records = {"steps": res.steps[0] if batched else res.steps, "metrics": res.metrics}
            if res.trace is not None:
                records["trace"] = res.trace
            return new, to_numpy(records)

        directory = self._path(name, ".ckpt")
        manager = None if directory is None else _manager(directory)
        try:
            done, records = 0, None
            if manager is not None and manager.latest_step() is not None:
                done = min(manager.latest_step(), segments)
                state, records = _restore(manager, done, state)
            bar = self.progress(range(done, segments), desc=name, total=segments, unit="segment")
            for seg in bar:
                state, new = segment(state, seg * checkpoint_every)
                records = new if records is None else _append(records, new, batched)
                if manager is not None:
                    args = ocp.args.Composite(
                        state=ocp.args.StandardSave(state), records=ocp.args.StandardSave(records)
                    )
                    manager.save(seg + 1, args=args)
                    manager.wait_until_finished()
            if done < segments:
                self.computed.append(name)
        finally:
            if manager is not None:
                manager.close()
        return RunResult(
            AgentState(state["params"], state["opt_state"]), records["steps"],
            records["metrics"], records.get("trace"), state["diverged_step"],
        )  # fmt: skip


def _manager(directory: Path) -> ocp.CheckpointManager:
    # Synchronous saves: a segment's checkpoint is complete before the next segment starts,
    # so a kill loses at most the segment in progress. Only the latest checkpoint is kept.
    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _restore(manager: ocp.CheckpointManager, step: int, like: dict) -> tuple[dict, dict]:
    """Checkpoint `step`: the state (restored into `like`'s pytree structure, dtypes and
    shardings) and the records so far (NumPy arrays)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), records=ocp.args.StandardRestore()
        ),
    )
    records = jax.tree.map(np.asarray, dict(restored["records"]))
    state = dict(restored["state"])
    state["diverged_step"] = np.asarray(state["diverged_step"], np.int32)
    return state, records


def _append(records: dict, new: dict, batched: bool) -> dict:
    """`records` followed by the next segment's `new` ones.

    A segment's first record repeats the previous segment's last one and is dropped; the
    per-step trace has no overlap.
    """
    axis = 1 if batched else 0  # the record (or step) axis comes after the runs axis

    def after_first(a, b):
        return np.concatenate([a, np.take(b, np.arange(1, b.shape[axis]), axis)], axis)

    out = {
        "steps": np.concatenate([records["steps"], new["steps"][1:]]),
        "metrics": jax.tree.map(after_first, records["metrics"], new["metrics"]),
    }
    if "trace" in new:
        out["trace"] = jax.tree.map(
            lambda a, b: np.concatenate([a, b], axis), records["trace"], new["trace"]
        )
    return out
