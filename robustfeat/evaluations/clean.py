"""``clean``: the checkpoint's own test split, in-distribution (accuracy with its CI,
error, expected calibration error; perplexity for causal LMs)."""

from __future__ import annotations

import numpy as np
import torch

from robustfeat.metrics import expected_calibration_error
from robustfeat.evaluations.base import (
    FRACTION,
    Cell,
    EvalContext,
    Evaluation,
    Headline,
    accuracy_rows,
    cell_seed,
    metric_row,
    predict_logits,
    subsample,
    register_evaluation,
)


@register_evaluation
class Clean(Evaluation):
    name = "clean"
    summary = "the fine-tuning data's test split: accuracy (CI), error, ECE; perplexity for causal LMs"
    order = 0
    explain = ("ID acc / ID ppl: the fine-tuning data's own test split; for one seed the interval is the "
               "cell's 95% bootstrap CI, for several a t-interval over seeds.")
    headlines = (
        Headline("id_acc", "ID acc", "accuracy", True, "accuracy on the fine-tuning data's test split", "in-domain",
                 shift="test", bounds=FRACTION),
        Headline("id_ppl", "ID ppl", "perplexity", False, "perplexity on the fine-tuning data's test split",
                 "in-domain", shift="test", bounds=(1.0, float("inf"))),
    )

    def cells(self, ctx: EvalContext) -> list[Cell]:
        return [Cell(self.name, "test")]

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        table = subsample(ctx.data["test"], self.params.get("examples"), ctx.options.seed)
        if ctx.family == "causal-lm":
            from robustfeat.train.loop import validation_score

            _, ppl, n = validation_score(ctx.handle, table, ctx.options.batch_size)
            return [metric_row("perplexity", ppl, n)]
        return classification_rows(ctx, table, cell)


def classification_rows(ctx: EvalContext, table, cell: Cell, note: str = "", kind: str = "") -> list[dict]:
    """accuracy (CI), error and ECE of the fine-tuned model on a labelled table."""
    logits = predict_logits(ctx.handle, table, ctx.options.batch_size)
    labels = np.asarray(table["label"])
    correct = logits.argmax(1) == labels
    probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
    return [*accuracy_rows(correct, cell_seed(ctx.options.seed, cell), note, kind),
            metric_row("ece", expected_calibration_error(probs, labels), len(labels), note=note, kind=kind)]
