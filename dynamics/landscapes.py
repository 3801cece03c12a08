"""Loss landscapes with known structure: value, gradient, minimizer, curvature bounds.

Every landscape acts on one agent's parameters `x` of shape `(dim,)`; lift to the agent
axis `(N, dim)` with `jax.vmap` (the solvers and oracles do this).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float

__all__ = [
    "AbstractLandscape",
    "Quadratic",
    "TiltedMultiWell",
    "OffsetMultiWell",
    "Rastrigin",
    "LogCoshQuadratic",
    "ModifiedLandscape",
]


class AbstractLandscape(eqx.Module):
    """A loss `f: R^dim -> R` with known minimizer and curvature bounds.

    Subclasses implement `value`, `minimizer` and `curvature_bounds`; `grad` defaults to
    `jax.grad(value)`. `curvature_bounds()` returns `(m, L)` with
    `m <= lambda_min(∇²f(x))` and `lambda_max(∇²f(x)) <= L` for all x (`m < 0` for nonconvex f).
    """

    dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def value(self, x: Float[Array, " dim"]) -> Float[Array, ""]:
        """The loss f(x) of one agent, a scalar."""

    def grad(self, x: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """The gradient ∇f(x) of one agent, shape `(dim,)`."""
        return jax.grad(self.value)(x)

    def hessian(self, x: Float[Array, " dim"]) -> Float[Array, "dim dim"]:
        """The Hessian ∇²f(x) of one agent, shape `(dim, dim)` (default: `jax.hessian`)."""
        return jax.hessian(self.value)(x)

    @abc.abstractmethod
    def minimizer(self) -> Float[Array, " dim"]:
        """A global minimizer x* (shape `(dim,)`)."""

    @abc.abstractmethod
    def curvature_bounds(self) -> tuple[float, float]:
        """`(m, L)`: bounds on the Hessian's eigenvalues over all of R^dim."""

    def in_global_basin(self, x: Float[Array, "... dim"]) -> Array:
        """Whether `x` lies in the basin of attraction of the global minimizer (bool, `...`).

        For a convex landscape that is everywhere.
        """
        return jnp.ones(jnp.shape(x)[:-1], dtype=bool)


def _check_dim(dim: int) -> int:
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return int(dim)


class Quadratic(AbstractLandscape):
    """`f(x) = ½ (x − c)ᵀ A (x − c)` with A symmetric positive semi-definite.

    `hessian` is either a vector of diagonal entries `(dim,)` or a full matrix `(dim, dim)`.
    """

    hessian: Array
    center: Array
    dim: int = eqx.field(static=True)
    diagonal: bool = eqx.field(static=True)

    def __init__(self, hessian: ArrayLike, center: ArrayLike | None = None):
        h = np.asarray(hessian, dtype=float)
        if h.ndim == 0:
            h = h[None]
        if h.ndim == 1:
            if np.any(h < 0):
                raise ValueError(f"hessian diagonal must be >= 0, got {h.tolist()}")
            self.diagonal = True
        elif h.ndim == 2 and h.shape[0] == h.shape[1]:
            if not np.allclose(h, h.T):
                raise ValueError("hessian matrix must be symmetric")
            if np.linalg.eigvalsh(h).min() < -1e-12:
                raise ValueError("hessian matrix must be positive semi-definite")
            self.diagonal = False
        else:
            raise ValueError(f"hessian must have shape (dim,) or (dim, dim), got {h.shape}")
        self.dim = h.shape[0]
        c = np.zeros(self.dim) if center is None else np.asarray(center, dtype=float)
        if c.shape != (self.dim,):
            raise ValueError(f"center must have shape ({self.dim},), got {c.shape}")
        self.hessian = jnp.asarray(h)
        self.center = jnp.asarray(c)

    def value(self, x):
        r = x - self.center
        return 0.5 * jnp.dot(r, self.hessian * r if self.diagonal else self.hessian @ r)

    def grad(self, x):
        r = x - self.center
        return self.hessian * r if self.diagonal else self.hessian @ r

    def minimizer(self):
        return self.center

    def eigenvalues(self) -> np.ndarray:
        """The Hessian's eigenvalues (ascending), as NumPy (host) values."""
        h = np.asarray(self.hessian)
        return np.sort(h) if self.diagonal else np.linalg.eigvalsh(h)

    def curvature_bounds(self):
        ev = self.eigenvalues()
        return float(ev[0]), float(ev[-1])


def _interval_basin(f1d, x_star: float, period: float) -> tuple[float, float]:
    """The local maxima of a 1-D function on either side of `x_star` (its basin's ends)."""
    grid = x_star + np.linspace(-1.5 * period, 1.5 * period, 30001)
    vals = f1d(grid)
    mid = len(grid) // 2
    left = mid - 1
    while left > 0 and vals[left - 1] >= vals[left]:
        left -= 1
    right = mid + 1
    while right < len(grid) - 1 and vals[right + 1] >= vals[right]:
        right += 1
    return float(grid[left]), float(grid[right])


