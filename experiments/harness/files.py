"""Files the harness writes: atomic writes, and nested dicts of arrays stored as `.npz`.

A reader never sees a half-written file. Nested results (`{"quorum": {"sde": {"var": a}}}`)
are stored flat, one array per path joined with "/" (`"quorum/sde/var"`), and nested again
on load; a flat dict (no "/" in any key) is stored and loaded unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "ArrayTree",
    "atomic_write",
    "flatten_arrays",
    "load_arrays",
    "save_arrays",
    "to_numpy",
    "unflatten_arrays",
    "write_json",
]

SEPARATOR = "/"

# A dict whose values are arrays or, recursively, such dicts (string keys without "/").
ArrayTree = Mapping[str, "np.ndarray | ArrayTree"]


def atomic_write(path: Path, write) -> None:
    """Write `path` through `write(file_obj)` on a temporary file, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, sort_keys=False).encode()))


def to_numpy(tree: ArrayTree) -> dict:
    """The same nesting with every leaf converted by `np.asarray` (device → host)."""
    return {k: to_numpy(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def flatten_arrays(tree: ArrayTree, prefix: str = "") -> dict[str, np.ndarray]:
    """`{"a": {"b": x}, "c": y}` → `{"a/b": x, "c": y}` (leaves as NumPy arrays).

    Raises a ValueError for a key that is not a non-empty string without "/", or for an
    empty nested dict (it would not survive the round trip).
    """
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key or SEPARATOR in key:
            where = f" under {prefix!r}" if prefix else ""
            raise ValueError(
                f"result keys must be non-empty strings without {SEPARATOR!r}, got {key!r}{where}"
            )
        path = prefix + key
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"empty nested dict at {path!r}: store arrays, not empty dicts")
            out.update(flatten_arrays(value, path + SEPARATOR))
        else:
            out[path] = np.asarray(value)
    return out


def unflatten_arrays(flat: Mapping[str, np.ndarray]) -> dict:
    """Inverse of `flatten_arrays`: `{"a/b": x, "c": y}` → `{"a": {"b": x}, "c": y}`."""
    out: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split(SEPARATOR)
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def save_arrays(path: Path, tree: ArrayTree, *, compressed: bool = False) -> None:
    """Store a nested dict of arrays atomically as one `.npz` (keys joined with "/")."""
    flat = flatten_arrays(tree)
    save = np.savez_compressed if compressed else np.savez
    atomic_write(Path(path), lambda fh: save(fh, **flat))


def load_arrays(path: Path) -> dict:
    """The nested dict of arrays stored by `save_arrays` (a flat file loads flat)."""
    with np.load(path) as data:
        return unflatten_arrays({k: data[k] for k in data.files})
