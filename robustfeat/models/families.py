"""Model families: everything robustfeat knows about a kind of model, one registry entry
each (``robustfeat ls families``): the handle class that wraps it, where its default
adapter targets come from, the dataset tasks it can fine-tune on, the bank that evaluates
it and the held-out tasks its linear probe tries. A new family is one entry here plus its
handle class (and a bank for it); asking for a family with no bank is one clear error."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from robustfeat.errors import RobustfeatError
from robustfeat.registry import FAMILIES


@dataclass(frozen=True)
class Family:
    name: str
    summary: str
    #: the handle class, "module:Class" (imported on use: listing families stays light)
    handle: str
    #: dataset tasks (robustfeat.data.spec.TASKS) a model of this family can fine-tune on
    tasks: frozenset[str]
    #: the bank ``robustfeat evaluate`` runs by default (None: none yet)
    bank: str | None
    #: held-out tasks of the linear probe, in order of preference: (dataset, label column)
    probes: tuple[tuple[str, str], ...] = ()

    def handle_class(self) -> type:
        module, cls = self.handle.split(":")
        return getattr(importlib.import_module(module), cls)

    @property
    def default_targets(self):
        """The adapter targets of the family's handle when the model names none."""
        return self.handle_class().default_targets

    def default_bank(self):
        from robustfeat.registry import BANKS

        if self.bank is None:
            raise RobustfeatError(f"no bank is registered for {self.name} models; add one in "
                                  "robustfeat/evaluations/banks.py (robustfeat ls banks) or pass --bank")
        return BANKS.get(self.bank)


def register_family(family: Family) -> Family:
    return FAMILIES.register(family.name)(family)


register_family(Family(
    "text-classifier", "text encoders with a new classification head (BERT, MiniLM, RoBERTa, ...)",
    "robustfeat.models.text:TextClassifier", frozenset({"text-classification"}), "text",
    probes=(("vader-sentiment", "domain"), ("news-text", "domain")),
))
register_family(Family(
    "causal-lm", "decoder language models trained on next-token loss (GPT-2, SmolLM2, Llama, ...)",
    "robustfeat.models.text:CausalLM", frozenset({"text", "text-classification"}), "causal-lm",
))
register_family(Family(
    "image-classifier", "image networks with a new head beside the kept pretrained head (EfficientNet, ViT, ...)",
    "robustfeat.models.vision:ImageClassifier", frozenset({"image-classification"}), "image",
    probes=(("mnist-5k", "label"), ("digits", "label"), ("fashion-mnist", "label")),
))


def family(name: str) -> Family:
    return FAMILIES.get(name)
