"""``domains``: per-domain accuracy on the fine-tuning data's test split, for data with a
domain column (or ``--domain-column COL``), and the worst domain."""

from __future__ import annotations

import numpy as np

from robustfeat.evaluations.base import (
    FRACTION,
    Cell,
    EvalContext,
    Evaluation,
    Headline,
    Option,
    register_evaluation,
    require,
    subsample,
    summary_row,
)
from robustfeat.evaluations.clean import classification_rows
from robustfeat.metrics.robustness import worst_domain

CLASSIFIERS = frozenset({"text-classifier", "image-classifier"})


@register_evaluation
class Domains(Evaluation):
    name = "domains"
    summary = "accuracy per value of the test split's domain column (or --domain-column); worst domain"
    families = CLASSIFIERS
    order = 20
    explain = "worst domain: the lowest accuracy over the values of the test split's domain column."
    plots = ("domains",)
    options = (Option("domain_column", "column whose values split the test set into domains (default: the "
                      "data's own domain column)", metavar="COL", param="column"),)
    headlines = (Headline("worst_domain", "worst domain", "accuracy", True, "accuracy on the worst domain",
                          "robustness", shift="worst", bounds=FRACTION),)

    def column(self, ctx: EvalContext) -> str | None:
        return self.params.get("column") or ctx.data.domain_column

    def cells(self, ctx: EvalContext) -> list[Cell]:
        col = self.column(ctx)
        if col is None:
            return []
        test = ctx.data["test"]
        require(col in test, f"domain column '{col}' is not a column of '{ctx.data.name}'; "
                             f"columns: {', '.join(test.names())}")
        return [Cell(self.name, str(v)) for v in sorted(set(map(str, test[col])))]

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        test = ctx.data["test"]
        part = test.where(np.asarray(test[self.column(ctx)]).astype(str) == cell.shift)
        return classification_rows(ctx, subsample(part, self.params.get("examples"), ctx.options.seed), cell)

    @classmethod
    def summarize(cls, rows: list[dict], reference_rows: list[dict] | None, reference: str) -> list[dict]:
        dom = {r["shift"]: r["value"] for r in rows if r["metric"] == "accuracy"}
        if not dom:
            return []
        name, acc = worst_domain(dom)
        return [summary_row(cls.name, "worst", "accuracy", acc, len(dom), f"worst domain: {name}")]
