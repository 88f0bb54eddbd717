"""Integration: one real model per family fine-tunes with lora, lorfa and vefa for a few
steps on real data; the training loss falls and the checkpoint reloads to exactly the
same validation score."""

from __future__ import annotations

import pytest
import torch

from robustfeat.train import TrainConfig, finetune, load_run, validation_score
from robustfeat.train.loop import build

pytestmark = [pytest.mark.real_model, pytest.mark.real_data]

FAMILIES = {
    "text": dict(model="minilm-l6", data="rotten-tomatoes", batch_size=16, max_length=48),
    "causal-lm": dict(model="smollm2-135m", data="news-text", batch_size=8, max_length=32),
    "image": dict(model="efficientnet-lite0", data="fashion-mnist", batch_size=16, image_size=64),
}


@torch.no_grad()
def train_loss(handle, table) -> float:
    handle.model.eval()
    return float(handle.loss(handle.preprocess(table), table))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["lora", "lorfa", "vefa"])
def test_real_model_fine_tunes(tmp_path, family, method):
    config = TrainConfig(method=method, max_examples=48, max_eval_examples=32, epochs=2.0, **FAMILIES[family])
    fresh, data, _ = build(config, torch.device("cpu"), progress=False)
    torch.manual_seed(0)
    before = train_loss(fresh, data["train"])
    result = finetune(config, tmp_path / "run", progress=False, device="cpu")
    handle, data2, record = load_run(tmp_path / "run", device="cpu")
    after = train_loss(handle, data2["train"])
    assert after < before, f"training loss did not fall: {before:.4f} -> {after:.4f}"
    assert validation_score(handle, data2["validation"])[1] == result.value == record["validation"]["value"]
