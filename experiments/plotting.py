"""Small plotting helpers shared by the experiments (figures only, no file I/O)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["figure", "band"]


def figure(ncols: int = 1, width: float = 5.0, height: float = 3.8):
    """A `Figure` with `ncols` axes side by side (no pyplot global state)."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, np.atleast_1d(axes)


def band(ax, x, mean, err, label=None, **kwargs):
    """A line with a shaded ±err band (err: standard error or CI half-width)."""
    (line,) = ax.plot(x, mean, label=label, **kwargs)
    ax.fill_between(
        x, np.asarray(mean) - err, np.asarray(mean) + err, color=line.get_color(), alpha=0.2
    )
    return line
