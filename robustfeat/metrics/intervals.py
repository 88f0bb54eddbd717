"""Intervals over seeds: the mean of per-seed values with a 95% t-interval whose degrees
of freedom come from the number of distinct seeds, kept inside the metric's range, and the
paired difference of two methods over the seeds they share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: below this many seeds an interval is reported as "from few seeds"
FEW_SEEDS = 3


@dataclass(frozen=True)
class Interval:
    """A mean with its 95% interval over ``n`` seeds. ``clipped``: the t-interval left the
    metric's range and was cut back to it."""

    mean: float
    low: float
    high: float
    n: int
    clipped: bool = False

    @property
    def few(self) -> bool:
        return self.n < FEW_SEEDS

    def excludes(self, value: float = 0.0) -> bool:
        """The interval lies wholly on one side of ``value`` (False when it is undefined)."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and (self.low > value or self.high < value))


def t_half_width(values: Sequence[float], level: float = 0.95) -> float:
    """Half-width of the two-sided ``level`` t-interval of the mean (95% unless told; NaN
    below two values)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return math.nan
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def clip(low: float, high: float, bounds: tuple[float, float]) -> tuple[float, float, bool]:
    """(low, high) cut back into ``bounds``, and whether anything was cut."""
    lo, hi = max(low, bounds[0]), min(high, bounds[1])
    return lo, hi, bool(lo != low or hi != high)


def over_seeds(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf),
               level: float = 0.95) -> Interval:
    """The mean of one value per seed with its t-interval (95% unless ``level`` says
    otherwise; n - 1 degrees of freedom for n seeds), clipped to ``bounds``. One seed: the
    mean only (no interval)."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if len(v) == 1:
        return Interval(m, math.nan, math.nan, 1)
    half = t_half_width(v, level)
    lo, hi, cut = clip(m - half, m + half, bounds)
    return Interval(m, lo, hi, len(v), cut)


def paired_difference(values: Mapping[object, float], reference: Mapping[object, float],
                      bounds: tuple[float, float] = (-math.inf, math.inf)) -> Interval:
    """Mean over the seeds both have of (value - reference value), with its 95% t-interval
    (a paired t-interval; no interval for one shared seed). ``bounds`` is the metric's
    range: a difference lives in +-(its width)."""
    seeds = sorted(s for s in set(values) & set(reference)
                   if not (math.isnan(values[s]) or math.isnan(reference[s])))
    width = bounds[1] - bounds[0]
    return over_seeds([values[s] - reference[s] for s in seeds], (-width, width))
