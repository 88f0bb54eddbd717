"""Tiny models built in code (random init, no downloads) for the contract tests.

Each ``ModelCase`` says how to build the model, make an input, read its output, and
which modules to adapt, so that every registered method runs on every case.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustfeat.models.tiny import StaticSamePadConv2d  # EfficientNet-style self-padding conv


#: Where the tiny-model tests run; "cuda" on a GPU machine (CI is CPU-only).
DEVICE = torch.device(os.environ.get("ROBUSTFEAT_TEST_DEVICE", "cpu"))


def to_device(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: v.to(DEVICE) for k, v in x.items()}
    return x.to(DEVICE)


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 24)  # tall: d_out > d_in
        self.mid = nn.Linear(24, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(torch.relu(self.up(x)))))


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = StaticSamePadConv2d(3, 8, 3, stride=2, image_size=12)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        x = self.project(x).mean(dim=(2, 3))
        return self.head(x)


def tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=32, num_labels=3,
        initializer_range=0.2,  # large enough that adapter changes are visible in logits
    )
    return BertForSequenceClassification(cfg)


def tiny_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32, initializer_range=0.2)
    return GPT2LMHeadModel(cfg)


@dataclass
class ModelCase:
    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[torch.Generator], Any]
    targets: list[str] | str
    head: str  # the module trained next to adapters (modules_to_save)
    kinds: frozenset[str]  # layer kinds among the targets
    output: Callable[[Any], torch.Tensor] = lambda out: out

    def model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build().eval().to(DEVICE)

    def run(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        inputs = to_device(inputs)
        return self.output(model(**inputs) if isinstance(inputs, dict) else model(inputs))


def _tokens(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 64, (3, 10), generator=g)}


CASES = [
    ModelCase(
        "mlp", TinyMLP, lambda g: torch.randn(5, 6, generator=g),
        targets=["up", "mid"], head="head", kinds=frozenset({"linear"}),
    ),
    ModelCase(
        "cnn", TinyCNN, lambda g: torch.randn(2, 3, 12, 12, generator=g),
        targets="all-conv", head="head", kinds=frozenset({"conv2d"}),
    ),
    ModelCase(
        "tiny-bert", tiny_bert, _tokens,
        targets=["query", "value", "intermediate.dense"], head="classifier",
        kinds=frozenset({"linear"}), output=lambda out: out.logits,
    ),
    ModelCase(
        "tiny-gpt2", tiny_gpt2, _tokens,
        targets=["c_attn", "c_fc", "mlp.c_proj"], head="lm_head",
        kinds=frozenset({"conv1d-transposed"}), output=lambda out: out.logits,
    ),
]


def adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter-only parameters (not heads), through the method's own handles."""
    from robustfeat.adapters.model import adapter_state

    out = {}
    for path, handle in adapter_state(model).method.handles(model):
        for name, p in handle.adapter_parameters().items():
            out[f"{path}.{name}"] = p
    return out


@torch.no_grad()
def perturb(params: Any, scale: float = 0.3, seed: int = 1) -> None:
    """Move parameters away from their (identity) init, deterministically."""
    g = torch.Generator().manual_seed(seed)
    for p in (params.values() if isinstance(params, dict) else params):
        p.add_((torch.randn(p.shape, generator=g, dtype=p.dtype) * scale).to(p.device))


def write_image_folder(root, classes, per_class: int, shape: tuple[int, ...], seed: int = 0):
    """An image-folder dataset on disk: one sub-folder per class of random PNGs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@torch.no_grad()
def plain_perplexity(model: nn.Module, tokenizer, texts, max_length: int) -> float:
    """Perplexity of a transformers causal LM over ``texts``, one text at a time with no
    padding: token-weighted next-token cross-entropy, exponentiated (the reference the
    evaluations' batched perplexity is checked against)."""
    import math

    nll = tokens = 0.0
    for t in texts:
        ids = tokenizer(str(t), truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
        out = model(input_ids=ids).logits[0, :-1]
        nll += torch.nn.functional.cross_entropy(out, ids[0, 1:], reduction="sum").item()
        tokens += ids.shape[1] - 1
    return math.exp(nll / tokens)
