"""Banks: named, versioned lists of evaluations, one per model family by default
(``robustfeat ls banks``). A bank's version changes whenever what its cells compute
changes, so results of different versions are never mixed in one folder.

Each entry gives the evaluation's parameters for the full bank and for ``--quick`` (a
smoke-size bank: fewer corruptions, severities and probe examples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from robustfeat.registry import BANKS, EVALUATIONS

#: the quick bank's corruptions: one per family (noise, blur, weather, digital)
QUICK_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog", "jpeg_compression")


@dataclass(frozen=True)
class Entry:
    evaluation: str
    params: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bank:
    name: str
    version: int
    family: str
    summary: str
    entries: tuple[Entry, ...]

    def evaluations(self, quick: bool, overrides: dict[str, dict[str, Any]] | None = None):
        """Instantiated evaluations, in order: (name, Evaluation)."""
        out = []
        for e in self.entries:
            params = {**e.params, **(e.quick if quick else {}), **((overrides or {}).get(e.evaluation, {}))}
            out.append((e.evaluation, EVALUATIONS.get(e.evaluation)(**params)))
        return out

    @property
    def tag(self) -> str:
        return f"{self.name}-v{self.version}"


def register_bank(bank: Bank) -> Bank:
    return BANKS.register(bank.name)(bank)


DRIFT = (Entry("cka", {"examples": 256}, {"examples": 64}), Entry("weights", {"k": 10}))
#: the entries the image and text banks share
CLEAN = Entry("clean", {"examples": None})
DOMAINS = Entry("domains", {"examples": None}, {"examples": 256})
OOD = Entry("ood", {"examples": 2000}, {"examples": 256})
LINEAR_PROBE = Entry("linear-probe", {"train_examples": 2000, "test_examples": 1000},
                     {"train_examples": 300, "test_examples": 200})

# Versions: image v4 and text v2 put an OOD row's kind in its own column and hold the linear
# probe out (never the fine-tuning task, its OOD pairs or its label set; texts deduplicated
# against the fine-tuning data).
# Image v5, text v3, causal-lm v3: evaluated with the adapters merged, channels-last for images and
# under inference_mode (float-level changes), the base's linear-probe accuracy cached per base.

#: the corruption code the image bank's version stands for: when CORRUPTIONS_VERSION changes
#: the corrupted images change, so the image bank's version must change with it (a test checks)
IMAGE_BANK_CORRUPTIONS_VERSION = 4

register_bank(Bank(
    name="image", version=5, family="image-classifier",
    summary="clean, ImageNet-C corruptions (19 x 5), paired domains, ImageNet-head agreement (and accuracy on "
            "--imagenet DIR), linear probe, drift",
    entries=(
        CLEAN,
        Entry("corruptions", {"examples": 1000}, {"examples": 128, "corruptions": QUICK_CORRUPTIONS,
                                                   "severities": (1, 3, 5)}),
        DOMAINS,
        OOD,
        Entry("imagenet-agreement", {"examples": 1000}, {"examples": 128}),
        Entry("imagenet-accuracy", {"examples": 5000}, {"examples": 256}),
        LINEAR_PROBE,
        *DRIFT,
    ),
))

register_bank(Bank(
    name="text", version=3, family="text-classifier",
    summary="clean, domains, OOD sets (Amazon/NYT/tweets for Rotten Tomatoes), embedding geometry, linear probe, drift",
    entries=(
        CLEAN,
        DOMAINS,
        OOD,
        Entry("embedding-geometry", {"examples": 500}, {"examples": 128}),
        LINEAR_PROBE,
        *DRIFT,
    ),
))

# causal-lm v2 adds OOD perplexity (the declared OOD text, deduplicated against the fine-tuning
# data) and the zero-shot task probe (VADER tweet sentiment by label-word log-likelihood).
register_bank(Bank(
    name="causal-lm", version=3, family="causal-lm",
    summary="validation perplexity, OOD perplexity (VADER Amazon/NYT/tweets for Rotten Tomatoes), perplexity on "
            "generic text (news-text) and zero-shot accuracy (VADER tweet sentiment) before and after, drift",
    entries=(
        Entry("clean", {"examples": None}, {"examples": 128}),
        Entry("ood-perplexity", {"examples": 500}, {"examples": 64}),
        Entry("perplexity", {"examples": 500}, {"examples": 64}),
        Entry("zero-shot", {"examples": 500}, {"examples": 64}),
        *DRIFT,
    ),
))


def bank_for_family(family: str) -> Bank:
    """The family's default bank (robustfeat ls families); one clear error when it has none."""
    from robustfeat.registry import FAMILIES

    return FAMILIES.get(family).default_bank()
