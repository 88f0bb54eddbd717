"""Checkpoint safety: a crafted pickle that writes a marker file when unpickled is planted in
every pickle-based form (raw pickles of protocols 0 to 5; torch.save's zip, legacy and tar
formats; named ``adapter_model.safetensors``, ``adapter_model.bin`` or ``model.pt``) and
offered in every place a checkpoint is accepted, through the CLI (real processes) and the
Python API. Each attempt is refused *as a pickle*: the message says it is a pickle-based
checkpoint, names the file and the form found in its bytes, and says how to convert it; the
marker is never written. The same planted files, unpickled on purpose here, do write it, so
the refusals are what keeps them from running."""

from __future__ import annotations

import io
import pickle
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from robustfeat.errors import PickleCheckpointError


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _raw(protocol):
    def write(path, marker):
        with open(path, "wb") as f:
            pickle.dump({"weight": _Evil(marker)}, f, protocol=protocol)
    return write


def _torch_zip(path, marker):
    torch.save({"weight": _Evil(marker)}, path)


def _torch_legacy(path, marker):
    torch.save({"weight": _Evil(marker)}, path, _use_new_zipfile_serialization=False)


def _torch_tar(path, marker):
    """torch.save's oldest format, which torch.load still reads: a tar of pickles; the
    payload sits in ``storages``, the first member torch.load unpickles."""
    members = {"sys_info": pickle.dumps({"protocol_version": 1000}, protocol=2),
               "pickle": pickle.dumps({"weight": None}, protocol=2),
               "storages": pickle.dumps(_Evil(marker), protocol=2),
               "tensors": pickle.dumps(0, protocol=2)}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


# form: (in a checkpoint folder or a bare file, the file's name, its writer, what the refusal
# must call it, how it is unpickled on purpose)
FORMS = {
    "bin-in-folder": ("folder", "adapter_model.bin", _raw(4), "a pickle, protocol 4", "pickle"),
    "pickle-p0-as-safetensors": ("folder", "adapter_model.safetensors", _raw(0), "a pickle, protocol 0 or 1", "pickle"),
    "pickle-p1-as-safetensors": ("folder", "adapter_model.safetensors", _raw(1), "a pickle, protocol 0 or 1", "pickle"),
    "pickle-p3-as-safetensors": ("folder", "adapter_model.safetensors", _raw(3), "a pickle, protocol 3", "pickle"),
    "pickle-p5-as-safetensors": ("folder", "adapter_model.safetensors", _raw(5), "a pickle, protocol 5", "pickle"),
    "torch-zip-as-safetensors": ("folder", "adapter_model.safetensors", _torch_zip, "torch.save zip archive", "torch"),
    "torch-legacy-as-safetensors": ("folder", "adapter_model.safetensors", _torch_legacy, "legacy torch.save file",
                                    "torch"),
    "torch-tar-as-safetensors": ("folder", "adapter_model.safetensors", _torch_tar, "torch.save tar archive", "torch"),
    "bare-pt-file": ("file", "model.pt", _torch_zip, "torch.save zip archive", "torch"),
    "bare-pickle-named-safetensors": ("file", "adapter_model.safetensors", _raw(2), "a pickle, protocol 2", "pickle"),
}
REFUSAL = re.compile(r"'(?P<file>[^']+)' is a pickle-based checkpoint \((?P<kind>.*?)\); robustfeat never "
                     r"unpickles files .* Convert it to safetensors")


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    from robustfeat.train import TrainConfig, finetune

    out = tmp_path_factory.mktemp("real") / "lora"
    finetune(TrainConfig(model="tiny-cnn", data="mnist-5k", method="lora", image_size=32, max_examples=64,
                         max_eval_examples=32, checkpoint_every=100), out, progress=False)
    return out


def _evil(form, real, tmp_path):
    """(what to offer as a checkpoint, the planted file, the marker its pickle would write)."""
    where, name, write, _, _ = FORMS[form]
    marker = tmp_path / f"PWNED-{form}"
    if where == "file":
        path = tmp_path / name
        write(path, marker)
        return path, path, marker
    path = tmp_path / form
    shutil.copytree(real, path)
    (path / "adapter_model.safetensors").unlink()
    write(path / name, marker)
    return path, path / name, marker


def _assert_refused_as_pickle(message, form, planted):
    m = REFUSAL.search(message)
    assert m, f"{form} was not refused as a pickle: {message!r}"
    assert m["file"].endswith(str(planted.relative_to(planted.parents[1]))), m["file"]
    assert FORMS[form][3] in m["kind"], f"{form} refused as {m['kind']!r}, not as {FORMS[form][3]!r}"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "robustfeat", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


