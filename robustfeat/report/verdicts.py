"""The study's claims, each with a verdict: per (model, data) with a ``lora`` row, every
other method against ``lora``, paired by seed, on three claims:

* **comparable in-domain score** (headlines of role ``in-domain``): two one-sided tests
  (TOST) of equivalence within a margin stated before the study runs. Accuracy is compared
  in its own units (default margin 0.02, two accuracy points); perplexity, lower is better,
  as the relative difference ``ppl / ppl_lora - 1`` per seed (default margin 0.05, 5%).
  The test's p is the TOST p where the mean difference lies inside the margin band and,
  where it lies outside, the one-sided p of a difference beyond the margin on that side;
  *supported* when that p, Holm-adjusted, is below alpha with the mean inside (equivalence
  shown), *contradicted* when it is with the mean outside (clearly better or clearly worse
  beyond the margin: the sentence says which); otherwise *inconclusive*. Both verdicts rest
  on the Holm-adjusted p, like every other claim's.
* **more robust** (role ``robustness``, and effective robustness on the mean over OOD sets
  where the results have the reference line for it) and **forgets less** (role
  ``forgetting``): a two-sided paired t-test of method - lora; *supported* when the
  Holm-adjusted p < alpha and the difference is in the better direction, *contradicted*
  when it is significant and worse, otherwise *inconclusive*.

Holm's step-down correction runs over every test of one (model, data): all methods and all
claims together. Fewer than two shared seeds gives no test: *inconclusive*, saying why.
Every verdict keeps its numbers (seeds, mean difference with its 95% interval, p, Holm p,
the margin and the 90% TOST interval) so a reader can apply a stricter margin."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from robustfeat.evaluations.base import Headline
from robustfeat.metrics.intervals import Interval, over_seeds
from robustfeat.metrics.significance import Equivalence, holm, paired_t_pvalue, tost
from robustfeat.report.summary import per_seed

#: the row every method is tested against
AGAINST = "lora"
#: the claims, by the headline role they are tested on
CLAIMS = {"in-domain": "comparable in-domain score", "robustness": "more robust", "forgetting": "forgets less"}
#: what each claim says, and its contrary, in a sentence ("vefa forgets less than lora")
_SAYS = {"robustness": ("is more robust", "is less robust"), "forgetting": ("forgets less", "forgets more")}
#: equivalence margins of the in-domain claim, by headline key (what the study states before it runs)
DEFAULT_MARGINS: dict[str, float] = {"id_acc": 0.02, "id_ppl": 0.05}
#: in-domain metrics compared as the relative difference value / reference - 1 (ratio metrics)
RELATIVE_METRICS = ("perplexity",)
ALPHA = 0.05
#: the methods the claim is about: listed first, the baselines after them
UNDER_TEST = ("lorfa", "vefa")
VERDICTS = ("supported", "contradicted", "inconclusive")

#: effective robustness as a robustness headline: per seed, on the mean over OOD sets
EFFECTIVE = Headline("effective_robustness", "eff. robustness", "effective_robustness", True,
                     "OOD accuracy above the reference line at the method's ID accuracy (mean over OOD sets)",
                     "robustness", shift="mean-ood", bounds=(-1.0, 1.0), evaluation="ood")


@dataclass(frozen=True)
class Verdict:
    """One claim for one method against ``against`` on one headline. ``difference`` is the
    mean paired difference (method - against; for a relative in-domain metric the mean of
    value / reference - 1) with its 95% interval; ``tost90`` the 90% TOST interval and
    ``margin`` the equivalence margin (in-domain claim only); ``p`` the test's p-value (TOST
    for in-domain, two-sided paired t otherwise) and ``p_holm`` its Holm-adjusted value over
    the ``family`` tests of the (model, data); ``reason`` why there was no test."""

    model: str
    data: str
    claim: str  # a key of CLAIMS
    method: str
    against: str
    headline: Headline
    verdict: str
    n: int
    difference: Interval
    p: float
    p_holm: float
    family: int
    alpha: float = ALPHA
    margin: float | None = None
    relative: bool = False
    tost90: Interval | None = None
    direction: str = ""  # "better" / "worse" where the verdict rests on a direction
    reason: str = ""

    @property
    def claim_text(self) -> str:
        return CLAIMS[self.claim]

    def number(self, x: float) -> str:
        if x is None or math.isnan(x):
            return "-"
        return f"{100 * x:+.3g}%" if self.relative else f"{x:+.4g}"

    def interval_text(self, iv: Interval | None) -> str:
        if iv is None or math.isnan(iv.low) or math.isnan(iv.high):
            return "no interval"
        return f"[{self.number(iv.low)}, {self.number(iv.high)}]"

    @property
    def margin_text(self) -> str:
        if self.margin is None:
            return ""
        return f"±{100 * self.margin:.3g}%" if self.relative else f"±{self.margin:.4g}"

    def sentence(self) -> str:
        h, d, who, ref = self.headline, self.difference, self.method, self.against
        if self.reason:
            return f"{who}, {h.label}: {self.reason}, so {self.claim_text!r} is inconclusive."
        p, ph = format_p(self.p), format_p(self.p_holm)
        alone = self.p < self.alpha <= self.p_holm
        if self.claim == "in-domain":
            what = f"{h.label} relative to {ref} ({h.metric} / {ref}'s - 1)" if self.relative else h.label
            outside = self.margin is not None and abs(d.mean) > self.margin
            test = "p of a difference beyond the margin" if outside else "TOST p"
            numbers = (f"{who}, {what}: {self.number(d.mean)} (95% {self.interval_text(d)}; 90% TOST "
                       f"{self.interval_text(self.tost90)}) over {self.n} paired seeds, margin {self.margin_text}, "
                       f"{test} = {p}, Holm p = {ph}")
            if self.verdict == "supported":
                return f"{numbers}: equivalent to {ref} within the margin, a comparable in-domain score (supported)."
            if self.verdict == "contradicted":
                side = "above" if d.mean > 0 else "below"
                return (f"{numbers}: the difference lies {side} the margin band, significantly after Holm's "
                        f"correction, so {who} is clearly {self.direction} than {ref} beyond the margin "
                        "(contradicted).")
            what_alone = "a difference beyond the margin" if outside else "equivalence"
            why = (f"{what_alone} holds at p < {self.alpha:g} alone but not after Holm's correction" if alone
                   else "neither equivalence within the margin nor a difference beyond it is shown")
            return f"{numbers}: {why} (inconclusive)."
        says, contrary = _SAYS[self.claim]
        numbers = (f"{who}, {h.label} ({'higher' if h.higher_is_better else 'lower'} is better): {self.number(d.mean)} "
                   f"(95% {self.interval_text(d)}) against {ref} over {self.n} paired seeds, p = {p}, Holm p = {ph}")
        if self.verdict == "supported":
            return f"{numbers}: {who} {says} than {ref} (supported)."
        if self.verdict == "contradicted":
            return f"{numbers}: significantly worse, {who} {contrary} than {ref} (contradicted)."
        why = (f"significant at p < {self.alpha:g} alone but not after Holm's correction" if alone
               else "no difference is shown")
        return f"{numbers}: {why} (inconclusive)."


@dataclass(frozen=True)
class VerdictSection:
    model: str
    data: str
    against: str
    methods: tuple[str, ...]
    verdicts: tuple[Verdict, ...]
    alpha: float = ALPHA

    @property
    def family(self) -> int:
        """How many tests Holm's correction ran over (those with a p-value)."""
        return sum(1 for v in self.verdicts if not math.isnan(v.p))

    def lead(self) -> str:
        return (f"Each method against {self.against}, paired by seed. Holm's correction runs over all "
                f"{self.family} tests of {self.model} on {self.data} (every method and claim together); a verdict "
                f"rests on the Holm-adjusted p < {self.alpha:g}. Comparable in-domain score: two one-sided tests "
                "(TOST) of equivalence within the stated margin where the mean difference lies inside it, a one-sided "
                "test of a difference beyond the margin where it lies outside (contradicted when significant). More robust, forgets less: a two-sided paired t-test, supported when "
                "significant in the better direction and contradicted when significant in the worse one.")


