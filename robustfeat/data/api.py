"""Loading a dataset by name or path into train / validation / test tables."""

from __future__ import annotations

import csv
import hashlib
import json

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustfeat.data.sources import DataError
from robustfeat.data.spec import load_prepared, prepare
from robustfeat.data.splits import stratified_split, subsample
from robustfeat.data.table import Table
from robustfeat.registry import DATASETS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEXT_COLUMNS = ("text", "sentence", "review", "content")


@dataclass
class DatasetBundle:
    """A dataset ready for fine-tuning or evaluation."""

    name: str
    task: str
    splits: dict[str, Table]
    input_column: str
    label_names: list[str] | None = None
    domain_column: str | None = None
    fingerprint: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 0

    def __getitem__(self, split: str) -> Table:
        if split not in self.splits:
            raise DataError(f"dataset '{self.name}' has no split '{split}'; it has {', '.join(self.splits)}")
        return self.splits[split]


def prepare_dataset(name: str, force: bool = False, progress: bool = True) -> Path:
    """Fetch a registered dataset into the cache (``robustfeat data prepare NAME``)."""
    return prepare(DATASETS.get(name), force=force, progress=progress)


def load_dataset(
    name_or_path: str,
    *,
    seed: int = 0,
    max_examples: int | None = None,
    max_eval_examples: int | None = None,
    text_column: str | None = None,
    label_column: str = "label",
    progress: bool = True,
) -> DatasetBundle:
    """A registered dataset name, ``hf:ID`` (online), a CSV/JSON(L) file, an image folder
    (one sub-folder per class) or a ``datasets.save_to_disk`` folder."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise DataError(f"a dataset is a registered name or a path, got {name_or_path!r}")
    if name_or_path in DATASETS:
        spec = DATASETS.get(name_or_path)
        tables, manifest = load_prepared(spec, progress=progress)
        provenance = {"source": manifest["source"], "cache_files": manifest["files"], "notes": spec.notes}
        bundle = _bundle(spec.name, spec.task, tables, spec.input_column, spec.label_names, spec.domain_column,
                         provenance, transform=spec.transform)
    else:
        bundle = _load_user(name_or_path, text_column, label_column)
    return _finish(bundle, seed, max_examples, max_eval_examples)


def _bundle(name, task, tables, input_column, label_names, domain_column, provenance, transform=None) -> DatasetBundle:
    if transform is not None:
        tables = {k: transform(t) for k, t in tables.items()}
    return DatasetBundle(name, task, tables, input_column, label_names, domain_column, provenance=provenance)


def _finish(b: DatasetBundle, seed: int, max_examples: int | None, max_eval: int | None) -> DatasetBundle:
    for split, t in b.splits.items():
        if len(t) == 0:
            raise DataError(f"dataset '{b.name}' has an empty '{split}' split")
        if b.input_column not in t:
            raise DataError(f"dataset '{b.name}' has no '{b.input_column}' column; columns: {', '.join(t.names())}")
        if b.task.endswith("classification") and "label" not in t:
            raise DataError(f"dataset '{b.name}' has no 'label' column; classification needs labels")
    strata = ["label", b.domain_column or ""]
    splits = dict(b.splits)
    if "validation" not in splits:
        if "train" in splits:
            parts = stratified_split(splits["train"], {"train": 0.9, "validation": 0.1}, seed, strata)
            splits["train"], splits["validation"] = parts["train"], parts["validation"]
        else:
            (only,) = splits.values() if len(splits) == 1 else (None,)
            if only is None:
                raise DataError(f"dataset '{b.name}' has splits {list(splits)}; expected 'train' or a single table")
            fractions = {"train": 0.8, "validation": 0.1} | ({} if "test" in splits else {"test": 0.1})
            splits = stratified_split(only, fractions, seed, strata) | ({"test": splits["test"]} if "test" in splits else {})
    if "test" not in splits:
        raise DataError(f"dataset '{b.name}' has no test split")
    for n in (max_examples,):
        if n is not None and n <= 0:
            raise DataError(f"max_examples must be positive, got {n}")
    if max_examples:
        splits["train"] = subsample(splits["train"], max_examples, seed, strata)
    if max_eval:
        splits["validation"] = subsample(splits["validation"], max_eval, seed, strata)
        splits["test"] = subsample(splits["test"], max_eval, seed, strata)
    for split in ("train", "validation", "test"):
        if len(splits[split]) == 0:
            raise DataError(f"dataset '{b.name}' is too small: its '{split}' split is empty")
    b.splits = {k: splits[k] for k in ("train", "validation", "test")}
    h = hashlib.sha256()
    for k, t in b.splits.items():
        h.update(f"{k}:{t.fingerprint()}\n".encode())
    b.fingerprint = h.hexdigest()
    b.provenance = {**b.provenance, "seed": seed, "max_examples": max_examples, "max_eval_examples": max_eval,
                    "rows": {k: len(t) for k, t in b.splits.items()}}
    return b


# --- user data ----------------------------------------------------------------------------
def _load_user(spec: str, text_column: str | None, label_column: str) -> DatasetBundle:
    if spec.startswith("hf:"):
        return _from_hf(spec[3:], text_column, label_column)
    path = Path(spec).expanduser()
    if not path.exists():
        from robustfeat.errors import UnknownNameError

        msg = DATASETS.unknown_message(spec)
        raise UnknownNameError(f"{msg} Or give a path (CSV/JSON file, image folder) or hf:DATASET_ID.")
    if path.is_file():
        rows = _read_rows(path)
        return _text_bundle(path.stem, {"all": rows}, text_column, label_column, {"path": str(path)})
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists() or (path / "dataset_info.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(path))
        return _hf_bundle(path.name, ds, text_column, label_column, {"path": str(path)})
    return _image_folder(path)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix in {".csv", ".tsv"}:
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        if suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return data if isinstance(data, list) else data.get("data", [])
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read '{path}': {e}") from None
    raise DataError(f"'{path}': unsupported file type '{suffix}'; use .csv, .tsv, .json or .jsonl")


def _text_bundle(name, parts: dict[str, list[dict]], text_column, label_column, provenance) -> DatasetBundle:
    tables, label_names = {}, None
    all_labels = sorted({str(r.get(label_column)) for rows in parts.values() for r in rows if r.get(label_column) is not None})
    for split, rows in parts.items():
        if not rows:
            raise DataError(f"dataset '{name}' is empty")
        cols = list(rows[0])
        col = text_column or next((c for c in TEXT_COLUMNS if c in cols), None)
        if col is None or col not in cols:
            raise DataError(f"dataset '{name}' has no text column {text_column or '/'.join(TEXT_COLUMNS)!r}; "
                            f"columns: {', '.join(cols)}; pass --text-column")
        if label_column not in cols:
            raise DataError(f"dataset '{name}' has no label column '{label_column}'; columns: {', '.join(cols)}")
        labels_raw = [str(r[label_column]) for r in rows]
        if all(_is_int(v) for v in all_labels):
            labels = np.array([int(v) for v in labels_raw], dtype=np.int64)
            label_names = [str(i) for i in range(max(int(v) for v in all_labels) + 1)]
        else:
            index = {v: i for i, v in enumerate(all_labels)}
            labels = np.array([index[v] for v in labels_raw], dtype=np.int64)
            label_names = all_labels
        columns = {"text": [str(r[col]) for r in rows], "label": labels}
        if "domain" in cols:
            columns["domain"] = [str(r["domain"]) for r in rows]
        tables[split] = Table(columns)
    domain = "domain" if all("domain" in t for t in tables.values()) else None
    return DatasetBundle(name, "text-classification", tables, "text", label_names, domain, provenance=provenance)


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def _from_hf(dataset_id: str, text_column, label_column) -> DatasetBundle:
    from robustfeat.data.sources import HubDataset

    src = HubDataset(dataset_id)
    why = src.unavailable()
    if why:
        raise DataError(f"hf:{dataset_id} needs the Hub, but {why}; download it elsewhere and pass the folder")
    import tempfile

    ds = src.fetch(Path(tempfile.mkdtemp(prefix="robustfeat-hf-")))
    return _hf_bundle(dataset_id, ds, text_column, label_column, {"hub": dataset_id})


def _hf_bundle(name, ds, text_column, label_column, provenance) -> DatasetBundle:
    import datasets

    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"all": ds})
    parts = {("validation" if k in ("valid", "dev") else k): [dict(r) for r in d] for k, d in ds.items()}
    first = next(iter(parts.values()), [])
    if first and "image" in first[0]:
        tables = {}
        for k, rows in parts.items():
            images = np.stack([np.asarray(r["image"]) for r in rows]).astype(np.uint8)
            tables[k] = Table({"image": images, "label": np.array([r[label_column] for r in rows], dtype=np.int64)})
        n = int(max(t["label"].max() for t in tables.values())) + 1
        return DatasetBundle(name, "image-classification", tables, "image", [str(i) for i in range(n)], provenance=provenance)
    return _text_bundle(name, parts, text_column, label_column, provenance)


def _image_folder(path: Path) -> DatasetBundle:
    from PIL import Image

    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"'{path}' is not a dataset: expected one sub-folder per class holding images, "
                        "or a CSV/JSON file")
    images, labels, size = [], [], None
    for label, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    size = size or im.size
                    if im.size != size:
                        im = im.resize(size, Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.uint8))
            except OSError as e:
                raise DataError(f"cannot read image '{f}': {e}") from None
            labels.append(label)
    if not images:
        raise DataError(f"image folder '{path}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    table = Table({"image": np.stack(images), "label": np.asarray(labels, dtype=np.int64)})
    return DatasetBundle(path.name, "image-classification", {"all": table}, "image", classes,
                         provenance={"path": str(path), "image_size": list(size)})


def describe_datasets() -> list[tuple[str, str, str, str]]:
    """Rows for ``robustfeat ls datasets``: name, task, cached?, sources."""
    rows = []
    for name, spec in DATASETS.items():
        cached = "yes" if (spec.cache_dir() / "manifest.json").exists() else "no"
        sources = " > ".join(s.describe() for s, _ in spec.sources)
        rows.append((name, spec.task, cached, spec.summary, sources))
    return rows


