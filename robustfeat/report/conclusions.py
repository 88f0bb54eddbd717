"""What a reader should conclude: per model and data, each method against the comparison
row (``lora`` where it was run, else the frozen base ``linear``), one sentence per headline
metric, from the paired difference over the seeds both have and its 95% interval."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from robustfeat.metrics.intervals import Interval, paired_difference
from robustfeat.report.summary import per_seed
from robustfeat.evaluations.base import Headline

#: the rows every method is compared against, in order of preference
COMPARED_WITH = ("lora", "linear")


@dataclass(frozen=True)
class Comparison:
    method: str
    against: str
    headline: Headline
    difference: Interval  # method - against, paired by seed

    @property
    def verdict(self) -> str:
        """``better``, ``worse``, ``no evidence`` (the interval holds 0) or ``no interval``."""
        d = self.difference
        if d.n < 2:
            return "no interval"
        if not d.excludes(0.0):
            return "no evidence"
        return "better" if (d.mean > 0) == self.headline.higher_is_better else "worse"

    def sentence(self) -> str:
        h, d = self.headline, self.difference
        label = f"{h.label} ({'higher' if h.higher_is_better else 'lower'} is better)"
        if d.n == 0:
            return f"{label}: no seed in common with {self.against}, so no comparison."
        if d.n == 1:
            return (f"{label}: {d.mean:+.4g} against {self.against} on one shared seed; one seed gives no interval "
                    "over seeds, so no conclusion.")
        few = f" (only {d.n} seeds: a wide interval)" if d.few else ""
        numbers = f"{d.mean:+.4g} [{d.low:+.4g}, {d.high:+.4g}] over {d.n} paired seeds{few}"
        if self.verdict == "no evidence":
            return f"{label}: {numbers}: no evidence of a difference from {self.against}."
        return f"{label}: {numbers}: {self.verdict} than {self.against}."


@dataclass(frozen=True)
class Section:
    model: str
    data: str
    against: str | None
    comparisons: tuple[Comparison, ...]
    methods: tuple[str, ...]


def conclusions(frame: pd.DataFrame, headlines: tuple[Headline, ...] | None = None) -> list[Section]:
    """One section per (model, data): every other method against the comparison row, on
    every headline both have."""
    from robustfeat.report.summary import headlines as all_headlines

    hs = headlines if headlines is not None else all_headlines()
    ps = per_seed(frame)
    out = []
    for (model, data), part in ps.groupby(["model", "data"], sort=True):
        methods = tuple(sorted(part.method.unique()))
        against = next((m for m in COMPARED_WITH if m in methods), None)
        comps = []
        if against is not None:
            ref = part[part.method == against].set_index("seed")
            for method in methods:
                if method == against:
                    continue
                mine = part[part.method == method].set_index("seed")
                for h in hs:
                    if h.key not in part or mine[h.key].isna().all() or ref[h.key].isna().all():
                        continue
                    d = paired_difference(mine[h.key].to_dict(), ref[h.key].to_dict(), h.bounds)
                    comps.append(Comparison(method, against, h, d))
        out.append(Section(model, data, against, tuple(comps), methods))
    return out
