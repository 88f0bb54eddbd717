"""Verdicts on the study's claims, against numbers worked out by hand: the paired t-test and
TOST p-values and intervals, Holm's step-down adjustment, supported / contradicted /
inconclusive on results frames built here (accuracy and perplexity margins, Holm turning a
significant test into an inconclusive one), and the verdicts in the HTML and PDF report."""

from __future__ import annotations

import html as _html
import json
import math
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from robustfeat.metrics.significance import holm, paired_t_pvalue, tost
from robustfeat.report import build_report
from robustfeat.report.verdicts import verdict_table, verdicts

NAN = math.nan


def row(ckpt, method, seed, evaluation, shift, metric, value, lo=NAN, hi=NAN, model="m", data="d", kind=""):
    return {"results_dir": "r", "checkpoint": ckpt, "method": method, "model": model, "data": data, "seed": seed,
            "evaluation": evaluation, "shift": shift, "severity": 0, "kind": kind, "metric": metric, "value": value,
            "ci_low": lo, "ci_high": hi, "n": 100, "reference": "", "note": ""}


def acc(ckpt, method, seed, value, **kw):
    return row(ckpt, method, seed, "clean", "test", "accuracy", value, value - 0.02, value + 0.02, **kw)


def forgetting(ckpt, method, seed, value, **kw):
    return row(ckpt, method, seed, "linear-probe", "digits:label", "forgetting", value, **kw)


def ood(ckpt, method, seed, value, **kw):
    return row(ckpt, method, seed, "ood", "mean-ood", "accuracy", value, **kw)


def ppl(ckpt, method, seed, value, **kw):
    return row(ckpt, method, seed, "clean", "test", "perplexity", value, **kw)


# --- the tests themselves, by hand ----------------------------------------------------------------
D = [0.01, -0.005, 0.003, 0.008]  # four per-seed differences
MEAN = 0.004  # (0.01 - 0.005 + 0.003 + 0.008) / 4
SE = math.sqrt((0.006 ** 2 + 0.009 ** 2 + 0.001 ** 2 + 0.004 ** 2) / 3) / 2  # sd (ddof 1) / sqrt(4) = 0.0033417


