"""Almost Stochastic Order (ASO) over seeds: does strategy A's score distribution dominate B's?

Implemented from the papers, not from any package (``deepsig`` is GPL-3):

* del Barrio, Cuesta-Albertos & Matrán (2018), "An optimal transportation
  approach for assessing almost stochastic order": the violation ratio
  ``ε_W2(F, G) = ∫_{t: F⁻¹(t) < G⁻¹(t)} (F⁻¹(t) − G⁻¹(t))² dt / W2(F, G)²``,
  the share of the squared 2-Wasserstein distance between A's quantile
  function ``F⁻¹`` and B's ``G⁻¹`` on which A is *below* B. 0 means A is
  stochastically larger than B everywhere, 1 means B is everywhere.
* Dror, Shlomov & Reichart (2019), "Deep Dominance": the test of
  ``H0: ε ≥ τ`` against ``H1: ε < τ`` rejects at level α when
  ``ε_min = ε̂ − sqrt((n + m) / (n m)) · σ̂ · Φ⁻¹(α)`` (an upper confidence
  bound of ε, since ``Φ⁻¹(α) < 0``) is below τ, where σ̂ is the bootstrap
  standard deviation of ``sqrt(n m / (n + m)) · (ε̂* − ε̂)``.
* Ulmer, Hardmeier & Frellsen (2022), "deep-significance": τ = 0.2, and with
  k comparisons the confidence level is Bonferroni-adjusted, α/k.

The quantile functions are the empirical (inverted-CDF) ones, integrated on a
grid of midpoints in (0, 1). When both quantile functions coincide (W2 = 0) the
ratio is 0/0 and is taken as 0.5: no evidence for either side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

TAU = 0.2
ALPHA = 0.05
GRID = 1000  # quantile levels on which the integrals are evaluated


@dataclass(frozen=True)
class AsoResult:
    """ε_min of "A almost stochastically dominates B" and how it was obtained."""

    eps_min: float
    violation: float  # ε̂ on the observed scores
    n_a: int
    n_b: int
    alpha: float  # the (Bonferroni-adjusted) level used
    resamples: int

    @property
    def dominates(self) -> bool:
        """ε_min < τ (0.2): A almost stochastically dominates B."""
        return self.eps_min < TAU


def _quantiles(sorted_samples: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Inverted-CDF quantiles ``x[ceil(n t) - 1]`` of each row of ``sorted_samples`` at ``levels``."""
    n = sorted_samples.shape[-1]
    idx = np.clip(np.ceil(levels * n).astype(int) - 1, 0, n - 1)
    return sorted_samples[..., idx]


def violation_ratio(a: np.ndarray, b: np.ndarray, grid: int = GRID) -> np.ndarray:
    """ε_W2 of rows of ``a`` against rows of ``b`` (last axis: the samples; any leading axes broadcast)."""
    levels = (np.arange(grid) + 0.5) / grid
    diff = _quantiles(np.sort(a, axis=-1), levels) - _quantiles(np.sort(b, axis=-1), levels)
    total = np.mean(diff ** 2, axis=-1)
    below = np.mean(np.where(diff < 0, diff ** 2, 0.0), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, below / np.where(total > 0, total, 1.0), 0.5)


def aso(scores_a: Sequence[float], scores_b: Sequence[float], resamples: int = 1000, seed: int = 0,
        alpha: float = ALPHA, comparisons: int = 1) -> AsoResult:
    """ε_min of "A almost stochastically dominates B" from per-seed scores (higher is better).

    ``comparisons`` > 1 applies Bonferroni's correction to the confidence level
    (level α / comparisons), as Ulmer et al. (2022) recommend for several tests.
    """
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("ASO needs at least one score on each side")
    if resamples < 2:
        raise ValueError("ASO needs at least 2 bootstrap resamples")
    level = alpha / max(1, comparisons)
    n, m = a.size, b.size
    observed = float(violation_ratio(a, b))
    rng = np.random.default_rng(seed)
    boot_a = a[rng.integers(0, n, size=(resamples, n))]
    boot_b = b[rng.integers(0, m, size=(resamples, m))]
    boot = violation_ratio(boot_a, boot_b)
    scale = np.sqrt(n * m / (n + m))
    sigma = float(np.std(scale * (boot - observed), ddof=1))
    eps_min = observed - sigma / scale * NormalDist().inv_cdf(level)
    return AsoResult(float(min(1.0, max(0.0, eps_min))), observed, n, m, level, resamples)
