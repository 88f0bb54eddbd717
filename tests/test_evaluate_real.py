"""Integration: `robustfeat evaluate --quick` on real checkpoints, all-MiniLM-L6-v2 on
Rotten Tomatoes and EfficientNet-Lite0 on Fashion-MNIST, through the CLI."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from robustfeat.cli import main
from robustfeat.train import TrainConfig, finetune

pytestmark = [pytest.mark.real_model, pytest.mark.real_data]


def test_minilm_rotten_tomatoes_quick_bank(tmp_path, capsys):
    for method in ("lora", "vefa"):
        finetune(TrainConfig(model="minilm-l6", data="rotten-tomatoes", method=method, max_examples=256,
                             max_eval_examples=128, batch_size=32, max_length=48), tmp_path / method, progress=False)
    code = main(["evaluate", str(tmp_path / "lora"), str(tmp_path / "vefa"), "--quick", "--no-progress",
                 "--out", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert code == 0 and "mean OOD acc" in out and "geometry rho" in out and "intruders" in out
    frame = pd.read_csv(tmp_path / "res" / "results.csv", keep_default_na=False, na_values=[""])
    for method in ("lora", "vefa"):
        f = frame[frame.method == method]

        def v(evaluation, shift, metric):
            sel = f[(f.evaluation == evaluation) & (f["shift"] == shift) & (f.metric == metric)]
            assert len(sel) == 1, (method, evaluation, shift, metric)
            return float(sel.value.iloc[0])

        assert v("clean", "test", "accuracy") > 0.6  # the real encoder learns sentiment from 256 snippets
        assert 0.5 < v("ood", "mean-ood", "accuracy") < 1.0
        assert 0.0 < v("embedding-geometry", "news-text", "geometry_spearman") <= 1.0
        assert 0.0 < v("cka", "all", "cka") <= 1.0 + 1e-9
        assert v("weights", "all", "relative_change") > 0
        assert not math.isnan(v("linear-probe", "vader-sentiment:domain", "base_accuracy"))
    # 6 layers x (query, value) adapted: one CKA and one weight cell each
    assert len(frame[(frame.method == "lora") & (frame.evaluation == "cka") & (frame["shift"] != "all")]) == 12


def test_efficientnet_fashion_mnist_quick_bank(tmp_path):
    for method in ("lora", "linear"):
        finetune(TrainConfig(model="efficientnet-lite0", data="fashion-mnist", method=method, max_examples=128,
                             max_eval_examples=64, batch_size=32, image_size=64), tmp_path / method, progress=False)
    code = main(["evaluate", str(tmp_path / "lora"), str(tmp_path / "linear"), "--quick", "--no-progress",
                 "--shifts", "clean,corruptions,imagenet-agreement", "--out", str(tmp_path / "res")])
    assert code == 0
    frame = pd.read_csv(tmp_path / "res" / "results.csv")
    lora = frame[frame.method == "lora"]
    mce = lora[(lora.metric == "mce")]
    assert len(mce) == 1 and mce.reference.iloc[0].startswith("linear") and mce.value.iloc[0] > 0
    agree = lora[lora.metric == "top1_agreement"].value.iloc[0]
    lin = frame[(frame.method == "linear") & (frame.metric == "top1_agreement")].value.iloc[0]
    assert lin == 1.0 and 0.0 <= agree <= 1.0  # the frozen backbone keeps the ImageNet head's answers
    # severity 5 noise hurts more than severity 1 on average over the two models
    noise = frame[(frame.evaluation == "corruptions") & (frame["shift"] == "gaussian_noise") & (frame.metric == "error")]
    assert noise[noise.severity == 5].value.mean() >= noise[noise.severity == 1].value.mean()
