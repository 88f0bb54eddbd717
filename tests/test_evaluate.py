"""`robustfeat evaluate`: the bank end to end on tiny models, tidy results with provenance,
CE/mCE against the reference checkpoint, resuming after a crash (and SIGKILL) to the same
bytes, reuse of base outputs and corrupted inputs, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from robustfeat.data.cache import sha256_file
from robustfeat.locks import locked
from robustfeat.evaluations import base as evaluation_mod
from robustfeat.evaluations.banks import QUICK_CORRUPTIONS
from robustfeat.evaluations.runner import evaluate
from robustfeat.train import TrainConfig, finetune

pytestmark = pytest.mark.real_data


def _train(root, model, data, method, **kw):
    base = dict(max_examples=128, max_eval_examples=64, batch_size=32, checkpoint_every=100)
    base.update(kw)
    out = root / f"{model}-{method}"
    finetune(TrainConfig(model=model, data=data, method=method, **base), out, progress=False)
    return out


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn")
    return {m: _train(root, "tiny-cnn", "mnist-5k", m, image_size=32, max_examples=512, epochs=2.0,
                      lr=0.05 if m != "linear" else None)
            for m in ("lora", "linear", "vefa")}


@pytest.fixture(scope="module")
def quick(cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("res") / "quick"
    frame = evaluate([cnn["lora"], cnn["linear"]], out, quick=True, progress=False)
    return out, frame


def _v(frame, ckpt_prefix, evaluation, shift, metric, severity=0):
    sel = frame[frame.checkpoint.str.startswith(ckpt_prefix) & (frame.evaluation == evaluation)
                & (frame["shift"] == shift) & (frame.metric == metric) & (frame.severity == severity)]
    assert len(sel) == 1, (ckpt_prefix, evaluation, shift, metric, severity, len(sel))
    return float(sel.value.iloc[0])


def test_quick_image_bank_rows_and_provenance(quick, cnn):
    out, frame = quick
    assert set(frame.evaluation) == {"clean", "corruptions", "ood", "imagenet-agreement", "linear-probe", "cka", "weights"}
    lora = frame[frame.checkpoint.str.startswith("tiny-cnn-lora")]
    cells = lora[(lora.evaluation == "corruptions") & (lora.metric == "accuracy")]
    assert sorted(set(cells["shift"])) == sorted([*QUICK_CORRUPTIONS, "uncorrupted"])
    assert set(cells.severity) == {0, 1, 3, 5} and set(cells[cells.severity == 0]["shift"]) == {"uncorrupted"}
    assert cells.n.nunique() == 1  # the uncorrupted cell uses the corrupted cells' images
    acc = frame[frame.metric == "accuracy"].dropna(subset=["ci_low"])
    assert len(acc) > 20 and ((acc.ci_low <= acc.value) & (acc.value <= acc.ci_high)).all()
    # error is 1 - accuracy, per cell
    for (_, c), g in frame[frame.evaluation == "corruptions"].groupby(["checkpoint", "shift"]):
        if c == "all":
            continue
        pivot = g[g.metric.isin(["accuracy", "error"])].pivot_table(index="severity", columns="metric", values="value")
        assert np.allclose(pivot["accuracy"] + pivot["error"], 1.0)
    # the frozen backbone of 'linear' does not drift and keeps the ImageNet head's outputs
    assert _v(frame, "tiny-cnn-linear", "weights", "all", "relative_change") == 0.0
    assert _v(frame, "tiny-cnn-linear", "cka", "all", "cka") == pytest.approx(1.0)
    assert _v(frame, "tiny-cnn-linear", "imagenet-agreement", "test-images", "top1_agreement") == 1.0
    assert _v(frame, "tiny-cnn-linear", "linear-probe", "fashion-mnist:label", "forgetting") == 0.0
    assert _v(frame, "tiny-cnn-lora", "weights", "all", "relative_change") > 0.0
    # provenance
    meta = json.loads((out / "results.json").read_text())
    assert meta["bank"] == "image-v5-quick"
    assert {"versions", "git_revision", "seed", "date", "mce"} <= set(meta["provenance"])
    (rid, info), = [(k, v) for k, v in meta["checkpoints"].items() if k.startswith("tiny-cnn-lora")]
    assert info["weights_sha256"] == sha256_file(cnn["lora"] / "adapter_model.safetensors")
    assert info["reference"].startswith("tiny-cnn-linear")
    parquet = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(parquet, frame, check_dtype=False)
    assert len(pd.read_csv(out / "results.csv")) == len(frame)


def test_mce_against_the_reference_by_hand(quick, cnn, tmp_path):
    _, frame = quick
    assert _v(frame, "tiny-cnn-linear", "corruptions", "all", "mce") == pytest.approx(1.0)  # its own reference
    row = frame[(frame.metric == "mce") & frame.checkpoint.str.startswith("tiny-cnn-lora")].iloc[0]
    assert row.reference.startswith("tiny-cnn-linear")
    # an explicit reference: vefa against lora, recomputed here from the per-cell errors
    frame = evaluate([cnn["vefa"]], tmp_path / "ref", quick=True, reference=cnn["lora"], progress=False,
                     shifts=["clean", "corruptions"])
    ce, rel = [], []
    # E_clean of relative mCE: the error on the bank's own images, uncorrupted
    e0 = _v(frame, "tiny-cnn-vefa", "corruptions", "uncorrupted", "error")
    r0 = _v(frame, "tiny-cnn-lora", "corruptions", "uncorrupted", "error")
    for c in QUICK_CORRUPTIONS:
        e = [_v(frame, "tiny-cnn-vefa", "corruptions", c, "error", s) for s in (1, 3, 5)]
        r = [_v(frame, "tiny-cnn-lora", "corruptions", c, "error", s) for s in (1, 3, 5)]
        assert sum(r) > 0
        ce.append(sum(e) / sum(r))
        num, den = sum(x - e0 for x in e), sum(x - r0 for x in r)  # a zero denominator is inf (nan for 0/0)
        rel.append(num / den if den else (float("nan") if num == 0 else float("inf")))
        assert _v(frame, "tiny-cnn-vefa", "corruptions", c, "ce") == pytest.approx(ce[-1])
    assert _v(frame, "tiny-cnn-vefa", "corruptions", "all", "mce") == pytest.approx(np.mean(ce))
    assert _v(frame, "tiny-cnn-vefa", "corruptions", "all", "relative_mce") == pytest.approx(np.mean(rel), nan_ok=True)
    errs = [_v(frame, "tiny-cnn-vefa", "corruptions", c, "error", s) for c in QUICK_CORRUPTIONS for s in (1, 3, 5)]
    assert _v(frame, "tiny-cnn-vefa", "corruptions", "all", "mean_error") == pytest.approx(np.mean(errs))
    assert _v(frame, "tiny-cnn-lora", "corruptions", "all", "mce") == pytest.approx(1.0)


def test_interrupted_run_resumes_to_identical_results(quick, cnn, tmp_path, monkeypatch):
    ref_out, _ = quick
    out = tmp_path / "again"
    from robustfeat.evaluations.imagenet_c import Corruptions

    real = Corruptions.run
    calls = {"n": 0}

    def dying(self, ctx, cell):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")
        return real(self, ctx, cell)

    monkeypatch.setattr(Corruptions, "run", dying)
    with pytest.raises(KeyboardInterrupt):
        evaluate([cnn["lora"], cnn["linear"]], out, quick=True, progress=False)
    assert not (out / "results.csv").exists()
    calls["n"] = -10_000
    evaluate([cnn["lora"], cnn["linear"]], out, quick=True, progress=False)
    # the 4 finished corruption cells of the first checkpoint were not computed again
    assert calls["n"] == -10_000 + 2 * (4 * 3 + 1) - 4
    assert (out / "results.csv").read_bytes() == (ref_out / "results.csv").read_bytes()


def test_sigkill_then_rerun_gives_the_same_results(quick, cnn, tmp_path):
    ref_out, _ = quick
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "robustfeat", "evaluate", str(cnn["lora"]), str(cnn["linear"]), "--quick",
           "--no-progress", "--batch-size", "8", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "cells").glob("*/*/*.json"))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.csv").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "results.csv").read_bytes() == (ref_out / "results.csv").read_bytes()


def test_base_outputs_and_corrupted_inputs_are_computed_once(cnn, tmp_path, monkeypatch):
    import robustfeat.shifts.cache as cache_mod

    loads, generated = {"n": 0}, {"n": 0}
    real_get, real_gen = evaluation_mod.BasePool.get, cache_mod._generate

    def counting_get(self, key, load):
        def counted():
            loads["n"] += 1
            return load()
        return real_get(self, key, counted)

    def counting_gen(*a, **k):
        generated["n"] += 1
        return real_gen(*a, **k)

    monkeypatch.setattr(evaluation_mod.BasePool, "get", counting_get)
    monkeypatch.setattr(cache_mod, "_generate", counting_gen)
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path / "cache"))  # corrupted sets start cold
    monkeypatch.setenv("ROBUSTFEAT_MNIST_5K", os.environ.get("ROBUSTFEAT_MNIST_5K", ""))
    out = tmp_path / "res"
    try:
        evaluate([cnn["lora"]], out, quick=True, shifts=["fog", "imagenet-agreement", "cka", "weights"], progress=False)
    except Exception as e:  # the data cache moved: prepare needs the packaged files, which are installed
        raise AssertionError(f"evaluation failed with a fresh cache: {e}")
    assert loads["n"] == 1 and generated["n"] == 3  # fog at 3 severities
    assert len(list((out / "base").glob("*/*.npz"))) == 3  # logits, layer outputs, weights
    evaluate([cnn["vefa"]], out, quick=True, shifts=["fog", "imagenet-agreement", "cka", "weights"], progress=False)
    assert loads["n"] == 1 and generated["n"] == 3  # nothing of the base recomputed, no image corrupted again


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "robustfeat", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_bad_input_is_one_line_and_leaves_results_alone(cnn, quick, tmp_path, capsys):
    out, _ = quick
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    other = tmp_path / "other-version"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"format": "robustfeat.results", "format_version": 1,
                                                    "bank": "image-v0", "checkpoints": {}}))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    pairs = tmp_path / "pairs.yaml"
    pairs.write_text("rotten-tomatoes: {foo: 1}\n")
    cases = [
        ([tmp_path, "--out", tmp_path / "o1"], "no robustfeat.json"),
        ([tmp_path / "missing", "--out", tmp_path / "o1"], "does not exist"),
        ([cnn["lora"], "--quick", "--shifts", "fgo", "--out", tmp_path / "o2"], "Did you mean 'fog'"),
        ([cnn["lora"], "--quick", "--out", other], "holds results of bank image-v0"),
        ([cnn["lora"], "--out", junk], "not a robustfeat results folder"),
        ([cnn["lora"], "--bank", "text", "--out", tmp_path / "o3"], "is for text-classifier"),
        ([cnn["lora"], "--bank", "imgae", "--out", tmp_path / "o3"], "Did you mean 'image'"),
        ([cnn["lora"], "--pairs", pairs, "--out", tmp_path / "o4"], "expected the keys"),
        ([cnn["lora"], "--pairs", tmp_path / "nope.yaml", "--out", tmp_path / "o4"], "does not exist"),
        ([cnn["lora"], "--reference", tmp_path, "--out", tmp_path / "o5"], "no robustfeat.json"),
        ([cnn["lora"], "--out", out, "--seed", "0"], "holds results of bank image-v5-quick"),
        ([cnn["lora"], "--quick", "--imagenet", tmp_path / "no-such-dir", "--out", out], "--imagenet folder"),
        ([cnn["lora"], "--quick", "--imagenet", junk, "--out", out], "no images in class sub-folders"),
    ]
    from robustfeat.cli import main

    for i, (args, match) in enumerate(cases):
        if i == 0:  # one through a real process; the rest in this one (the same main(), faster)
            r = _cli("evaluate", *args)
            code, err = r.returncode, r.stderr
        else:
            capsys.readouterr()
            code = main(["evaluate", "--no-progress", *map(str, args)])
            err = capsys.readouterr().err
        assert code == 2, (args, err[-1500:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and match in lines[0], (args, err[-1500:])
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert after == before
    assert (junk / "notes.txt").read_text() == "mine" and sorted(p.name for p in junk.iterdir()) == ["notes.txt"]
    assert json.loads((other / "results.json").read_text())["bank"] == "image-v0"


def test_one_checkpoint_is_evaluated_by_one_process_at_a_time(cnn, quick, capsys):
    from robustfeat.cli import main

    out, frame = quick
    rid = next(c for c in frame.checkpoint.unique() if c.startswith("tiny-cnn-lora"))
    before = (out / "results.csv").read_bytes()
    with locked(out / "cells" / f".{rid}.lock", "test", wait=False):  # flock: held against any other opener
        code = main(["evaluate", str(cnn["lora"]), "--quick", "--no-progress", "--out", str(out)])
    assert code == 2 and "another robustfeat process" in capsys.readouterr().err
    assert (out / "results.csv").read_bytes() == before


def test_two_processes_into_one_folder_give_the_sequential_result(cnn, tmp_path):
    """Two evaluate processes of different checkpoints writing one results folder at the same
    time end with the table, cells and metadata that evaluating one after the other gives."""
    shifts = ["--quick", "--shifts", "clean,fog,gaussian_noise,cka", "--no-progress"]
    seq = tmp_path / "sequential"
    for m in ("lora", "vefa"):
        assert _cli("evaluate", cnn[m], *shifts, "--out", seq).returncode == 0
    both = tmp_path / "concurrent"
    procs = {m: subprocess.Popen([sys.executable, "-m", "robustfeat", "evaluate", str(cnn[m]), *shifts, "--out",
                                  str(both)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for m in ("lora", "vefa")}
    first_cell, ended = {}, {}
    while len(ended) < 2:  # when each wrote its first cell and when each ended: they must overlap
        now = time.monotonic()
        for m, p in procs.items():
            if m not in first_cell and list(both.glob(f"cells/tiny-cnn-{m}-*/*/*.json")):
                first_cell[m] = now
            if m not in ended and p.poll() is not None:
                ended[m] = now
        time.sleep(0.02)
    for p in procs.values():
        assert p.wait() == 0, p.stderr.read()[-2000:]
    assert set(first_cell) == {"lora", "vefa"}
    assert first_cell["lora"] < ended["vefa"] and first_cell["vefa"] < ended["lora"], "the two runs did not overlap"
    assert (both / "results.csv").read_bytes() == (seq / "results.csv").read_bytes()
    assert pd.read_parquet(both / "results.parquet").equals(pd.read_parquet(seq / "results.parquet"))

    def cells(root):
        return {p.relative_to(root).as_posix(): {k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
                for p in root.glob("cells/*/*/*.json")}

    assert cells(both) == cells(seq) and len(cells(seq)) >= 10
    ma, mb = (json.loads((r / "results.json").read_text()) for r in (both, seq))
    for m in (ma, mb):
        m.pop("created"), m["provenance"].pop("date")
    assert ma == mb
    assert not list(both.rglob("*.lock")) and not list(seq.rglob("*.lock"))


def test_ls_banks_and_evaluations():
    r = _cli("ls", "banks")
    assert r.returncode == 0 and "image" in r.stdout and "causal-lm" in r.stdout and "text-classifier" in r.stdout
    r = _cli("ls", "evaluations")
    assert r.returncode == 0
    for name in ("clean", "corruptions", "domains", "ood", "imagenet-agreement", "linear-probe",
                 "embedding-geometry", "perplexity", "ood-perplexity", "zero-shot", "cka", "weights"):
        assert name in r.stdout


def test_the_image_bank_version_moves_with_the_corruption_code():
    """Cached corrupted sets are keyed by the corruption code version, but results folders by
    the bank version: a change to the corrupted images without a new image bank version
    would let a resumed evaluation mix old and new corruptions in one folder."""
    from robustfeat.evaluations.banks import IMAGE_BANK_CORRUPTIONS_VERSION
    from robustfeat.shifts.corruptions import CORRUPTIONS_VERSION

    assert CORRUPTIONS_VERSION == IMAGE_BANK_CORRUPTIONS_VERSION, (
        "the corruption code changed: bump the image bank's version in robustfeat/shifts/banks.py "
        "and set IMAGE_BANK_CORRUPTIONS_VERSION to the new CORRUPTIONS_VERSION")


def _imagenet_folder(root, names):
    """A small ImageNet-layout folder: class sub-folders, photos of assorted sizes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(6):
            im = photos[(c + i) % 2]
            h, w = rng.integers(40, 120, size=2)
            y, x = rng.integers(0, im.shape[0] - h), rng.integers(0, im.shape[1] - w)
            Image.fromarray(im[y:y + h, x:x + w]).save(root / name / f"img{i}.png")
    return root