def test_paired_t_pvalue_by_hand():
    t = MEAN / SE  # 1.19701, 3 degrees of freedom
    assert t == pytest.approx(1.19701, abs=1e-5)
    assert paired_t_pvalue(D) == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-9)
    assert paired_t_pvalue(D, alternative="greater") == pytest.approx(stats.t.sf(t, 3), rel=1e-9)
    assert paired_t_pvalue(D, alternative="less") == pytest.approx(stats.t.cdf(t, 3), rel=1e-9)
    t2 = (MEAN - 0.02) / SE  # against a null of 0.02
    assert paired_t_pvalue(D, null=0.02, alternative="less") == pytest.approx(stats.t.cdf(t2, 3), rel=1e-9)
    assert math.isnan(paired_t_pvalue([0.1])) and math.isnan(paired_t_pvalue([]))
    assert paired_t_pvalue([0.1, NAN, 0.3, 0.2]) == pytest.approx(paired_t_pvalue([0.1, 0.3, 0.2]))
    # no spread: the limit of t (p 0 away from the null, no evidence at it)
    assert paired_t_pvalue([0.02, 0.02, 0.02]) == 0.0 and paired_t_pvalue([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError):
        paired_t_pvalue(D, alternative="bigger")


def test_tost_p_values_and_intervals_by_hand():
    eq = tost(D, -0.02, 0.02)
    p_low = stats.t.sf((MEAN + 0.02) / SE, 3)  # H0 mean <= -0.02: t = 7.18
    p_high = stats.t.cdf((MEAN - 0.02) / SE, 3)  # H0 mean >= +0.02: t = -4.79
    assert eq.p_low == pytest.approx(p_low, rel=1e-9) and eq.p_high == pytest.approx(p_high, rel=1e-9)
    assert eq.p == pytest.approx(max(p_low, p_high), rel=1e-9) and eq.p == pytest.approx(0.008663, abs=1e-6)
    assert eq.n == 4 and (eq.margin_low, eq.margin_high) == (-0.02, 0.02) and eq.equivalent()
    half90, half95 = stats.t.ppf(0.95, 3) * SE, stats.t.ppf(0.975, 3) * SE  # 2.353 * SE and 3.182 * SE
    assert (eq.interval90.low, eq.interval90.high) == pytest.approx((MEAN - half90, MEAN + half90), rel=1e-9)
    assert (eq.interval95.low, eq.interval95.high) == pytest.approx((MEAN - half95, MEAN + half95), rel=1e-9)
    assert eq.interval90.mean == pytest.approx(MEAN) and eq.outside() == 0
    # the TOST interval is the 90% one: margins (-0.012, 0.013) hold the 90% interval [-0.0039, 0.0119] but not the
    # 95% one [-0.0066, 0.0146], and equivalence is shown at 0.05
    narrow = tost(D, -0.012, 0.013)
    assert MEAN + half90 < 0.013 < MEAN + half95
    assert narrow.p == pytest.approx(stats.t.cdf((MEAN - 0.013) / SE, 3), rel=1e-9) and 0.03 < narrow.p < 0.05
    assert narrow.equivalent()
    # a tighter margin than the 90% interval: no equivalence
    assert not tost(D, -0.01, 0.01).equivalent()
    # wholly outside the band: the 95% interval is above it
    far = tost([0.10, 0.11, 0.09, 0.10], -0.02, 0.02)
    assert far.outside() == 1 and far.p > 0.99 and tost([-x for x in (0.10, 0.11, 0.09)], -0.02, 0.02).outside() == -1
    # "wholly outside" is the 95% interval's: a band (-0.02, -0.005) lies below the 90% interval [-0.0039, 0.0119]
    # but inside the 95% one [-0.0066, 0.0146], so it is not outside
    assert MEAN - half95 < -0.005 < MEAN - half90 and tost(D, -0.02, -0.005).outside() == 0
    one = tost([0.001], -0.02, 0.02)
    assert math.isnan(one.p) and one.n == 1 and not one.equivalent() and one.outside() == 0


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (never below the step before)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)
    # capped at 1: 0.02 x 3 = 0.06, 0.6 x 2 = 1.2 -> 1, 0.7 x 1 = 0.7 -> 1
    assert holm([0.6, 0.7, 0.02]) == pytest.approx([1.0, 1.0, 0.06], abs=1e-12)
    # NaN (no test) stays NaN and is not counted: m = 2
    out = holm([0.01, NAN, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.03]) == pytest.approx([0.03]) and len(holm([])) == 0 and np.isnan(holm([NAN])).all()


# --- verdicts on results frames --------------------------------------------------------------------
LORA_ACC = [0.80, 0.82, 0.78, 0.81]
LORA_FORGET = [0.10, 0.12, 0.11, 0.09]
PLAN = {  # method: (ID accuracy - lora's, probe forgetting - lora's), per seed
    "vefa": ([0.002, -0.001, 0.001, 0.000], [-0.05, -0.06, -0.055, -0.05]),  # equivalent, forgets less
    "lorfa": ([-0.10, -0.11, -0.09, -0.10], [0.001, -0.002, 0.0, 0.002]),  # clearly worse in-domain
    "full": ([0.05, -0.06, 0.03, -0.02], [0.04, -0.05, 0.02, -0.03]),  # noisy
}


def _t_p(d, null=0.0, side="two-sided"):
    d = np.asarray(d, dtype=float)
    t = (d.mean() - null) / (d.std(ddof=1) / math.sqrt(len(d)))
    df = len(d) - 1
    return {"two-sided": 2 * stats.t.sf(abs(t), df), "greater": stats.t.sf(t, df), "less": stats.t.cdf(t, df)}[side]


