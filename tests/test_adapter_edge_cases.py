"""Edge cases of real models: parents that read their child's weight, tied weights,
parametrized layers, nested injection, custom forwards, and state handling."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustfeat as rf
from robustfeat.errors import BaseModelMismatchError, CheckpointError, ConfigError, RobustfeatError, UnsupportedError
from tests.models import CASES, TinyMLP, adapter_params, perturb, to_device

MLP, CNN, BERT, GPT2 = CASES


def test_multihead_attention_out_proj_is_skipped_and_refused():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0).eval()
    x = torch.randn(2, 5, 16)
    base = layer(x)
    rf.inject_adapters(layer, rf.AdapterConfig(method="lora", seed=0))
    assert "self_attn.out_proj" not in rf.adapter_state(layer).targets
    assert {"linear1", "linear2"} <= set(rf.adapter_state(layer).targets)
    torch.testing.assert_close(layer(x), base)
    fresh = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    with pytest.raises(UnsupportedError, match="inside nn.MultiheadAttention"):
        rf.inject_adapters(fresh, rf.AdapterConfig(method="lora", target_modules=["self_attn.out_proj"]))


def test_wrapper_passes_layer_attributes_through():
    model = MLP.model()
    rf.inject_adapters(model, rf.AdapterConfig(method="lorfa", target_modules=["up"]))
    assert model.up.weight is model.up.base_layer.weight  # e.g. T5 reads wo.weight.dtype
    assert model.up.in_features == 6 and model.up.out_features == 24


def test_tied_and_shared_weights_are_refused():
    with pytest.raises(UnsupportedError, match="tied weights"):
        rf.inject_adapters(GPT2.model(), rf.AdapterConfig(method="lora", target_modules=["lm_head"]))

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a  # one module under two paths
            self.c = nn.Linear(4, 4)

    with pytest.raises(UnsupportedError, match="tied weights"):
        rf.inject_adapters(Shared(), rf.AdapterConfig(method="lora", target_modules=["a"]))
    shared = Shared()
    rf.inject_adapters(shared, rf.AdapterConfig(method="lora"))  # keyword: skips the shared one
    assert rf.adapter_state(shared).targets == ["c"]


def test_parametrized_weights_are_refused():
    m = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)))
    with pytest.raises(UnsupportedError, match="parametrized"):
        rf.inject_adapters(m, rf.AdapterConfig(method="lora", target_modules=["0"]))


def test_nested_injection_is_refused():
    from peft import LoraConfig, get_peft_model

    inner = MLP.model()
    rf.inject_adapters(inner, rf.AdapterConfig(method="lora", target_modules=["up"]))
    with pytest.raises(RobustfeatError, match="already has adapters"):
        rf.inject_adapters(nn.Sequential(inner), rf.AdapterConfig(method="vefa"))
    peft_model = get_peft_model(TinyMLP(), LoraConfig(target_modules=["up"]))
    with pytest.raises(RobustfeatError, match="robustfeat's or PEFT's"):
        rf.inject_adapters(peft_model, rf.AdapterConfig(method="lorfa"))


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (timm style): not linear in its weight."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ScaledLinear(nn.Linear):
    """A Linear subclass with its own forward that is still a linear op of its weight."""

    def forward(self, x):
        return F.linear(2.0 * x, self.weight, self.bias)


def test_custom_forward_must_be_a_plain_op_of_the_weight():
    with pytest.raises(UnsupportedError, match="not a plain conv2d operation"):
        rf.inject_adapters(nn.Sequential(StdConv2d(3, 4, 3)), rf.AdapterConfig(method="lora", target_modules=["0"]))
    torch.manual_seed(0)
    model = nn.Sequential(ScaledLinear(4, 6)).eval()
    x = torch.randn(3, 4)
    rf.inject_adapters(model, rf.AdapterConfig(method="lora", target_modules=["0"], seed=0))
    perturb(adapter_params(model))
    unmerged = model(x)
    rf.merge_adapters(model)  # LoRA's branch reuses the subclass's forward, so this is exact
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)


def test_config_edits_after_inject_do_not_leak(tmp_path):
    model = MLP.model()
    cfg = rf.AdapterConfig(method="lora", target_modules=["up", "mid"], rank=4)
    rf.inject_adapters(model, cfg)
    cfg.rank, cfg.target_modules = 2, ["up"]
    rf.save_adapters(model, tmp_path / "ck")
    rf.load_adapters(MLP.model(), tmp_path / "ck")  # would fail if the edit had leaked


def test_training_a_merged_model_is_refused():
    model = MLP.model()
    rf.inject_adapters(model, rf.AdapterConfig(method="lora", target_modules=["up"]))
    rf.merge_adapters(model)
    model.train()
    x = to_device(torch.randn(2, 6))
    with pytest.raises(UnsupportedError, match="unmerge_adapters"):
        model(x)
    with torch.no_grad():
        model(x)  # inference is fine


def test_injected_wrappers_follow_the_model_mode():
    model = MLP.model()  # eval()
    rf.inject_adapters(model, rf.AdapterConfig(method="lora", target_modules=["up"], dropout=0.5, seed=0))
    perturb(adapter_params(model))
    x = to_device(torch.randn(4, 6))
    torch.testing.assert_close(model(x), model(x))  # no dropout in eval mode
    assert not model.up.training


def test_disabled_context_restores_merge():
    model = MLP.model()
    rf.inject_adapters(model, rf.AdapterConfig(method="vefa", target_modules=["up"]))
    rf.merge_adapters(model)
    with rf.adapters_disabled(model):
        assert not model.up.merged
    assert model.up.merged


def test_shift_on_value_copying_padding_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")).eval()
    rf.inject_adapters(model, rf.AdapterConfig(method="vefa", shift=True, target_modules=["0"]))
    perturb(adapter_params(model))
    x = torch.randn(2, 3, 8, 8)
    unmerged = model(x)
    rf.merge_adapters(model)
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)


def test_other_dtype_base_is_explained(tmp_path):
    model = MLP.model()
    rf.inject_adapters(model, rf.AdapterConfig(method="lora", target_modules=["up"]))
    rf.save_adapters(model, tmp_path / "ck")
    with pytest.raises(BaseModelMismatchError, match="same architecture but dtype bfloat16"):
        rf.load_adapters(MLP.model().to(torch.bfloat16), tmp_path / "ck")


@pytest.mark.parametrize("key,value", [("method", None), ("base_model", "x"), ("tensors", None),
                                       ("targets", "up")])
def test_damaged_metadata_is_one_clear_error(tmp_path, key, value, capsys):
    model = MLP.model()
    rf.inject_adapters(model, rf.AdapterConfig(method="lora", target_modules=["up"]))
    path = rf.save_adapters(model, tmp_path / "ck")
    meta = json.loads((path / "adapter_config.json").read_text())
    meta[key] = value
    (path / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"entry '{key}'"):
        rf.load_adapters(MLP.model(), path)
    from robustfeat.cli import main

    assert main(["info", str(path)]) == 2
    assert "damaged" in capsys.readouterr().err


def test_seed_range_and_swapped_arguments(tmp_path):
    with pytest.raises(ConfigError, match="seed"):
        rf.AdapterConfig(method="lora", seed=10**14)
    with pytest.raises(RobustfeatError, match="takes the base model first"):
        rf.load_adapters(str(tmp_path), MLP.model())


def test_remove_forgets_peft_bookkeeping():
    model = MLP.model()
    rf.inject_adapters(model, rf.AdapterConfig(method="ia3", target_modules=["up"]))
    rf.remove_adapters(model)
    assert "peft_config" not in model.__dict__
    rf.inject_adapters(model, rf.AdapterConfig(method="vera", target_modules=["up"]))  # works again