class _SeparableWells(AbstractLandscape):
    """A separable landscape whose wells repeat with period 1 in every coordinate:
    subclasses give the 1-D loss `_f1d` and its global minimizer `_star_1d`; x* and the
    global basin (a box) follow from them."""

    @abc.abstractmethod
    def _f1d(self, x):
        """The loss of one coordinate (f is its sum over coordinates, up to a constant)."""

    @abc.abstractmethod
    def _star_1d(self) -> float:
        """The global minimizer of `_f1d`."""

    def minimizer(self):
        return jnp.full((self.dim,), self._star_1d())

    def basin_1d(self) -> tuple[float, float]:
        """The interval `(lo, hi)` of the global well in each coordinate."""
        return _interval_basin(self._f1d, self._star_1d(), 1.0)

    def in_global_basin(self, x):
        lo, hi = self.basin_1d()
        return jnp.all((x > lo) & (x < hi), axis=-1)


class TiltedMultiWell(_SeparableWells):
    """Separable tilted multi-well: `f(x) = Σ_j [q x_j² + A sin²(π x_j) + t x_j]`.

    With the defaults (`q = 1/20`, `A = 1`, `t = 0`) and `dim = 1` this is the papers'
    `x²/20 + sin²(πx)`: wells at the integers, the global one at 0. A tilt `t ≠ 0` moves the
    global minimum off the symmetric point. Curvature: `f'' = 2q + 2π²A cos(2πx)`.
    """

    quadratic: float = eqx.field(static=True)
    amplitude: float = eqx.field(static=True)
    tilt: float = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, dim: int = 1, quadratic: float = 0.05, amplitude: float = 1.0, tilt=0.0):
        self.dim = _check_dim(dim)
        if quadratic <= 0 or amplitude < 0:
            raise ValueError(
                f"need quadratic > 0 and amplitude >= 0, got quadratic={quadratic}, "
                f"amplitude={amplitude}"
            )
        self.quadratic, self.amplitude, self.tilt = float(quadratic), float(amplitude), float(tilt)

    def _f1d(self, x):
        xp = jnp if isinstance(x, jax.Array) else np
        return self.quadratic * x**2 + self.amplitude * xp.sin(math.pi * x) ** 2 + self.tilt * x

    def value(self, x):
        return jnp.sum(self._f1d(x))

    def grad(self, x):
        return (
            2 * self.quadratic * x + self.amplitude * math.pi * jnp.sin(2 * math.pi * x) + self.tilt
        )

    def _star_1d(self) -> float:
        grid = np.linspace(-20, 20, 400001)
        return float(grid[np.argmin(self._f1d(grid))])

    def curvature_bounds(self):
        c = 2 * math.pi**2 * self.amplitude
        return 2 * self.quadratic - c, 2 * self.quadratic + c