def test_imagenet_folder_accuracy_by_hand(cnn, tmp_path):
    """--imagenet DIR: the kept head's accuracy on the folder equals a hand computation;
    a linear-probe checkpoint (backbone frozen) forgets nothing; folders named by WordNet ID
    give the same numbers as folders named by class index."""
    import torch

    from robustfeat.evaluations.imagenet_folder import imagenet_wnids, load_images, read_imagenet_folder
    from robustfeat.train.loop import load_run

    by_index = _imagenet_folder(tmp_path / "idx", ["0", "1", "3"])
    by_wnid = _imagenet_folder(tmp_path / "wnid", [imagenet_wnids()[i] for i in (0, 1, 3)])
    frames = {}
    for name, folder in (("idx", by_index), ("wnid", by_wnid)):
        frames[name] = evaluate([cnn["lora"], cnn["linear"]], tmp_path / f"res-{name}", quick=True,
                                shifts=["imagenet-accuracy"], imagenet=str(folder), progress=False)
    f = frames["idx"]
    assert set(f.evaluation) == {"imagenet-accuracy"}
    handle, _, _ = load_run(cnn["lora"])
    table = load_images(read_imagenet_folder(by_index), handle.image_size)
    assert table["image"].shape == (18, 32, 32, 3) and sorted(set(table["label"])) == [0, 1, 3]
    with torch.no_grad():
        pred = handle.pretrained_logits(handle.preprocess(table)).argmax(1).numpy()
    acc = _v(f, "tiny-cnn-lora", "imagenet-accuracy", f.loc[0, "shift"], "accuracy")
    assert acc == pytest.approx((pred == table["label"]).mean())
    shift = f.loc[0, "shift"]
    assert _v(f, "tiny-cnn-linear", "imagenet-accuracy", shift, "forgetting") == 0
    assert _v(f, "tiny-cnn-linear", "imagenet-accuracy", shift, "base_accuracy") == \
        _v(f, "tiny-cnn-lora", "imagenet-accuracy", shift, "base_accuracy")
    cols = ["metric", "value"]
    assert frames["idx"][cols].equals(frames["wnid"][cols])


