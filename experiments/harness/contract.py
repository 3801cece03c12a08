"""The experiments contract: claims with three-state verdicts, and what an experiment provides.

An experiment is a module with:

- `NAME: str` and `DESCRIPTION: str` (one line),
- `Config`: a frozen dataclass whose defaults are the full (paper-scale) protocol,
- `QUICK: dict` of field overrides that make the quick mode (minutes on two CPU cores),
- `run(config, key) -> dict[str, np.ndarray]`: pure computation, arrays only (saved as .npz),
- `metrics(results, config) -> dict[str, float]`: named scalar results,
- `claims(results, config) -> list[Claim]`: falsifiable statements checked on these numbers,
- `plot(results, config) -> dict[str, matplotlib.figure.Figure]`: figures only, no I/O.

File output (config.json, metrics.json, results.npz, figures) is done by
`experiments.harness.store`.

Verdicts. A claim compares a measured `value` with a target (`< b`, `> b`, `in [lo, hi]`).
A stochastic claim carries its uncertainty as an `interval` `(lo, hi)`: the mean over seeds
± 2 standard errors (`mean_interval`), or a Wilson interval for a success rate over runs
(`proportion_interval`). Its verdict is

- "holds" when the whole interval satisfies the target,
- "fails" when the whole interval misses it,
- "inconclusive" otherwise (the run cannot resolve the effect at this size).

A deterministic claim (round-off, a closed form, a fitted slope of noise-free numbers) has no
interval and holds or fails on its value. A non-finite value (a diverged protocol) fails.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "VERDICTS",
    "Claim",
    "claim_between",
    "claim_greater",
    "claim_less",
    "mean_interval",
    "proportion_interval",
    "worst_cell",
]

VERDICTS = ("holds", "fails", "inconclusive")


@dataclasses.dataclass(frozen=True)
class Claim:
    """A falsifiable statement checked on one run's numbers.

    `value` is the measured number (the point estimate), `target` says what it is compared
    with (e.g. "< 0.1"), `interval` its uncertainty `(lo, hi)` or None for a deterministic
    number, and `verdict` one of "holds", "fails", "inconclusive".
    """

    id: str
    statement: str
    value: float
    target: str
    verdict: str
    interval: tuple[float, float] | None = None

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    @property
    def holds(self) -> bool:
        """True when the verdict is "holds"."""
        return self.verdict == "holds"

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "statement": self.statement,
            "value": _number(self.value),
            "target": self.target,
            "interval": None if self.interval is None else [_number(v) for v in self.interval],
            "verdict": self.verdict,
        }


def _number(v: float):
    v = float(v)
    return v if math.isfinite(v) else str(v)


def _interval(interval) -> tuple[float, float] | None:
    if interval is None:
        return None
    lo, hi = (float(v) for v in interval)
    if math.isnan(lo) or math.isnan(hi):
        return None  # e.g. `mean_interval` of a diverged (NaN) run: decided on the value
    if not lo <= hi:
        raise ValueError(f"interval must be (lo, hi) with lo <= hi, got {interval!r}")
    return lo, hi


def _verdict(value: float, interval, inside, missed) -> str:
    """Three-state verdict. `inside(x)`: x meets the target; `missed(lo, hi)`: no point of
    [lo, hi] meets it. The targets are half-lines or intervals (convex), so both ends inside
    means the whole interval is."""
    if not math.isfinite(value):
        return "fails"
    if interval is None:
        return "holds" if inside(value) else "fails"
    lo, hi = interval
    if inside(lo) and inside(hi):
        return "holds"
    return "fails" if missed(lo, hi) else "inconclusive"


def claim_less(id: str, statement: str, value: float, bound: float, *, interval=None) -> Claim:
    """A claim that `value < bound` (with `interval`: holds if hi < bound, fails if
    lo >= bound)."""
    iv = _interval(interval)
    verdict = _verdict(value, iv, lambda x: x < bound, lambda lo, hi: lo >= bound)
    return Claim(id, statement, float(value), f"< {bound:g}", verdict, iv)


def claim_greater(id: str, statement: str, value: float, bound: float, *, interval=None) -> Claim:
    """A claim that `value > bound` (with `interval`: holds if lo > bound, fails if
    hi <= bound)."""
    iv = _interval(interval)
    verdict = _verdict(value, iv, lambda x: x > bound, lambda lo, hi: hi <= bound)
    return Claim(id, statement, float(value), f"> {bound:g}", verdict, iv)


def claim_between(
    id: str, statement: str, value: float, lo: float, hi: float, *, interval=None
) -> Claim:
    """A claim that `lo <= value <= hi` (with `interval`: holds if it lies inside, fails if
    it lies wholly outside)."""
    iv = _interval(interval)
    verdict = _verdict(value, iv, lambda x: lo <= x <= hi, lambda a, b: b < lo or a > hi)
    return Claim(id, statement, float(value), f"in [{lo:g}, {hi:g}]", verdict, iv)


def mean_interval(samples, z: float = 2.0) -> tuple[float, tuple[float, float]]:
    """`(mean, (mean − z·se, mean + z·se))` of independent samples (e.g. one per seed).

    `se` is the standard error `std(ddof=1)/√n`; with one sample the interval is infinite
    (one seed cannot resolve anything). Non-finite samples (diverged runs) make the mean
    non-finite, so a claim on it fails: handle divergence before, explicitly.
    """
    x = np.asarray(samples, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("mean_interval needs at least one sample")
    mean = float(x.mean())
    if x.size == 1:
        return mean, (-math.inf, math.inf)
    half = z * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, (mean - half, mean + half)


def proportion_interval(successes, n: int, z: float = 1.96) -> tuple[float, tuple[float, float]]:
    """`(p, (lo, hi))`: a success rate `successes / n` and its Wilson score interval (95 %
    for z = 1.96), which stays inside [0, 1] and is informative at p = 0 or 1."""
    if n < 1:
        raise ValueError(f"n must be >= 1 trials, got {n}")
    p = float(successes) / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return p, (max(centre - half, 0.0), min(centre + half, 1.0))


def worst_cell(stats, *, claim: str) -> tuple[float, tuple[float, float] | None]:
    """The value and interval of a "for every cell" claim from each cell's `(value, (lo, hi))`
    (e.g. `mean_interval` or `proportion_interval` of each N, k or W).

    `claim="less"` (every cell below a bound): the largest value, with the interval (largest
    lower end, largest upper end). It lies wholly below the bound iff every cell's interval
    does, and wholly above iff some cell's does, so the three verdicts carry over.
    `claim="greater"` (every cell above a bound): the smallest value, smallest ends.
    A NaN value (a diverged protocol) makes the value NaN, which fails; a NaN end makes the
    interval None (the claim is decided on its value); infinite ends (one seed) stay, so the
    verdict is inconclusive unless the value itself is infinite.
    """
    if claim not in ("less", "greater"):
        raise ValueError(f"claim must be 'less' or 'greater', got {claim!r}")
    stats = [(float(v), (float(iv[0]), float(iv[1]))) for v, iv in stats]
    if not stats:
        raise ValueError("worst_cell needs at least one cell")
    pick = max if claim == "less" else min
    values = np.array([v for v, _ in stats])
    ends = np.array([iv for _, iv in stats])
    if np.any(np.isnan(values)):
        return math.nan, None
    value = float(pick(values))
    if np.any(np.isnan(ends)):
        return value, None
    return value, (float(pick(ends[:, 0])), float(pick(ends[:, 1])))
