"""The fast inference path evaluations run on (``ModelHandle.fast_inference``: adapters
merged, image models channels-last; inference calls under ``torch.inference_mode``): the
same numbers as the plain path within float tolerance, evaluations included, and the model
put back exactly as it was (merged flags, memory layout, weights, training modes)."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import robustfeat as rf
from robustfeat.adapters.model import adapters_merged, has_adapters
from robustfeat.data import Table
from robustfeat.models import load_model
from robustfeat.models.handle import ModelHandle
from robustfeat.registry import ADAPTERS
from tests.models import perturb

CASES = [("tiny-cnn", m) for m in ("lora", "lorfa", "vefa", "ia3", "full", "linear")] + \
        [("tiny-bert", m) for m in ("lora", "vera", "ia3")] + [("tiny-gpt2", "lora")]


def _sample(family: str, n: int = 4) -> Table:
    rng = np.random.default_rng(0)
    if family == "image-classifier":
        return Table({"image": rng.integers(0, 255, (n, 28, 28, 3), dtype=np.uint8), "label": np.arange(n) % 2})
    return Table({"text": ["a fine film", "dull and long", "the end", "more"][:n], "label": np.arange(n) % 2})


def _handle(name: str, method: str) -> ModelHandle:
    h = load_model(name, num_labels=2, seed=0, **({"image_size": 32} if name == "tiny-cnn" else {}))
    targets = None if not ADAPTERS.get(method).uses_targets else h.default_targets
    rf.inject_adapters(h.model, rf.AdapterConfig(method=method, target_modules=targets, modules_to_save=h.head,
                                                 seed=0))
    with torch.no_grad():  # a trained-like update: merging must fold something in
        perturb([p for n, p in h.model.named_parameters() if p.requires_grad and not n.startswith(tuple(h.head))],
                scale=0.05)
    return h


def _tensors(model: torch.nn.Module) -> dict[str, tuple[torch.Tensor, tuple[int, ...]]]:
    return {n: (t.detach().clone(), t.stride()) for n, t in (*model.named_parameters(), *model.named_buffers())}


def _merged(model) -> list[bool]:
    return [h.merged for _, h in ADAPTERS.get(rf.adapter_state(model).config.method).handles(model)] \
        if has_adapters(model) else []


def _outputs(h: ModelHandle, table: Table) -> dict[str, torch.Tensor]:
    inputs = h.preprocess(table)
    out = {"logits": h.logits(inputs), **h.features(inputs)}
    if hasattr(h, "pretrained_logits"):
        out["pretrained"] = h.pretrained_logits(inputs)
    return out


@pytest.mark.parametrize("name, method", CASES)
def test_the_fast_path_gives_the_plain_numbers_and_puts_the_model_back(name, method):
    h = _handle(name, method)
    model = h.model
    model.train()
    list(model.modules())[-1].eval()  # a mix of modes, to be found again
    modes = [m.training for m in model.modules()]
    before, params = _tensors(model), [id(p) for p in model.parameters()]
    table = _sample(h.info.family)
    plain = _outputs(h, table)
    assert plain["logits"].is_inference()  # inference calls run under torch.inference_mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT's "unmerge can be inaccurate" included: unmerging is exact
        with h.fast_inference():
            merged = _merged(model)
            assert all(merged) and (bool(merged) == (method not in ("full", "linear")))
            if h.info.family == "image-classifier":
                assert h.memory_format == torch.channels_last
                assert h.preprocess(table)["pixel_values"].is_contiguous(memory_format=torch.channels_last)
                conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
                assert conv.weight.is_contiguous(memory_format=torch.channels_last)
            fast = _outputs(h, table)
    for k in plain:
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-5, atol=2e-5, msg=f"{name} {method} {k}")
    # put back: nothing merged, every weight and buffer the same bits in the same layout, the same modes
    assert not any(_merged(model))
    assert [m.training for m in model.modules()] == modes
    assert [id(p) for p in model.parameters()] == params
    after = _tensors(model)
    assert after.keys() == before.keys()
    for n, (t, stride) in before.items():
        assert after[n][1] == stride and torch.equal(after[n][0], t), n
    if h.info.family == "image-classifier":
        assert h.memory_format == torch.contiguous_format
    table_loss = h.loss(h.preprocess(table), table)  # trainable again (no inference tensor left in it)
    table_loss.backward()
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_merging_inside_a_merged_model_leaves_it_merged():
    """What the ``weights`` evaluation does on the fast path: it merges (nothing to do) and
    must not unmerge what it did not merge."""
    h = _handle("tiny-cnn", "lora")
    rf.merge_adapters(h.model)
    with adapters_merged(h.model):
        assert all(_merged(h.model))
    assert all(_merged(h.model))
    rf.unmerge_adapters(h.model)
    with adapters_merged(h.model):
        assert all(_merged(h.model))
    assert not any(_merged(h.model))


@pytest.mark.parametrize("name, method", [("tiny-cnn", "ia3"), ("tiny-bert", "ia3"), ("tiny-bert", "vera")])
def test_peft_layers_unmerge_exactly(name, method):
    h = _handle(name, method)
    before = _tensors(h.model)
    rf.merge_adapters(h.model)
    assert any(not torch.equal(t, before[n][0]) for n, t in h.model.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rf.unmerge_adapters(h.model)
    for n, t in h.model.named_parameters():
        assert torch.equal(t, before[n][0]), n


# --- evaluations ---------------------------------------------------------------------------------
SHIFTS = ["clean", "fog", "ood", "imagenet-agreement", "linear-probe", "cka", "weights"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from robustfeat.train import TrainConfig, finetune

    root = tmp_path_factory.mktemp("fast")
    out = {}
    for method in ("lora", "ia3", "linear"):
        out[method] = root / method
        finetune(TrainConfig(model="tiny-cnn", data="mnist-5k", method=method, image_size=32, max_examples=256,
                             max_eval_examples=64, batch_size=32, checkpoint_every=100,
                             lr=0.05 if method != "linear" else None), out[method], progress=False)
    return out


@pytest.mark.real_data
def test_evaluation_on_the_fast_path_equals_the_plain_path(checkpoints, tmp_path, monkeypatch):
    from robustfeat.evaluations.runner import evaluate

    fast_inference = ModelHandle.fast_inference
    used = []

    def spy(self):
        used.append(self.info.name)
        return fast_inference(self)

    monkeypatch.setattr(ModelHandle, "fast_inference", spy)
    ckpts = [checkpoints[m] for m in ("lora", "ia3", "linear")]
    fast = evaluate(ckpts, tmp_path / "fast", quick=True, shifts=SHIFTS, progress=False)
    assert len(used) >= len(ckpts) + 1  # every checkpoint and the base
    monkeypatch.setattr(ModelHandle, "fast_inference", lambda self: contextlib.nullcontext())
    plain = evaluate(ckpts, tmp_path / "plain", quick=True, shifts=SHIFTS, progress=False)
    key = ["checkpoint", "evaluation", "shift", "severity", "metric"]
    both = pd.merge(fast, plain, on=key, suffixes=("_fast", "_plain"), validate="one_to_one")
    assert len(both) == len(fast) == len(plain)
    assert set(both.evaluation) == {*SHIFTS, "corruptions"} - {"fog"}
    np.testing.assert_allclose(both.value_fast, both.value_plain, rtol=0, atol=1e-5)


@pytest.mark.real_data
def test_the_evaluated_model_is_merged_while_loaded_and_put_back_on_release(checkpoints, tmp_path):
    from robustfeat.evaluations.base import BasePool, Cell, EvalContext, EvalOptions
    from robustfeat.evaluations.drift import WeightDrift, drift_layers
    from robustfeat.evaluations.subject import RunSubject

    subject = RunSubject(checkpoints["lora"])
    pool = BasePool()
    ctx = EvalContext(subject=subject, options=EvalOptions(progress=False), base_dir=tmp_path, pool=pool)
    h = ctx.handle
    assert all(_merged(h.model)) and h.memory_format == torch.channels_last
    WeightDrift(k=10).run(ctx, Cell("weights", drift_layers(ctx)[0]))
    assert all(_merged(h.model)), "the weights evaluation left the model unmerged"
    base = ctx.base()
    assert base.memory_format == torch.channels_last
    ctx.release()
    pool.close()
    fresh, _ = subject.load(None)
    for loaded, ref in ((h, fresh), (base, subject.load_base(None))):
        assert not any(_merged(loaded.model)) and loaded.memory_format == torch.contiguous_format
        got, want = _tensors(loaded.model), _tensors(ref.model)
        assert got.keys() == want.keys()
        for n, (t, stride) in want.items():
            assert got[n][1] == stride and torch.equal(got[n][0], t), n