@pytest.mark.parametrize("layout, match", [
    (None, "does not exist"),
    ({"cats": 1}, "WordNet IDs"),
    ({"1000": 1}, "WordNet IDs"),
    ({"0": 0}, "no images"),
    ({"0": "broken"}, "cannot read image"),
])
def test_imagenet_folder_bad_input(cnn, tmp_path, layout, match):
    from robustfeat.errors import RobustfeatError

    root = tmp_path / "folder"
    if layout is not None:
        for name, n in layout.items():
            (root / name).mkdir(parents=True)
            if n == "broken":
                (root / name / "x.jpg").write_bytes(b"not a jpeg")
            else:
                for i in range(n):
                    (root / name / f"{i}.png").write_bytes(b"")
    out = tmp_path / "res"
    with pytest.raises(RobustfeatError, match=match):
        evaluate([cnn["lora"]], out, quick=True, shifts=["imagenet-accuracy"], imagenet=str(root), progress=False)


def test_a_reference_of_other_data_or_size_is_refused_and_never_picked(cnn, tmp_path, capsys):
    """mCE divides by the reference's errors: a reference of another dataset (the audit's MNIST
    checkpoint against a Fashion-MNIST one printed mCE 1.009) or image size is refused with one
    line naming what differs, and the default pick skips it; nothing is written."""
    from robustfeat.cli import main

    other_data = _train(tmp_path, "tiny-cnn", "digits", "linear", image_size=32)
    other_size = _train(tmp_path / "s40", "tiny-cnn", "mnist-5k", "linear", image_size=40)
    for ref, what in ((other_data, "data mnist-5k vs digits"), (other_size, "image size 32 vs 40")):
        out = tmp_path / f"o-{ref.parent.name}-{ref.name}"
        code = main(["evaluate", str(cnn["lora"]), "--reference", str(ref), "--quick", "--no-progress", "--shifts",
                     "fog", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and what in err[0] and "cannot normalise" in err[0], err
        assert not out.exists()
    # the default pick: a linear checkpoint of the same data but another image size is not the reference
    frame = evaluate([cnn["lora"], other_size], tmp_path / "default", quick=True, shifts=["fog"], progress=False)
    lora = frame[frame.checkpoint.str.startswith("tiny-cnn-lora")]
    assert not (lora.metric == "mce").any() and set(lora.reference) == {""}
    linear = frame[frame.checkpoint.str.startswith("tiny-cnn-linear") & (frame.metric == "mce")]
    assert len(linear) == 1 and linear.reference.iloc[0] == linear.checkpoint.iloc[0]  # its own reference only


def test_the_cli_table_shows_a_dash_never_nan(cnn, quick, capsys):
    from robustfeat.cli import main

    out, frame = quick
    assert frame.value.isna().any()  # e.g. an undefined relative mCE of the tiny models
    assert main(["evaluate", str(cnn["lora"]), str(cnn["linear"]), "--quick", "--no-progress",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    import re

    table = printed.split("result rows in")[0]
    assert not re.search(r"\bnan\b", table.lower()) and " - " in table and "ID acc" in table, table


def test_one_overall_progress_bar_over_every_checkpoint(cnn, tmp_path, capsys):
    """One bar for the whole evaluation: its total is every cell of every checkpoint from
    the start (so its ETA covers the run), and the linear probe shows steps inside its cell."""
    from robustfeat.cli import main

    assert main(["evaluate", str(cnn["lora"]), str(cnn["vefa"]), "--quick", "--shifts", "clean,fog,linear-probe",
                 "--out", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    totals = {int(m) for m in __import__("re").findall(r"evaluate 2 checkpoints: +\d+%\|[^|]*\| *\d+/(\d+)", err)}
    # per checkpoint: clean, the uncorrupted cell and fog at 3 severities, the probe = 6 cells
    assert totals == {12}, err[-2000:]
    assert "linear probe" in err and "fine-tuned features" in err
