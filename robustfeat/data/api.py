"""Loading a dataset by name or path into train / validation / test tables."""

from __future__ import annotations

import csv
import hashlib
import json
import os

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
    image_column: str = "image",
    progress: bool = True,
) -> DatasetBundle:
    """A registered dataset name, ``hf:ID`` (online), a CSV/JSON(L) file, an image folder
    (one sub-folder per class) or a ``datasets.save_to_disk`` folder. ``text_column``,
    ``label_column`` and ``image_column`` name the columns of user data (defaults: the first
    of text, sentence, review, content; label; image). A user file or folder is recorded by
    its absolute path."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise DataError(f"a dataset is a registered name or a path, got {name_or_path!r}")
    if name_or_path in DATASETS:
        if text_column is not None or label_column != "label" or image_column != "image":
            raise DataError(f"text_column, label_column and image_column apply to user files; '{name_or_path}' is a "
                            "registered dataset, whose columns are known")
        spec = DATASETS.get(name_or_path)
        tables, manifest = load_prepared(spec, progress=progress)
        provenance = {"source": manifest["source"], "cache_files": manifest["files"], "notes": spec.notes}
        bundle = _bundle(spec.name, spec.task, tables, spec.input_column, spec.label_names, spec.domain_column,
                         provenance, transform=spec.transform)
    else:
        bundle = _load_user(name_or_path, text_column, label_column, image_column)
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
    for label, n in (("max_examples", max_examples), ("max_eval_examples", max_eval)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise DataError(f"{label} must be a positive integer or None, got {n!r}")
    if max_examples:
        splits["train"] = subsample(splits["train"], max_examples, seed, strata)
    if max_eval:
        splits["validation"] = subsample(splits["validation"], max_eval, seed, strata)
        splits["test"] = subsample(splits["test"], max_eval, seed, strata)
    for split in ("train", "validation", "test"):
        if len(splits[split]) == 0:
            raise DataError(f"dataset '{b.name}' is too small: its '{split}' split is empty")
    b.splits = {k: splits[k] for k in ("train", "validation", "test")}
    if b.task.endswith("classification"):
        _check_classes(b)
    h = hashlib.sha256()
    for k, t in b.splits.items():
        h.update(f"{k}:{t.fingerprint()}\n".encode())
    b.fingerprint = h.hexdigest()
    b.provenance = {**b.provenance, "seed": seed, "max_examples": max_examples, "max_eval_examples": max_eval,
                    "rows": {k: len(t) for k, t in b.splits.items()}}
    return b


def _check_classes(b: DatasetBundle) -> None:
    """Fewer than two classes in the training split is refused (a classifier learns nothing and
    its accuracy is meaningless); a class the training split has but validation or test lack is
    a warning (those splits then say nothing about it)."""
    from robustfeat.errors import warn

    names = b.label_names or []
    label = lambda i: names[i] if 0 <= i < len(names) else str(i)  # noqa: E731
    present = {k: set(np.unique(np.asarray(t["label"])).tolist()) for k, t in b.splits.items()}
    train = present["train"]
    if len(train) < 2:
        only = ", ".join(f"'{label(i)}'" for i in sorted(train)) or "none"
        raise DataError(f"dataset '{b.name}': its training split ({len(b.splits['train'])} rows) holds one class only "
                        f"({only}); a classifier needs examples of at least two classes")
    for split in ("validation", "test"):
        missing = sorted(train - present[split])
        if missing:
            shown = ", ".join(f"'{label(i)}'" for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
            warn(f"dataset '{b.name}': {len(missing)} class(es) of the training split have no example in its "
                 f"'{split}' split ({shown}); its {split} accuracy says nothing about them")


# --- user data ----------------------------------------------------------------------------
#: file types read as tables; a name with one of these suffixes (or a folder part) is a path
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` is meant as a file or folder rather than a dataset name."""
    return "/" in spec or os.sep in spec or spec.startswith(("~", ".")) or spec.lower().endswith(TABLE_SUFFIXES)


