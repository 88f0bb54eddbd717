"""Adapter-scale curves (WiSE-FT for adapters): each method's fine-tuning update scaled by
alpha. At 0 the model is the base, exactly; at 1 it is as trained, exactly; in between every
adapted layer's effective update (the merged weight and bias minus the base's) is alpha
times the trained one; the task head stays as trained. Generated from the registry."""

from __future__ import annotations

import copy

import pytest
import torch

import robustfeat as rf
from robustfeat.errors import UnsupportedError
from robustfeat.registry import ADAPTERS
from tests.models import CASES, adapter_params, perturb
from tests.test_contract import inputs, make_config, supported

SCALED = [n for n, m in ADAPTERS.items() if m.scalable()]
CASES_BY = [pytest.param(n, c, id=f"{n}-{c.name}") for n in SCALED for c in CASES if supported(n, c)]


def trained(name, case, variant=None):
    """(base, fine-tuned model with every update moved away from identity, head left alone)."""
    base = case.model(0)
    model = copy.deepcopy(base)
    rf.inject_adapters(model, make_config(name, variant or {}, case))
    if name == "full":
        perturb([p for n, p in model.named_parameters() if not n.startswith(case.head)], scale=0.05)
    else:
        perturb(adapter_params(model))
    return base, model


def scaled(model, name, alpha, base, case):
    m = copy.deepcopy(model)
    ADAPTERS.get(name).scale(m, alpha, base=base, keep=(case.head,))
    return m


@pytest.mark.parametrize("name,case", CASES_BY)
def test_alpha_zero_is_the_base_and_one_the_trained_model_exactly(name, case):
    base, model = trained(name, case)
    x = inputs(case)
    out_base, out_trained = case.run(base, x), case.run(model, x)
    assert (out_base - out_trained).abs().max() > 1e-3, "the update must change the output"
    assert torch.equal(case.run(scaled(model, name, 0.0, base, case), x), out_base)
    assert torch.equal(case.run(scaled(model, name, 1.0, base, case), x), out_trained)
    half = case.run(scaled(model, name, 0.5, base, case), x)
    assert not torch.equal(half, out_base) and not torch.equal(half, out_trained)


def _effective(model, base) -> dict[str, torch.Tensor]:
    """Each weight and bias of the merged model minus the base's."""
    m = copy.deepcopy(model)
    if rf.adapter_state(m).method.handles(m):
        rf.merge_and_unload(m)
    b = dict(base.named_parameters())
    return {n: p.detach() - b[n].detach() for n, p in m.named_parameters() if n in b and p.shape == b[n].shape}


@pytest.mark.parametrize("alpha", [0.25, 0.75, 1.25])
@pytest.mark.parametrize("name,variant", [(n, {}) for n in SCALED] + [("vefa", {"shift": True})])
def test_each_layers_update_is_alpha_times_the_trained_one(name, variant, alpha):
    case = CASES[0]  # the MLP: every method adapts its linear layers
    base, model = trained(name, case, variant)
    full_update = _effective(model, base)
    part = _effective(scaled(model, name, alpha, base, case), base)
    moved = [n for n, d in full_update.items() if d.abs().max() > 1e-4 and not n.startswith(case.head)]
    assert moved, "the update must move some base weight"
    for n in moved:
        torch.testing.assert_close(part[n], alpha * full_update[n], rtol=1e-4, atol=1e-6, msg=n)


def test_the_head_stays_as_trained():
    case = CASES[0]
    base, model = trained("lora", case)
    perturb(list(model.head.parameters()), seed=7)
    zero = scaled(model, "lora", 0.0, base, case)
    assert torch.equal(zero.head.weight, model.head.weight)
    assert not torch.equal(zero.head.weight, base.head.weight)


def test_methods_without_an_update_refuse():
    case = CASES[0]
    model = case.model(0)
    rf.inject_adapters(model, make_config("linear", {}, case))
    with pytest.raises(UnsupportedError, match="no fine-tuning update to scale"):
        ADAPTERS.get("linear").scale(model, 0.5)
    with pytest.raises(UnsupportedError, match="needs the base model"):
        ADAPTERS.get("full").scale(model, 0.5)
