"""ModelHandle: one interface over every model family.

A handle owns the ``nn.Module`` and knows how to turn raw examples (a Table slice) into
model inputs, what the task output is, and which representation the drift probes read:

* ``preprocess(table) -> inputs``: tokenise text, resize and normalise images;
* ``logits(inputs)``: the task output (class logits, or next-token logits for causal LMs);
* ``loss(inputs, table)``: the training loss for the family;
* ``features(inputs, layers=None) -> {layer: (N, D)}``: pooled representations per layer.

``logits``, ``features`` and ``eval_sums`` are inference calls: each runs with the model in
eval mode (dropout off, normalisation statistics frozen) under ``torch.inference_mode`` (no
gradients, no autograd bookkeeping), then puts back the modes it found, so two identical
calls give identical outputs whatever the model's state. Families implement ``forward`` (the
task output in the model's current mode, what ``loss`` trains on), ``_features`` and
``_eval_sums``.

``fast_inference()`` is for a stretch of inference-only work on a model that does not change
meanwhile (an evaluation): the adapters merged, so a forward costs the base's, and the
family's fastest memory layout (channels-last for image models). Outputs agree with the plain
path within float tolerance, not bit for bit; two runs through the same path agree bit for
bit. Everything is put back on exit.
"""


from __future__ import annotations

import contextlib
from collections.abc import Iterator

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robustfeat.data.table import Table


@dataclass
class ModelInfo:
    """What ``robustfeat ls models`` shows and checkpoints record."""

    name: str
    family: str  # text-classifier | causal-lm | image-classifier
    source: str  # where the weights load from
    num_parameters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ModelHandle:
    family: ClassVar[str] = ""
    #: target_modules used when the user names none
    default_targets: ClassVar[list[str] | str] = "all-linear"

    def __init__(self, model: nn.Module, info: ModelInfo, head: list[str]) -> None:
        self.model = model
        self.info = info
        #: modules trained in full next to adapters (new task heads); modules_to_save
        self.head = head
        info.num_parameters = sum(p.numel() for p in model.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> ModelHandle:
        self.model.to(device)
        return self

    # --- inference: always in eval mode --------------------------------------------------
    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """Eval mode and inference mode (no gradients, no autograd bookkeeping) for the block;
        every module's mode is put back after. Tensors made inside are inference tensors:
        read them (``.cpu().numpy()``, arithmetic), never train on them."""
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            for m, mode in modes:
                m.training = mode

    @contextlib.contextmanager
    def fast_inference(self) -> Iterator[None]:
        """For inference-only work on a model that stays as it is for the block (an
        evaluation): every adapter that can merge is merged into its base weight (robustfeat's
        lora, lorfa and vefa, PEFT's ia3 and vera; a forward then costs the base's) and the
        model takes the family's fastest memory layout (:meth:`_fast_layout`). On exit the
        adapters this merged are unmerged exactly and the layout is put back; training modes
        are not touched. Do not train inside (a merged adapter refuses to)."""
        from robustfeat.adapters.model import adapters_merged

        with contextlib.ExitStack() as stack:
            stack.enter_context(adapters_merged(self.model))  # merged in the stored layout, as `weights` reads it
            stack.enter_context(self._fast_layout())
            yield

    @contextlib.contextmanager
    def _fast_layout(self) -> Iterator[None]:
        """The memory layout fastest for this family's inference (none by default)."""
        yield

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.inference():
            return self.forward(inputs)

    def features(self, inputs: dict[str, torch.Tensor], layers: list[str] | None = None) -> dict[str, torch.Tensor]:
        with self.inference():
            return self._features(inputs, layers)

    def eval_sums(self, inputs: dict[str, torch.Tensor], table: Table) -> dict[str, float]:
        """Per-batch sums for the validation metric."""
        with self.inference():
            return self._eval_sums(inputs, table)

    # --- family-specific ------------------------------------------------------------------
    def preprocess(self, table: Table) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task output in the model's current mode (training uses this)."""
        raise NotImplementedError

    def loss(self, inputs: dict[str, torch.Tensor], table: Table) -> torch.Tensor:
        raise NotImplementedError

    def _features(self, inputs: dict[str, torch.Tensor], layers: list[str] | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def labels(self, table: Table) -> torch.Tensor:
        return torch.as_tensor(table["label"], dtype=torch.long, device=self.device)

    def _eval_sums(self, inputs: dict[str, torch.Tensor], table: Table) -> dict[str, float]:
        """Accuracy sums by default."""
        pred = self.forward(inputs).argmax(-1).cpu().numpy()
        return {"correct": float((pred == table["label"]).sum()), "count": float(len(table))}

    def metric(self, totals: dict[str, float]) -> tuple[str, float]:
        return "accuracy", totals["correct"] / max(totals["count"], 1.0)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(N, T, D) -> (N, D), averaging over real tokens only."""
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