def _in_domain_p(d, margin):
    """The in-domain test's p by hand: TOST where the mean lies inside the margin band, else the
    one-sided p of a difference beyond the margin on the mean's side."""
    m = float(np.mean(d))
    if abs(m) <= margin:
        return max(_t_p(d, -margin, "greater"), _t_p(d, margin, "less"))
    return _t_p(d, margin, "greater") if m > 0 else _t_p(d, -margin, "less")


def _holm_by_hand(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(ps) - rank) * ps[i])
        out[i] = min(1.0, running)
    return out


def planned_frame():
    rows = []
    for s in range(4):
        rows += [acc(f"lora{s}", "lora", s, LORA_ACC[s]), forgetting(f"lora{s}", "lora", s, LORA_FORGET[s])]
        for m, (da, df) in PLAN.items():
            rows += [acc(f"{m}{s}", m, s, LORA_ACC[s] + da[s]), forgetting(f"{m}{s}", m, s, LORA_FORGET[s] + df[s])]
    return pd.DataFrame(rows)


def test_supported_contradicted_and_inconclusive_by_hand():
    [sec] = verdicts(planned_frame())
    assert sec.against == "lora" and sec.family == 6  # 3 methods x (ID acc, probe forgetting), all in one family
    by = {(v.method, v.headline.key): v for v in sec.verdicts}
    assert set(by) == {(m, k) for m in PLAN for k in ("id_acc", "probe_forgetting")}
    # the methods the claim is about come first, the baselines after them
    assert list(dict.fromkeys(v.method for v in sec.verdicts)) == ["lorfa", "vefa", "full"]
    # the six raw p-values by hand, and Holm over them
    raw = {}
    for m, (da, df) in PLAN.items():
        raw[(m, "id_acc")] = _in_domain_p(da, 0.02)  # at the 0.02 margin
        raw[(m, "probe_forgetting")] = _t_p(df)
    keys = list(raw)
    adjusted = dict(zip(keys, _holm_by_hand([raw[k] for k in keys])))
    for k, v in by.items():
        assert v.p == pytest.approx(raw[k], rel=1e-6), k
        assert v.p_holm == pytest.approx(adjusted[k], rel=1e-6), k
        assert v.n == 4 and v.family == 6

    vefa_id, vefa_f = by[("vefa", "id_acc")], by[("vefa", "probe_forgetting")]
    da, df = PLAN["vefa"]
    assert vefa_id.verdict == "supported" and vefa_id.margin == 0.02 and not vefa_id.relative
    se = np.std(da, ddof=1) / 2
    assert vefa_id.difference.mean == pytest.approx(np.mean(da), abs=1e-12)
    assert vefa_id.tost90.high == pytest.approx(np.mean(da) + stats.t.ppf(0.95, 3) * se, rel=1e-6)
    assert vefa_id.difference.high == pytest.approx(np.mean(da) + stats.t.ppf(0.975, 3) * se, rel=1e-6)
    assert "(supported)" in vefa_id.sentence() and "margin ±0.02" in vefa_id.sentence()
    # probe forgetting is lower-is-better: a negative difference is forgetting less
    assert vefa_f.verdict == "supported" and vefa_f.direction == "better"
    assert vefa_f.difference.mean == pytest.approx(np.mean(df)) and "vefa forgets less than lora" in vefa_f.sentence()

    lorfa_id = by[("lorfa", "id_acc")]
    da = PLAN["lorfa"][0]
    hi95 = np.mean(da) + stats.t.ppf(0.975, 3) * np.std(da, ddof=1) / 2  # -0.0870 < -0.02
    assert lorfa_id.difference.high == pytest.approx(hi95, rel=1e-6) and hi95 < -0.02
    assert lorfa_id.verdict == "contradicted" and lorfa_id.direction == "worse"
    assert "lies below the margin band" in lorfa_id.sentence() and "clearly worse than lora" in lorfa_id.sentence()
    assert "p of a difference beyond the margin" in lorfa_id.sentence()
    assert by[("lorfa", "probe_forgetting")].verdict == "inconclusive"

    assert by[("full", "id_acc")].verdict == "inconclusive"
    assert by[("full", "probe_forgetting")].verdict == "inconclusive"
    assert "neither equivalence within the margin nor a difference beyond it" in by[("full", "id_acc")].sentence()
    assert "Holm's correction runs over all 6 tests of m on d" in sec.lead()

    # the tidy frame (for CSV) carries the same numbers
    t = verdict_table(planned_frame()).set_index(["method", "headline"])
    assert len(t) == 6 and (t.holm_family == 6).all()
    r = t.loc[("vefa", "id_acc")]
    assert r.verdict == "supported" and r.claim == "comparable in-domain score" and r.margin == 0.02
    assert r.p_holm == pytest.approx(adjusted[("vefa", "id_acc")], rel=1e-6) and r.tost90_high == pytest.approx(
        vefa_id.tost90.high)
    assert t.loc[("lorfa", "id_acc")].direction == "worse" and math.isnan(t.loc[("full", "probe_forgetting")].margin)


