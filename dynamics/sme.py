"""The stochastic modified equation of order 2 (SME-2) of a system's optimizer.

`sme2(system, h)` is the continuous model that the SGD run `euler_optimizer(system, h)`
(learning rate `lr = h·η`, time `t = k·h`) approximates to weak order 2 rather than 1: the
same system on the modified loss `f̃ = f + (lr/4) ‖∇f‖²` (`dynamics.landscapes.
ModifiedLandscape`; Li, Tai & E, ICML 2017). See docs/sde_models.md.
"""

from __future__ import annotations

import math

from .landscapes import ModifiedLandscape
from .system import CoupledSystem

__all__ = ["sme2"]


def sme2(system: CoupledSystem, step_size: float) -> CoupledSystem:
    """The SME-2 of SGD with step h on `system`: its landscape f replaced by f̃.

    With `η = system.gradient_scale` the optimizer `euler_optimizer(system, h)` is SGD with
    learning rate `lr = h·η` per step, and step k sits at time `t = k·h`. Its SME-2 in that
    time is

        dx_i = [−η ∇f̃(x_i) + F_i] dt + σ(x_i) dW_i,      f̃ = f + (h·η/4) ‖∇f‖²,

    i.e. `CoupledSystem(ModifiedLandscape(f, h·η), rule, noise, η)`: the correction's lr is
    `h·η`, the drift keeps the factor η and the noise σ (σσᵀ = η² h Σ) is unchanged. Run it
    with `dynamics.solve`; do not feed it to `algorithms.solve_discrete` or
    `sde_matched_oracle`, which would then run SGD on f̃ (the optimizer being modelled uses
    the gradients of f).

    Weak order 2 holds for the uncoupled system (Li, Tai & E). With a coupling rule only the
    gradient term is corrected: the modified equation of the whole Euler step
    `y ← y + h b(y)`, `b = (−η ∇f + F, A)` on the state y = (x, aux), is
    `ẏ = b − (h/2) Db·b`. Its x-part adds to `−(h/2) η² ∇²f ∇f` (the term above) the terms
    `(h/2)(η ∇²f F + η D_x F·∇f − DF·(F, A))` that involve the rule, and the auxiliary state
    gets `−(h/2) DA·b`; these are O(h) too and are not included, so a coupled system is
    corrected in its gradient part only.

    Args:
        system: a first-order `CoupledSystem` (`damping=None`); the heavy-ball form has a
            different modified equation, so it is rejected.
        step_size: h > 0, the time step of the optimizer being modelled.

    Returns:
        The system with `ModifiedLandscape(system.landscape, h·η)`, all else unchanged.
    """
    if not isinstance(system, CoupledSystem):
        raise TypeError(f"system must be a CoupledSystem, got {type(system)}")
    h = float(step_size)
    if not math.isfinite(h) or h <= 0:
        raise ValueError(f"step_size (h) must be > 0, got {step_size!r}")
    if system.momentum:
        raise ValueError(
            f"sme2 models first-order SGD; got a heavy-ball system (damping={system.damping})"
        )
    landscape = ModifiedLandscape(system.landscape, h * system.gradient_scale)
    return CoupledSystem(landscape, system.coupling, system.noise, system.gradient_scale)
