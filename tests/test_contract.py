"""Three-state verdicts: the claim helpers against hand-worked cases, and the intervals
against independent formulas."""

import math

import numpy as np
import pytest
from scipy import stats

from experiments.harness.contract import (
    Claim,
    claim_between,
    claim_greater,
    claim_less,
    mean_interval,
    proportion_interval,
    worst_cell,
)


@pytest.mark.parametrize(
    ("make", "verdict"),
    (
        (lambda: claim_less("a", "s", 0.5, 1.0), "holds"),
        (lambda: claim_less("a", "s", 1.5, 1.0), "fails"),
        (lambda: claim_less("a", "s", 0.5, 1.0, interval=(0.2, 0.8)), "holds"),
        (lambda: claim_less("a", "s", 0.9, 1.0, interval=(0.7, 1.1)), "inconclusive"),
        (lambda: claim_less("a", "s", 1.2, 1.0, interval=(1.0, 1.4)), "fails"),
        (lambda: claim_greater("a", "s", 2.0, 1.0, interval=(1.5, 2.5)), "holds"),
        (lambda: claim_greater("a", "s", 1.1, 1.0, interval=(0.9, 1.3)), "inconclusive"),
        (lambda: claim_greater("a", "s", 0.5, 1.0, interval=(0.0, 1.0)), "fails"),
        (lambda: claim_between("a", "s", 1.0, 0.8, 1.2, interval=(0.9, 1.1)), "holds"),
        (lambda: claim_between("a", "s", 1.2, 0.8, 1.2, interval=(1.1, 1.3)), "inconclusive"),
        (lambda: claim_between("a", "s", 2.0, 0.8, 1.2, interval=(1.5, 2.5)), "fails"),
        (lambda: claim_between("a", "s", 0.0, 0.8, 1.2, interval=(-1.0, 3.0)), "inconclusive"),
        (lambda: claim_less("a", "s", math.nan, 1.0), "fails"),
        (lambda: claim_greater("a", "s", math.inf, 1.0, interval=(0.0, math.inf)), "fails"),
    ),
)
def test_three_state_verdicts(make, verdict):
    claim = make()
    assert claim.verdict == verdict
    assert claim.holds == (verdict == "holds")
    out = claim.to_json()
    assert out["verdict"] == verdict and set(out) >= {"interval", "target", "value"}


def test_bad_interval_and_verdict_are_rejected():
    with pytest.raises(ValueError, match="lo <= hi"):
        claim_less("a", "s", 0.5, 1.0, interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="verdict"):
        Claim("a", "s", 0.5, "< 1", "maybe")


def test_a_nan_sample_fails_the_claim_instead_of_raising():
    value, interval = mean_interval([1.0, math.nan, 2.0])
    for make in (claim_less, claim_greater):
        claim = make("a", "s", value, 0.5, interval=interval)
        assert claim.verdict == "fails" and claim.interval is None


def test_mean_interval_is_two_standard_errors():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    mean, (lo, hi) = mean_interval(x)
    se = stats.sem(x)  # scipy: std(ddof=1)/sqrt(n)
    assert mean == pytest.approx(3.5)
    assert (lo, hi) == pytest.approx((3.5 - 2 * se, 3.5 + 2 * se))
    assert mean_interval([3.0])[1] == (-math.inf, math.inf)  # one seed resolves nothing


def test_proportion_interval_is_wilsons():
    p, (lo, hi) = proportion_interval(7, 20)
    ref = stats.binomtest(7, 20).proportion_ci(confidence_level=0.95, method="wilson")
    assert p == pytest.approx(0.35)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=2e-3)  # z = 1.96 vs exact
    assert proportion_interval(0, 10)[1][0] == 0.0 and proportion_interval(10, 10)[1][1] == 1.0


@pytest.mark.parametrize(("claim", "make"), (("less", claim_less), ("greater", claim_greater)))
def test_worst_cell_verdict_is_the_conjunction_of_the_cells(claim, make):
    """Oracle: the claim over every cell holds iff each cell's own claim holds, fails iff some
    cell's fails, and is inconclusive otherwise."""
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(500):
        means = rng.normal(1.0, 0.3, size=rng.integers(1, 5))
        halves = rng.uniform(0.0, 0.3, size=means.size)
        cells = [(m, (m - h, m + h)) for m, h in zip(means, halves)]
        each = [make("c", "", m, 1.0, interval=iv).verdict for m, iv in cells]
        expected = (
            "holds"
            if all(v == "holds" for v in each)
            else "fails"
            if "fails" in each
            else "inconclusive"
        )
        value, interval = worst_cell(cells, claim=claim)
        assert make("c", "", value, 1.0, interval=interval).verdict == expected
        seen.add(expected)
    assert seen == {"holds", "fails", "inconclusive"}


def test_worst_cell_non_finite_and_bad_arguments():
    value, interval = worst_cell([(0.1, (0.0, 0.2)), (math.nan, (0.0, 0.1))], claim="less")
    assert math.isnan(value) and interval is None
    assert claim_less("c", "", value, 1.0, interval=interval).verdict == "fails"
    value, interval = worst_cell([(0.5, (-math.inf, math.inf)), (0.1, (0.0, 0.2))], claim="less")
    assert claim_less("c", "", value, 1.0, interval=interval).verdict == "inconclusive"
    value, interval = worst_cell([(0.5, (math.nan, math.nan))], claim="greater")
    assert value == 0.5 and interval is None
    with pytest.raises(ValueError, match="claim must be"):
        worst_cell([(0.5, (0.4, 0.6))], claim="below")
    with pytest.raises(ValueError, match="at least one"):
        worst_cell([], claim="less")
