"""The coupled system: landscape + coupling rule + noise, as drift and diffusion.

State `AgentState(x, v, aux)`: positions `x` `(N, dim)`, velocities `v` `(N, dim)` for the
heavy-ball form (else `None`), and the rule's auxiliary state `aux` (e.g. z, `(dim,)`).

    first order:  dx_i = [−η ∇f(x_i) + F_i] dt + σ(x_i) dW_i
    heavy ball:   dx_i = v_i dt,  dv_i = [−γ v_i − η ∇f(x_i) + F_i] dt + σ(x_i) dW_i
    auxiliary:    d aux = A(x, aux, ℓ, ∇f) dt

with `F_i`, `A` from the coupling rule (`dynamics.coupling`). Time `t` is continuous time.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np

from .coupling import AbstractCoupling, Uncoupled, tree_zeros_like
from .landscapes import AbstractLandscape
from .noise import AbstractNoise, IsotropicNoise

__all__ = ["AgentState", "CoupledSystem"]


class AgentState(NamedTuple):
    """State of the coupled system: positions, velocities (or None), auxiliary state."""

    x: jax.Array
    v: jax.Array | None
    aux: Any


class CoupledSystem(eqx.Module):
    """N agents descending `landscape`, coupled by `coupling`, driven by `noise`.

    Args:
        landscape: the loss f (acts on one agent's `(dim,)` parameters).
        coupling: the coupling rule; default `Uncoupled()`.
        noise: the diffusion σ(x); default `IsotropicNoise(0.0)` (an ODE).
        gradient_scale: η > 0, the coefficient of −∇f in the drift (1/time). A discrete
            optimizer with learning rate `lr` per step is the Euler step `h` of this system
            with `lr = h·η`.
        damping: γ >= 0 for the heavy-ball (momentum) form, or None for first order.
    """

    landscape: AbstractLandscape
    coupling: AbstractCoupling
    noise: AbstractNoise
    gradient_scale: float = eqx.field(static=True)
    damping: float | None = eqx.field(static=True)

    def __init__(
        self,
        landscape: AbstractLandscape,
        coupling: AbstractCoupling | None = None,
        noise: AbstractNoise | None = None,
        gradient_scale: float = 1.0,
        damping: float | None = None,
    ):
        if not isinstance(landscape, AbstractLandscape):
            raise TypeError(f"landscape must be an AbstractLandscape, got {type(landscape)}")
        coupling = Uncoupled() if coupling is None else coupling
        if not isinstance(coupling, AbstractCoupling):
            raise TypeError(f"coupling must be an AbstractCoupling, got {type(coupling)}")
        noise = IsotropicNoise(0.0) if noise is None else noise
        if not isinstance(noise, AbstractNoise):
            raise TypeError(f"noise must be an AbstractNoise, got {type(noise)}")
        if not np.isfinite(gradient_scale) or gradient_scale <= 0:
            raise ValueError(f"gradient_scale (η) must be > 0, got {gradient_scale!r}")
        noise.check_system(landscape, gradient_scale)
        if damping is not None and (not np.isfinite(damping) or damping < 0):
            raise ValueError(f"damping (γ) must be >= 0 or None, got {damping!r}")
        self.landscape, self.coupling, self.noise = landscape, coupling, noise
        self.gradient_scale = float(gradient_scale)
        self.damping = None if damping is None else float(damping)

    @property
    def momentum(self) -> bool:
        return self.damping is not None

    def check_positions(self, x0) -> int:
        """Validate initial positions `(N, dim)`; returns N."""
        shape = np.shape(x0)
        if len(shape) != 2 or shape[1] != self.landscape.dim:
            raise ValueError(
                f"initial positions must have shape (N, {self.landscape.dim}), got {shape}"
            )
        if shape[0] < 1:
            raise ValueError(f"need N >= 1 agents, got N={shape[0]}")
        return shape[0]

    def init(self, x0, v0=None) -> AgentState:
        """Initial state: `v0` defaults to zeros (heavy ball), aux from the rule's `init`."""
        self.check_positions(x0)
        if self.momentum:
            v0 = tree_zeros_like(x0) if v0 is None else v0
            if np.shape(v0) != np.shape(x0):
                raise ValueError(f"v0 must have shape {np.shape(x0)}, got {np.shape(v0)}")
        elif v0 is not None:
            raise ValueError("v0 given but the system is first order (damping=None)")
        return AgentState(x0, v0, self.coupling.init(x0))

    def drift(self, t, state: AgentState, args=None) -> AgentState:
        """The drift `(dx/dt, dv/dt, d aux/dt)` at `state` (continuous time)."""
        del t, args
        x, v, aux = state
        f = self.landscape
        grads = jax.vmap(f.grad)(x)
        losses = jax.vmap(f.value)(x) if self.coupling.needs_losses else None
        force = self.coupling.force(x, aux, losses)
        aux_dot = self.coupling.aux_drift(x, aux, losses, f.grad)
        accel = -self.gradient_scale * grads + force
        if self.momentum:
            return AgentState(v, accel - self.damping * v, aux_dot)
        return AgentState(accel, None, aux_dot)

    def brownian_shape(self, num_agents: int) -> tuple[int, ...]:
        """Shape of the Brownian increment dW of all agents: `(N, *noise.brownian_shape(dim))`.

        `(N, dim)` for the square noise models; `(N, n)` for `MinibatchNoise(kind="exact")`
        on n training examples.
        """
        return (int(num_agents), *self.noise.brownian_shape(self.landscape.dim))

    def diffusion(self, t, state: AgentState, dw: jax.Array) -> AgentState:
        """`σ(x) dW` placed on x (first order) or on v (heavy ball); zero on aux.

        `dw` has shape `brownian_shape(N)`; the result's x (or v) has shape `(N, dim)`.
        """
        del t
        noise = jax.vmap(self.noise.apply)(state.x, dw)
        zero_aux = tree_zeros_like(state.aux)
        if self.momentum:
            return AgentState(tree_zeros_like(state.x), noise, zero_aux)
        return AgentState(noise, None, zero_aux)
