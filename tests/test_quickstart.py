"""The quickstart study machinery on tiny models: every stage runs, the report is written
(HTML and PDF), and a rerun reuses finished checkpoints and cells instead of redoing them."""

from __future__ import annotations

import pytest

from robustfeat.quickstart import QUICKSTART, Scenario, plan, run_study

TINY = (
    Scenario("text", "tiny-bert", "rotten-tomatoes", ("linear", "lora"),
             train={"max_examples": 128, "max_eval_examples": 64, "checkpoint_every": 100},
             shifts=("clean", "vader-nyt", "cka", "weights"), finetune_s=2, evaluate_s=5),
    Scenario("images", "tiny-cnn", "mnist-5k", ("linear", "vefa"),
             train={"max_examples": 128, "max_eval_examples": 64, "image_size": 32, "checkpoint_every": 100},
             shifts=("clean", "fog", "imagenet-agreement", "cka"), finetune_s=2, evaluate_s=5),
)


def test_study_runs_every_stage_then_resumes(tmp_path, monkeypatch, capsys):
    import robustfeat.train as train_mod

    out = tmp_path / "study"
    info = run_study(out, TINY, pdf=True, progress=True)
    assert [label for label, _ in info["stages"]][0] == "fine-tune tiny-bert on rotten-tomatoes with linear"
    assert len(info["stages"]) == 2 * 3 + 1
    assert info["report_html"].is_file() and info["report_pdf"].read_bytes()[:5] == b"%PDF-"
    html = info["report_html"].read_text()
    assert "tiny-bert on rotten-tomatoes" in html and "tiny-cnn on mnist-5k" in html
    for sc in TINY:
        for m in sc.methods:
            assert (out / sc.name / "checkpoints" / m / "robustfeat.json").is_file()
        assert (out / sc.name / "results" / "results.csv").is_file()
    assert "[7/7] write report.html and report.pdf" in capsys.readouterr().err
    # a rerun fine-tunes nothing and evaluates no cell again
    calls = []
    monkeypatch.setattr(train_mod, "finetune", lambda *a, **k: calls.append(a))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("cells/*/*/*.json")}
    again = run_study(out, TINY, pdf=False, progress=False)
    assert calls == [] and {p: p.stat().st_mtime_ns for p in out.rglob("cells/*/*/*.json")} == before
    assert again["wall_s"] < info["wall_s"]
    # results of an older bank version (a robustfeat upgrade) are moved aside, not mixed in
    # or lost, and the checkpoints are evaluated again
    meta_file = out / "images" / "results" / "results.json"
    meta = __import__("json").loads(meta_file.read_text())
    old_csv = (out / "images" / "results" / "results.csv").read_bytes()
    meta["bank"] = "image-v0-quick"
    meta_file.write_text(__import__("json").dumps(meta))
    text_before = {p: p.stat().st_mtime_ns for p in (out / "text").rglob("cells/*/*/*.json")}
    run_study(out, TINY, pdf=False, progress=False)
    moved = out / "images" / "results-image-v0-quick"
    assert (moved / "results.csv").read_bytes() == old_csv
    assert "moved them to results-image-v0-quick" in capsys.readouterr().err
    fresh = __import__("json").loads(meta_file.read_text())
    assert fresh["bank"].startswith("image-v") and fresh["bank"] != "image-v0-quick"
    assert (out / "images" / "results" / "results.csv").is_file() and calls == []
    assert {p: p.stat().st_mtime_ns for p in (out / "text").rglob("cells/*/*/*.json")} == text_before


def test_study_refuses_a_file_as_its_folder(tmp_path):
    from robustfeat.errors import RobustfeatError

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RobustfeatError, match="is a file"):
        run_study(f, TINY, progress=False)
    assert f.read_text() == "x"


def test_the_quickstart_covers_what_it_promises():
    text, images = QUICKSTART
    assert (text.model, text.data, images.model, images.data) == \
        ("minilm-l6", "rotten-tomatoes", "efficientnet-lite0", "fashion-mnist")
    for sc in QUICKSTART:
        assert {"linear", "lora", "lorfa", "vefa"} == set(sc.methods)
        assert {"cka", "weights"} <= set(sc.shifts)
    assert "ood" in text.shifts and "embedding-geometry" in text.shifts
    assert {"corruptions", "imagenet-agreement", "linear-probe"} <= set(images.shifts)
    assert len(plan(__import__("pathlib").Path("/nonexistent"), QUICKSTART)) == 4 + 1 + 4 + 1 + 1
