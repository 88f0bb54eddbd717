"""One table of bad input over every command. Each case must exit with code 2 and one
clear line on stderr (no traceback), and leave the whole tree it ran in exactly as it was:
every file byte-identical (a checkpoint, a results folder, a report, a sweep folder, an
interrupted run) and nothing created, no lock file and no empty or half-made folder. The
tree is compared before and after each case."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real things that bad input must not damage, and malformed things to feed it."""
    from PIL import Image
    from safetensors.numpy import load_file, save_file

    from robustfeat.report import build_report
    from robustfeat.evaluations.runner import evaluate
    from robustfeat.sweep import sweep
    from robustfeat.train import TrainConfig, finetune

    root = tmp_path_factory.mktemp("world")
    ckpt = root / "ckpt"
    finetune(TrainConfig(model="tiny-cnn", data="mnist-5k", method="lora", image_size=32, max_examples=64,
                         max_eval_examples=32, checkpoint_every=100), ckpt, progress=False)
    results = root / "results"
    evaluate([ckpt], results, quick=True, shifts=["clean", "fog"], progress=False)
    report = build_report([results], root / "report.html")
    grid = root / "grid.yaml"
    grid.write_text(yaml.safe_dump({"models": ["tiny-cnn"], "datasets": ["mnist-5k"], "methods": ["vefa"], "seeds": [0],
                                    "train": {"image_size": 32, "max_examples": 64, "max_eval_examples": 32},
                                    "evaluate": {"quick": True, "shifts": ["clean"]}}))
    sweep(grid, root / "sweep", report=False, progress=False)

    bad = root / "bad"
    bad.mkdir()
    nan = bad / "nan-ckpt"
    shutil.copytree(ckpt, nan)
    tensors = load_file(str(nan / "adapter_model.safetensors"))
    first = sorted(tensors)[0]
    tensors[first] = np.full_like(tensors[first], np.nan)
    save_file(tensors, str(nan / "adapter_model.safetensors"))
    trunc = bad / "truncated-ckpt"
    shutil.copytree(ckpt, trunc)
    data = (trunc / "adapter_model.safetensors").read_bytes()
    (trunc / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    (bad / "empty.csv").write_text("text,label\n")
    (bad / "nolabel.csv").write_text("text,stars\ngood,5\nbad,1\n")
    (bad / "extra-field.csv").write_text("text,label\n" + "".join(f"film {i},{i % 2}\n" for i in range(20))
                                         + "good, not great,1\n")
    tiny_images = bad / "tiny-images"
    for c in ("a", "b"):
        (tiny_images / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((3, 3, 3), dtype=np.uint8)).save(tiny_images / c / f"{i}.png")
    other = bad / "other-version"
    shutil.copytree(results, other)
    meta = json.loads((other / "results.json").read_text())
    meta["bank"] = "image-v0-quick"
    (other / "results.json").write_text(json.dumps(meta))
    broken = bad / "broken-results"
    shutil.copytree(results, broken)
    (broken / "results.csv").write_text("checkpoint,method\nx")
    foreign = bad / "foreign-results"
    shutil.copytree(results, foreign)
    (foreign / "results.json").write_text(json.dumps({"format": "something-else"}))
    (bad / "bad.yaml").write_text("models: [tiny-cnn\n")
    (bad / "oneclass.csv").write_text("text,label\n" + "".join(f"a good film {i},pos\n" for i in range(30)))
    # an interrupted run whose data changed since it started
    (bad / "reviews.csv").write_text("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(60)))
    with pytest.raises(KeyboardInterrupt):
        finetune(TrainConfig(model="tiny-bert", data=str(bad / "reviews.csv"), method="lora", epochs=2), bad / "interrupted",
                 progress=False, stop_after=2)
    (bad / "reviews.csv").write_text("text,label\n" + "".join(f"review {i},{1 - i % 2}\n" for i in range(60)))
    for name, evaluate_doc in (("fogg", {"quick": True, "shifts": ["fogg"]}),
                               ("nocolumn", {"quick": True, "shifts": ["fog"], "domain_column": "nope"})):
        (bad / f"grid-{name}.yaml").write_text(yaml.safe_dump({
            "models": ["tiny-cnn"], "datasets": ["mnist-5k"], "methods": ["lora", "vefa"], "seeds": [0],
            "train": {"image_size": 32, "max_examples": 64, "max_eval_examples": 32}, "evaluate": evaluate_doc}))
    (bad / "a-file").write_text("precious")
    # checkpoints made elsewhere: a PEFT adapter over a local transformers folder, and broken variants
    peft = _made_elsewhere(root, bad)
    return {"peft": peft, "root": root, "ckpt": ckpt, "results": results, "report": report, "grid": grid, "sweep": root / "sweep",
            "bad": bad, "nan": nan, "trunc": trunc, "tiny_images": tiny_images, "other": other, "broken": broken,
            "foreign": foreign}


def _made_elsewhere(root: Path, bad: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, BertConfig, BertForSequenceClassification

    from robustfeat.models.tiny import char_tokenizer
    from robustfeat.train import TrainConfig, finetune

    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=130, num_labels=2)
    for name, config in (("hf-base", cfg), ("wide-base", BertConfig(**{**cfg.to_dict(), "hidden_size": 48}))):
        BertForSequenceClassification(config).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    peft = root / "peft"
    get_peft_model(BertForSequenceClassification.from_pretrained(root / "hf-base"),
                   LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])).save_pretrained(peft)
    for name, change in (("peft-nobase", {"base_model_name_or_path": "org/not-here"}),
                         ("peft-unknown", {"peft_type": "NOT_A_TUNER"})):
        shutil.copytree(peft, bad / name)
        doc = json.loads((bad / name / "adapter_config.json").read_text())
        (bad / name / "adapter_config.json").write_text(json.dumps({**doc, **change}))
    (bad / "three.csv").write_text("text,label\n" + "".join(f"text {i},{i % 3}\n" for i in range(60)))
    pickled = bad / "pickled-hf"
    pickled.mkdir()
    AutoConfig.from_pretrained(root / "hf-base").save_pretrained(pickled)
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")
    # a run whose base (a local folder) is gone
    shutil.copytree(root / "hf-base", bad / "gone-base")
    finetune(TrainConfig(model=str(bad / "gone-base"), data=str(bad / "three.csv"), method="lora", max_examples=16,
                         max_eval_examples=8), bad / "gone-run", progress=False)
    shutil.rmtree(bad / "gone-base")
    # broken files made elsewhere, a base of another family, and a run with no PEFT form (vefa with a shift)
    shutil.copytree(peft, bad / "peft-truncated")
    weights = bad / "peft-truncated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (bad / "badjson-hf").mkdir()
    (bad / "badjson-hf" / "config.json").write_text("{not json")
    (bad / "badjson-hf" / "model.safetensors").write_bytes(b"junk")
    from transformers import ViTConfig, ViTForImageClassification

    ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=48)).save_pretrained(root / "vit")
    finetune(TrainConfig(model="tiny-bert", data=str(bad / "three.csv"), method="vefa", shift=True, max_examples=16,
                         max_eval_examples=8), bad / "vefa-shift", progress=False)
    return peft


