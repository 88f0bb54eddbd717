"""Contract tests generated from the evaluation registry: every registered evaluation runs
on the tiny models of the families it applies to, produces its declared headlines, and
summarizes its own rows; every option round-trips through the CLI and the grid. A new
evaluation is tested here without editing this file. A throwaway evaluation registered in
the test shows that one module plus its bank entry reach the CLI, the grid, the summary
rows and the report."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from robustfeat.cli import build_parser, main
from robustfeat.registry import BANKS, EVALUATIONS
from robustfeat.report.plots import PLOTS
from robustfeat.report.summary import headline_table, per_checkpoint, select
from robustfeat.results import ResultsStore
from robustfeat.evaluations.banks import CLEAN, Bank, Entry, bank_for_family
from robustfeat.evaluations.base import (
    ROLES,
    Cell,
    Evaluation,
    Headline,
    Option,
    all_headlines,
    all_options,
    evaluations_in_order,
    metric_row,
    summary_row,
)
from robustfeat.evaluations.runner import evaluate
from robustfeat.train import TrainConfig, finetune

pytestmark = pytest.mark.real_data

#: one small run per family; together they reach every evaluation of the default banks
#: (a lora and a linear checkpoint each; causal LMs have no head to train alone, so lora and vefa)
METHODS = {"causal-lm": ("lora", "vefa")}
RUNS = {
    "image-classifier": dict(model="tiny-cnn", data="mnist-5k", image_size=32, max_examples=512, epochs=2.0),
    "text-classifier": dict(model="tiny-bert", data="vader-sentiment"),
    # Rotten Tomatoes text: it has declared OOD sets, so ood-perplexity has cells
    "causal-lm": dict(model="tiny-gpt2", data="rotten-tomatoes", lr=0.01),
}


def _finetune(root, method, **kw):
    cfg = dict(max_examples=96, max_eval_examples=48, batch_size=32, checkpoint_every=100, method=method)
    cfg.update(kw)
    if kw.get("model") == "tiny-cnn" and method != "linear":  # the tiny CNN needs a high rate
        cfg["lr"] = 0.05
    out = root / f"{kw['model']}-{method}"
    finetune(TrainConfig(**cfg), out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{family: (results folder, frame)}: a lora and a linear checkpoint per family, quick bank."""
    from tests.test_evaluate import _imagenet_folder

    root = tmp_path_factory.mktemp("contract")
    folder = _imagenet_folder(root / "imagenet", ["0", "2"])
    out = {}
    for family, kw in RUNS.items():
        ckpts = [_finetune(root, m, **kw) for m in METHODS.get(family, ("lora", "linear"))]
        extra = {"imagenet": str(folder)} if family == "image-classifier" else {}
        res = root / f"res-{family}"
        # lora as the CE reference: the tiny linear probe stays at chance
        out[family] = (res, evaluate(ckpts, res, quick=True, progress=False, reference=str(ckpts[0]), **extra))
    return out


def test_declarations_are_well_formed():
    plots = {p.name for p in PLOTS}
    for cls in evaluations_in_order():
        assert cls.name and cls.summary and (cls.families is None or cls.families), cls
        assert set(cls.plots) <= plots, f"{cls.name} feeds unknown plots {set(cls.plots) - plots}"
        for h in cls.headlines:
            assert h.role in ROLES and h.bounds[0] < h.bounds[1], (cls.name, h)
        assert all(isinstance(o, Option) and o.help for o in cls.options), cls.name
    keys = [h.key for h in all_headlines()]
    assert len(keys) == len(set(keys))
    assert all(h.evaluation for h in all_headlines())


@pytest.mark.parametrize("family", sorted(RUNS))
def test_every_bank_evaluation_runs_and_summarizes_its_own_rows(runs, family):
    res, frame = runs[family]
    bank = bank_for_family(family)
    store = ResultsStore(res, _tag(res))
    meta = store.meta()
    for rid, info in meta["checkpoints"].items():
        cells = store.cell_rows(rid)
        ref = info.get("reference")
        ref_cells = store.cell_rows(ref) if ref else None
        for entry in bank.entries:
            cls = EVALUATIONS.get(entry.evaluation)
            own = [r for r in cells if r["evaluation"] == cls.name]
            expected = cls.summarize(own, [r for r in ref_cells if r["evaluation"] == cls.name] if ref else None,
                                     ref or "")
            got = frame[(frame.checkpoint == rid) & (frame.evaluation == cls.name)]
            for r in expected:  # every summary row is in the table, computed from the evaluation's own rows
                assert r["evaluation"] == cls.name
                match = got[(got["shift"] == r["shift"]) & (got.metric == r["metric"]) & (got.severity == 0)]
                assert len(match) == 1 and match.value.iloc[0] == pytest.approx(r["value"], nan_ok=True), (cls.name, r)