def _load_user(spec: str, text_column: str | None, label_column: str, image_column: str = "image") -> DatasetBundle:
    if spec.startswith("hf:"):
        return _from_hf(spec[3:], text_column, label_column, image_column)
    path = Path(spec).expanduser()
    if not path.exists():
        if looks_like_path(spec):
            raise DataError(f"file not found: {path.absolute()}")
        from robustfeat.errors import UnknownNameError

        msg = DATASETS.unknown_message(spec)
        raise UnknownNameError(f"{msg} Or give a path (CSV/JSON file, image folder) or hf:DATASET_ID.")
    where = {"path": str(path.resolve())}
    if path.is_file():
        rows = _read_rows(path)
        return _text_bundle(path.stem, {"all": rows}, text_column, label_column, where)
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists() or (path / "dataset_info.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(path))
        return _hf_bundle(path.name, ds, text_column, label_column, where, image_column)
    return _image_folder(path)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix in {".csv", ".tsv"}:
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                rows = []
                for r in reader:
                    if None in r:  # DictReader keeps a row's extra fields under the key None
                        header = reader.fieldnames or []
                        raise DataError(f"'{path}': line {reader.line_num} has {len(header) + len(r[None])} fields "
                                        f"but the header has {len(header)} ({', '.join(header)}); quote a field "
                                        "that contains the delimiter")
                    rows.append(r)
                return rows
        if suffix == ".jsonl":
            with open(path, encoding="utf-8-sig") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            return data if isinstance(data, list) else data.get("data", [])
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read '{path}': {e}") from None
    raise DataError(f"'{path}': unsupported file type '{suffix}'; use .csv, .tsv, .json or .jsonl")


def _text_bundle(name, parts: dict[str, list[dict]], text_column, label_column, provenance) -> DatasetBundle:
    """Text rows -> tables. Labels: integers 0..K-1 are kept; any other set (strings,
    -1/1, sparse integers) is mapped to 0..K-1 in sorted order, the originals becoming the
    label names. Without a label column the data is plain text (for language models)."""
    if not any(parts.values()):
        raise DataError(f"dataset '{name}' is empty")
    cols = list(next(rows for rows in parts.values() if rows)[0])
    col = text_column or next((c for c in TEXT_COLUMNS if c in cols), None)
    if col is None or col not in cols:
        raise DataError(f"dataset '{name}' has no text column {text_column or '/'.join(TEXT_COLUMNS)!r}; "
                        f"columns: {', '.join(cols)}; pass --text-column")
    labelled = label_column in cols
    raw: dict[str, list[str]] = {}
    if labelled:
        for split, rows in parts.items():
            values = []
            for i, r in enumerate(rows):
                v = r.get(label_column)
                if v is None or str(v).strip() == "":
                    raise DataError(f"dataset '{name}': row {i + 1}" + (f" of '{split}'" if split != "all" else "")
                                    + f" has no {label_column!r}; "
                                    "every row of a classification dataset needs a label")
                values.append(str(v).strip())
            raw[split] = values
        distinct = sorted({v for vs in raw.values() for v in vs}, key=lambda v: (not _is_int(v), _sort_key(v)))
        if all(_is_int(v) for v in distinct) and [int(v) for v in distinct] == list(range(len(distinct))):
            index = {v: int(v) for v in distinct}
        else:
            index = {v: i for i, v in enumerate(distinct)}
        label_names = distinct
    tables = {}
    for split, rows in parts.items():
        if not rows:
            raise DataError(f"dataset '{name}' has an empty '{split}' split")
        columns: dict[str, Any] = {"text": [str(r.get(col, "")) for r in rows]}
        if labelled:
            columns["label"] = np.array([index[v] for v in raw[split]], dtype=np.int64)
        for extra in cols:  # other columns are kept as strings: domains, user-defined splits
            if extra not in (col, label_column, "text", "label", "image"):
                columns[extra] = [str(r.get(extra, "")) for r in rows]
        tables[split] = Table(columns)
    domain = "domain" if all("domain" in t for t in tables.values()) else None
    task = "text-classification" if labelled else "text"
    return DatasetBundle(name, task, tables, "text", label_names if labelled else None, domain, provenance=provenance)


def _sort_key(v: str):
    return int(v) if _is_int(v) else v


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def _from_hf(dataset_id: str, text_column, label_column, image_column: str = "image") -> DatasetBundle:
    from robustfeat.data.sources import HubDataset

    src = HubDataset(dataset_id)
    why = src.unavailable()
    if why:
        raise DataError(f"hf:{dataset_id} needs the Hub, but {why}; download it elsewhere and pass the folder")
    import tempfile

    ds = src.fetch(Path(tempfile.mkdtemp(prefix="robustfeat-hf-")))
    return _hf_bundle(dataset_id, ds, text_column, label_column, {"hub": dataset_id}, image_column)


def _hf_bundle(name, ds, text_column, label_column, provenance, image_column: str = "image") -> DatasetBundle:
    import datasets

    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"all": ds})
    parts = {("validation" if k in ("valid", "dev") else k): [dict(r) for r in d] for k, d in ds.items()}
    first = next(iter(parts.values()), [])
    names = None
    feature = next(iter(ds.values())).features.get(label_column)
    if feature is not None and hasattr(feature, "names"):
        names = list(feature.names)  # a ClassLabel keeps its class names
    if first and image_column in first[0]:
        pil = {k: [_to_pil(r[image_column]) for r in rows] for k, rows in parts.items()}
        size = _common_size([im for ims in pil.values() for im in ims])
        tables = {}
        for k, rows in parts.items():
            images = np.stack([_rgb_array(im, size) for im in pil[k]])
            tables[k] = Table({"image": images, "label": np.array([r[label_column] for r in rows], dtype=np.int64)})
        n = int(max(t["label"].max() for t in tables.values())) + 1
        return DatasetBundle(name, "image-classification", tables, "image", names or [str(i) for i in range(n)],
                             provenance={**provenance, "image_size": list(size)})
    bundle = _text_bundle(name, parts, text_column, label_column, provenance)
    if names and bundle.label_names and all(_is_int(v) for v in bundle.label_names):
        bundle.label_names = [names[int(v)] for v in bundle.label_names]
    return bundle