def test_a_wider_in_domain_margin_from_the_caller():
    # lorfa's 90% interval is about [-0.1096, -0.0904]: a 0.12 margin holds it, so equivalence is shown there
    [sec] = verdicts(planned_frame(), margins={"id_acc": 0.12})
    lorfa = next(v for v in sec.verdicts if v.method == "lorfa" and v.headline.key == "id_acc")
    da = PLAN["lorfa"][0]
    assert lorfa.margin == 0.12 and lorfa.p == pytest.approx(max(_t_p(da, -0.12, "greater"), _t_p(da, 0.12, "less")))
    assert lorfa.verdict == "supported"


def test_holm_turns_a_significant_test_inconclusive():
    lora = [0.60, 0.62, 0.61, 0.63]
    d = [0.01, 0.02, 0.035, 0.015]  # mean 0.02, sd 0.0108: t = 3.70 on 3 degrees of freedom
    p = 2 * stats.t.sf(0.02 / (math.sqrt((1e-4 + 0 + 2.25e-4 + 0.25e-4) / 3) / 2), 3)
    assert 0.025 < p < 0.05  # significant alone, not once doubled
    noisy = [0.02, -0.03, 0.01, -0.01]
    rows = []
    for s in range(4):
        rows += [ood(f"l{s}", "lora", s, lora[s]), ood(f"v{s}", "vefa", s, lora[s] + d[s])]
    alone = verdicts(pd.DataFrame(rows))[0]
    [v] = alone.verdicts
    assert alone.family == 1 and v.headline.key == "ood_acc" and v.claim == "robustness"
    assert v.p == pytest.approx(p, rel=1e-6) and v.p_holm == pytest.approx(p, rel=1e-6)
    assert v.verdict == "supported" and "vefa is more robust than lora" in v.sentence()
    for s in range(4):
        rows.append(ood(f"f{s}", "full", s, lora[s] + noisy[s]))
    [sec] = verdicts(pd.DataFrame(rows))
    by = {v.method: v for v in sec.verdicts}
    q = _t_p(noisy)  # 0.836: Holm gives vefa 2p = 0.068 and full max(2p, q) = q
    assert sec.family == 2 and by["vefa"].p == pytest.approx(p, rel=1e-6)
    assert by["vefa"].p_holm == pytest.approx(2 * p, rel=1e-6) and by["full"].p_holm == pytest.approx(q, rel=1e-6)
    assert by["vefa"].verdict == "inconclusive"
    assert "significant at p < 0.05 alone but not after Holm's correction" in by["vefa"].sentence()
    # worse and significant: contradicted
    worse = [r if r["method"] != "vefa" else {**r, "value": 2 * lora[r["seed"]] - r["value"]} for r in rows[:8]]
    [w] = verdicts(pd.DataFrame(worse))[0].verdicts
    assert w.verdict == "contradicted" and w.direction == "worse" and "less robust than lora" in w.sentence()


