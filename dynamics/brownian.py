"""A step-indexed Brownian path whose increments the discrete form can reproduce.

The increment over the k-th step `[t0 + k h, t0 + (k+1) h]` is `sqrt(h) n_k` with
`n_k = step_normal(key, k, shape)`. The discrete optimizer draws the same `n_k`, so with
shared random numbers the Euler–Maruyama path and the discrete path coincide. Drawing an
increment costs one `fold_in` and one normal sample, like a hand-written `lax.scan` loop;
a `diffrax.VirtualBrownianTree` instead costs O(log(1/tol)) samples per evaluation.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

__all__ = ["StepBrownianPath", "step_normal"]


def step_normal(key: jax.Array, step, shape: tuple[int, ...], dtype=None) -> jax.Array:
    """`n_k`: the standard normal sample of step `k` (an integer step index, not a time)."""
    return jr.normal(jr.fold_in(key, step), shape, dtype or jnp.result_type(float))


class StepBrownianPath(diffrax.AbstractBrownianPath):
    """Brownian motion on a fixed grid `origin + k·h`, increments `sqrt(t1 − t0) n_k`.

    `step_size` is h (time). Only increments over one grid step are meaningful: use it with
    `diffrax.ConstantStepSize` and the same h. For adaptive steps use a
    `diffrax.VirtualBrownianTree` (`solve(..., brownian="tree")`).
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    key: jax.Array
    origin: float = eqx.field(static=True)
    step_size: float = eqx.field(static=True)
    levy_area: type[diffrax.BrownianIncrement] | type[diffrax.SpaceTimeLevyArea] = eqx.field(
        static=True, default=diffrax.BrownianIncrement
    )

    @property
    def t0(self):
        return self.origin

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left=True, use_levy=False):
        del left
        if t1 is None:
            raise ValueError("StepBrownianPath only gives increments: call evaluate(t0, t1)")
        step = jnp.round((t0 - self.origin) / self.step_size).astype(jnp.int32)
        dt = t1 - t0
        dtype = jnp.result_type(float)
        if self.levy_area is diffrax.SpaceTimeLevyArea:
            kw, kh = jr.split(jr.fold_in(self.key, step))
            w = jnp.sqrt(dt) * jr.normal(kw, self.shape, dtype)
            h = jnp.sqrt(dt / 12) * jr.normal(kh, self.shape, dtype)
            val = diffrax.SpaceTimeLevyArea(dt=dt, W=w, H=h)
            return val if use_levy else w
        w = jnp.sqrt(dt).astype(dtype) * step_normal(self.key, step, self.shape, dtype)
        return diffrax.BrownianIncrement(dt=dt, W=w) if use_levy else w
