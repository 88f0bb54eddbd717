"""DatasetSpec: what a registered dataset is, and how it is prepared into the cache."""

from __future__ import annotations

import datetime as _dt
import errno
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustfeat.data.cache import cache_root, sha256_file
from robustfeat.data.sources import DataError, Source
from robustfeat.data.table import Table
from robustfeat.registry import DATASETS

Converter = Callable[[Any], dict[str, Table]]
TASKS = ("text-classification", "image-classification", "text")


@dataclass
class DatasetSpec:
    name: str
    task: str
    summary: str
    license: str
    sources: list[tuple[Source, Converter]]
    label_names: list[str] | None = None
    domain_column: str | None = None
    #: applied at load time (e.g. a labelling rule); recorded in the data fingerprint
    transform: Callable[[Table], Table] | None = None
    #: "loose": near-duplicate texts are kept once when preparing
    dedupe: str | None = None
    notes: str = ""
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_column(self) -> str:
        return "image" if self.task == "image-classification" else "text"

    def cache_dir(self) -> Path:
        return cache_root() / "datasets" / self.name / f"v{self.version}"


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.task not in TASKS:
        raise ValueError(f"unknown task {spec.task!r}")
    return DATASETS.register(spec.name)(spec)


MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when it is missing, unreadable or incomplete (then rebuilt)."""
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) or "name" not in meta:
        return None
    return meta


def verify(folder: Path, manifest: dict[str, Any]) -> None:
    for split, digest in manifest["files"].items():
        path = folder / f"{split}.npz"
        if not path.is_file() or sha256_file(path) != digest:
            raise DataError(
                f"the cached copy of '{manifest['name']}' in {folder} is damaged ({split}.npz); "
                f"run `robustfeat data prepare {manifest['name']} --force`"
            )


def prepare(spec: DatasetSpec, force: bool = False, progress: bool = True) -> Path:
    """Fetch, convert and cache ``spec``; return the cache folder. Idempotent, and safe when
    several processes prepare (or read) the same dataset at once: they take turns."""
    from robustfeat.locks import locked

    with locked(spec.cache_dir().parent / ".lock", f"the cache of '{spec.name}'", wait=True):
        return _prepare(spec, force, progress)


def _prepare(spec: DatasetSpec, force: bool, progress: bool) -> Path:
    from tqdm.auto import tqdm

    folder = spec.cache_dir()
    manifest = read_manifest(folder)
    if manifest and not force:
        verify(folder, manifest)
        return folder
    reasons = []
    bar = tqdm(total=3, desc=f"prepare {spec.name}", disable=not progress, unit="step")
    for source, convert in spec.sources:
        why = source.unavailable()
        if why:
            reasons.append(f"{source.describe()}: {why}")
            continue
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=folder.parent))
            try:
                bar.set_postfix_str(f"fetching from {source.describe()}")
                raw = source.fetch(work)
                bar.update(1)
                bar.set_postfix_str("converting")
                tables = convert(raw)
                if spec.dedupe == "loose":
                    tables = {k: _dedupe(t) for k, t in tables.items()}
                bar.update(1)
                bar.set_postfix_str("writing and checksumming")
                out = work / "out"
                out.mkdir()
                files = {}
                for split, table in tables.items():
                    table.save(out / f"{split}.npz")
                    files[split] = sha256_file(out / f"{split}.npz")
                meta = {
                    "name": spec.name,
                    "version": spec.version,
                    "source": source.describe(),
                    "files": files,
                    "rows": {k: len(t) for k, t in tables.items()},
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
                (out / MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
                if folder.exists():
                    shutil.rmtree(folder)
                out.rename(folder)
                bar.update(1)
                bar.close()
                return folder
            finally:
                shutil.rmtree(work, ignore_errors=True)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DataError(
                    f"out of disk space while preparing '{spec.name}' in {folder.parent}; free "
                    "space or point ROBUSTFEAT_CACHE at a larger disk"
                ) from None
            reasons.append(f"{source.describe()}: {type(e).__name__}: {e}")
        except DataError as e:
            reasons.append(f"{source.describe()}: {e}")
    bar.close()
    raise DataError(f"could not prepare '{spec.name}' from any source:\n  - " + "\n  - ".join(reasons))


def _dedupe(table: Table) -> Table:
    from robustfeat.data.dedup import first_occurrences

    return table.where(first_occurrences(table["text"])) if "text" in table else table


def load_prepared(spec: DatasetSpec, progress: bool = True) -> tuple[dict[str, Table], dict[str, Any]]:
    folder = prepare(spec, progress=progress)
    manifest = read_manifest(folder)
    assert manifest is not None  # prepare() wrote and verified it
    return {split: Table.load(folder / f"{split}.npz") for split in manifest["files"]}, manifest
