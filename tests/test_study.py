"""The study (``robustfeat study``) on a tiny model: the tuning stage fine-tunes only and picks
by validation alone (a planted shift-only improvement does not move the pick, a better
validation score does); the seeds stage reuses the tuning seed's fine-tune; the scale stage
at alpha 1 equals the checkpoint and at alpha 0 the base, exactly; the outputs are written;
a study killed halfway and resumed ends with the same numbers as one run straight through;
bad study files are one clear error that leaves nothing behind."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from robustfeat.study import StudyError, parse_study, run_study
from robustfeat.study.stages import choose_rates, extended, matched_ranks, tuning_trials

TINY = {"families": {"text": {
    "model": "tiny-bert", "data": "rotten-tomatoes",
    "methods": ["lora", "vefa", "lora-matched"],
    "train": {"max_examples": 64, "max_eval_examples": 32, "checkpoint_every": 100},
    "seeds": [0, 1],
    "evaluate": {"quick": True, "shifts": ["clean", "vader-nyt", "embedding-geometry"]},
    "scale": {"alphas": [0, 0.5, 1], "evaluate": {"quick": True, "shifts": ["clean", "embedding-geometry"]}},
    "margins": {"id_acc": 0.05},
}}, "resources": {"threads": 1}}


def _doc(**change):
    doc = copy.deepcopy(TINY)
    doc["families"]["text"].update(change)
    return doc


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    spec_file = root / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY))
    info = run_study(spec_file, root / "out", progress=False, log=lambda m: None)
    return root, info


def _frame(out: Path, rel: str) -> pd.DataFrame:
    return pd.read_csv(out / rel / "results.csv")


def test_the_stages_run_and_the_outputs_are_written(study):
    root, info = study
    out, fam = info["out"], info["record"]["families"]["text"]
    assert set(fam["stages"]) == {"tuning", "seeds", "scale"}
    assert fam["stages"]["tuning"]["trials"] == 9 and fam["stages"]["seeds"]["trials"] == 6
    assert fam["stages"]["scale"]["trials"] == 6
    # every arm tried three rates spanning at least 10x around its default; the pick is one of them
    for arm, c in fam["choices"].items():
        rates = sorted(map(float, c["scores"]))
        assert len(rates) == 3 and rates[-1] / rates[0] >= 10 - 1e-9 and c["chosen"] in rates, arm
    # tuning trials fine-tune only; the seeds stage reuses the tuning seed's checkpoint
    tuning = [json.loads(p.read_text()) for p in (out / "text" / "trials").glob("*/done.json")
              if json.loads((p.parent / "trial.json").read_text())["evaluate"] is None]
    assert len(tuning) == 9 and all(t["results"] is None for t in tuning)
    assert len(list((out / "text" / "checkpoints").glob("*/robustfeat.json"))) == 9 + 3  # 3 arms x 1 more seed
    # the base model's outputs are computed once per base (seed) for the whole family, not per trial
    assert not list((out / "text" / "trials").glob("*/results/base"))
    assert len(list((out / "text" / "base-outputs").iterdir())) == 2
    # the budget-matched lora trains about as many adapter parameters as vefa, at its own rank
    assert fam["matched_ranks"]["lora-matched"] >= 1 and fam["trainable"]["lora-matched"] < fam["trainable"]["lora"]
    summary = pd.read_csv(out / "summary.csv")
    assert {"family", "model", "data", "method", "seeds", "metric", "mean", "ci_low", "ci_high", "diff_vs_lora",
            "diff_low", "diff_high"} <= set(summary.columns)
    assert set(summary.method) == {"lora", "vefa", "lora-matched"} and set(summary.family) == {"text-classifier"}
    assert (summary.seeds == 2).all()
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert set(verdicts.verdict) <= {"supported", "contradicted", "inconclusive"} and len(verdicts)
    assert set(verdicts.method) == {"vefa", "lora-matched"}
    ind = verdicts[verdicts.claim == "comparable in-domain score"]
    assert (ind.margin == 0.05).all()  # the study file's margin, not the default
    readme = (out / "README.md").read_text()
    assert "## text: tiny-bert on rotten-tomatoes" in readme and "chosen on validation" in readme
    assert "![scale curves of text](figures/text-scale.png)" in readme
    assert (out / "figures" / "text-scale.png").read_bytes()[:4] == b"\x89PNG"
    assert "Verdicts" in (out / "study.html").read_text() and (out / "study.pdf").read_bytes()[:5] == b"%PDF-"


def test_scale_one_is_the_checkpoint_and_zero_the_base_exactly(study):
    _, info = study
    out, fam = info["out"], info["record"]["families"]["text"]
    seeds = {}
    for rel in fam["results"]:
        f = _frame(out, rel)
        seeds[json.loads((out / rel / "results.json").read_text())["checkpoints"].popitem()[1]["path"]] = f
    compared = 0
    for rel in fam["scale_results"]:
        meta = json.loads((out / rel / "results.json").read_text())["checkpoints"]
        f = _frame(out, rel)
        for ckpt_id, c in meta.items():
            rows = f[f.checkpoint == ckpt_id].set_index(["evaluation", "shift", "metric"])["value"]
            if c["scale"] == 1.0:
                plain = seeds[c["path"]].set_index(["evaluation", "shift", "metric"])["value"]
                shared = rows.index.intersection(plain.index)
                assert len(shared) >= 3
                assert rows[shared].tolist() == plain[shared].tolist()  # bit for bit
                compared += 1
            elif c["scale"] == 0.0:  # the base's own embeddings: geometry kept perfectly
                geo = rows[rows.index.get_level_values("evaluation") == "embedding-geometry"]
                assert len(geo) and (geo[geo.index.get_level_values("metric") == "geometry_spearman"] == 1.0).all()
    assert compared == 6


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tuning_picks_by_validation_only(study, tmp_path):
    _, info = study
    out = info["out"]
    spec = parse_study(TINY)
    fam = spec.families[0]
    trials = [t for t in tuning_trials(fam, matched_ranks(fam)) if t.arm == "lora"]
    records = {}
    for t in trials:  # copies of the tuning checkpoints, to plant numbers in
        done = json.loads((out / "text" / "trials" / t.spec.key / "done.json").read_text())
        records[t.spec.key] = {**done, "checkpoint": str(_copy_run(Path(done["checkpoint"]), tmp_path / t.spec.key))}
    chosen = choose_rates(fam, trials, records)["lora"]["chosen"]
    other = next(t for t in trials if t.spec.train["lr"] != chosen)
    # a planted shift-only improvement: the other rate's checkpoint evaluated with a perfect OOD score
    from robustfeat.evaluations.runner import evaluate

    planted = tmp_path / "planted"
    evaluate([records[other.spec.key]["checkpoint"]], planted, quick=True, shifts=["vader-nyt"], progress=False)
    csv = pd.read_csv(planted / "results.csv")
    csv.loc[csv.metric == "accuracy", "value"] = 1.0
    csv.to_csv(planted / "results.csv", index=False)
    records[other.spec.key]["results"] = str(planted)
    assert choose_rates(fam, trials, records)["lora"]["chosen"] == chosen
    # a better validation score does move it: the pick reads validation and nothing else
    run_file = Path(records[other.spec.key]["checkpoint"]) / "robustfeat.json"
    rec = json.loads(run_file.read_text())
    rec["validation"]["value"] = 0.99
    run_file.write_text(json.dumps(rec))
    assert choose_rates(fam, trials, records)["lora"]["chosen"] == other.spec.train["lr"]


def test_a_killed_study_resumes_to_the_same_numbers(study, tmp_path, monkeypatch):
    import robustfeat.sweep.run as run_mod

    _, info = study
    calls, real = [], run_mod._run

    def dies_at_the_fourteenth(spec, out):
        calls.append(spec.key)
        if len(calls) == 14:  # in the seeds stage, after 9 tuning and 4 seeds trials
            raise KeyboardInterrupt
        return real(spec, out)

    monkeypatch.setattr(run_mod, "_run", dies_at_the_fourteenth)
    with pytest.raises(KeyboardInterrupt):
        run_study(parse_study(TINY), tmp_path / "out", progress=False, log=lambda m: None)
    assert not (tmp_path / "out" / "summary.csv").exists()
    rerun = []
    monkeypatch.setattr(run_mod, "_run", lambda spec, out: rerun.append(spec.key) or real(spec, out))
    again = run_study(parse_study(TINY), tmp_path / "out", progress=False, log=lambda m: None)
    # the 13 finished trials were kept; only the killed one and the 7 after it ran (9 + 6 + 6 in all)
    assert len(rerun) == 21 - 13 and not set(rerun) & set(calls[:13])
    first = info["out"]
    for name in ("summary.csv", "verdicts.csv", "text-scale.csv"):
        assert (again["out"] / name).read_bytes() == (first / name).read_bytes(), name
    fam = again["record"]["families"]["text"]
    assert fam["choices"] == info["record"]["families"]["text"]["choices"]


def test_a_rerun_recomputes_nothing(study):
    root, info = study
    out = info["out"]
    cells = {p: p.stat().st_mtime_ns for p in out.rglob("cells/*/*/*.json")}
    ckpts = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoints/*/robustfeat.json")}
    from robustfeat.cli import main

    pub = root / "published"
    assert main(["study", str(root / "tiny.yaml"), "--out", str(out), "--no-progress", "--no-pdf",
                 "--publish", str(pub)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("cells/*/*/*.json")} == cells
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoints/*/robustfeat.json")} == ckpts
    # the published copy: the readers' files and the study file, no checkpoint or trial
    assert sorted(p.relative_to(pub).as_posix() for p in pub.rglob("*") if p.is_file()) == [
        "README.md", "figures/text-scale.png", "matched_gain.csv", "study.html", "study.json", "study.pdf",
        "summary.csv", "text-scale.csv", "tiny.yaml", "verdicts.csv"]
    assert (pub / "README.md").read_bytes() == (out / "README.md").read_bytes()
    # every run that went over the family is on record, with its command, and named in the README
    runs = json.loads((out / "study.json").read_text())["families"]["text"]["runs"]
    assert [r["command"] for r in runs][-1] == (f"robustfeat study {root / 'tiny.yaml'} --out {out} "
                                                f"--publish {pub}")
    assert len(runs) >= 2 and f"`{runs[-1]['command']}`" in (pub / "README.md").read_text()


@pytest.mark.parametrize("change, match", [
    ({"methods": ["vefa", "lorfa"]}, "must include 'lora'"),
    ({"methods": ["lora", "lora-matched"]}, "list vefa too"),
    ({"methods": ["lora", "lora"]}, "names an arm twice"),
    ({"methods": ["lora", "lorra"]}, "lorra"),
    ({"tuning": {"factors": [0.5, 1, 2]}}, "spanning at least 10x"),
    ({"tuning": {"lr": {"lora": [1e-4, 1e-2]}}}, "at least 3 values"),
    ({"tuning": {"lr": {"dora": [1e-4, 1e-3, 1e-2]}}}, "not studied: dora"),
    ({"seeds": [0]}, "at least two distinct"),
    ({"scale": {"alphas": [0.5, 1]}}, "must include 0"),
    ({"scale": {"methods": ["linear"]}}, "must list studied arms"),
    ({"train": {"lr": 0.1}}, "set by the study"),
    ({"colour": "red"}, "unknown key"),
    ({"margins": {"id_acc": -1}}, "positive number"),
    ({"evaluate": {"shifts": ["fogg"]}}, "unknown shift 'fogg'"),
])
def test_bad_study_files_are_one_clear_error_and_leave_nothing(change, match, tmp_path):
    with pytest.raises(StudyError, match=match):
        run_study(parse_study(_doc(**change)), tmp_path / "out", progress=False, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_a_study_of_linear_cannot_scale_it():
    doc = _doc(methods=["lora", "linear"], scale={"methods": ["lora", "linear"]})
    with pytest.raises(StudyError, match="'linear' has no fine-tuning update to scale"):
        parse_study(doc)


def test_a_grid_grows_where_its_best_rate_lies_at_an_edge(tmp_path, monkeypatch):
    assert extended((0.001, 0.003, 0.01), 0.01) == (0.001, 0.003, 0.01, 0.0333333)  # the grid's own step
    assert extended((0.001, 0.003, 0.01), 0.001) == (0.000333333, 0.001, 0.003, 0.01)
    assert extended((0.001, 0.003, 0.01), 0.003) == (0.001, 0.003, 0.01)
    import robustfeat.study as study_mod
    from robustfeat.study import run_family
    from robustfeat.sweep.backends import get_backend

    def best_is_the_largest(fam, trials, records):  # as if validation kept improving with the rate
        out = choose_rates(fam, trials, records)
        for c in out.values():
            c["chosen"] = max(map(float, c["scores"]))
        return out

    monkeypatch.setattr(study_mod, "choose_rates", best_is_the_largest)
    spec = parse_study(_doc(methods=["lora"]))
    fam = spec.families[0]
    info = run_family(spec, fam, tmp_path, get_backend("local"), progress=False, stages=("tuning",), log=lambda m: None)
    rates = sorted(map(float, info["choices"]["lora"]["scores"]))
    base = sorted(fam.rates["lora"])
    assert len(rates) == 3 + fam.extend == 5 and rates[:3] == base  # grown twice, then stopped
    assert rates[3] == pytest.approx(base[2] ** 2 / base[1], rel=1e-5) and rates[4] > rates[3]
    assert len(list((tmp_path / "text" / "checkpoints").glob("*/robustfeat.json"))) == 5


def _curve_table(rows):
    return pd.DataFrame(rows, columns=["arm", "model", "data", "seed", "alpha", "id_acc", "geometry"])


def test_matched_gain_hand_worked_over_a_shared_base():
    """Gains are measured from one base per seed shared by every arm (the head-only arm's
    score), not from each arm's own alpha 0: an arm whose alpha 0 is far below (a full
    fine-tune's co-adapted head on the frozen body) must be read where it reaches the same
    in-domain score as the others."""
    from robustfeat.study.curves import matched_gain, with_gain

    rows = []
    for seed, shift in ((0, 0.0), (1, 0.01)):
        # lora: 0.70 -> 0.80, geometry 1 -> 0.8; full: 0.50 -> 0.90, geometry 1 -> 0.2
        rows += [("lora", "m", "d", seed, 0.0, 0.70 + shift, 1.0), ("lora", "m", "d", seed, 1.0, 0.80 + shift, 0.8),
                 ("full", "m", "d", seed, 0.0, 0.50 + shift, 1.0), ("full", "m", "d", seed, 1.0, 0.90 + shift, 0.2)]
    table = _curve_table(rows)
    base = {0: 0.74, 1: 0.75}  # the linear probe of each seed
    g = with_gain(table, base)
    assert g.loc[(g.arm == "full") & (g.alpha == 0.0), "gain"].round(6).tolist() == [-0.24, -0.24]
    target, m = matched_gain(table, base=base)
    # mean gains at alpha 1: lora 0.06, full 0.16 -> target 0.06, i.e. score 0.80 (+ shift)
    assert target == pytest.approx(0.06)
    geo = m[m.headline == "geometry"].set_index("arm")
    # lora reaches it at alpha 1 (0.8); full at alpha 0.75 (score 0.5 + 0.75 * 0.4 = 0.8): 1 - 0.75 * 0.8 = 0.4
    assert geo.loc["lora", "mean"] == pytest.approx(0.8)
    assert geo.loc["full", "mean"] == pytest.approx(0.4)
    assert geo.loc["full", "diff_vs_lora"] == pytest.approx(-0.4) and geo.loc["full", "seeds"] == 2
    # a curve that starts at or above the gain (its head alone gains that much) is read at its start
    high = table.copy()
    high.loc[(high.arm == "lora") & (high.seed == 1) & (high.alpha == 0.0), "id_acc"] = 0.83
    _, m2 = matched_gain(high, base=base)
    geo2 = m2[m2.headline == "geometry"].set_index("arm")
    assert geo2.loc["lora", "seeds"] == 2 and geo2.loc["lora", "mean"] == pytest.approx((0.8 + 1.0) / 2)
    # measured from each arm's own alpha 0 instead: target 0.1, full read at alpha 0.25 (geometry 0.8)
    _, own = matched_gain(table)
    assert own[(own.headline == "geometry") & (own.arm == "full")]["mean"].iloc[0] == pytest.approx(0.8)


def test_the_base_of_the_gain_is_an_arms_seeds_stage_score_per_seed(study):
    from robustfeat.study.curves import base_scores
    from robustfeat.study.outputs import family_frame

    _, info = study
    out, fam = info["out"], info["record"]["families"]["text"]
    frame = family_frame(out, fam)
    got = base_scores(frame, "vefa", "id_acc")
    assert sorted(got) == [0, 1]
    for rel, arm in fam["results"].items():
        if arm != "vefa":
            continue
        rows = _frame(out, rel)
        clean = rows[(rows.evaluation == "clean") & (rows.metric == "accuracy") & (rows.reference.isna())]
        seed = int(clean["seed"].iloc[0])
        assert got[seed] == pytest.approx(float(clean["value"].iloc[0]))
    assert base_scores(frame, "linear", "id_acc") == {}  # no head-only arm: each arm's alpha 0 is the base
    assert base_scores(frame, "vefa", None) == {}


def test_the_report_shows_the_verdicts_of_the_readme(study, tmp_path, monkeypatch):
    """study.html's verdicts are computed from the rows the README's are (the study adds the
    rows that need the linear reference): a change to those rows shows in both, and the PDF
    leaves the table of every cell to the HTML."""
    import html

    import robustfeat.study.outputs as outputs

    root, info = study
    out = tmp_path / "out"
    shutil.copytree(info["out"], out)
    plain = outputs.with_reference

    def moved(frame, arm):  # stands in for rows the study adds: vefa's accuracy moves by +0.25
        frame = plain(frame, arm).copy()
        frame.loc[(frame.method == "vefa") & (frame.metric == "accuracy"), "value"] += 0.25
        return frame

    monkeypatch.setattr(outputs, "with_reference", moved)
    outputs.write_outputs(parse_study(copy.deepcopy(TINY), str(root / "tiny.yaml")), out, info["record"])
    verdicts = pd.read_csv(out / "verdicts.csv")
    page = html.unescape((out / "study.html").read_text())
    vefa = verdicts[(verdicts.method == "vefa") & (verdicts.headline == "id_acc")]
    assert len(vefa) == 1 and float(vefa["mean"].iloc[0]) > 0.1  # the moved rows reached the verdicts
    for sentence in verdicts.sentence:
        assert sentence in page
    assert "Every row of" in page and "The table of every cell is in" not in page
    import subprocess

    text = subprocess.run(["pdftotext", str(out / "study.pdf"), "-"], capture_output=True, text=True, check=True).stdout
    assert "The table of every cell is in study.html" in " ".join(text.split())
