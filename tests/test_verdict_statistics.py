"""Verdict statistics on results frames built here, each against numbers worked out by hand:
intervals count seeds (not rows), the one-seed interval is the shown row's, intervals stay in
the metric's range, "best" is marked only where intervals separate, effective robustness is
never fitted on seeds of one model, the conclusions' paired differences, and ``-`` for
missing values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from robustfeat.metrics.intervals import over_seeds, paired_difference
from robustfeat.metrics.robustness import MIN_ID_RANGE, reference_line
from robustfeat.report.conclusions import conclusions
from robustfeat.report.effective import effective_robustness_table
from robustfeat.report.summary import best_per_column, few_seeds, format_value, headline_table, per_checkpoint


def row(ckpt, method, seed, evaluation, shift, metric, value, lo=math.nan, hi=math.nan, results_dir="r",
        model="m", data="d", kind=""):
    return {"results_dir": results_dir, "checkpoint": ckpt, "method": method, "model": model, "data": data,
            "seed": seed, "evaluation": evaluation, "shift": shift, "severity": 0, "kind": kind, "metric": metric,
            "value": value, "ci_low": lo, "ci_high": hi, "n": 100, "reference": "", "note": ""}


def acc(ckpt, method, seed, value, results_dir="r", half=0.02, **kw):
    return row(ckpt, method, seed, "clean", "test", "accuracy", value, value - half, value + half, results_dir, **kw)


def t95(values):
    v = np.asarray(values, dtype=float)
    return stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))


def test_the_same_checkpoint_in_two_folders_is_one_seed():
    # one checkpoint evaluated into a quick and a full results folder: one seed, no t-interval from two rows
    f = pd.DataFrame([acc("c", "lora", 0, 0.70, "quick"), acc("c", "lora", 0, 0.72, "full")])
    t = headline_table(f).iloc[0]
    assert t.seeds == 1 and t.id_acc_n == 1
    assert t.id_acc == pytest.approx(0.71)
    assert math.isnan(t.id_acc_lo) and math.isnan(t.id_acc_hi)  # two different cells: no single cell's CI
    # evaluated identically twice: the cell's own CI
    same = headline_table(pd.DataFrame([acc("c", "lora", 0, 0.70, "a"), acc("c", "lora", 0, 0.70, "b")])).iloc[0]
    assert (same.id_acc_lo, same.id_acc_hi) == pytest.approx((0.68, 0.72))


def test_the_t_interval_uses_the_number_of_distinct_seeds():
    # seeds 0 and 1, each seen in two folders: per-seed means first, then t with 1 degree of freedom
    f = pd.DataFrame([acc("a0", "lora", 0, 0.70, "x"), acc("a0", "lora", 0, 0.72, "y"),
                      acc("a1", "lora", 1, 0.80, "x"), acc("a1", "lora", 1, 0.82, "y")])
    t = headline_table(f).iloc[0]
    per_seed = [0.71, 0.81]
    assert t.seeds == 2 and t.id_acc_n == 2 and t.id_acc == pytest.approx(0.76)
    assert t.id_acc - t.id_acc_lo == pytest.approx(t95(per_seed), rel=1e-9)  # 12.706 * 0.0707 / 1.414 (the top is clipped at 1)
    assert t.id_acc_hi == 1.0 and t.id_acc_clipped
    # three seeds: 2 degrees of freedom
    f3 = pd.DataFrame([acc(f"s{i}", "lora", i, v) for i, v in enumerate([0.70, 0.72, 0.71])])
    t3 = headline_table(f3).iloc[0]
    assert t3.id_acc_hi - t3.id_acc == pytest.approx(t95([0.70, 0.72, 0.71]), rel=1e-9)


def test_the_one_seed_interval_comes_from_the_row_shown():
    # two probe cells for one checkpoint; the first has no CI, the second has one: the value shown is the
    # first row's, and so must its interval be (not the second row's CI)
    f = pd.DataFrame([row("c", "lora", 0, "linear-probe", "a:label", "forgetting", 0.10),
                      row("c", "lora", 0, "linear-probe", "b:label", "forgetting", 0.30, 0.25, 0.35)])
    pc = per_checkpoint(f).iloc[0]
    assert pc.probe_forgetting == 0.10 and math.isnan(pc.probe_forgetting_lo) and math.isnan(pc.probe_forgetting_hi)
    t = headline_table(f).iloc[0]
    assert t.probe_forgetting == 0.10 and math.isnan(t.probe_forgetting_lo)


def test_intervals_stay_in_the_metrics_range_and_say_so():
    # the audit's 2-seed case: ID acc 0.7125 [-0.0816, 1.51] and CKA [0.99, 1.01]
    f = pd.DataFrame([acc("a", "lora", 0, 0.65), acc("b", "lora", 1, 0.775),
                      row("a", "lora", 0, "cka", "all", "cka", 0.999), row("b", "lora", 1, "cka", "all", "cka", 0.9995)])
    t = headline_table(f).iloc[0]
    half = t95([0.65, 0.775])
    assert 0.7125 + half > 1 and 0.7125 - half < 0  # the unclipped t-interval leaves [0, 1] on both sides
    assert (t.id_acc_lo, t.id_acc_hi) == (0.0, 1.0) and t.id_acc_clipped
    assert t.cka_hi == 1.0 and t.cka_lo == pytest.approx(0.99925 - t95([0.999, 0.9995])) and t.cka_clipped
    assert few_seeds(headline_table(f))
    wide = pd.DataFrame([acc(f"s{i}", "lora", i, v) for i, v in enumerate([0.70, 0.72, 0.71])])
    assert not few_seeds(headline_table(wide)) and not headline_table(wide).iloc[0].id_acc_clipped
    # the metric's range is the headline's declaration
    assert over_seeds([0.95, 0.99], (0.0, 1.0)).high == 1.0 and over_seeds([0.95, 0.99]).high > 1.0


def test_best_is_marked_only_where_intervals_separate():
    # the audit's case: vefa 0.875 [0.75, 0.975] over lora 0.775 [0.625, 0.9]: overlapping, so nothing is bold
    f = pd.DataFrame([row("v", "vefa", 0, "clean", "test", "accuracy", 0.875, 0.75, 0.975),
                      row("l", "lora", 0, "clean", "test", "accuracy", 0.775, 0.625, 0.9)])
    assert best_per_column(headline_table(f)).get("id_acc", set()) == set()
    # apart: the best is marked
    g = pd.DataFrame([row("v", "vefa", 0, "clean", "test", "accuracy", 0.875, 0.80, 0.95),
                      row("l", "lora", 0, "clean", "test", "accuracy", 0.700, 0.62, 0.78)])
    table = headline_table(g)
    assert table.iloc[sorted(best_per_column(table)["id_acc"])].method.tolist() == ["vefa"]
    # lower is better: mean error 0.2 [0.1, 0.25] beats 0.5 [0.4, 0.6]; with no interval nothing is marked
    h = pd.DataFrame([row("v", "vefa", 0, "corruptions", "all", "mean_error", 0.2, 0.1, 0.25),
                      row("l", "lora", 0, "corruptions", "all", "mean_error", 0.5, 0.4, 0.6),
                      row("v", "vefa", 0, "corruptions", "all", "mce", 0.5),
                      row("l", "lora", 0, "corruptions", "all", "mce", 0.9)])
    table = headline_table(h)
    best = best_per_column(table)
    assert table.iloc[sorted(best["mean_error"])].method.tolist() == ["vefa"] and "mce" not in best
    # a method alone is never "best"
    assert best_per_column(headline_table(g[g.method == "lora"])) == {}


def test_effective_robustness_is_never_fitted_on_seeds_of_one_model():
    # the audit's case: three base seeds at ID 0.700 / 0.705 / 0.702 are one reference model
    base = [(0.700, 0.60), (0.705, 0.59), (0.702, 0.61)]
    rows = []
    for s, (i, o) in enumerate(base):
        rows += [acc(f"b{s}", "linear", s, i), row(f"b{s}", "linear", s, "ood", "x", "accuracy", o, kind="out-of-domain")]
        rows += [acc(f"v{s}", "vefa", s, 0.80), row(f"v{s}", "vefa", s, "ood", "x", "accuracy", 0.66, kind="out-of-domain")]
    f = pd.DataFrame(rows)
    er = effective_robustness_table(f)
    vefa = er[(er.method == "vefa") & (er.set == "x")].iloc[0]
    assert vefa.slope == 1.0 and "slope 1" in vefa.line and "one reference model" in vefa.line

    def logit(p):
        return math.log(p / (1 - p))

    mx, my = logit(np.mean([b[0] for b in base])), logit(np.mean([b[1] for b in base]))
    predicted = 1 / (1 + math.exp(-(logit(0.80) + my - mx)))
    assert vefa.effective_robustness == pytest.approx(0.66 - predicted, abs=1e-12)
    # reshuffling the seeds' noise does not move the line (it moved the fitted slope from -2.11 to +2.44)
    shuffled = f.copy()
    sel = (shuffled.method == "linear") & (shuffled.evaluation == "ood")
    shuffled.loc[sel, "value"] = shuffled.loc[sel, "value"].to_numpy()[[2, 0, 1]]
    assert effective_robustness_table(shuffled).set_index(["method", "set"]).loc[("vefa", "x"), "slope"] == 1.0
    # two distinct reference models that span enough ID accuracy: a fitted line
    slope, intercept, how = reference_line([(0.60, 0.50), (0.60 + MIN_ID_RANGE + 0.1, 0.58)])
    assert "fitted" in how and slope == pytest.approx((logit(0.58) - logit(0.50)) / (logit(0.75) - logit(0.60)))
    assert "slope 1" in reference_line([(0.60, 0.50), (0.61, 0.58)])[2]  # too narrow a span: no fit


def test_effective_robustness_is_per_model_data_and_set():
    rows = []
    for model, shift in (("m1", 0.0), ("m2", 0.2)):
        for s in (0, 1):
            rows += [acc(f"{model}b{s}", "linear", s, 0.6 + shift, model=model),
                     row(f"{model}b{s}", "linear", s, "ood", "x", "accuracy", 0.5 + shift, kind="out-of-domain",
                         model=model),
                     row(f"{model}b{s}", "linear", s, "ood", "near", "accuracy", 0.55, kind="near-domain", model=model)]
    er = effective_robustness_table(pd.DataFrame(rows))
    assert set(zip(er.model, er.set)) == {("m1", "x"), ("m2", "x")}  # near-domain sets are not OOD sets
    assert er.effective_robustness.abs().max() < 1e-12  # the base lies on its own line


def test_paired_differences_and_conclusions():
    vals = {"lora": [0.70, 0.74, 0.72], "vefa": [0.69, 0.75, 0.71], "full": [0.80, 0.83, 0.82]}
    rows = [acc(f"{m}{s}", m, s, v) for m, vs in vals.items() for s, v in enumerate(vs)]
    f = pd.DataFrame(rows)
    d = paired_difference(dict(enumerate(vals["vefa"])), dict(enumerate(vals["lora"])), (0.0, 1.0))
    diffs = np.subtract(vals["vefa"], vals["lora"])
    assert d.mean == pytest.approx(diffs.mean()) and d.high - d.mean == pytest.approx(t95(diffs)) and d.n == 3
    [sec] = conclusions(f)
    assert sec.against == "lora"
    by = {c.method: c for c in sec.comparisons if c.headline.key == "id_acc"}
    assert by["vefa"].verdict == "no evidence" and "no evidence of a difference from lora" in by["vefa"].sentence()
    assert by["full"].verdict == "better" and "better than lora" in by["full"].sentence()
    assert "[" in by["full"].sentence() and "3 paired seeds" in by["full"].sentence()
    one = conclusions(f[f.seed == 0])[0]
    assert {c.verdict for c in one.comparisons} == {"no interval"}
    assert "one seed gives no interval" in one.comparisons[0].sentence()


def test_missing_values_read_as_a_dash():
    assert format_value(math.nan) == "-" and format_value(None) == "-" and format_value(0.123456) == "0.1235"
    assert format_value(np.float64(2.0)) == "2" and format_value("lora") == "lora"


def test_forgetting_probes_are_held_out():
    from robustfeat.evaluations.probes import held_out
    from robustfeat.registry import FAMILIES

    digits = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    # mnist-5k: its own task, its declared OOD pair (digits) and that pair's label set are not forgetting probes
    assert "fine-tuning data" in held_out("mnist-5k", digits, "mnist-5k", "label")
    assert "out-of-domain" in held_out("mnist-5k", digits, "digits", "label")
    assert held_out("mnist-5k", digits, "fashion-mnist", "label") is None
    assert "label set" in held_out("my-digits.csv", digits, "digits", "label")
    # rotten-tomatoes: VADER's sentiment labels are its OOD sets, but which source a snippet comes from is another
    # task (its movie snippets are deduplicated against the fine-tuning data when the probe runs)
    assert held_out("rotten-tomatoes", ["rotten", "fresh"], "vader-sentiment", "label") is not None
    assert held_out("rotten-tomatoes", ["rotten", "fresh"], "vader-sentiment", "domain") is None
    # the default pick for each built-in image dataset
    picks = {own: next(d for d, c in FAMILIES.get("image-classifier").probes if held_out(own, labels, d, c) is None)
             for own, labels in (("mnist-5k", digits), ("digits", digits), ("fashion-mnist", None))}
    assert picks == {"mnist-5k": "fashion-mnist", "digits": "fashion-mnist", "fashion-mnist": "mnist-5k"}
