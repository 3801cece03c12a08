"""The discrete form: coupling rules as Optax transforms, named optimizers, the runner."""

from . import asynchrony
from .coupling import (
    CouplingState,
    DelayedCouplingState,
    HeavyBallState,
    add_coupling_force,
    euler_optimizer,
    heavy_ball,
)
from .delayed import DelayedAgentState, run_delayed_agents
from .discrete import solve_discrete
from .loop import RunResult, recorded_scan
from .optimizers import (
    ElasticAveragingState,
    coupled_sgd,
    eamsgd,
    easgd,
    easgd_center,
    elastic_averaging,
    momentum_quorum_sgd,
    quorum_sgd,
)
from .oracles import (
    agent_oracle,
    landscape_oracle,
    model_minibatch_oracle,
    sde_matched_oracle,
)
from .runner import AgentState, run_agents
from .svag import run_svag, svag, svag_coefficients, svag_learning_rate, svag_momentum
from .sweeps import basin_success, wilson_interval

__all__ = [
    "asynchrony",
    "CouplingState",
    "DelayedAgentState",
    "DelayedCouplingState",
    "ElasticAveragingState",
    "HeavyBallState",
    "AgentState",
    "RunResult",
    "add_coupling_force",
    "agent_oracle",
    "basin_success",
    "coupled_sgd",
    "eamsgd",
    "easgd",
    "easgd_center",
    "elastic_averaging",
    "euler_optimizer",
    "heavy_ball",
    "landscape_oracle",
    "model_minibatch_oracle",
    "momentum_quorum_sgd",
    "quorum_sgd",
    "recorded_scan",
    "run_agents",
    "run_delayed_agents",
    "run_svag",
    "sde_matched_oracle",
    "solve_discrete",
    "svag",
    "svag_coefficients",
    "svag_learning_rate",
    "svag_momentum",
    "wilson_interval",
]
