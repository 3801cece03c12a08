"""The same coupling rule as an SDE (Diffrax) and as an Optax optimizer, on a nonconvex f.

Protocol (ours): the tilted multi-well `f(x) = q x² + A sin²(πx) + t x` (docs/papers.md), N
agents with quorum coupling (g = 0), additive noise σ.

1. Pathwise (in float64): the Euler–Maruyama solution with step h (`dynamics.solve` with a
   `StepBrownianPath`) and the discrete optimizer (`algorithms.solve_discrete`, Gaussian
   gradient noise from the same key) are run from the same start; their trajectories are
   overlaid and their largest absolute difference is `pathwise_max_abs_diff` (rounding only).
2. Weak error: for several h, E φ(X^h_T) of the optimizer, φ(x) = (1/N) Σ_i x_i², against a
   fine-step Heun solution of the SDE. Both are driven by one `VirtualBrownianTree` per
   sample (the optimizer's gradient noise is that path's increments on its step grid), so the
   difference is estimated with low variance. The slope of log |error| against log h is the
   weak order (Li, Tai, E: SGD is an order-1 weak approximation of its SDE).
"""

from __future__ import annotations

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from algorithms.discrete import solve_discrete
from dynamics.coupling import Quorum
from dynamics.landscapes import TiltedMultiWell
from dynamics.noise import IsotropicNoise
from dynamics.solve import solve
from dynamics.system import CoupledSystem

from .harness.contract import claim_between, claim_less
from .harness.plotting import figure

NAME = "continuous_vs_discrete"
DESCRIPTION = "One rule as SDE and optimizer: pathwise equality with shared noise, weak order 1"


