"""The discrete form: coupling rules as Optax transforms, named optimizers, the runner."""

from . import asynchrony
from .coupling import CouplingState, HeavyBallState, coupling, euler_optimizer, heavy_ball
from .optimizers import (
    ElasticAveragingState,
    coupled_sgd,
    eamsgd,
    easgd,
    elastic_averaging,
    momentum_quorum_sgd,
    quorum_sgd,
)
from .oracles import landscape_oracle, sde_matched_oracle
from .runner import RunResult, run_agents, tree_all_finite

__all__ = [
    "asynchrony",
    "CouplingState",
    "ElasticAveragingState",
    "HeavyBallState",
    "RunResult",
    "coupled_sgd",
    "coupling",
    "eamsgd",
    "easgd",
    "elastic_averaging",
    "euler_optimizer",
    "heavy_ball",
    "landscape_oracle",
    "momentum_quorum_sgd",
    "quorum_sgd",
    "run_agents",
    "sde_matched_oracle",
    "tree_all_finite",
]
