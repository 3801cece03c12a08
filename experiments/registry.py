"""The experiments, in report order (an explicit tuple of modules, no import-time magic)."""

from . import continuous_vs_discrete, noise_reduction

EXPERIMENTS = (noise_reduction, continuous_vs_discrete)


def get(name: str):
    """The experiment module called `name`; a ValueError lists the known names."""
    for module in EXPERIMENTS:
        if module.NAME == name:
            return module
    known = ", ".join(m.NAME for m in EXPERIMENTS)
    raise ValueError(f"unknown experiment {name!r}; known: {known}")
