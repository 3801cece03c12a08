"""The experiments contract (DESIGN.md): claims and what an experiment module provides.

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
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Claim:
    """A falsifiable statement checked on one run's numbers.

    `value` is the measured number, `target` says what it is compared with (e.g. "< 0.1"),
    `holds` whether it held on this run.
    """

    id: str
    statement: str
    value: float
    target: str
    holds: bool

    def to_json(self) -> dict:
        v = float(self.value)
        return {
            "id": self.id,
            "statement": self.statement,
            "value": v if math.isfinite(v) else str(v),
            "target": self.target,
            "holds": bool(self.holds),
        }


def claim_less(id: str, statement: str, value: float, bound: float) -> Claim:
    """A claim that `value < bound` (False when value is NaN)."""
    return Claim(id, statement, float(value), f"< {bound:g}", bool(value < bound))


def claim_greater(id: str, statement: str, value: float, bound: float) -> Claim:
    """A claim that `value > bound` (False when value is NaN)."""
    return Claim(id, statement, float(value), f"> {bound:g}", bool(value > bound))


def claim_between(id: str, statement: str, value: float, lo: float, hi: float) -> Claim:
    """A claim that `lo <= value <= hi` (False when value is NaN)."""
    return Claim(id, statement, float(value), f"in [{lo:g}, {hi:g}]", bool(lo <= value <= hi))