def format_p(p: float) -> str:
    """A p-value as a reader sees it: three significant digits, ``-`` for none."""
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.1e}" if 0 < p < 1e-4 else f"{p:.3g}"


@dataclass
class _Test:
    claim: str
    method: str
    headline: Headline
    n: int
    difference: Interval
    p: float
    margin: float | None = None
    relative: bool = False
    equivalence: Equivalence | None = None
    reason: str = ""


def _shared(mine: Mapping, ref: Mapping) -> list:
    return sorted(s for s in set(mine) & set(ref) if not (_nan(mine[s]) or _nan(ref[s])))


def _nan(x) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def _difference_bounds(h: Headline, relative: bool) -> tuple[float, float]:
    if relative:  # value / reference - 1 of a positive metric
        return (-1.0, math.inf)
    width = h.bounds[1] - h.bounds[0]
    return (-width, width)


def _test(claim: str, method: str, h: Headline, mine: Mapping, ref: Mapping, against: str,
          margins: Mapping[str, float]) -> _Test:
    seeds = _shared(mine, ref)
    relative = claim == "in-domain" and h.metric in RELATIVE_METRICS
    if relative:
        diffs = [mine[s] / ref[s] - 1.0 for s in seeds]
    else:
        diffs = [mine[s] - ref[s] for s in seeds]
    # rounded to 12 decimals: 0.78 - 0.80 is -0.02, not a hair beyond a 0.02 margin, and equal differences are equal
    diffs = [round(float(x), 12) for x in diffs]
    bounds = _difference_bounds(h, relative)
    n = len(diffs)
    margin = margins.get(h.key) if claim == "in-domain" else None
    reason = ""
    if n < 2:
        reason = (f"{'no seed' if n == 0 else 'only one seed'} in common with {against}, and a test needs at "
                  "least two paired seeds")
    elif claim == "in-domain" and margin is None:
        reason = f"no equivalence margin is stated for {h.key}"
    if claim == "in-domain" and margin is not None:
        eq = tost(diffs, -margin, margin, bounds)
        p = eq.p
        mean = eq.interval95.mean
        if not reason and abs(mean) > margin:  # outside the band: is it beyond the margin, on that side?
            p = paired_t_pvalue(diffs, margin if mean > 0 else -margin, "greater" if mean > 0 else "less")
        return _Test(claim, method, h, n, eq.interval95, math.nan if reason else p, margin, relative,
                     eq, reason)
    p = math.nan if reason else paired_t_pvalue(diffs)
    return _Test(claim, method, h, n, over_seeds(diffs, bounds), p, margin, relative, None, reason)


