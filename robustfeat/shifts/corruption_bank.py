"""``corruptions``: the ImageNet-C bank on the checkpoint's test images.

Images are corrupted at the model's input resolution (ImageNet-C corrupts the 224 px
crop the model sees), once per (data, corruption, severity, seed), and cached: every
checkpoint evaluated on the same data reads the same corrupted bytes.
"""

from __future__ import annotations

import hashlib


from robustfeat.metrics.corruption import COMMON, EXTRA
from robustfeat.registry import CORRUPTIONS
from robustfeat.shifts.cache import corrupted_images
from robustfeat.shifts.clean import classification_rows
from robustfeat.shifts.evaluation import Cell, EvalContext, Evaluation, register_evaluation, require, subsample

#: the shift name of the bank's own clean cell
UNCORRUPTED = "uncorrupted"

#: images per corruption batch: part of the cache key (random draws are per batch)
CORRUPTION_BATCH = 64


@register_evaluation
class Corruptions(Evaluation):
    name = "corruptions"
    summary = "ImageNet-C: 15 corruptions + 4 extras x 5 severities at the model's input size"
    families = frozenset({"image-classifier"})

    def corruptions(self) -> tuple[str, ...]:
        return tuple(self.params.get("corruptions") or (*COMMON, *EXTRA))

    def cells(self, ctx: EvalContext) -> list[Cell]:
        severities = self.params.get("severities") or (1, 2, 3, 4, 5)
        # the same images uncorrupted: E_clean of relative mCE must come from the images the
        # corrupted errors do, not from the (larger) clean test split
        return [Cell(self.name, UNCORRUPTED, 0),
                *(Cell(self.name, c, s) for c in self.corruptions() if c in CORRUPTIONS for s in severities)]

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