def _tag(res):
    import json

    return json.loads((res / "results.json").read_text())["bank"]


def test_every_evaluation_runs_somewhere_and_every_headline_is_produced(runs):
    ran = {ev for _, frame in runs.values() for ev in frame.evaluation}
    missing = [cls.name for cls in evaluations_in_order() if cls.name not in ran]
    assert not missing, f"no family run reaches {missing}: give RUNS a run where they have cells"
    produced, finite = set(), set()
    for res, frame in runs.values():
        pc = per_checkpoint(frame.assign(results_dir=str(res)))
        produced |= {h.key for h in all_headlines() if not select(frame, h).empty}
        finite |= {h.key for h in all_headlines() if h.key in pc and pc[h.key].notna().any()}
    assert {h.key for h in all_headlines()} - produced == set()
    # the tiny models are weak: relative mCE divides by the reference's error increase, 0 on some corruptions here
    assert {h.key for h in all_headlines()} - finite <= {"relative_mce"}


@pytest.mark.parametrize("name", sorted(all_options()))
def test_options_round_trip_through_the_cli_and_the_grid(name):
    from robustfeat.sweep.grid import evaluate_keys

    evaluation, option = all_options()[name]
    value = {str: "some-value", int: 3, float: 0.5}.get(option.type, "x")
    args = build_parser(for_command="evaluate").parse_args(
        ["evaluate", "ckpt", "--out", "o", option.flag, str(value)])
    assert getattr(args, name) == value
    assert name in evaluate_keys()
    assert option.flag in build_parser(for_command="evaluate")._subparsers._group_actions[0].choices[
        "evaluate"].format_help()


class Throwaway(Evaluation):
    """Registered only inside the test below."""

    name = "throwaway"
    summary = "a throwaway evaluation of the contract test"
    families = frozenset({"image-classifier"})
    options = (Option("throwaway_scale", "multiplies the throwaway score", type=float, param="scale"),)
    headlines = (Headline("throwaway_total", "throwaway total", "score_total", True, "sum of the throwaway scores",
                          "drift", shift="all"),)

    def cells(self, ctx):
        return [Cell(self.name, "a"), Cell(self.name, "b")]

    def run(self, ctx, cell):
        return [metric_row("score", self.params.get("scale", 1.0) * (1.0 if cell.shift == "a" else 2.0), 1)]

    @classmethod
    def summarize(cls, rows, reference_rows, reference):
        return [summary_row(cls.name, "all", "score_total", sum(r["value"] for r in rows), len(rows))]


def test_a_new_evaluation_is_one_module_and_its_bank_entry(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(EVALUATIONS._items, "throwaway", Throwaway)
    monkeypatch.setitem(BANKS._items, "throwaway-bank", Bank("throwaway-bank", 1, "image-classifier", "test",
                                                             (CLEAN, Entry("throwaway"))))
    ckpt = _finetune(tmp_path, "lora", **RUNS["image-classifier"])
    # its option is a flag of `robustfeat evaluate`, and reaches the evaluation
    res = tmp_path / "res"
    assert main(["evaluate", str(ckpt), "--out", str(res), "--bank", "throwaway-bank", "--throwaway-scale", "10",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "throwaway total" in out.splitlines()[0] and "30" in out.splitlines()[2]  # the CLI's table
    frame = pd.read_csv(res / "results.csv")
    own = frame[frame.evaluation == "throwaway"].set_index(["shift", "metric"]).value
    assert own[("a", "score")] == 10.0 and own[("b", "score")] == 20.0 and own[("all", "score_total")] == 30.0
    # its headline in the report's summary
    from robustfeat.report import build_report, load_results

    table = headline_table(load_results([res]).frame)
    assert table.throwaway_total.iloc[0] == 30.0
    html = build_report([res], tmp_path / "r.html").read_text()
    assert "throwaway total" in html
    # and a key of a grid's evaluate: mapping, validated there
    from robustfeat.sweep.grid import GridError, parse_grid

    grid = {"models": ["tiny-cnn"], "datasets": ["mnist-5k"], "methods": ["lora"], "seeds": [0],
            "evaluate": {"throwaway_scale": 2.0}}
    assert parse_grid(grid).trials[0].evaluate == {"throwaway_scale": 2.0}
    with pytest.raises(GridError, match="throwaway-scale takes a float"):
        parse_grid({**grid, "evaluate": {"throwaway_scale": "big"}})
    # an option of an evaluation the bank does not run is refused, not ignored, and leaves nothing behind
    with pytest.raises(Exception, match="option of the 'throwaway' evaluation, which bank 'image' does not run"):
        evaluate([ckpt], tmp_path / "other", throwaway_scale=2.0, progress=False)
    assert not (tmp_path / "other").exists()
    assert not math.isnan(table.throwaway_total.iloc[0])
