"""Parity with the reference implementation, PEFT: our lora equals PEFT's LoRA given the
same A and B, and our vefa (no shift) equals PEFT's IA3 with every target listed in
feedforward_modules, in float32, forward and gradients (max abs diff < 1e-5)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import IA3Config, LoraConfig, inject_adapter_in_model

import robustfeat as rf
from tests.models import CASES, ModelCase, perturb

TOL = 1e-5
# Plain nn.Conv2d layers only for PEFT (it cannot wrap the static-padding subclass).
PEFT_TARGETS = {"mlp": ["up", "mid"], "cnn": ["conv", "project"], "tiny-bert": ["query", "value"],
                "tiny-gpt2": ["c_attn", "c_fc"]}


def _pairs(case: ModelCase, method: str, peft_config, rank: int = 4):
    ours = case.model(0)
    theirs = copy.deepcopy(ours)
    targets = PEFT_TARGETS[case.name]
    kw = {"rank": rank, "alpha": 2.0 * rank + 3} if method == "lora" else {}
    rf.inject_adapters(ours, rf.AdapterConfig(method=method, target_modules=targets, seed=0, **kw))
    inject_adapter_in_model(peft_config(targets), theirs)
    return ours, theirs


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _check_forward_and_grads(case, ours, theirs, pairs):
    x = case.make_input(torch.Generator().manual_seed(5))
    out_ours, out_theirs = case.run(ours, x), case.run(theirs, x)
    assert _max_diff(out_ours, out_theirs) < TOL
    # a loss whose gradient is not trivially uniform
    w = torch.randn(out_ours.shape, generator=torch.Generator().manual_seed(6)).to(out_ours.device)
    (out_ours * w).sum().backward()
    (out_theirs * w).sum().backward()
    for mine, ref in pairs:
        assert mine.grad is not None and ref.grad is not None
        assert mine.grad.abs().max() > 0
        assert _max_diff(mine.grad, ref.grad.reshape(mine.grad.shape)) < TOL


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lora_matches_peft_lora(case):
    transposed = case.name == "tiny-gpt2"

    def cfg(targets):
        return LoraConfig(r=4, lora_alpha=11, target_modules=targets, lora_dropout=0.0,
                          fan_in_fan_out=transposed)

    ours, theirs = _pairs(case, "lora", cfg)
    perturb([p for n, p in ours.named_parameters() if "lora_B" in n])  # B = 0 hides bugs
    pairs = []
    for name, layer in ours.named_modules():
        if isinstance(layer, rf.ADAPTERS.get("lora")):
            ref = theirs.get_submodule(name)
            with torch.no_grad():
                ref.lora_A["default"].weight.copy_(layer.lora_A.view_as(ref.lora_A["default"].weight))
                ref.lora_B["default"].weight.copy_(layer.lora_B.view_as(ref.lora_B["default"].weight))
            assert ref.scaling["default"] == pytest.approx(layer.scaling)
            pairs += [(layer.lora_A, ref.lora_A["default"].weight), (layer.lora_B, ref.lora_B["default"].weight)]
    assert len(pairs) >= 4
    _check_forward_and_grads(case, ours, theirs, pairs)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_vefa_matches_peft_ia3_feedforward(case):
    transposed = case.name == "tiny-gpt2"

    def cfg(targets):
        return IA3Config(target_modules=targets, feedforward_modules=targets, fan_in_fan_out=transposed)

    ours, theirs = _pairs(case, "vefa", cfg)
    perturb([p for n, p in ours.named_parameters() if "vefa_lam" in n])
    pairs = []
    for name, layer in ours.named_modules():
        if isinstance(layer, rf.ADAPTERS.get("vefa")):
            ref = theirs.get_submodule(name).ia3_l["default"]
            assert ref.numel() == layer.vefa_lam.numel()  # one scale per input feature
            with torch.no_grad():
                ref.copy_(layer.vefa_lam.view_as(ref))
            pairs.append((layer.vefa_lam, ref))
    assert len(pairs) >= 2
    _check_forward_and_grads(case, ours, theirs, pairs)


def test_lora_merge_matches_peft_merge():
    case = CASES[2]  # tiny BERT
    ours, theirs = _pairs(case, "lora", lambda t: LoraConfig(r=4, lora_alpha=11, target_modules=t))
    perturb([p for n, p in ours.named_parameters() if "lora_" in n])
    for name, layer in ours.named_modules():
        if isinstance(layer, rf.ADAPTERS.get("lora")):
            ref = theirs.get_submodule(name)
            with torch.no_grad():
                ref.lora_A["default"].weight.copy_(layer.lora_A)
                ref.lora_B["default"].weight.copy_(layer.lora_B)
            ref.merge()
    rf.merge_adapters(ours)
    for name, layer in ours.named_modules():
        if isinstance(layer, rf.ADAPTERS.get("lora")):
            ref_w = theirs.get_submodule(name).get_base_layer().weight
            assert _max_diff(layer.base_layer.weight, ref_w) < 1e-6
