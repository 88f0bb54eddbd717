"""Integration: one real model per family fine-tunes with lora, lorfa and vefa for a few
steps on real data; the training loss falls and the checkpoint reloads to exactly the
same validation score. The real SmolLM2 LoRA checkpoint then goes through
``robustfeat evaluate --quick`` (its perplexities, and drift on the first block's layers)."""

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


def test_real_smollm2_through_evaluate(tmp_path, capsys):
    """The causal-LM bank on the real SmolLM2-135M: the command runs, the perplexities are those
    of a real language model (far below the vocabulary size of 49,152 that a uniform guess
    would give), and the drift cells of the adapted layers of block 0 are there."""
    import math

    import pandas as pd

    from robustfeat.cli import main

    config = TrainConfig(method="lora", max_examples=16, max_eval_examples=16, epochs=1.0, **FAMILIES["causal-lm"])
    finetune(config, tmp_path / "run", progress=False, device="cpu")
    layers = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    code = main(["evaluate", str(tmp_path / "run"), "--quick", "--no-progress", "--shifts",
                 ",".join(["clean", "perplexity", *layers]), "--out", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert code == 0 and "ID ppl" in out and "ppl increase" in out
    f = pd.read_csv(tmp_path / "res" / "results.csv")

    def v(evaluation, shift, metric):
        sel = f[(f.evaluation == evaluation) & (f["shift"] == shift) & (f.metric == metric)]
        assert len(sel) == 1, (evaluation, shift, metric)
        return float(sel.value.iloc[0])

    ppl, base, tuned = (v("clean", "test", "perplexity"), v("perplexity", "news-text", "base_perplexity"),
                        v("perplexity", "news-text", "perplexity"))
    assert all(1.0 < x < 5000 for x in (ppl, base, tuned))
    assert math.isclose(v("perplexity", "news-text", "forgetting"), tuned - base, rel_tol=1e-6, abs_tol=1e-6)
    for layer in layers:
        assert 0.5 < v("cka", layer, "cka") <= 1.0 + 1e-9
        assert v("weights", layer, "relative_change") > 0
    assert set(f[f.evaluation == "cka"]["shift"]) == {*layers, "all"}
