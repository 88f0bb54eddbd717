"""Contract tests generated from the adapter registry: every registered method runs on
every tiny model, so a new method is tested without editing this file."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import robustfeat as rf
from robustfeat.errors import UnknownNameError, UnsupportedError
from robustfeat.registry import ADAPTERS
from tests.models import CASES, ModelCase, TinyMLP, adapter_params, perturb


def _variants():
    for name, method in ADAPTERS.items():
        for variant in [{}] + list(method.contract_variants):
            label = name + "".join(f"[{k}={v}]" for k, v in variant.items())
            yield name, variant, label


def supported(name: str, case: ModelCase) -> bool:
    method = ADAPTERS.get(name)
    return not method.uses_targets or case.kinds <= method.layer_kinds


PAIRS = [
    pytest.param(name, variant, case, id=f"{label}-{case.name}")
    for name, variant, label in _variants()
    for case in CASES
    if supported(name, case)
]
UNSUPPORTED = [
    pytest.param(name, case, id=f"{name}-{case.name}")
    for name in ADAPTERS.names()
    for case in CASES
    if not supported(name, case)
]


def make_config(name: str, variant: dict, case: ModelCase) -> rf.AdapterConfig:
    method = ADAPTERS.get(name)
    targets = case.targets
    if variant.get("shift") and case.name == "cnn":
        targets = ["project"]  # a shift folds exactly only into unpadded 1x1 convs
    kw = dict(variant)
    if method.uses_targets:
        kw["target_modules"] = targets
    if "rank" in method.options:
        kw["rank"] = 4
    return rf.AdapterConfig(method=name, modules_to_save=[case.head], seed=0, **kw)


def inputs(case: ModelCase):
    return case.make_input(torch.Generator().manual_seed(123))


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() > 1e-2 * b.abs().max())


def injected(name: str, variant: dict, case: ModelCase, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    model = case.model(seed)
    base_out = case.run(model, inputs(case))
    rf.inject_adapters(model, make_config(name, variant, case))
    return model, base_out


@pytest.mark.parametrize("name,variant,case", PAIRS)
def test_identity_at_init(name, variant, case):
    model, base_out = injected(name, variant, case)
    torch.testing.assert_close(case.run(model, inputs(case)), base_out, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,variant,case", PAIRS)
def test_merged_equals_unmerged(name, variant, case):
    model, base_out = injected(name, variant, case)
    perturb([p for p in model.parameters() if p.requires_grad])
    x = inputs(case)
    unmerged = case.run(model, x)
    assert changed(unmerged, base_out), "the perturbation must change the output"
    rf.merge_adapters(model)
    torch.testing.assert_close(case.run(model, x), unmerged, rtol=1e-5, atol=2e-5)
    rf.unmerge_adapters(model)
    torch.testing.assert_close(case.run(model, x), unmerged, rtol=1e-5, atol=2e-5)
    # merge_and_unload leaves plain base layer types with the same function
    rf.merge_and_unload(model)
    torch.testing.assert_close(case.run(model, x), unmerged, rtol=1e-5, atol=2e-5)
    assert not any(type(m).__module__.startswith(("robustfeat.adapters", "peft")) for m in model.modules())


@pytest.mark.parametrize("name,variant,case", PAIRS)
def test_disabled_equals_base(name, variant, case):
    model, base_out = injected(name, variant, case)
    if not ADAPTERS.get(name).supports_disable:
        with pytest.raises(UnsupportedError, match="no separate adapter"):
            rf.disable_adapters(model)
        return
    perturb(adapter_params(model))
    x = inputs(case)
    adapted = case.run(model, x)
    assert changed(adapted, base_out)
    with rf.adapters_disabled(model):
        torch.testing.assert_close(case.run(model, x), base_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(case.run(model, x), adapted, rtol=0, atol=1e-6)
    rf.merge_adapters(model)  # disabling a merged model unmerges it first
    with rf.adapters_disabled(model):
        # PEFT's IA3 unmerges by division, so allow float32 rounding here
        torch.testing.assert_close(case.run(model, x), base_out, rtol=1e-4, atol=5e-5)


@pytest.mark.parametrize("name,variant,case", PAIRS)
def test_only_adapter_parameters_train(name, variant, case):
    model, _ = injected(name, variant, case)
    method = ADAPTERS.get(name)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if method.trainable_by_default():
        assert trainable == {id(p) for p in model.parameters()}
    else:  # by identity: GPT-2's lm_head is tied to the token embedding
        head = {id(p) for p in model.get_submodule(case.head).parameters()}
        assert trainable == {id(p) for p in adapter_params(model).values()} | head
    out = case.run(model, inputs(case))
    out.float().pow(2).mean().backward()
    for n, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None, f"{n} is trainable but got no gradient"
        else:
            assert p.grad is None, f"frozen {n} received a gradient"


@pytest.mark.parametrize("name,variant,case", PAIRS)
def test_trainable_count_matches_formula(name, variant, case):
    model, _ = injected(name, variant, case)
    assert rf.count_trainable(model) == rf.expected_trainable(model)


@pytest.mark.parametrize("name,variant,case", PAIRS)
def test_save_load_round_trip(name, variant, case, tmp_path):
    model, _ = injected(name, variant, case)
    perturb([p for p in model.parameters() if p.requires_grad])
    with torch.no_grad():  # buffers (BatchNorm statistics) must travel too
        for b in model.buffers():
            if b is not None and b.is_floating_point():
                b.add_(0.1)
    x = inputs(case)
    expected = case.run(model, x)
    rf.save_adapters(model, tmp_path / "ckpt")
    fresh = case.model(0)
    rf.load_adapters(fresh, tmp_path / "ckpt")
    torch.testing.assert_close(case.run(fresh, x), expected, rtol=0, atol=1e-6)
    assert rf.count_trainable(fresh) == rf.count_trainable(model)


@pytest.mark.parametrize("name,case", UNSUPPORTED)
def test_unsupported_is_clear(name, case):
    with pytest.raises(UnsupportedError, match="supports"):
        rf.inject_adapters(case.model(), make_config(name, {}, case))


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_unknown_method_suggests_closest(name):
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    with pytest.raises(UnknownNameError) as err:
        rf.AdapterConfig(method=typo)
    assert f"Did you mean '{name}'" in str(err.value)


def test_registry_has_the_promised_methods():
    assert {"lora", "lorfa", "vefa", "full", "linear", "ia3", "vera"} <= set(ADAPTERS.names())
    for _, method in ADAPTERS.items():
        assert method.summary and method.formula


def test_hand_computed_counts_on_mlp():
    """The formulas, by hand, on TinyMLP (up 6->24, mid 24->24, head 24->3 = 75)."""
    r = 4
    expected = {
        "lora": r * (6 + 24) + r * (24 + 24) + 75,
        "lorfa": 2 * r * 6 + 2 * r * 24 + 75,
        "vefa": 6 + 24 + 75,
        "ia3": 24 + 24 + 75,
        "vera": (r + 24) + (r + 24) + 75,
        "linear": 75,
        "full": (6 * 24 + 24) + (24 * 24 + 24) + 75,
    }
    for name, count in expected.items():
        case = CASES[0]
        model = case.model()
        rf.inject_adapters(model, make_config(name, {}, case))
        assert rf.count_trainable(model) == count, name


def test_merge_with_lowp_base_is_float32_accurate():
    model = CASES[0].model().to(torch.bfloat16)
    ref = copy.deepcopy(model).float()
    rf.inject_adapters(model, rf.AdapterConfig(method="lorfa", target_modules=["up"], rank=2, seed=0))
    perturb(adapter_params(model), scale=0.5)
    layer = model.up
    w0 = layer.base_layer.weight.float()
    expected = w0 @ (torch.eye(6, device=w0.device) + layer.scaling * layer.lorfa_B.float() @ layer.lorfa_A.float())
    rf.merge_adapters(model)
    got = layer.base_layer.weight.float()
    # computed in float32 and rounded once: within one bfloat16 ulp of the exact value
    assert ((got - expected).abs() <= expected.abs() * 2**-8 + 1e-12).all()
    rf.unmerge_adapters(model)
    assert torch.equal(layer.base_layer.weight.float(), ref.up.weight.to(torch.bfloat16).float())


def test_seed_makes_init_reproducible():
    a, b = CASES[0].model(), CASES[0].model()
    cfg = rf.AdapterConfig(method="lora", target_modules=["up", "mid"], seed=7)
    rf.inject_adapters(a, cfg)
    torch.manual_seed(999)  # the global RNG must not matter when a seed is given
    rf.inject_adapters(b, cfg)
    assert torch.equal(a.up.lora_A, b.up.lora_A) and torch.equal(a.mid.lora_A, b.mid.lora_A)
    assert not torch.equal(a.up.lora_A[:, :6], a.mid.lora_A[:, :6])
    # the seed fixes the values on every device: they are drawn on the CPU
    cpu = TinyMLP()
    rf.inject_adapters(cpu, cfg)
    assert torch.equal(a.up.lora_A.cpu(), cpu.up.lora_A)


@pytest.mark.parametrize("name", ["lora", "lorfa", "vefa", "ia3", "vera"])
def test_merge_is_idempotent_and_remove_restores_the_base(name):
    case = CASES[0]
    model = case.model()
    x = inputs(case)
    base_out = case.run(model, x)
    types_before = {n: type(m) for n, m in model.named_modules()}
    rf.inject_adapters(model, make_config(name, {}, case))
    perturb(adapter_params(model))
    rf.merge_adapters(model)
    once = case.run(model, x)
    rf.merge_adapters(model)  # a second merge must not apply the update twice
    torch.testing.assert_close(case.run(model, x), once, rtol=0, atol=0)
    rf.remove_adapters(model)
    assert {n: type(m) for n, m in model.named_modules()} == types_before
    assert all(p.requires_grad for p in model.parameters())  # as before injection
    torch.testing.assert_close(case.run(model, x), base_out, rtol=1e-5, atol=1e-6)


def test_config_round_trips_through_dict():
    cfg = rf.AdapterConfig(method="vefa", target_modules=["up"], shift=True, modules_to_save=["head"], seed=3)
    assert rf.AdapterConfig.from_dict(cfg.to_dict()) == cfg