ENTRY_POINTS = ["cli-info", "cli-evaluate", "cli-evaluate-reference", "api-load-adapters", "api-read-checkpoint",
                "api-checkpoint-info", "api-load-run", "api-evaluate", "api-evaluate-reference"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_malicious_pickle_is_refused_as_one(real_checkpoint, tmp_path, form, entry):
    import robustfeat as rf
    from robustfeat.adapters.checkpoint import checkpoint_info, read_checkpoint
    from robustfeat.evaluations.runner import evaluate
    from robustfeat.train.loop import load_run

    evil, planted, marker = _evil(form, real_checkpoint, tmp_path)
    out = tmp_path / "results"
    if entry.startswith("cli"):
        args = {"cli-info": ["info", evil],
                "cli-evaluate": ["evaluate", evil, "--quick", "--out", out],
                "cli-evaluate-reference": ["evaluate", real_checkpoint, "--quick", "--reference", evil, "--out", out]}
        r = _cli(*args[entry])
        assert r.returncode == 2, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        _assert_refused_as_pickle(r.stderr, form, planted)
    else:
        calls = {
            "api-load-adapters": lambda: rf.load_adapters(torch.nn.Linear(2, 2), evil),
            "api-read-checkpoint": lambda: read_checkpoint(evil),
            "api-checkpoint-info": lambda: checkpoint_info(evil),
            "api-load-run": lambda: load_run(evil),
            "api-evaluate": lambda: evaluate([evil], out, quick=True, progress=False),
            "api-evaluate-reference": lambda: evaluate([real_checkpoint], out, quick=True, reference=str(evil),
                                                       progress=False),
        }
        with pytest.raises(PickleCheckpointError) as e:
            calls[entry]()
        _assert_refused_as_pickle(str(e.value), form, planted)
    assert not marker.exists(), f"{entry} unpickled {form}"
    assert not out.exists(), f"{entry} started work on {form} before refusing it"


@pytest.mark.parametrize("form", FORMS)
def test_each_planted_payload_is_live(real_checkpoint, tmp_path, form):
    """The refusals above mean something: the very file planted for each form, unpickled on
    purpose (pickle.load, or torch.load without weights_only), writes its marker. (torch.load
    is given the open file: from a name ending in .safetensors it would read safetensors.)"""
    _, planted, marker = _evil(form, real_checkpoint, tmp_path)
    assert not marker.exists()
    with open(planted, "rb") as f:
        if FORMS[form][4] == "pickle":
            pickle.load(f)  # noqa: S301 - deliberately, on our own crafted file
        else:
            try:
                torch.load(f, weights_only=False)  # noqa: S614 - deliberately, on our own crafted file
            except TypeError:  # the tar form: torch.load fails on what the payload returned, after it ran
                assert form == "torch-tar-as-safetensors"
    assert marker.read_text() == "pwned", f"the {form} payload did not run when unpickled"


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json", "robustfeat.json", "weights",
                                  "notes.txt"])
@pytest.mark.parametrize("form", [f for f in FORMS if f != "bin-in-folder"] + ["pickle-p4"])
def test_the_bytes_decide_whatever_the_name(tmp_path, form, name):
    """Every form is refused as a pickle under any name, given as a file or planted in a
    folder with otherwise valid files (the file robustfeat reads, or any file when the folder
    has no weights)."""
    from robustfeat.adapters.checkpoint import pickle_kind, refuse_pickle

    write, kind = (_raw(4), "a pickle, protocol 4") if form == "pickle-p4" else (FORMS[form][2], FORMS[form][3])
    marker = tmp_path / "PWNED"
    f = tmp_path / "ck" / name
    f.parent.mkdir()
    write(f, marker)
    assert kind in pickle_kind(f)
    for target in (f, f.parent):
        with pytest.raises(PickleCheckpointError, match=re.escape(kind)):
            refuse_pickle(target)
    assert not marker.exists()


def test_a_pickle_planted_beside_valid_weights_is_refused(real_checkpoint, tmp_path):
    """The adapter config and run record are sniffed too, even when the weights are fine."""
    from robustfeat.adapters.checkpoint import read_checkpoint

    for name in ("adapter_config.json", "robustfeat.json"):
        path = tmp_path / f"planted-{name}"
        shutil.copytree(real_checkpoint, path)
        _raw(0)(path / name, tmp_path / "PWNED")
        with pytest.raises(PickleCheckpointError, match=re.escape(name)):
            read_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_pickle_in_the_resume_state_is_refused(tmp_path):
    """Resuming an interrupted run reads its state folder through the same check."""
    from robustfeat.train.state import STATE_DIR, load_state, save_state

    w = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([w])
    save_state(tmp_path, {"w": w}, opt, {"step": 1, "curve": [], "elapsed": 0.0})
    _torch_zip(tmp_path / STATE_DIR / "model.safetensors", tmp_path / "PWNED")
    with pytest.raises(PickleCheckpointError, match="torch.save zip archive"):
        load_state(tmp_path, {"w": w}, opt)
    assert not (tmp_path / "PWNED").exists()


def test_safe_files_are_not_taken_for_pickles(real_checkpoint, tmp_path):
    """No false alarms: the real checkpoint's files, JSON, text, a numpy archive, and a
    safetensors file whose header length happens to start with the bytes of a protocol 2
    pickle (0x80 0x02: a 640-byte header)."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    from robustfeat.adapters.checkpoint import pickle_kind, read_checkpoint, refuse_pickle

    refuse_pickle(real_checkpoint)
    read_checkpoint(real_checkpoint)
    for f in real_checkpoint.rglob("*"):
        if f.is_file():
            assert pickle_kind(f) is None, f
    st = tmp_path / "odd.safetensors"
    for pad in range(700):
        save_file({"w": torch.arange(4.0)}, str(st), metadata={"pad": "x" * pad})
        if st.read_bytes()[:2] == b"\x80\x02":
            break
    assert st.read_bytes()[:2] == b"\x80\x02"
    assert pickle_kind(st) is None and torch.equal(load_file(str(st))["w"], torch.arange(4.0))
    (tmp_path / "a.json").write_text('{"a": [1, 2]}\n')
    (tmp_path / "notes.txt").write_text("(see the README.)\ncheckpoint saved\n")
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))
    for name in ("a.json", "notes.txt", "arrays.npz"):
        assert pickle_kind(tmp_path / name) is None, name