def _decide(t: _Test, p_holm: float, alpha: float) -> tuple[str, str]:
    """(verdict, direction) of one test after Holm's correction."""
    if t.reason or math.isnan(t.p):
        return "inconclusive", ""
    if t.claim == "in-domain":
        if not p_holm < alpha:
            return "inconclusive", ""
        mean = t.difference.mean
        if abs(mean) <= (t.margin or 0.0):
            return "supported", ""
        # relative perplexity: above the band is a higher (worse) perplexity, as for any lower-is-better metric
        better = (mean > 0) == t.headline.higher_is_better
        return "contradicted", "better" if better else "worse"
    if p_holm < alpha:
        better = (t.difference.mean > 0) == t.headline.higher_is_better
        return ("supported", "better") if better else ("contradicted", "worse")
    return "inconclusive", ""


def _effective_by_seed(frame: pd.DataFrame) -> dict[tuple[str, str, str], dict]:
    """{(model, data, method): {seed: effective robustness on the mean over OOD sets}}."""
    from robustfeat.report.effective import effective_robustness_per_seed

    er = effective_robustness_per_seed(frame)
    er = er[er.set == EFFECTIVE.shift]
    return {(m, d, meth): dict(zip(part.seed, part.effective_robustness))
            for (m, d, meth), part in er.groupby(["model", "data", "method"], sort=True)}