def test_perplexity_is_compared_by_its_relative_difference():
    lora = [20.0, 22.0, 21.0, 19.0]
    close = [0.01, -0.01, 0.005, 0.0]  # ppl / ppl_lora - 1
    higher = [0.08, 0.085, 0.075, 0.08]  # 8% higher perplexity: worse
    rows = []
    for s in range(4):
        rows += [ppl(f"l{s}", "lora", s, lora[s]), ppl(f"c{s}", "lorfa", s, lora[s] * (1 + close[s])),
                 ppl(f"h{s}", "vefa", s, lora[s] * (1 + higher[s]))]
    [sec] = verdicts(pd.DataFrame(rows))
    by = {v.method: v for v in sec.verdicts}
    assert {v.headline.key for v in sec.verdicts} == {"id_ppl"} and sec.family == 2
    c, h = by["lorfa"], by["vefa"]
    assert c.relative and c.margin == 0.05
    p_c = _in_domain_p(close, 0.05)
    p_h = _in_domain_p(higher, 0.05)  # outside the band: the one-sided test of a difference beyond +5%
    assert c.p == pytest.approx(p_c, rel=1e-6) and h.p == pytest.approx(p_h, rel=1e-6)
    assert c.difference.mean == pytest.approx(np.mean(close)) and h.difference.mean == pytest.approx(0.08)
    assert c.verdict == "supported"
    lo95 = 0.08 - stats.t.ppf(0.975, 3) * np.std(higher, ddof=1) / 2  # 0.0735 > 0.05: wholly above the band
    assert h.difference.low == pytest.approx(lo95, rel=1e-6) and lo95 > 0.05
    assert h.verdict == "contradicted" and h.direction == "worse"  # a higher perplexity is worse
    assert "relative to lora" in h.sentence() and "+8%" in h.sentence() and "margin ±5%" in h.sentence()
    # the margin is relative (in absolute units the 8% is +1.64 perplexity): a 10% margin holds vefa's 8%
    [wide] = verdicts(pd.DataFrame(rows), margins={"id_ppl": 0.10})
    assert {v.method: v.verdict for v in wide.verdicts}["vefa"] == "supported"


def test_fewer_than_two_shared_seeds_is_inconclusive_and_says_why():
    f = planned_frame()
    f = f[(f.seed == 0) | (f.method != "vefa")]  # vefa has seed 0 only
    [sec] = verdicts(f)
    vefa = [v for v in sec.verdicts if v.method == "vefa"]
    assert len(vefa) == 2 and all(v.verdict == "inconclusive" and v.n == 1 and math.isnan(v.p) for v in vefa)
    assert all(math.isnan(v.p_holm) for v in vefa) and sec.family == 4  # vefa's are not counted in Holm's m
    assert "only one seed in common with lora" in vefa[0].sentence()
    # no lora row: no verdicts
    assert verdicts(f[f.method != "lora"]) == []


def test_effective_robustness_is_a_robustness_claim_where_there_is_a_line():
    rows = []
    for s in range(3):
        for method, i, o in (("linear", 0.70, 0.60), ("lora", 0.80, 0.62 + 0.01 * s), ("vefa", 0.80, 0.70 + 0.01 * s)):
            rows += [acc(f"{method}{s}", method, s, i),
                     row(f"{method}{s}", method, s, "ood", "x", "accuracy", o, kind="out-of-domain"),
                     ood(f"{method}{s}", method, s, o)]
    [sec] = verdicts(pd.DataFrame(rows))
    er = [v for v in sec.verdicts if v.method == "vefa" and v.headline.key == "effective_robustness"]
    assert len(er) == 1 and er[0].claim == "robustness"
    # same ID accuracy, so the line predicts the same for both: the difference is the OOD accuracy's, 0.08
    assert er[0].difference.mean == pytest.approx(0.08, abs=1e-9)


