"""The experiments, in report order (an explicit tuple of modules, no import-time magic)."""

from . import (
    async_easgd,
    async_generalization,
    broadcast_success,
    continuous_vs_discrete,
    convex_bounds,
    decentralized,
    delay_coupling,
    delay_stability,
    easgd_regularization,
    gem_scaling,
    noise_reduction,
    nonconvex_stabilization,
    sde_weak_order,
    smoothing,
    staleness_aware,
    svag_networks,
)
from .harness.cli import get as harness_get

EXPERIMENTS = (
    noise_reduction,
    continuous_vs_discrete,
    sde_weak_order,
    svag_networks,
    nonconvex_stabilization,
    convex_bounds,
    smoothing,
    broadcast_success,
    easgd_regularization,
    delay_stability,
    delay_coupling,
    staleness_aware,
    gem_scaling,
    async_generalization,
    decentralized,
    async_easgd,
)


def get(name: str):
    """The experiment module called `name`; a ValueError lists the known names."""
    return harness_get(name, EXPERIMENTS)