def _to_pil(im):
    from PIL import Image

    return im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, dtype=np.uint8))


def _common_size(images) -> tuple[int, int]:
    """The most common (width, height): every image is resized to it."""
    from collections import Counter

    return Counter(im.size for im in images).most_common(1)[0][0]


def _rgb_array(im, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    im = im.convert("RGB")
    if im.size != size:
        im = im.resize(size, Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _image_folder(path: Path) -> DatasetBundle:
    from PIL import Image

    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"'{path}' is not a dataset: expected one sub-folder per class holding images, "
                        "or a CSV/JSON file")
    files, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    opened = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                opened.append(im.copy())
        except OSError as e:
            raise DataError(f"cannot read image '{f}': {e}") from None
    images = []
    if opened:
        size = _common_size(opened)  # not the first file's: one thumbnail must not shrink them all
        images = [_rgb_array(im, size) for im in opened]
    if not images:
        raise DataError(f"image folder '{path}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    table = Table({"image": np.stack(images), "label": np.asarray(labels, dtype=np.int64)})
    return DatasetBundle(path.name, "image-classification", {"all": table}, "image", classes,
                         provenance={"path": str(path.resolve()), "image_size": list(size)})


def describe_datasets() -> list[tuple[str, str, str, str]]:
    """Rows for ``robustfeat ls datasets``: name, task, cached?, sources."""
    rows = []
    for name, spec in DATASETS.items():
        cached = "yes" if (spec.cache_dir() / "manifest.json").exists() else "no"
        sources = " > ".join(s.describe() for s, _ in spec.sources)
        rows.append((name, spec.task, cached, spec.summary, sources))
    return rows


