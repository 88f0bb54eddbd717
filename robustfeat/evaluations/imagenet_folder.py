"""Accuracy of the kept ImageNet head on the user's own ImageNet-layout folder
(``robustfeat evaluate --imagenet DIR``): the labelled forgetting probe for image models.

The folder holds one sub-folder per class, named by WordNet ID (``n01440764``, the
ILSVRC-2012 validation layout most people have) or by class index (``0`` .. ``999``), with
image files inside. Images are resized (shorter side to size / 0.875, bilinear) and
centre-cropped to the model's input size, the standard ImageNet evaluation transform.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from robustfeat.data.table import Table
from robustfeat.metrics import forgetting
from robustfeat.evaluations.base import (
    FRACTION,
    Cell,
    EvalContext,
    EvaluationError,
    Headline,
    Option,
    accuracy_rows,
    cell_seed,
    metric_row,
    register_evaluation,
    require,
)
from robustfeat.evaluations.probes import PretrainedHeadProbe

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
CROP_FRACTION = 0.875


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 WordNet IDs in class-index order."""
    text = (Path(__file__).with_name("imagenet_wnids.txt")).read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def read_imagenet_folder(folder: str | os.PathLike) -> list[tuple[Path, int]]:
    """(image path, class index) for every image under ``folder``, sorted; one clear error
    for a missing folder, unknown class folder names or a folder with no images."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise EvaluationError(f"--imagenet folder '{folder}' does not exist (give a folder with one sub-folder per class)")
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    items: list[tuple[Path, int]] = []
    bad: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name in index:
            label = index[sub.name]
        elif sub.name.isdigit() and int(sub.name) < len(index):
            label = int(sub.name)
        else:
            bad.append(sub.name)
            continue
        items += [(f, label) for f in sorted(sub.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if bad:
        shown = ", ".join(repr(b) for b in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise EvaluationError(f"--imagenet folder '{folder}': class folders must be WordNet IDs (n01440764) or class "
                              f"indices 0-999, found {shown}")
    if not items:
        raise EvaluationError(f"--imagenet folder '{folder}' has no images in class sub-folders "
                              f"(expected {root}/n01440764/*.JPEG or {root}/0/*.png ...)")
    return items


def load_images(items: list[tuple[Path, int]], size: int) -> Table:
    """The standard ImageNet evaluation view of each image: (N, size, size, 3) uint8."""
    from PIL import Image, UnidentifiedImageError

    images = np.empty((len(items), size, size, 3), dtype=np.uint8)
    resize_to = int(round(size / CROP_FRACTION))
    for i, (path, _) in enumerate(items):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = resize_to / min(w, h)
                im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
                left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                images[i] = np.asarray(im.crop((left, top, left + size, top + size)))
        except (OSError, UnidentifiedImageError) as e:
            raise EvaluationError(f"cannot read image '{path}' in the --imagenet folder: {e}") from None
    return Table({"image": images, "label": np.array([label for _, label in items], dtype=np.int64)})


@register_evaluation
class ImagenetAccuracy(PretrainedHeadProbe):
    name = "imagenet-accuracy"
    summary = "accuracy of the kept ImageNet head, base vs fine-tuned, on the folder given with --imagenet"
    order = 70
    explain = "ImageNet acc: accuracy of the kept ImageNet head on the --imagenet folder's labelled images."
    plots = ()
    options = (Option("imagenet", "ImageNet-layout folder (class folders n01440764/... or 0/...): accuracy of the "
                      "kept ImageNet head, base vs fine-tuned", metavar="DIR", param="folder",
                      check=lambda folder: read_imagenet_folder(folder)),)
    headlines = (Headline("imagenet_acc", "ImageNet acc", "accuracy", True,
                          "accuracy of the kept ImageNet head on the --imagenet folder", "forgetting",
                          bounds=FRACTION),)

    def cells(self, ctx: EvalContext) -> list[Cell]:
        if not self.params.get("folder") or not self.has_head(ctx):
            return []
        # the cell is named after the folder's listing: another folder, or changed contents, is a new cell
        listing = "\n".join(f"{p.parent.name}/{p.name}" for p, _ in self._sample(ctx))
        return [Cell(self.name, f"imagenet-folder-{hashlib.sha256(listing.encode()).hexdigest()[:8]}")]

    def _sample(self, ctx: EvalContext) -> list[tuple[Path, int]]:
        items = read_imagenet_folder(self.params["folder"])
        n = self.params.get("examples")
        if n is not None and n < len(items):
            pick = np.sort(np.random.default_rng(ctx.options.seed).choice(len(items), n, replace=False))
            items = [items[i] for i in pick]
        return items

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        items = self._sample(ctx)
        head = ctx.handle.model.pretrained_head.out_features
        top = max(label for _, label in items)
        require(top < head, f"the --imagenet folder has class {top}, but this model's kept head has {head} classes")
        size = ctx.handle.image_size
        digest = hashlib.sha256()
        for path, label in items:
            st = path.stat()
            digest.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        if "imagenet_images" not in ctx.memo:
            ctx.memo["imagenet_images"] = load_images(items, size)
        table = ctx.memo["imagenet_images"]
        base, tuned = self.head_logits(ctx, table, "imagenet-folder-logits", [digest.hexdigest(), str(size)])
        labels = table["label"]
        base_acc = float((base.argmax(1) == labels).mean())
        rows = accuracy_rows(tuned.argmax(1) == labels, cell_seed(ctx.options.seed, cell))
        n = len(labels)
        note = f"{n} images, {len(set(labels.tolist()))} classes"
        return [*rows, metric_row("base_accuracy", base_acc, n, note=note),
                metric_row("forgetting", forgetting(base_acc, float(rows[0]["value"])), n, note="base - fine-tuned")]
