"""The continuous model: landscapes, noise, coupling rules, the coupled SDE, and theory.

Notation follows docs/papers.md and docs/glossary.md: N agents `x_i` stacked on a leading
axis, spatial mean `x̄`, quorum variable `z`, velocities `v_i`, gradient scale `η`
(`gradient_scale`), noise `σ`, continuous time `t`, step `h` (`step_size`).

Importing `dynamics` switches JAX's CPU lowering of its threefry generator to the unrolled
one (same bits, several times faster draws; `dynamics.rng` explains and guards it).
"""

from . import rng, theory
from .broadcast import Leader, LossWeightedGains, SuccessWeightedQuorum, success_weights
from .brownian import StepBrownianPath, step_normal
from .coupling import (
    AbstractCoupling,
    MeanField,
    Quorum,
    Uncoupled,
    agent_mean,
    elastic,
    toward,
    tree_zeros_like,
)
from .delay import (
    Delay,
    DelayedArgs,
    DelayedEuler,
    DelayedSystem,
    as_delay,
    solve_delayed,
)
from .landscapes import (
    AbstractLandscape,
    LogCoshQuadratic,
    ModifiedLandscape,
    OffsetMultiWell,
    Quadratic,
    Rastrigin,
    TiltedMultiWell,
)
from .network import MINIBATCH_NOISE_KINDS, MinibatchNoise, ModelLandscape
from .noise import (
    AbstractNoise,
    CovarianceNoise,
    DiagonalNoise,
    IsotropicNoise,
    StateDependentNoise,
)
from .sme import sme2
from .solve import Solution, solve, solve_runs, terms
from .system import AgentState, CoupledSystem

__all__ = [
    "AbstractCoupling",
    "AbstractLandscape",
    "AbstractNoise",
    "AgentState",
    "CoupledSystem",
    "CovarianceNoise",
    "Delay",
    "DelayedArgs",
    "DelayedEuler",
    "DelayedSystem",
    "DiagonalNoise",
    "IsotropicNoise",
    "Leader",
    "LossWeightedGains",
    "LogCoshQuadratic",
    "MINIBATCH_NOISE_KINDS",
    "MeanField",
    "MinibatchNoise",
    "ModelLandscape",
    "ModifiedLandscape",
    "Quadratic",
    "Quorum",
    "Rastrigin",
    "Solution",
    "StateDependentNoise",
    "StepBrownianPath",
    "SuccessWeightedQuorum",
    "TiltedMultiWell",
    "OffsetMultiWell",
    "Uncoupled",
    "agent_mean",
    "as_delay",
    "elastic",
    "solve",
    "solve_delayed",
    "solve_runs",
    "sme2",
    "step_normal",
    "success_weights",
    "rng",
    "terms",
    "theory",
    "toward",
    "tree_zeros_like",
]

# Every program compiled after this uses the faster CPU lowering (bit-identical draws).
rng.use_unrolled_threefry()