class OffsetMultiWell(_SeparableWells):
    """Multi-well whose global well sits away from the envelope's minimum.

    `f(x) = Σ_j [q x_j² + A sin²(π x_j) − D exp(−(x_j − c)² / (2 s²))]`. The envelope
    `q x²` and the wells at the integers are those of `TiltedMultiWell` (untilted); a narrow
    Gaussian dip of depth D and width s at c deepens one well. With the defaults (`q = 1/20`,
    `A = 1`, `D = 1`, `c = 2`, `s = 0.2`, so `2s² = 0.08`) and `dim = 1` this is
    `x²/20 + sin²(πx) − exp(−(x − 2)²/0.08)`: the global minimum (f ≈ −0.80) lies at x ≈ 1.99,
    two wells from the envelope's minimum at 0, so the landscape is not symmetric about x*
    and the average of scattered points does not land on x*.

    Curvature: `f'' = 2q + 2π²A cos(2πx) + (D/s²)(1 − u²) e^{−u²/2}` with `u = (x − c)/s`;
    `(1 − u²) e^{−u²/2}` lies in `[−2e^{−3/2}, 1]`, which gives the bounds.
    """

    quadratic: float = eqx.field(static=True)
    amplitude: float = eqx.field(static=True)
    depth: float = eqx.field(static=True)
    center: float = eqx.field(static=True)
    width: float = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int = 1,
        quadratic: float = 0.05,
        amplitude: float = 1.0,
        depth: float = 1.0,
        center: float = 2.0,
        width: float = 0.2,
    ):
        self.dim = _check_dim(dim)
        if not (quadratic > 0 and amplitude >= 0 and depth >= 0 and width > 0):
            raise ValueError(
                f"need quadratic > 0, amplitude >= 0, depth >= 0 and width > 0, got "
                f"quadratic={quadratic}, amplitude={amplitude}, depth={depth}, width={width}"
            )
        if not math.isfinite(center):
            raise ValueError(f"center must be finite, got {center}")
        self.quadratic, self.amplitude = float(quadratic), float(amplitude)
        self.depth, self.center, self.width = float(depth), float(center), float(width)

    def _f1d(self, x):
        xp = jnp if isinstance(x, jax.Array) else np
        u = (x - self.center) / self.width
        return (
            self.quadratic * x**2
            + self.amplitude * xp.sin(math.pi * x) ** 2
            - self.depth * xp.exp(-0.5 * u**2)
        )

    def _df1d(self, x):
        xp = jnp if isinstance(x, jax.Array) else np
        u = (x - self.center) / self.width
        return (
            2 * self.quadratic * x
            + self.amplitude * math.pi * xp.sin(2 * math.pi * x)
            + self.depth * u / self.width * xp.exp(-0.5 * u**2)
        )

    def value(self, x):
        return jnp.sum(self._f1d(x))

    def grad(self, x):
        return self._df1d(x)

    def _star_1d(self) -> float:
        # f >= q x² − D > 0 >= f(0) for |x| > sqrt(D/q): the global minimum lies inside.
        reach = math.sqrt(self.depth / self.quadratic) + 1.0
        lo, hi = min(-reach, self.center - 1.0), max(reach, self.center + 1.0)
        grid = np.linspace(lo, hi, int((hi - lo) * 1e4) + 1)
        x = float(grid[np.argmin(self._f1d(grid))])
        # Polish the grid point with Newton steps on f' (f'' > 0 at the bottom of a well).
        for _ in range(50):
            d2 = (self._df1d(x + 1e-6) - self._df1d(x - 1e-6)) / 2e-6
            if not d2 > 0:
                break
            step = self._df1d(x) / d2
            x -= step
            if abs(step) < 1e-14:
                break
        return x

    def curvature_bounds(self):
        c = 2 * math.pi**2 * self.amplitude
        dip = self.depth / self.width**2
        return 2 * self.quadratic - c - 2 * math.exp(-1.5) * dip, 2 * self.quadratic + c + dip


class Rastrigin(AbstractLandscape):
    """Rastrigin-type: `f(x) = Σ_j [x_j² / (2s) + A (1 − cos(2π x_j))]`, global minimum 0 at 0.

    `s` (`scale`) sets how weakly the quadratic bowl confines the wells at the integers.
    Curvature: `1/s + 4π²A cos(2πx)`.
    """

    scale: float = eqx.field(static=True)
    amplitude: float = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, dim: int = 2, scale: float = 10.0, amplitude: float = 1.0):
        self.dim = _check_dim(dim)
        if scale <= 0 or amplitude < 0:
            raise ValueError(f"need scale > 0 and amplitude >= 0, got {scale}, {amplitude}")
        self.scale, self.amplitude = float(scale), float(amplitude)

    def _f1d(self, x):
        xp = jnp if isinstance(x, jax.Array) else np
        return x**2 / (2 * self.scale) + self.amplitude * (1 - xp.cos(2 * math.pi * x))

    def value(self, x):
        return jnp.sum(self._f1d(x))

    def grad(self, x):
        return x / self.scale + 2 * math.pi * self.amplitude * jnp.sin(2 * math.pi * x)

    def minimizer(self):
        return jnp.zeros((self.dim,))

    def basin_1d(self) -> tuple[float, float]:
        """The interval `(lo, hi)` of the global well in each coordinate."""
        return _interval_basin(self._f1d, 0.0, 1.0)

    def in_global_basin(self, x):
        lo, hi = self.basin_1d()
        return jnp.all((x > lo) & (x < hi), axis=-1)

    def curvature_bounds(self):
        c = 4 * math.pi**2 * self.amplitude
        return 1 / self.scale - c, 1 / self.scale + c


class LogCoshQuadratic(AbstractLandscape):
    """Strongly convex, not quadratic: `f(x) = Σ_j log cosh(x_j − c_j) + (m/2)‖x − c‖²`.

    Curvature `m + sech²(x − c)` lies in `[m, m + 1]`; the minimizer is `c`.
    """

    strong_convexity: float = eqx.field(static=True)
    center: Array
    dim: int = eqx.field(static=True)

    def __init__(
        self, dim: int = 1, strong_convexity: float = 0.1, center: ArrayLike | None = None
    ):
        self.dim = _check_dim(dim)
        if strong_convexity <= 0:
            raise ValueError(f"strong_convexity must be > 0, got {strong_convexity}")
        self.strong_convexity = float(strong_convexity)
        c = np.zeros(self.dim) if center is None else np.asarray(center, dtype=float)
        if c.shape != (self.dim,):
            raise ValueError(f"center must have shape ({self.dim},), got {c.shape}")
        self.center = jnp.asarray(c)

    def value(self, x):
        r = x - self.center
        # log cosh(r) = |r| + log1p(exp(-2|r|)) - log 2, stable for large |r|.
        a = jnp.abs(r)
        return jnp.sum(
            a + jnp.log1p(jnp.exp(-2 * a)) - math.log(2) + 0.5 * self.strong_convexity * r**2
        )

    def grad(self, x):
        r = x - self.center
        return jnp.tanh(r) + self.strong_convexity * r

    def minimizer(self):
        return self.center

    def curvature_bounds(self):
        return self.strong_convexity, self.strong_convexity + 1.0


