"""Text families on top of ``transformers``: encoders with a sequence-classification
head, and causal language models."""

from __future__ import annotations

from typing import Any

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustfeat.data.table import Table
from robustfeat.errors import RobustfeatError
from robustfeat.models.handle import ModelHandle, ModelInfo, mean_pool


class MeanPoolClassifier(nn.Module):
    """A transformers encoder with a linear head on the mean-pooled last hidden state: the
    natural head for sentence encoders trained with mean pooling (sentence-transformers)."""

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        self.config = encoder.config

    @property
    def base_model(self) -> nn.Module:
        return self.encoder

    def forward(self, input_ids=None, attention_mask=None, **kw) -> SimpleNamespace:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        return SimpleNamespace(logits=self.classifier(self.dropout(mean_pool(hidden, attention_mask))))


class TextHandle(ModelHandle):
    """What every transformers text model shares: tokenising, logits, and mean-pooled
    hidden states per layer as features."""

    def __init__(self, model, tokenizer, info: ModelInfo, head: list[str], max_length: int = 128) -> None:
        super().__init__(model, info, head)
        if tokenizer.pad_token is None:  # decoder tokenizers often have none: pad with end-of-text
            if tokenizer.eos_token is None:
                raise RobustfeatError(f"the tokenizer of '{info.name}' has neither a pad nor an end-of-text token")
            tokenizer.pad_token = tokenizer.eos_token
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id  # sequence classifiers find the last token by it
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if limit and max_length > limit:
            raise RobustfeatError(f"max_length {max_length} exceeds what '{info.name}' can read ({limit} positions)")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def preprocess(self, table: Table) -> dict[str, torch.Tensor]:
        enc = self.tokenizer([str(t) for t in table["text"]], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, inputs):
        return self.model(**inputs).logits

    def _features(self, inputs, layers):
        hidden = self.model.base_model(**inputs, output_hidden_states=True).hidden_states  # embeddings + layers
        feats = {f"layer{i}": mean_pool(h, inputs.get("attention_mask")) for i, h in enumerate(hidden)}
        feats["embedding"] = feats[f"layer{len(hidden) - 1}"]
        return {k: v for k, v in feats.items() if layers is None or k in layers}


class TextClassifier(TextHandle):
    """Any ``AutoModelForSequenceClassification`` (or :class:`MeanPoolClassifier`);
    ``embedding`` is the last layer mean-pooled, the sentence embedding of MiniLM-style models."""

    family = "text-classifier"
    default_targets = ["query", "value"]

    def __init__(self, model, tokenizer, info: ModelInfo, max_length: int = 128) -> None:
        head = [n for n in ("classifier", "score") if _has(model, n)]
        super().__init__(model, tokenizer, info, head, max_length)

    def loss(self, inputs, table):
        return F.cross_entropy(self.forward(inputs), self.labels(table))


class CausalLM(TextHandle):
    """Any ``AutoModelForCausalLM``: next-token loss on the ``text`` column; the score is
    perplexity."""

    family = "causal-lm"
    default_targets = ["q_proj", "v_proj"]

    def __init__(self, model, tokenizer, info: ModelInfo, max_length: int = 128) -> None:
        tokenizer.padding_side = "right"  # left padding would predict the first token from a pad
        super().__init__(model, tokenizer, info, [], max_length)

    def _masked_nll(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T-1) next-token NLL, zero where not scored, and the (N, T-1) mask of scored tokens."""
        logits = self.forward(inputs)[:, :-1]
        target = inputs["input_ids"][:, 1:]
        m = inputs["attention_mask"]
        mask = (m[:, 1:] * m[:, :-1]).to(logits.dtype)  # a real token predicted from a real token
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="none")
        return nll.view_as(mask) * mask, mask

    def _token_nll(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        nll, mask = self._masked_nll(inputs)
        return nll.sum(), mask.sum()

    def text_nll(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text's summed next-token NLL and its number of scored tokens, (N,) each: an
        inference call like ``eval_sums`` (whose totals are their sums)."""
        with self.inference():
            nll, mask = self._masked_nll(inputs)
            return nll.sum(1), mask.sum(1)

    def loss(self, inputs, table):
        total, count = self._token_nll(inputs)
        return total / count.clamp(min=1.0)

    def _eval_sums(self, inputs, table) -> dict[str, float]:
        total, count = self._token_nll(inputs)
        return {"nll": float(total), "tokens": float(count)}

    def metric(self, totals):
        return "perplexity", float(np.exp(totals["nll"] / max(totals["tokens"], 1.0)))


def _has(model: Any, name: str) -> bool:
    return any(n == name for n, _ in model.named_children())
