"""Almost Stochastic Order on score distributions whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from seqexp.report.aso import TAU, aso, violation_ratio


def normal(mean: float, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 0.1, n)


def test_clearly_better_dominates():
    a, b = normal(1.0, 10, 1), normal(0.0, 10, 2)
    result = aso(a, b, seed=0)
    assert result.violation == 0.0
    assert result.eps_min == pytest.approx(0.0, abs=1e-9)
    assert result.dominates


def test_reversed_is_one():
    a, b = normal(1.0, 10, 1), normal(0.0, 10, 2)
    result = aso(b, a, seed=0)
    assert result.violation == pytest.approx(1.0)
    assert result.eps_min == pytest.approx(1.0)
    assert not result.dominates


def test_same_distribution_is_never_dominance():
    for seed in range(5):
        a, b = normal(0.0, 20, 10 + seed), normal(0.0, 20, 20 + seed)
        assert aso(a, b, seed=0).eps_min >= TAU
        assert aso(b, a, seed=0).eps_min >= TAU
    same = normal(0.0, 20, 3)
    assert float(violation_ratio(same, same)) == 0.5  # 0/0: no evidence either way
    assert aso(same, same).eps_min >= TAU


def test_three_seeds_a_clear_gap_is_dominance_and_a_small_one_is_not():
    assert aso([0.91, 0.92, 0.93], [0.88, 0.89, 0.90]).eps_min < TAU
    assert aso([0.91, 0.92, 0.93], [0.905, 0.915, 0.925]).eps_min >= TAU


def test_violation_ratio_by_hand():
    # Quantile functions: A = (0, 2), B = (1, 1) on halves: A is below on the first half by 1 and above on the
    # second by 1, so the violating share of the squared distance is 1/2.
    assert float(violation_ratio(np.array([0.0, 2.0]), np.array([1.0, 1.0]))) == pytest.approx(0.5)
    # A = (0, 3) vs B = (1, 1): below by 1, above by 2 -> 1 / (1 + 4).
    assert float(violation_ratio(np.array([0.0, 3.0]), np.array([1.0, 1.0]))) == pytest.approx(0.2)


def test_deterministic_with_a_seed_and_bonferroni_is_stricter():
    a, b = normal(0.05, 8, 4), normal(0.0, 8, 5)
    first, again = aso(a, b, seed=7), aso(a, b, seed=7)
    assert first == again
    assert aso(a, b, seed=8).violation == first.violation  # the point estimate needs no resampling
    strict = aso(a, b, seed=7, comparisons=6)
    assert strict.alpha == pytest.approx(0.05 / 6)
    assert strict.eps_min >= first.eps_min


def test_bad_input():
    with pytest.raises(ValueError, match="at least one score"):
        aso([], [1.0])
