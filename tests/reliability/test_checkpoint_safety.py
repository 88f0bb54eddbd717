"""Checkpoint safety: a crafted pickle that would write a file when unpickled is offered as
a checkpoint in every place one is accepted, through the CLI (in a real process) and the
Python API; every attempt fails with an error and the file is never written."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys

import pytest

from robustfeat.errors import RobustfeatError

FORMS = ["folder-with-bin", "safetensors-that-is-a-pickle", "single-pt-file", "torch-zip-as-safetensors"]


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _write_pickle(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"weight": _Evil(marker)}, f, protocol=4)


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    from robustfeat.train import TrainConfig, finetune

    out = tmp_path_factory.mktemp("real") / "lora"
    finetune(TrainConfig(model="tiny-cnn", data="mnist-5k", method="lora", image_size=32, max_examples=64,
                         max_eval_examples=32, checkpoint_every=100), out, progress=False)
    return out


def _evil(form, real, tmp_path):
    """A checkpoint-shaped thing whose weights are a malicious pickle, and the marker file
    the pickle would write."""
    marker = tmp_path / f"PWNED-{form}"
    if form == "single-pt-file":
        path = tmp_path / "model.pt"
        _write_pickle(path, marker)
        return path, marker
    path = tmp_path / form
    shutil.copytree(real, path)
    (path / "adapter_model.safetensors").unlink()
    if form == "folder-with-bin":
        _write_pickle(path / "adapter_model.bin", marker)
    elif form == "safetensors-that-is-a-pickle":
        _write_pickle(path / "adapter_model.safetensors", marker)
    else:  # torch.save's zip container around the same pickle
        import torch

        torch.save({"weight": _Evil(marker)}, path / "adapter_model.safetensors")
    return path, marker


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "robustfeat", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


ENTRY_POINTS = ["cli-info", "cli-evaluate", "cli-evaluate-reference", "api-load-adapters", "api-read-checkpoint",
                "api-load-run", "api-evaluate", "api-evaluate-reference"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_malicious_pickle_never_runs(real_checkpoint, tmp_path, form, entry):
    import robustfeat as rf
    from robustfeat.adapters.checkpoint import read_checkpoint
    from robustfeat.evaluations.runner import evaluate
    from robustfeat.train.loop import load_run

    evil, marker = _evil(form, real_checkpoint, tmp_path)
    out = tmp_path / "results"
    if entry.startswith("cli"):
        args = {"cli-info": ["info", evil],
                "cli-evaluate": ["evaluate", evil, "--quick", "--out", out],
                "cli-evaluate-reference": ["evaluate", real_checkpoint, "--quick", "--reference", evil, "--out", out]}
        r = _cli(*args[entry])
        assert r.returncode == 2, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    else:
        calls = {
            "api-load-adapters": lambda: rf.load_adapters(__import__("torch").nn.Linear(2, 2), evil),
            "api-read-checkpoint": lambda: read_checkpoint(evil),
            "api-load-run": lambda: load_run(evil),
            "api-evaluate": lambda: evaluate([evil], out, quick=True, progress=False),
            "api-evaluate-reference": lambda: evaluate([real_checkpoint], out, quick=True, reference=str(evil),
                                                       progress=False),
        }
        with pytest.raises(RobustfeatError):
            calls[entry]()
    assert not marker.exists(), f"{entry} unpickled {form}"


def test_the_planted_pickle_is_live(tmp_path):
    """The check above means something: unpickling the planted file does write the marker."""
    marker = tmp_path / "PWNED"
    _write_pickle(tmp_path / "x.pkl", marker)
    with open(tmp_path / "x.pkl", "rb") as f:
        pickle.load(f)  # noqa: S301 - deliberately, on our own crafted file
    assert marker.read_text() == "pwned"