def cases(w):
    b, ck, res = w["bad"], w["ckpt"], w["results"]
    out = b / "new-out"
    return [
        # ls, info, data
        (["ls", "modles"], "invalid choice: 'modles'"),
        (["info", b / "nope"], "does not exist"),
        (["info", b / "a-file"], "is a file"),
        (["info", w["nan"]], "NaN or inf"),
        (["info", w["trunc"]], "truncated or corrupt"),
        (["data", "prepare", "mnist-6k"], "mnist-5k"),
        (["data", "prepare", b / "nope.csv"], "file not found:"),
        (["data", "prepare", "digits", "--label-column", "y"], "--label-column is for files"),
        (["data", "prepare", b / "extra-field.csv"], "line 22 has 3 fields but the header has 2"),
        # finetune
        (["finetune", "--model", "tiny-cnnn", "--data", "mnist-5k", "--method", "lora", "--out", out], "tiny-cnn"),
        (["finetune", "--model", "tiny-cnn", "--data", "mnist-5k", "--method", "lorra", "--out", out], "lora"),
        (["finetune", "--model", "tiny-cnn", "--data", "mnist-5k", "--method", "lora", "--epochs", "-1", "--out", out],
         "epochs must be a positive number"),
        (["finetune", "--model", "tiny-cnn", "--data", "mnist-5k", "--method", "lora", "--epochs", "abc", "--out", out],
         "invalid float value: 'abc'"),
        (["finetune", "--model", "tiny-cnn", "--data", "mnist-5k", "--method", "lora", "--lr", "nan", "--out", out],
         "lr must be a positive number"),
        (["finetune", "--model", "tiny-cnn", "--data", "mnist-5k", "--method", "lora", "--shift", "--out", out],
         "shift"),
        (["finetune", "--model", "tiny-bert", "--data", b / "empty.csv", "--method", "lora", "--out", out], "empty"),
        (["finetune", "--model", "tiny-bert", "--data", b / "nolabel.csv", "--method", "lora", "--out", out], "label"),
        (["finetune", "--model", "tiny-bert", "--data", b / "extra-field.csv", "--method", "lora", "--out", out],
         "quote a field that contains the delimiter"),
        (["finetune", "--model", "tiny-cnn", "--data", w["tiny_images"], "--method", "lora", "--out", out],
         "too small"),
        (["finetune", "--model", "tiny-cnn", "--data", "mnist-5k", "--method", "lora", "--out", b / "a-file"],
         "not a folder"),
        (["finetune", "--model", "tiny-cnn", "--data", "mnist-5k", "--method", "vefa", "--out", ck],
         "already holds a finished checkpoint"),
        (["finetune", "--model", "tiny-bert", "--data", b / "oneclass.csv", "--method", "lora", "--out", out],
         "holds one class only ('pos')"),
        (["finetune", "--model", "tiny-bert", "--data", b / "reviews.csv", "--method", "lora", "--epochs", "2",
          "--out", b / "interrupted"], "the data changed since the interrupted run"),
        (["finetune", "--model", "tiny-cnn", "--data", "mnist-5k", "--method", "lora", "--image-size", "32",
          "--device", "cuda", "--out", b / "runs" / "new"], "cuda"),
        # evaluate
        (["evaluate", b / "nope", "--out", out], "does not exist"),
        (["evaluate", w["nan"], "--quick", "--out", out], "NaN or inf"),
        (["evaluate", w["trunc"], "--quick", "--out", out], "truncated or corrupt"),
        (["evaluate", ck, "--quick", "--out", w["other"]], "holds results of bank image-v0"),
        (["evaluate", ck, "--quick", "--batch-size", "0", "--out", out], "batch size must be positive"),
        (["evaluate", ck, "--quick", "--shifts", "fgo", "--out", out], "Did you mean 'fog'"),
        (["evaluate", ck, "--quick", "--shifts", "fogg", "--out", res], "Did you mean 'fog'"),  # an existing folder
        (["evaluate", ck, "--quick", "--shifts", "zoom_blur", "--out", res], "not part of bank image (quick)"),
        (["evaluate", ck, "--quick", "--domain-column", "nope", "--out", res], "domain column 'nope' is not a column"),
        (["evaluate", ck, "--quick", "--domain-column", "nope", "--out", out], "domain column 'nope' is not a column"),
        (["evaluate", ck, "--quick", "--device", "cuda", "--out", out], "cuda"),
        (["evaluate", ck, "--quick", "--imagenet", b / "nope", "--out", out], "--imagenet folder"),
        (["evaluate", ck, "--quick", "--out", res, "--seed", "3"], "holds results of bank"),
        # evaluate: checkpoints made elsewhere
        (["evaluate", b / "peft-nobase", "--data", b / "reviews.csv", "--out", out], "'org/not-here'"),
        (["evaluate", b / "peft-unknown", "--data", b / "reviews.csv", "--out", out], "'NOT_A_TUNER'"),
        (["evaluate", w["peft"], "--data", b / "reviews.csv", "--base", w["root"] / "wide-base", "--out", out],
         "does not fit the base"),
        (["evaluate", w["peft"], "--data", b / "three.csv", "--out", out], "has 3 labels but the head"),
        (["evaluate", w["peft"], "--out", out], "pass --data"),
        (["evaluate", w["peft"], "--data", b / "nope.csv", "--out", out], "file not found:"),
        (["evaluate", b / "pickled-hf", "--data", b / "reviews.csv", "--out", out], "pickle"),
        (["evaluate", ck, "--base", "tiny-cnn", "--out", out], "records its base"),
        (["evaluate", ck, "--data", "digits", "--out", out], "'digits' is not the data"),
        (["evaluate", b / "peft-truncated", "--data", b / "reviews.csv", "--out", out], "truncated or corrupt"),
        (["evaluate", w["peft"], "--data", b / "reviews.csv", "--base", w["root"] / "vit", "--out", out],
         "is of the image-classifier family"),
        (["info", b / "peft-truncated"], "truncated or corrupt"),
        (["info", b / "badjson-hf"], "not valid JSON"),
        (["info", b / "peft-unknown"], "'NOT_A_TUNER'"),
        # report
        (["report", b / "nope", "--out", b / "r.html"], "does not exist"),
        (["report", w["broken"], "--out", b / "r.html"], "lacks the columns"),
        (["report", w["foreign"], "--out", b / "r.html"], "not a robustfeat results file"),
        (["report", res, "--out", b / "r.docx"], "unknown report format 'docx'"),
        (["report", res, "--out", w["report"], "--format", "pdf", "--title"], "expected one argument"),
        # sweep
        (["sweep", b / "nope.yaml", "--out", out], "does not exist"),
        (["sweep", b / "bad.yaml", "--out", out], "not valid YAML"),
        (["sweep", w["grid"], "--backend", "slurm", "--out", w["sweep"]], "unknown backend 'slurm'"),
        (["sweep", w["grid"], "--address", "1.2.3.4:6379", "--out", w["sweep"]], "--address is for the ray backend"),
        (["sweep", w["grid"], "--out", b / "a-file"], "is a file"),
        (["sweep", b / "grid-fogg.yaml", "--out", out], "unknown shift 'fogg'. Did you mean 'fog'?"),
        (["sweep", b / "grid-nocolumn.yaml", "--out", out], "domain column 'nope' is not a column"),
        (["sweep", b / "grid-fogg.yaml", "--out", w["sweep"]], "unknown shift 'fogg'"),
        # export
        (["export", b / "nope", "--out", out], "does not exist"),
        (["export", ck, "--out", res], "already exists"),
        (["export", ck, "--to", "onnx", "--out", out], "invalid choice: 'onnx'"),
        (["export", b / "gone-run", "--out", out], "gone-base"),
        (["export", ck, "--to", "merged", "--out", ck, "--overwrite"], "would replace the run itself"),
        (["export", ck, "--to", "merged", "--out", w["root"], "--overwrite"], "would replace the run itself"),
        (["export", ck, "--out", b / "a-file", "--overwrite"], "is a file, not a folder"),
        (["export", ck, "--out", b / "a-file" / "sub"], "is a file, so"),
        (["export", b / "vefa-shift", "--out", b / "new-deep" / "x"], "shift"),
        # quickstart
        (["quickstart", "--out", b / "a-file"], "is a file"),
    ]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Everything under ``root``: each file's bytes and each folder (None), locks and hidden files included."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _changes(before: dict, after: dict) -> list[str]:
    return ([f"created {k}" for k in after.keys() - before.keys()] + [f"removed {k}" for k in before.keys() - after.keys()]
            + [f"changed {k}" for k in before.keys() & after.keys() if before[k] != after[k]])