@dataclasses.dataclass(frozen=True)
class Config:
    num_agents: int = dataclasses.field(default=8, metadata={"help": "N"})
    sigma: float = dataclasses.field(default=0.8, metadata={"help": "noise σ"})
    gradient_scale: float = dataclasses.field(default=0.5, metadata={"help": "η"})
    gain: float = dataclasses.field(default=1.0, metadata={"help": "k"})
    quorum_gain: float = dataclasses.field(default=0.25, metadata={"help": "k_z"})
    tilt: float = dataclasses.field(default=0.2, metadata={"help": "tilt t of the multi-well"})
    path_time: float = dataclasses.field(default=20.0, metadata={"help": "time of the overlay"})
    path_step: float = dataclasses.field(default=0.01, metadata={"help": "h for the overlay"})
    weak_time: float = dataclasses.field(default=1.0, metadata={"help": "T for the weak error"})
    step_sizes: tuple[float, ...] = dataclasses.field(
        default=(2**-4, 2**-5, 2**-6, 2**-7), metadata={"help": "h values (weak error)"}
    )
    reference_refinement: int = dataclasses.field(
        default=8, metadata={"help": "reference dt = min(h) / this"}
    )
    samples: int = dataclasses.field(default=16384, metadata={"help": "samples (weak error)"})

    def __post_init__(self):
        if self.num_agents < 1:
            raise ValueError(f"num_agents must be >= 1, got {self.num_agents}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        for name in ("gradient_scale", "path_time", "path_step", "weak_time"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if len(self.step_sizes) < 2 or min(self.step_sizes) <= 0:
            raise ValueError(f"need >= 2 positive step sizes, got {self.step_sizes}")
        for h in self.step_sizes:
            if abs(self.weak_time / h - round(self.weak_time / h)) > 1e-9:
                raise ValueError(f"weak_time {self.weak_time} is not a multiple of h={h}")
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2, got {self.samples}")


QUICK = dict(samples=4096, path_time=10.0)


def _system(config):
    return CoupledSystem(
        TiltedMultiWell(1, tilt=config.tilt),
        Quorum(config.gain, config.quorum_gain),
        IsotropicNoise(config.sigma),
        gradient_scale=config.gradient_scale,
    )


def _start(config):
    return jnp.linspace(-2.5, 2.5, config.num_agents)[:, None]


def run(config: Config, key: jax.Array) -> dict[str, np.ndarray]:
    # float64 so that "equal paths" is tested to rounding of 1e-16, not float32's 1e-7
    # amplified over thousands of steps of a nonconvex flow.
    with jax.enable_x64(True):
        return _run(config, key)


def _run(config, key):
    system, x0 = _system(config), _start(config)
    k_path, k_weak = jax.random.split(key)

    # 1. Pathwise equality with shared random numbers.
    h = config.path_step
    steps = round(config.path_time / h)
    path = dict(t1=steps * h, step_size=h, key=k_path, saveat=steps + 1)
    sol = solve(system, x0, **path)
    disc = solve_discrete(system, x0, **path)
    out = {
        "path_ts": np.asarray(sol.ts),
        "path_sde": np.asarray(sol.x[..., 0]),
        "path_sde_center": np.asarray(sol.aux[..., 0]),
        "path_optax": np.asarray(disc.x[..., 0]),
    }

    # 2. Weak error against a fine Heun reference on a shared Brownian tree.
    t1 = config.weak_time
    ref_dt = min(config.step_sizes) / config.reference_refinement
    keys = jax.random.split(k_weak, config.samples)

    def tree(k):
        # Dyadic step sizes and tol = ref_dt: every grid point is a node of the tree.
        return diffrax.VirtualBrownianTree(0.0, t1, tol=ref_dt, shape=x0.shape, key=k)

    def phi(x):
        return jnp.mean(x**2)

    def reference(k):
        s = solve(
            system, x0, t1=t1, step_size=ref_dt, brownian=tree(k), solver=diffrax.Heun(), saveat=1
        )
        return phi(s.x[-1])

    ref = jax.vmap(reference)(keys)
    diffs = []
    for h in config.step_sizes:

        def discrete(k, h=h):
            s = solve_discrete(system, x0, t1=t1, step_size=h, brownian=tree(k), saveat=1)
            return phi(s.x[-1])

        diffs.append(jax.vmap(discrete)(keys) - ref)
    diffs = np.asarray(jnp.stack(diffs))  # (H, samples)
    out.update(
        step_sizes=np.asarray(config.step_sizes),
        weak_error=np.abs(diffs.mean(1)),
        weak_error_se=diffs.std(1, ddof=1) / np.sqrt(diffs.shape[1]),
        reference_mean=np.asarray(ref.mean()),
    )
    return out


def _fit(results):
    """Least squares of log error on log h, weighted by each point's relative s.e."""
    hs, err, se = results["step_sizes"], results["weak_error"], results["weak_error_se"]
    return np.polyfit(np.log(hs), np.log(err), 1, w=err / np.maximum(se, 1e-300))


def _slope(results):
    return _fit(results)[0]


def metrics(results, config):
    return {
        "pathwise_max_abs_diff": np.abs(results["path_sde"] - results["path_optax"]).max(),
        "weak_order_slope": _slope(results),
        "weak_error_largest_h": results["weak_error"][0],
    }


def claims(results, config):
    m = metrics(results, config)
    return [
        claim_less(
            "euler_maruyama_equals_optimizer",
            "With shared random numbers the Euler–Maruyama path equals the optimizer's path "
            "(largest |difference| in float64: rounding only)",
            m["pathwise_max_abs_diff"],
            1e-9,
        ),
        claim_between(
            "weak_order_one",
            "The optimizer is a weak order-1 approximation of the SDE: fitted slope of "
            "log|E φ(X^h) − E φ(X)| against log h",
            m["weak_order_slope"],
            0.75,
            1.25,
        ),
    ]


def plot(results, config):
    fig, (ax1, ax2) = figure(2)
    ts, sde, opt = results["path_ts"], results["path_sde"], results["path_optax"]
    every = max(1, len(ts) // 60)
    for i in range(sde.shape[1]):
        ax1.plot(
            ts,
            sde[:, i],
            "-",
            lw=0.8,
            color=f"C{i % 10}",
            label="SDE (Euler–Maruyama)" if i == 0 else None,
        )
        ax1.plot(ts[::every], opt[::every, i], "o", ms=2.5, mfc="none", color=f"C{i % 10}",
                 label="Optax optimizer" if i == 0 else None)  # fmt: skip
    ax1.plot(ts, results["path_sde_center"], "k-", lw=2, label="quorum variable z")
    ax1.set(xlabel="time t = k·h", ylabel="x_i",
            title=f"Shared noise, h={config.path_step:g}: max |Δ| = "
            f"{np.abs(sde - opt).max():.1e}")  # fmt: skip
    ax1.legend(fontsize=7)
    hs, err, se = results["step_sizes"], results["weak_error"], results["weak_error_se"]
    ax2.errorbar(hs, err, yerr=se, fmt="o", label="|E φ(X^h_T) − E φ(X_T)|")
    slope = _slope(results)
    fit = np.exp(np.polyval(_fit(results), np.log(hs)))
    ax2.plot(hs, fit, "-", label=f"fit: slope {slope:.2f}")
    ax2.plot(hs, err[0] * hs / hs[0], "k:", label="order 1")
    ax2.set(xscale="log", yscale="log", xlabel="step size h (time)", ylabel="weak error",
            title=f"Weak error at T={config.weak_time:g}, φ = mean x_i², "
            f"{config.samples} samples")  # fmt: skip
    ax2.legend(fontsize=8)
    fig.suptitle(
        f"Quorum SGD on the tilted multi-well, N={config.num_agents}, σ={config.sigma:g}, "
        f"η={config.gradient_scale:g}, k={config.gain:g}, k_z={config.quorum_gain:g}",
        fontsize=9,
    )
    return {"continuous_vs_discrete": fig}
