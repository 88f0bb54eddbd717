"""``corruptions``: the ImageNet-C bank on the checkpoint's test images.

Images are corrupted at the model's input resolution (ImageNet-C corrupts the 224 px
crop the model sees), once per (data, corruption, severity, seed), and cached: every
checkpoint evaluated on the same data reads the same corrupted bytes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from robustfeat.metrics.corruption_errors import COMMON, EXTRA, corruption_errors, mean_corruption_error
from robustfeat.registry import CORRUPTIONS
from robustfeat.shifts.cache import corrupted_images
from robustfeat.evaluations.clean import classification_rows
from robustfeat.evaluations.base import (
    FRACTION,
    Cell,
    EvalContext,
    Evaluation,
    Headline,
    register_evaluation,
    require,
    subsample,
    summary_row,
)

#: the shift name of the bank's own clean cell
UNCORRUPTED = "uncorrupted"

#: images per corruption batch: part of the cache key (random draws are per batch)
CORRUPTION_BATCH = 64


@register_evaluation
class Corruptions(Evaluation):
    name = "corruptions"
    summary = "ImageNet-C: 15 corruptions + 4 extras x 5 severities at the model's input size"
    families = frozenset({"image-classifier"})
    order = 30
    explain = ("mCE (mean corruption error): for each corruption, the error summed over severities divided by "
               "the same sum for the reference checkpoint, averaged over corruptions; 1.0 means as robust as the "
               "reference, below 1 is better. The reference here: {reference} (never AlexNet, whose normalisers "
               "apply to ImageNet only). Relative mCE does the same with (corrupted - clean error): whether accuracy "
               "degrades less than the reference's, separating robustness from clean accuracy. corr. mean err is "
               "the plain mean error over corruptions and severities and needs no reference.")
    plots = ("corruption-severity", "corruption-heatmap", "mce")
    headlines = (
        Headline("mean_error", "corr. mean err", "mean_error", False,
                 "plain mean error over the corruptions and severities run (no reference)", "robustness",
                 shift="all", bounds=FRACTION),
        Headline("mce", "mCE", "mce", False, "mean corruption error relative to the reference", "robustness",
                 shift="all", bounds=(0.0, float("inf"))),
        Headline("relative_mce", "rel. mCE", "relative_mce", False,
                 "mean of (corrupted - clean error), relative to the reference's", "robustness", shift="all"),
    )

    def corruptions(self) -> tuple[str, ...]:
        return tuple(self.params.get("corruptions") or (*COMMON, *EXTRA))

    def cells(self, ctx: EvalContext) -> list[Cell]:
        severities = self.params.get("severities") or (1, 2, 3, 4, 5)
        # the same images uncorrupted: E_clean of relative mCE must come from the images the
        # corrupted errors do, not from the (larger) clean test split
        return [Cell(self.name, UNCORRUPTED, 0),
                *(Cell(self.name, c, s) for c in self.corruptions() if c in CORRUPTIONS for s in severities)]

    def select(self, cells: list[Cell], wanted: set[str] | None) -> list[Cell]:
        kept = super().select(cells, wanted)
        if kept and not any(c.shift == UNCORRUPTED for c in kept):  # E_clean of relative mCE comes from it
            kept = [c for c in cells if c.shift == UNCORRUPTED] + kept
        return kept

    def _images(self, ctx: EvalContext):
        if "corruption_images" not in ctx.memo:
            table = subsample(ctx.data["test"], self.params.get("examples"), ctx.options.seed)
            size = ctx.handle.image_size
            require(size >= 32, f"corruptions need images of at least 32 px; this model reads {size} px "
                                "(fine-tune with --image-size 32 or more)")
            images = ctx.handle.model_view(table["image"])
            key = hashlib.sha256(f"{ctx.data.fingerprint}|{table.fingerprint()}|{size}".encode()).hexdigest()
            ctx.memo["corruption_images"] = (table, images, key)
        return ctx.memo["corruption_images"]

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        table, images, key = self._images(ctx)
        if cell.shift == UNCORRUPTED:
            return classification_rows(ctx, table.with_column("image", images), cell,
                                       note="the corruption bank's images, uncorrupted")
        corrupted = corrupted_images(images, cell.shift, cell.severity, key=key, seed=ctx.options.seed,
                                     batch_size=CORRUPTION_BATCH, device=ctx.handle.device)
        return classification_rows(ctx, table.with_column("image", corrupted), cell)

    @classmethod
    def summarize(cls, rows: list[dict], reference_rows: list[dict] | None, reference: str) -> list[dict]:
        """The plain mean corruption error over the 15 ImageNet-C corruptions run (all the
        corruptions run when none of the 15 is), and CE per corruption, mCE and relative mCE
        against the reference over the corruptions and severities both have."""
        errs, clean = _errors(rows)
        if not errs:
            return []
        names = tuple(c for c in COMMON if c in errs) or tuple(sorted(errs))
        which = "the 15 ImageNet-C corruptions" if len(names) == 15 else f"{len(names)} corruptions: {', '.join(names)}"
        out = [summary_row(cls.name, "all", "mean_error", mean_corruption_error(errs, names),
                           sum(len(errs[c]) for c in names), f"plain mean error over {which} (no reference)")]
        ref_errs, ref_clean = _errors(reference_rows or [])
        shared = tuple(c for c in names if c in ref_errs and set(ref_errs[c]) == set(errs[c]))
        if shared and clean is not None and ref_clean is not None:
            s = corruption_errors({c: errs[c] for c in shared}, clean, reference={c: ref_errs[c] for c in shared},
                                  reference_clean_error=ref_clean, reference_name=reference, corruptions=shared)
            note = f"reference {reference}; over {len(shared)} corruptions"
            out.append(summary_row(cls.name, "all", "mce", s.mce, len(shared), note, reference))
            if s.relative_mce is not None:
                out.append(summary_row(cls.name, "all", "relative_mce", s.relative_mce, len(shared), note, reference))
            for c, v in s.ce.items():
                out.append(summary_row(cls.name, c, "ce", v, len(errs[c]), note, reference))
        return out


def _errors(rows: list[dict]) -> tuple[dict[str, dict[int, float]], float | None]:
    """Corrupted errors by corruption and severity, and the error on the same images
    uncorrupted (the ``uncorrupted`` cell)."""
    errs: dict[str, dict[int, float]] = defaultdict(dict)
    clean = None
    for r in rows:
        if r["metric"] != "error":
            continue
        if r["shift"] == UNCORRUPTED:
            clean = r["value"]
        else:
            errs[r["shift"]][int(r["severity"])] = r["value"]
    return dict(errs), clean