def test_every_bad_input_is_one_line_and_harmless(world, capsys):
    from robustfeat.cli import main

    import torch

    table = [(a, m) for a, m in cases(world) if not ("--device" in a and torch.cuda.is_available())]
    failures = []
    for args, match in table:
        before = _tree(world["root"])
        capsys.readouterr()
        try:
            code = main([*map(str, args)])
        except SystemExit as e:  # argparse's own exit, after our one-line message
            code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        changes = _changes(before, _tree(world["root"]))
        if code != 2 or len(err) != 1 or match not in err[0] or "Traceback" in err[0] or changes:
            failures.append((args, code, err[-3:], sorted(changes)[:5]))
    assert not failures, failures
    assert len(table) >= 55


def test_the_tree_check_sees_a_stray_lock_and_a_rewrite(world):
    """The comparison the table relies on notices what a careless refusal leaves behind."""
    root = world["root"]
    before = _tree(root)
    (world["bad"] / "runs").mkdir()
    (world["bad"] / ".x.lock").write_text("")
    meta = world["results"] / "results.json"
    old = meta.read_bytes()
    meta.write_bytes(old.replace(b'"date"', b'"date" ', 1))
    try:
        changes = _changes(before, _tree(root))
    finally:
        meta.write_bytes(old)
        (world["bad"] / ".x.lock").unlink()
        (world["bad"] / "runs").rmdir()
    assert sorted(changes) == ["changed results/results.json", "created bad/.x.lock", "created bad/runs"]


def test_the_same_through_a_real_process(world):
    """One case in a real process: exit code 2, one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "robustfeat", "evaluate", str(world["nan"]), "--quick", "--out",
                        str(world["bad"] / "proc-out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "NaN or inf" in r.stderr


def test_debug_shows_the_traceback(world):
    r = subprocess.run([sys.executable, "-m", "robustfeat", "--debug", "info", str(world["nan"])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" in r.stderr
