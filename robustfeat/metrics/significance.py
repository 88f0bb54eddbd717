"""Tests over per-seed paired differences: the one-sample t-test p-value, two one-sided
tests for equivalence within a margin (TOST), and the Holm-Bonferroni step-down
adjustment of a family of p-values.

Every function takes one value per seed (a method's value minus the comparison row's on
the same seed) and leaves NaN values out. The t-tests have n - 1 degrees of freedom for n
values; below two values there is no test and the p-value is NaN. Identical differences
(zero spread) are the limit of the t-statistic: p = 0 when they differ from the null value
in the tested direction, and the test reads as no evidence when they equal it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robustfeat.metrics.intervals import Interval, over_seeds

ALTERNATIVES = ("two-sided", "greater", "less")


def _finite(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(list(values), dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def t_statistic(differences: Sequence[float], null: float = 0.0) -> float:
    """(mean - null) / (sd / sqrt(n)) with the sample sd (ddof 1); NaN below two values,
    +-inf for identical differences away from ``null`` and 0 at it."""
    v = _finite(differences)
    if len(v) < 2:
        return math.nan
    shift = float(v.mean()) - null
    sd = float(v.std(ddof=1))
    if sd == 0.0:
        return 0.0 if shift == 0.0 else math.copysign(math.inf, shift)
    return shift / (sd / math.sqrt(len(v)))


def paired_t_pvalue(differences: Sequence[float], null: float = 0.0, alternative: str = "two-sided") -> float:
    """p-value of the one-sample t-test that the mean of ``differences`` (one per seed) is
    ``null``: ``two-sided`` (mean != null), ``greater`` (mean > null) or ``less``
    (mean < null). NaN below two values."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    from scipy import stats

    t = t_statistic(differences, null)
    if math.isnan(t):
        return math.nan
    df = len(_finite(differences)) - 1
    if alternative == "greater":
        return float(stats.t.sf(t, df))
    if alternative == "less":
        return float(stats.t.cdf(t, df))
    return float(min(1.0, 2.0 * stats.t.sf(abs(t), df)))


@dataclass(frozen=True)
class Equivalence:
    """Two one-sided tests of ``margin_low < mean < margin_high``. ``p`` is the larger of
    the one-sided p-values (``p_low``: H0 mean <= margin_low; ``p_high``: H0 mean >=
    margin_high); equivalence at level alpha is shown when ``p < alpha``, which is the same
    as the (1 - 2 alpha) interval lying inside the margins: ``interval90`` (the TOST interval
    at alpha 0.05). ``interval95`` is the usual 95% interval of the mean difference."""

    p: float
    p_low: float
    p_high: float
    interval90: Interval
    interval95: Interval
    n: int
    margin_low: float
    margin_high: float

    def equivalent(self, alpha: float = 0.05) -> bool:
        return bool(not math.isnan(self.p) and self.p < alpha)

    def outside(self) -> int:
        """+1 where the 95% interval lies wholly above ``margin_high``, -1 wholly below
        ``margin_low``, 0 otherwise (or with no interval)."""
        lo, hi = self.interval95.low, self.interval95.high
        if math.isnan(lo) or math.isnan(hi):
            return 0
        return 1 if lo > self.margin_high else -1 if hi < self.margin_low else 0


def tost(differences: Sequence[float], margin_low: float, margin_high: float,
         bounds: tuple[float, float] = (-math.inf, math.inf)) -> Equivalence:
    """Two one-sided t-tests for equivalence of the mean of ``differences`` (one per seed)
    within ``(margin_low, margin_high)``, with the 90% (TOST) and 95% intervals of the mean
    (clipped to ``bounds`` for display; the p-values are not).

    The test is on plain differences. For a ratio metric such as perplexity, where a margin
    is relative (within 5% of the reference), pass the per-seed relative differences
    ``value / reference - 1`` and the margins as fractions (-0.05, 0.05)."""
    if not margin_low < margin_high:
        raise ValueError(f"margin_low must be below margin_high, got ({margin_low}, {margin_high})")
    v = _finite(differences)
    p_low = paired_t_pvalue(v, margin_low, "greater")
    p_high = paired_t_pvalue(v, margin_high, "less")
    p = math.nan if math.isnan(p_low) or math.isnan(p_high) else max(p_low, p_high)
    return Equivalence(p, p_low, p_high, over_seeds(v, bounds, level=0.90), over_seeds(v, bounds, level=0.95),
                       len(v), float(margin_low), float(margin_high))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values, in the order given: the i-th smallest
    of the m p-values times (m - i + 1), made non-decreasing in that order and capped at 1.
    NaN p-values (tests that could not be run) stay NaN and do not count in m."""
    p = np.asarray(list(pvalues), dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


__all__ = ["ALTERNATIVES", "Equivalence", "holm", "paired_t_pvalue", "t_statistic", "tost"]