class ModifiedLandscape(AbstractLandscape):
    """The modified loss of SGD with learning rate lr: `f̃ = f + (lr/4) ‖∇f‖²`.

    This is the drift potential of the stochastic modified equation of order 2 (SME-2) of Li,
    Tai & E (*Stochastic modified equations and adaptive stochastic gradient algorithms*,
    ICML 2017): SGD `x_{k+1} = x_k − lr (∇f(x_k) + ξ_k)`, Cov ξ = Σ, is a weak order-2
    approximation of

        dX = −∇f̃(X) dt + √lr Σ^{1/2}(X) dW,      ∇f̃ = ∇f + (lr/2) ∇²f ∇f,      t = k·lr,

    where the plain SDE (drift −∇f) is only weak order 1. The correction is that of backward
    error analysis: one gradient step `x − lr ∇f(x)` equals, up to O(lr³), the gradient flow
    of f̃ run for time lr.

    Units in this library: in `CoupledSystem(f̃, gradient_scale=η)` stepped by
    `euler_optimizer(system, h)` the SGD learning rate is `lr = h·η` (h the step in time,
    time t = k·h), so `learning_rate` must be `h·η`, the lr of the optimizer actually run, not
    η; `dynamics.sme2(system, h)` builds exactly that system. The correction depends on lr
    only, not on how time is counted.

    `value` and `grad` act on one agent's `(dim,)`; `grad` costs one gradient and one
    Hessian-vector product (`jax.linearize` of the base's `grad`, evaluated at ∇f); no Hessian
    is formed.

    Minimizer and curvature:
    - `minimizer()` is the base's x*: `f̃ ≥ f` with equality where ∇f = 0, so
      `min f̃ = f(x*) = f̃(x*)`. If `λ_min(∇²f) > −2/lr` everywhere, `I + (lr/2)∇²f` is
      positive definite and f̃ has exactly f's critical points; otherwise f̃ has extra ones
      where ∇f is an eigenvector of ∇²f with eigenvalue −2/lr.
    - `curvature_bounds()`: ∇²f̃ = ∇²f + (lr/2)((∇²f)² + ∇³f[∇f]) involves the third
      derivative, which the base's (m, L) do not bound; stated only for a `Quadratic` base,
      whose f̃ is the quadratic `½ (x − c)ᵀ (A + (lr/2) A²) (x − c)` with eigenvalues
      `a + (lr/2) a²`. Any other base raises NotImplementedError.
    - `in_global_basin` is the base's (the same global well; for the separable landscapes
      the wells' ends, local maxima of f, are critical points of f̃ too).

    Args:
        base: the loss f.
        learning_rate: lr > 0, the SGD learning rate per step (for a `CoupledSystem`: `h·η`).
    """

    base: AbstractLandscape
    learning_rate: float = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, base: AbstractLandscape, learning_rate: float):
        if not isinstance(base, AbstractLandscape):
            raise TypeError(f"base must be an AbstractLandscape, got {type(base)}")
        lr = float(learning_rate)
        if not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning_rate (lr = h·η) must be > 0, got {learning_rate!r}")
        self.base, self.learning_rate, self.dim = base, lr, base.dim

    def value(self, x):
        g = self.base.grad(x)
        return self.base.value(x) + 0.25 * self.learning_rate * jnp.sum(g * g)

    def grad(self, x):
        # One primal gradient and one forward-mode HVP ∇²f·∇f (never the Hessian).
        g, hvp = jax.linearize(self.base.grad, x)
        return g + 0.5 * self.learning_rate * hvp(g)

    def minimizer(self):
        return self.base.minimizer()

    def curvature_bounds(self):
        if isinstance(self.base, Quadratic):
            ev = self.base.eigenvalues()
            mod = ev + 0.5 * self.learning_rate * ev**2
            return float(mod.min()), float(mod.max())
        raise NotImplementedError(
            f"curvature bounds of the SME-2 loss of {type(self.base).__name__} are not known: "
            "∇²f̃ = ∇²f + (lr/2)((∇²f)² + ∇³f[∇f]) needs a bound on the third derivative "
            "(stated only for a Quadratic base)"
        )

    def in_global_basin(self, x):
        return self.base.in_global_basin(x)
