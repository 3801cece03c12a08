"""Small plotting helpers shared by the experiments (figures only, no file I/O)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["figure", "band", "mean_and_se"]


def figure(ncols: int = 1, width: float = 5.0, height: float = 3.8):
    """A `Figure` with `ncols` axes side by side (no pyplot global state)."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, np.atleast_1d(axes)


def mean_and_se(samples, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean over independent samples (seeds, runs) and its standard error.

    The standard error is `std(ddof=1) / sqrt(n)`; with a single sample it is zero (no band).
    """
    samples = np.asarray(samples)
    n = samples.shape[axis]
    mean = samples.mean(axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, samples.std(axis, ddof=1) / np.sqrt(n)


def band(ax, x, mean, err, label=None, **kwargs):
    """A line with a shaded ±err band (err: standard error or CI half-width)."""
    (line,) = ax.plot(x, mean, label=label, **kwargs)
    ax.fill_between(
        x, np.asarray(mean) - err, np.asarray(mean) + err, color=line.get_color(), alpha=0.2
    )
    return line