def verdicts(frame: pd.DataFrame, margins: Mapping[str, float] | None = None, alpha: float = ALPHA,
             headlines: Sequence[Headline] | None = None, effective: bool = True) -> list[VerdictSection]:
    """One section per (model, data) that has a ``lora`` row: every other method's claims
    against it, with Holm's correction over all of the section's tests. ``margins`` maps an
    in-domain headline key to its equivalence margin (over :data:`DEFAULT_MARGINS`; a
    perplexity margin is a fraction, 0.05 for 5%). ``effective``: test effective robustness
    too, where the results hold its reference line."""
    from robustfeat.report.summary import headlines as all_headlines

    ms = {**DEFAULT_MARGINS, **(margins or {})}
    hs = [h for h in (headlines if headlines is not None else all_headlines()) if h.role in CLAIMS]
    ps = per_seed(frame)
    er = _effective_by_seed(frame) if effective else {}
    out = []
    for (model, data), part in ps.groupby(["model", "data"], sort=True):
        methods = tuple(sorted(part.method.unique(), key=lambda m: (m not in UNDER_TEST, m)))
        if AGAINST not in methods:
            continue
        ref = part[part.method == AGAINST].set_index("seed")
        tests: list[_Test] = []
        for method in methods:
            if method == AGAINST:
                continue
            mine = part[part.method == method].set_index("seed")
            for claim in CLAIMS:
                for h in hs:
                    if h.role != claim or h.key not in part or mine[h.key].isna().all() or ref[h.key].isna().all():
                        continue
                    tests.append(_test(claim, method, h, mine[h.key].to_dict(), ref[h.key].to_dict(), AGAINST, ms))
                if claim == "robustness" and (model, data, method) in er and (model, data, AGAINST) in er:
                    tests.append(_test(claim, method, EFFECTIVE, er[(model, data, method)],
                                       er[(model, data, AGAINST)], AGAINST, ms))
        adjusted = holm([t.p for t in tests])
        family = int(sum(1 for t in tests if not math.isnan(t.p)))
        vs = []
        for t, ph in zip(tests, adjusted):
            word, direction = _decide(t, float(ph), alpha)
            eq = t.equivalence
            vs.append(Verdict(model, data, t.claim, t.method, AGAINST, t.headline, word, t.n, t.difference, t.p,
                              float(ph), family, alpha, t.margin, t.relative, eq.interval90 if eq else None,
                              direction, t.reason))
        out.append(VerdictSection(model, data, AGAINST, methods, tuple(vs), alpha))
    return out


VERDICT_COLUMNS = ["model", "data", "claim", "method", "against", "headline", "label", "metric", "higher_is_better",
                   "relative", "n", "mean", "ci95_low", "ci95_high", "margin", "tost90_low", "tost90_high", "p",
                   "p_holm", "holm_family", "alpha", "verdict", "direction", "sentence"]


def verdict_table(results: pd.DataFrame | Sequence[VerdictSection], **kwargs) -> pd.DataFrame:
    """The verdicts as a tidy frame, one row per claim, method and headline (for CSV):
    ``results`` is a results frame (``kwargs`` go to :func:`verdicts`) or its sections."""
    sections = verdicts(results, **kwargs) if isinstance(results, pd.DataFrame) else results
    rows = []
    for sec in sections:
        for v in sec.verdicts:
            t90 = v.tost90
            rows.append({"model": v.model, "data": v.data, "claim": v.claim_text, "method": v.method,
                         "against": v.against, "headline": v.headline.key, "label": v.headline.label,
                         "metric": v.headline.metric, "higher_is_better": v.headline.higher_is_better,
                         "relative": v.relative, "n": v.n, "mean": v.difference.mean,
                         "ci95_low": v.difference.low, "ci95_high": v.difference.high,
                         "margin": math.nan if v.margin is None else v.margin,
                         "tost90_low": t90.low if t90 else math.nan, "tost90_high": t90.high if t90 else math.nan,
                         "p": v.p, "p_holm": v.p_holm, "holm_family": v.family, "alpha": v.alpha,
                         "verdict": v.verdict, "direction": v.direction, "sentence": v.sentence()})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


__all__ = ["AGAINST", "ALPHA", "CLAIMS", "DEFAULT_MARGINS", "EFFECTIVE", "RELATIVE_METRICS", "VERDICTS", "Verdict",
           "VerdictSection", "format_p", "verdict_table", "verdicts"]
