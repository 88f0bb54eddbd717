"""`robustfeat finetune`: checkpoints that reload to the same score, bit-for-bit
determinism, resuming, refusing to overwrite, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from robustfeat.train import TrainConfig, finetune, load_run, validation_score
from robustfeat.train.loop import TrainingError
from robustfeat.train.state import STATE_DIR
from tests.models import write_image_folder

TINY = [  # (model, dataset) per family
    ("tiny-bert", "rotten-tomatoes"),
    ("tiny-gpt2", "news-text"),
    ("tiny-cnn", "mnist-5k"),
]


def cfg(model="tiny-bert", data="rotten-tomatoes", method="lora", **kw) -> TrainConfig:
    base = dict(max_examples=64, max_eval_examples=48, batch_size=16, epochs=1.0, checkpoint_every=2, image_size=16)
    base.update(kw)
    if not model.startswith("tiny-cnn") and "image_size" not in kw:
        base.pop("image_size")
    return TrainConfig(model=model, data=data, method=method, **base)


def files(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


@pytest.mark.parametrize("model,data", TINY, ids=[m for m, _ in TINY])
@pytest.mark.parametrize("method", ["lora", "lorfa", "vefa"])
def test_checkpoint_reloads_to_the_same_score(tmp_path, model, data, method):
    result = finetune(cfg(model, data, method), tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "robustfeat.json"]
    record = json.loads((tmp_path / "run" / "robustfeat.json").read_text())
    assert record["validation"]["value"] == result.value and len(record["curve"]) == result.steps
    assert record["data"]["fingerprint"] and record["git_revision"] and record["versions"]["torch"]
    handle, data_bundle, _ = load_run(tmp_path / "run")
    assert validation_score(handle, data_bundle["validation"])[1] == result.value  # exactly


def test_loss_falls_on_a_learnable_task(tmp_path):
    result = finetune(cfg("tiny-cnn", "mnist-5k", "full", max_examples=256, epochs=5, lr=1e-2, batch_size=16),
                      tmp_path / "run", progress=False)
    losses = [c["loss"] for c in result.record["curve"]]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.05


def test_same_seed_same_checkpoint_bit_for_bit(tmp_path):
    a = finetune(cfg(method="lorfa", dropout=0.1), tmp_path / "a", progress=False)
    b = finetune(cfg(method="lorfa", dropout=0.1), tmp_path / "b", progress=False)
    assert files(tmp_path / "a")["adapter_model.safetensors"] == files(tmp_path / "b")["adapter_model.safetensors"]
    assert a.record["curve"] == b.record["curve"]
    c = finetune(cfg(method="lorfa", dropout=0.1, seed=1), tmp_path / "c", progress=False)
    assert files(tmp_path / "c")["adapter_model.safetensors"] != files(tmp_path / "a")["adapter_model.safetensors"]


@pytest.mark.parametrize("model,data", TINY[:1] + TINY[2:], ids=["text", "image"])
def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, model, data):
    config = cfg(model, data, "lora", dropout=0.1, epochs=2.0)
    whole = finetune(config, tmp_path / "whole", progress=False)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, tmp_path / "cut", progress=False, stop_after=3)
    assert (tmp_path / "cut" / STATE_DIR).is_dir() and not (tmp_path / "cut" / "robustfeat.json").exists()
    resumed = finetune(config, tmp_path / "cut", progress=False)
    assert resumed.resumed_from == 3 and resumed.value == whole.value
    assert files(tmp_path / "cut")["adapter_model.safetensors"] == files(tmp_path / "whole")["adapter_model.safetensors"]
    assert not (tmp_path / "cut" / STATE_DIR).exists()


def test_finished_runs_are_never_overwritten_silently(tmp_path):
    finetune(cfg(), tmp_path / "run", progress=False)
    before = files(tmp_path / "run")
    with pytest.raises(TrainingError, match="already holds a finished checkpoint"):
        finetune(cfg(method="vefa"), tmp_path / "run", progress=False)
    assert files(tmp_path / "run") == before
    # the same command again (say after a kill right at the end) is a no-op that reports the run
    again = finetune(cfg(), tmp_path / "run", progress=False)
    assert files(tmp_path / "run") == before and again.record["config"] == cfg().to_dict()
    finetune(cfg(method="vefa"), tmp_path / "run", progress=False, overwrite=True)
    assert json.loads((tmp_path / "run" / "robustfeat.json").read_text())["config"]["method"] == "vefa"


def test_interrupted_run_with_other_config_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg(), tmp_path / "run", progress=False, stop_after=2)
    with pytest.raises(TrainingError, match="different configuration"):
        finetune(cfg(method="vefa"), tmp_path / "run", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not a robustfeat run"):
        finetune(cfg(), tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_divergence_is_reported(tmp_path):
    with pytest.raises(TrainingError, match="loss became"):
        finetune(cfg(method="full", lr=1e6), tmp_path / "run", progress=False)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "robustfeat", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--model", "tiny-bart", "--data", "rotten-tomatoes"], "Did you mean 'tiny-bert'"),
        (["--model", "tiny-bert", "--data", "rotten-tomatos"], "Did you mean 'rotten-tomatoes'"),
        (["--model", "tiny-bert", "--data", "rotten-tomatoes", "--rank", "4", "--method", "vefa"], "no effect"),
        (["--model", "tiny-bert", "--data", "rotten-tomatoes", "--rank", "0"], "rank must be a positive"),
        (["--model", "tiny-cnn", "--data", "rotten-tomatoes"], "cannot learn dataset"),
        (["--model", "tiny-bert", "--data", "{tmp}/nolabel.csv"], "has no labels"),
        (["--model", "tiny-bert", "--data", "{tmp}/notext.csv"], "no text column"),
        (["--model", "tiny-bert", "--data", "{tmp}/empty.csv"], "is empty"),
        (["--model", "tiny-cnn", "--data", "{tmp}/tiny_images"], "too small"),
        (["--model", "tiny-bert", "--data", "rotten-tomatoes", "--epochs", "0"], "epochs must be"),
        (["--model", "tiny-bert", "--data", "rotten-tomatoes", "--device", "tpu:9"], "unknown device"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, extra, match):
    (tmp_path / "nolabel.csv").write_text("text\n" + "".join(f"line {i}\n" for i in range(20)))
    (tmp_path / "notext.csv").write_text("body,label\na,1\nb,0\n")
    (tmp_path / "empty.csv").write_text("text,label\n")
    write_image_folder(tmp_path / "tiny_images", ("a", "b"), 10, (4, 4, 3))
    args = ["finetune", "--method", "lora", "--out", str(tmp_path / "out"), "--max-examples", "16", "--no-progress"]
    args += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    if args.count("--method") == 2:
        i = args.index("--method")
        del args[i:i + 2]
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert not (tmp_path / "out" / "robustfeat.json").exists()


def test_cli_finetune_end_to_end(tmp_path):
    proc = _cli("finetune", "--model", "tiny-bert", "--data", "rotten-tomatoes", "--method", "vefa",
                "--max-examples", "32", "--max-eval-examples", "32", "--out", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "validation accuracy" in proc.stdout and (tmp_path / "run" / "robustfeat.json").exists()
    info = _cli("info", str(tmp_path / "run"))
    assert info.returncode == 0 and "vefa" in info.stdout


def test_data_prepare_cli(tmp_path):
    env_cache = {"ROBUSTFEAT_CACHE": str(tmp_path / "cache")}
    import os

    proc = subprocess.run([sys.executable, "-m", "robustfeat", "data", "prepare", "digits", "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, **env_cache})
    assert proc.returncode == 0, proc.stderr
    assert "digits: cached in" in proc.stdout and "train" in proc.stdout


def test_uses_a_gpu_when_present_and_cpu_otherwise():
    from robustfeat.environment import pick_device

    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("method,changes", [("lora", False), ("full", True)])
def test_frozen_batchnorm_keeps_its_statistics(tmp_path, method, changes):
    from robustfeat.models import load_model

    before = load_model("tiny-cnn", num_labels=10, image_size=16).model.net.bn.running_mean.clone()
    finetune(cfg("tiny-cnn", "mnist-5k", method), tmp_path / "run", progress=False)
    from safetensors.torch import load_file

    after = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))["net.bn.running_mean"]
    assert (not torch.equal(before, after)) == changes


def test_out_of_disk_during_finetune_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from robustfeat.cli import main

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run"))

    monkeypatch.setattr("robustfeat.train.loop.save_state", full)
    rc = main(["finetune", "--model", "tiny-bert", "--data", "rotten-tomatoes", "--method", "lora",
               "--max-examples", "32", "--checkpoint-every", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "out of disk space" in err[0]
    assert not (tmp_path / "run" / "robustfeat.json").exists()


def test_seed_range_and_missing_gpu():
    from robustfeat.environment import pick_device
    from robustfeat.errors import ConfigError, DeviceError

    with pytest.raises(ConfigError, match="seed"):
        cfg(seed=-1)
    if not torch.cuda.is_available():  # on a GPU machine the device exists: nothing to refuse
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(DeviceError, match="not supported"):
        pick_device("meta")


def test_resume_refuses_changed_data(tmp_path):
    rows = ["text,label"] + [f"review {i},{i % 2}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    config = cfg(data=str(tmp_path / "d.csv"), max_examples=None)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, tmp_path / "run", progress=False, stop_after=1)
    flipped = ["text,label"] + [f"review {i},{1 - i % 2}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(flipped))
    with pytest.raises(TrainingError, match="data changed"):
        finetune(config, tmp_path / "run", progress=False)


def test_interrupted_overwrite_resumes(tmp_path):
    finetune(cfg(), tmp_path / "run", progress=False)
    with pytest.raises(KeyboardInterrupt):
        finetune(cfg(method="vefa"), tmp_path / "run", progress=False, overwrite=True, stop_after=2)
    again = finetune(cfg(method="vefa"), tmp_path / "run", progress=False, overwrite=True)
    assert again.resumed_from == 2


def test_two_runs_into_one_folder_are_refused(tmp_path):
    from robustfeat.errors import RobustfeatError
    from robustfeat.locks import locked

    out = (tmp_path / "run").absolute()
    with locked(out.parent / f".{out.name}.lock", "x", wait=False):
        with pytest.raises(RobustfeatError, match="another robustfeat process"):
            finetune(cfg(), out, progress=False)


def test_unlabelled_text_trains_a_causal_lm(tmp_path):
    (tmp_path / "t.csv").write_text("text\n" + "".join(f"some generic text number {i}\n" for i in range(40)))
    result = finetune(cfg("tiny-gpt2", str(tmp_path / "t.csv"), "lora", max_examples=None), tmp_path / "run",
                      progress=False)
    assert result.metric == "perplexity"