# --- the report --------------------------------------------------------------------------------------
def _folder(frame, root):
    root.mkdir()
    frame.drop(columns=["results_dir"]).to_csv(root / "results.csv", index=False)
    (root / "results.json").write_text(json.dumps({"format": "robustfeat.results", "checkpoints": {}}))
    return root


def _verdict_rows(page: str) -> dict[tuple[str, str], str]:
    """{(method, metric): verdict cell} of the verdict tables."""
    out = {}
    for table in re.findall(r'<table class="verdict-table">(.*?)</table>', page, re.S):
        for tr in re.findall(r"<tr>(.*?)</tr>", table, re.S):
            cells = [_html.unescape(re.sub(r"<[^>]+>", " ", c)).split()
                     for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            if cells:
                out[(cells[1][0], " ".join(cells[2][:2]))] = " ".join(cells[-1])
    return out


def test_the_report_leads_with_the_verdicts(tmp_path):
    res = _folder(planned_frame(), tmp_path / "res")
    page = build_report([res], tmp_path / "r.html").read_text()
    assert page.index('id="verdicts"') < page.index('id="conclusions"') < page.index('id="summary"')
    shown = _verdict_rows(page)
    assert shown == {("vefa", "ID acc"): "supported", ("vefa", "probe forgetting"): "supported",
                     ("lorfa", "ID acc"): "contradicted (worse)", ("lorfa", "probe forgetting"): "inconclusive",
                     ("full", "ID acc"): "inconclusive", ("full", "probe forgetting"): "inconclusive"}
    text = _html.unescape(page)
    assert "Holm's correction runs over all 6 tests of m on d" in text and "±0.02" in text
    assert "vefa forgets less than lora (supported)" in text
    # no lora row: no verdict section
    no_lora = _folder(planned_frame().query("method != 'lora'"), tmp_path / "no-lora")
    assert 'id="verdicts"' not in build_report([no_lora], tmp_path / "n.html").read_text()


def test_the_pdf_report_has_the_verdicts(tmp_path):
    pytest.importorskip("weasyprint")
    res = _folder(planned_frame(), tmp_path / "res")
    pdf = build_report([res], tmp_path / "r.pdf")
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    head = text[:text.index("What to conclude")]
    assert "Verdicts" in head and "supported" in head and "contradicted" in head and "inconclusive" in head


def test_holm_decides_an_in_domain_contradiction_too():
    # lorfa's ID accuracy lies 4 points below lora's, beyond the 2-point margin: the one-sided test of a
    # difference beyond -0.02 is significant alone (p about 0.036) but not once Holm doubles it
    d = [-0.03, -0.05, -0.025, -0.055]
    p = _in_domain_p(d, 0.02)
    t = (np.mean(d) + 0.02) / (np.std(d, ddof=1) / 2)
    assert p == pytest.approx(stats.t.cdf(t, 3)) and 0.025 < p < 0.05
    rows = []
    for s in range(4):
        rows += [acc(f"l{s}", "lora", s, LORA_ACC[s]), acc(f"r{s}", "lorfa", s, LORA_ACC[s] + d[s])]
    [alone] = verdicts(pd.DataFrame(rows))
    [v] = alone.verdicts
    assert v.p == pytest.approx(p, rel=1e-6) and v.verdict == "contradicted" and v.direction == "worse"
    noisy = [0.01, -0.01, 0.02, -0.02]  # a second method, equivalent or not: a second test in the family
    for s in range(4):
        rows.append(acc(f"v{s}", "vefa", s, LORA_ACC[s] + noisy[s]))
    [sec] = verdicts(pd.DataFrame(rows))
    v = next(x for x in sec.verdicts if x.method == "lorfa")
    other = next(x for x in sec.verdicts if x.method == "vefa").p
    assert sec.family == 2 and v.p_holm == pytest.approx(_holm_by_hand([p, other])[0], rel=1e-6)
    assert v.p_holm > 0.05 and v.verdict == "inconclusive"
    assert "a difference beyond the margin holds at p < 0.05 alone but not after Holm's correction" in v.sentence()
