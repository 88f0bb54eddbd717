"""Bad input gives one clear error, and leaves models and files as they were."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import robustfeat as rf
from robustfeat.errors import (
    BaseModelMismatchError,
    CheckpointError,
    ConfigError,
    RobustfeatError,
    TargetError,
    UnsupportedError,
)
from tests.models import CASES, TinyMLP, adapter_params, perturb

MLP, CNN, BERT, GPT2 = CASES


def _cfg(**kw):
    kw.setdefault("method", "lora")
    return rf.AdapterConfig(**kw)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"rank": 0}, "rank must be a positive integer"),
        ({"rank": -2}, "rank must be a positive integer"),
        ({"rank": 2.5}, "rank must be a positive integer"),
        ({"rank": True}, "rank must be a positive integer"),
        ({"alpha": 0}, "alpha must be a positive finite number"),
        ({"alpha": -1.0}, "alpha must be a positive finite number"),
        ({"alpha": float("nan")}, "alpha must be a positive finite number"),
        ({"alpha": float("inf")}, "alpha must be a positive finite number"),
        ({"dropout": 1.0}, "dropout must be a number in"),
        ({"target_modules": []}, "empty list"),
        ({"target_modules": [3]}, "target_modules must be"),
        ({"target_modules": "up[("}, "not a valid regular expression"),
        ({"shift": True}, "'shift' has no effect on method 'lora'"),
        ({"method": "vefa", "rank": 4}, "'rank' has no effect on method 'vefa'"),
        ({"method": "linear"}, "name it in modules_to_save"),
        ({"method": "full", "target_modules": ["up"]}, "adapts no layers"),
        ({"seed": "7"}, "seed must be an integer"),
        ({"method": ""}, "must be a method name"),
    ],
)
def test_bad_config_values(kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**kw)


def test_unknown_config_field():
    with pytest.raises(ConfigError, match="unknown adapter config field.*lora_rank"):
        rf.AdapterConfig.from_dict({"method": "lora", "lora_rank": 8})


def test_wrong_target_name_suggests():
    with pytest.raises(TargetError, match="no module named 'quary'.*Did you mean 'query'"):
        rf.inject_adapters(BERT.model(), _cfg(target_modules=["quary"]))


def test_wrong_modules_to_save():
    with pytest.raises(TargetError, match="modules_to_save: no module named 'classifer'"):
        rf.inject_adapters(BERT.model(), _cfg(target_modules=["query"], modules_to_save=["classifer"]))


def test_regex_matching_nothing():
    with pytest.raises(TargetError, match="matched no module path"):
        rf.inject_adapters(MLP.model(), _cfg(target_modules=r"encoder\..*"))


@pytest.mark.parametrize(
    "case,targets,error,match",
    [
        (BERT, ["LayerNorm"], TargetError, "LayerNorm, which adapters cannot wrap"),
        (BERT, ["word_embeddings"], TargetError, "Embedding, which adapters cannot wrap"),
        (BERT, ["attention"], TargetError, "cannot wrap.*Name its Linear/Conv children"),
        (CNN, ["depthwise"], UnsupportedError, r"depthwise Conv2d \(groups=16\)"),
    ],
)
def test_unsupported_layer_types(case, targets, error, match):
    model = case.model()
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(error, match=match):
        rf.inject_adapters(model, _cfg(target_modules=targets))
    assert {n: type(m) for n, m in model.named_modules()} == before  # untouched
    assert all(p.requires_grad for p in model.parameters())


def test_vera_on_conv_and_shift_on_padded_conv():
    with pytest.raises(UnsupportedError, match="supports"):
        rf.inject_adapters(CNN.model(), rf.AdapterConfig(method="vera", target_modules=["conv"]))
    with pytest.raises(UnsupportedError, match="only unpadded 1x1 convolutions"):
        rf.inject_adapters(CNN.model(), rf.AdapterConfig(method="vefa", shift=True, target_modules=["conv"]))


def test_all_conv_skips_depthwise_as_documented():
    model = CNN.model()
    rf.inject_adapters(model, _cfg(target_modules="all-conv"))
    assert rf.adapter_state(model).targets == ["stem", "conv", "project"]


def test_inject_twice_is_refused():
    model = MLP.model()
    rf.inject_adapters(model, _cfg(target_modules=["up"]))
    with pytest.raises(RobustfeatError, match="already has adapters"):
        rf.inject_adapters(model, _cfg(target_modules=["mid"]))


def test_api_without_adapters_is_clear():
    with pytest.raises(RobustfeatError, match="has no robustfeat adapters"):
        rf.merge_adapters(MLP.model())


# --- checkpoints ------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = MLP.model(0)
    rf.inject_adapters(model, _cfg(target_modules=["up", "mid"], modules_to_save=["head"]))
    perturb(adapter_params(model))
    path = rf.save_adapters(model, tmp_path / "ckpt")
    return model, path


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, snap):
    state = model.state_dict()
    return state.keys() == snap.keys() and all(torch.equal(state[k], snap[k]) for k in snap)


def test_wrong_base_model_is_refused(saved):
    _, path = saved
    other = MLP.model(seed=1)  # same architecture, different weights
    snap = _snapshot(other)
    with pytest.raises(BaseModelMismatchError, match="was trained on base 'TinyMLP'.*fingerprint"):
        rf.load_adapters(other, path)
    assert _unchanged(other, snap) and not any("lora" in n for n in snap)
    rf.load_adapters(other, path, check_base=False)  # the documented override works


def test_other_architecture_is_refused(saved):
    _, path = saved
    with pytest.raises(BaseModelMismatchError):
        rf.load_adapters(BERT.model(), path)


def _evil_pickle(path, marker):
    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    with open(path, "wb") as f:
        pickle.dump({"weight": Evil()}, f, protocol=4)


@pytest.mark.parametrize("name", ["adapter_model.bin", "model.pt", "weights.ckpt", "innocent.safetensors.txt"])
def test_pickle_checkpoint_is_never_unpickled(tmp_path, name):
    marker = tmp_path / "PWNED"
    evil = tmp_path / name
    _evil_pickle(evil, marker)
    for target in (evil, tmp_path):  # the file itself, and a folder holding only it
        with pytest.raises(CheckpointError, match="never unpickles"):
            rf.load_adapters(MLP.model(), target)
    assert not marker.exists()


def test_torch_save_zip_is_refused(tmp_path):
    f = tmp_path / "state"
    torch.save({"w": torch.zeros(2)}, f)
    with pytest.raises(CheckpointError, match="pickle-based"):
        rf.load_adapters(MLP.model(), f)


def test_truncated_safetensors(saved):
    _, path = saved
    weights = path / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    model = MLP.model(0)
    snap = _snapshot(model)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        rf.load_adapters(model, path)
    assert _unchanged(model, snap)


def test_damaged_config_json(saved):
    _, path = saved
    (path / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        rf.load_adapters(MLP.model(0), path)


def test_future_format_version(saved):
    _, path = saved
    meta = json.loads((path / "adapter_config.json").read_text())
    meta["format_version"] = 99
    (path / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99.*Upgrade robustfeat"):
        rf.load_adapters(MLP.model(0), path)


def test_missing_checkpoint_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        rf.load_adapters(MLP.model(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        rf.load_adapters(MLP.model(), tmp_path / "empty")


def test_nan_weights_refused_on_save_and_load(saved, tmp_path):
    model, path = saved
    with torch.no_grad():
        model.up.lora_A[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        rf.save_adapters(model, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    # a checkpoint with NaN written by someone else
    from safetensors.torch import load_file, save_file

    weights = path / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    tensors["up.lora_A"][0, 0] = float("inf")
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match="NaN or inf"):
        rf.load_adapters(MLP.model(0), path)


def test_save_never_clobbers(saved, tmp_path):
    model, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(CheckpointError, match="overwrite=True"):
        rf.save_adapters(model, path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a robustfeat checkpoint"):
        rf.save_adapters(model, other)
    assert [p.name for p in other.iterdir()] == ["readme.txt"]
    rf.save_adapters(model, path, overwrite=True)  # explicit overwrite works
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over


def test_checkpoint_metadata(saved):
    _, path = saved
    meta = json.loads((path / "adapter_config.json").read_text())
    assert meta["method"] == "lora" and meta["adapter"]["rank"] == 8 and meta["adapter"]["alpha"] == 16.0
    assert meta["targets"] == ["up", "mid"]
    assert meta["base_model"]["id"] == "TinyMLP" and len(meta["base_model"]["fingerprint"]) == 64
    assert {"robustfeat", "torch", "peft", "safetensors", "transformers"} <= set(meta["versions"])
    assert meta["base_model"]["num_parameters"] == sum(
        p.numel() for n, p in TinyMLP().named_parameters() if not n.startswith("head")
    )


def test_the_crafted_pickle_is_really_dangerous(tmp_path):
    """Guard for the test above: unpickling the payload does write the file."""
    marker, evil = tmp_path / "PWNED", tmp_path / "x.bin"
    _evil_pickle(evil, marker)
    with open(evil, "rb") as f:
        pickle.load(f)  # noqa: S301 - deliberate, on our own crafted file
    assert marker.read_text() == "pwned"
