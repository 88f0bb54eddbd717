"""The results folder of ``robustfeat evaluate``: one atomic file per finished cell, and the
tidy table (``results.csv``, and ``results.parquet`` when pyarrow is installed) with its
provenance (``results.json``).

Layout::

    OUT/results.json                          bank, version, checkpoints and their provenance
    OUT/cells/RUN_ID/EVALUATION/SHIFT--sN.json  one finished cell (written atomically)
    OUT/base/BASE_KEY/*.npz                   base-model outputs, shared by checkpoints of one base
    OUT/results.csv, OUT/results.parquet      one row per (checkpoint, evaluation, shift, severity, metric)

Rows are computed only from cell files, so a resumed run gives the same table as an
uninterrupted one. Summary rows (mCE, worst domain, mean OOD accuracy, ...) are derived
from the cells when the table is written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from robustfeat.errors import RobustfeatError
from robustfeat.locks import locked

RESULTS_FILE = "results.json"
RESULTS_FORMAT = "robustfeat.results"
FORMAT_VERSION = 1
COLUMNS = ["checkpoint", "method", "model", "data", "seed", "evaluation", "shift", "severity", "kind", "metric",
           "value", "ci_low", "ci_high", "n", "reference", "note"]


class ResultsError(RobustfeatError):
    """The results folder cannot be used (another bank, damaged, not a results folder)."""


def safe_name(text: str) -> str:
    """A file-name-safe form of ``text``; a short hash keeps distinct names distinct."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    if clean != text:
        clean = f"{clean[:80]}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"
    return clean


def _atomic_write(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all. The caller holds the lock that guards ``path``, so
    the temporary file's name is fixed: one that a killed run left is overwritten and moved
    away by the next write of the same file instead of lying there for good."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultsStore:
    """A results folder. Constructing one only checks that ``root`` can hold results of
    ``bank_tag`` (it reads, never writes); :meth:`create` makes the folder when the first
    result is about to be written, so a refused command leaves nothing behind."""

    def __init__(self, root: str | os.PathLike, bank_tag: str) -> None:
        self.root = Path(root).absolute()
        self.bank_tag = bank_tag
        if self.root.exists() and not self.root.is_dir():
            raise ResultsError(f"'{self.root}' exists and is not a folder; choose another --out")
        if self.root.is_dir() and not (self.root / RESULTS_FILE).exists():
            if any(p for p in self.root.iterdir() if not p.name.startswith(".")):
                raise ResultsError(f"'{self.root}' is a non-empty folder that is not a robustfeat results folder; "
                                   "choose another --out")
        self._check(self._read())

    def _check(self, meta: dict[str, Any] | None) -> None:
        if meta is not None and meta.get("bank") != self.bank_tag:
            raise ResultsError(f"'{self.root}' holds results of bank {meta.get('bank')}; this evaluation uses "
                               f"bank {self.bank_tag}. Results of different banks or bank versions are not mixed: "
                               "choose another --out")

    def create(self) -> None:
        """Make the folder and its ``results.json`` if they do not exist yet."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock():
            meta = self._read()
            self._check(meta)  # another process may have started it meanwhile
            if meta is None:
                now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                self._write({"format": RESULTS_FORMAT, "format_version": FORMAT_VERSION, "bank": self.bank_tag,
                             "created": now, "checkpoints": {}})

    # --- results.json ---------------------------------------------------------------------
    def lock(self):
        return locked(self.root / ".results.lock", f"the results folder '{self.root}'", wait=True)

    def _read(self) -> dict[str, Any] | None:
        path = self.root / RESULTS_FILE
        if not path.exists():
            return None
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ResultsError(f"'{path}' is damaged ({e}); move it away to start a new results folder") from None
        if not isinstance(meta, dict) or meta.get("format") != RESULTS_FORMAT:
            raise ResultsError(f"'{path}' is not a robustfeat results file; choose another --out")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ResultsError(f"'{path}' was written by a newer robustfeat (format {meta['format_version']}); "
                               "upgrade robustfeat or choose another --out")
        return meta

    def _write(self, meta: dict[str, Any]) -> None:
        _atomic_write(self.root / RESULTS_FILE, json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")

    def meta(self) -> dict[str, Any]:
        meta = self._read()
        assert meta is not None
        return meta

    def update(self, **fields: Any) -> None:
        with self.lock():
            meta = self.meta()
            for k, v in fields.items():
                if isinstance(v, dict) and isinstance(meta.get(k), dict):
                    meta[k] = {**meta[k], **v}
                else:
                    meta[k] = v
            self._write(meta)

    # --- cells ----------------------------------------------------------------------------
    def cell_path(self, run_id: str, cell) -> Path:
        return self.root / "cells" / run_id / cell.evaluation / f"{safe_name(cell.shift)}--s{cell.severity}.json"

    def done(self, run_id: str, cell) -> bool:
        path = self.cell_path(run_id, cell)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False  # missing or damaged: computed again
        return data.get("cell") == [cell.evaluation, cell.shift, cell.severity] and data.get("bank") == self.bank_tag

    def write_cell(self, run_id: str, cell, rows: list[dict], seconds: float) -> None:
        for r in rows:
            if not isinstance(r.get("value"), float):
                raise TypeError(f"cell {cell.key}: metric values must be floats, got {r!r}")
        payload = {"bank": self.bank_tag, "checkpoint": run_id, "cell": [cell.evaluation, cell.shift, cell.severity],
                   "rows": rows, "seconds": round(seconds, 3)}
        _atomic_write(self.cell_path(run_id, cell), json.dumps(payload, indent=1, sort_keys=True) + "\n")

    def cell_rows(self, run_id: str) -> list[dict]:
        rows = []
        base = self.root / "cells" / run_id
        for path in sorted(base.glob("*/*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # a damaged cell is recomputed on the next run, never reported
            if data.get("bank") != self.bank_tag:
                continue
            evaluation, shift, severity = data["cell"]
            for r in data["rows"]:
                rows.append({"evaluation": evaluation, "shift": shift, "severity": int(severity), **r})
        return rows

    # --- the tidy table -------------------------------------------------------------------
    def write_table(self) -> Any:
        """Rows of every checkpoint in the folder plus the summary rows, written as CSV (and
        Parquet); returns the pandas DataFrame."""
        import pandas as pd

        with self.lock():
            meta = self.meta()
            checkpoints = meta["checkpoints"]
            rows = []
            per_run = {}
            for run_id, info in sorted(checkpoints.items()):
                cells = self.cell_rows(run_id)
                per_run[run_id] = cells
                for r in cells:
                    rows.append(_row(run_id, info, r, reference=""))
            for run_id, info in sorted(checkpoints.items()):
                ref = info.get("reference")
                for r in summary_rows(per_run[run_id], per_run.get(ref) if ref else None, ref or ""):
                    rows.append(_row(run_id, info, r, reference=r.pop("reference", "")))
            frame = pd.DataFrame(rows, columns=COLUMNS)
            frame = frame.sort_values(["checkpoint", "evaluation", "shift", "severity", "metric"], kind="stable")
            frame = frame.reset_index(drop=True)
            tmp = self.root / ".results.csv.tmp"  # under the lock: a fixed name (see _atomic_write)
            frame.to_csv(tmp, index=False, float_format="%.10g")
            os.replace(tmp, self.root / "results.csv")
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                pass
            else:
                tmp = self.root / ".results.parquet.tmp"  # under the lock: a fixed name (see _atomic_write)
                frame.to_parquet(tmp, index=False)
                os.replace(tmp, self.root / "results.parquet")
            return frame


def _row(run_id: str, info: dict, r: dict, reference: str) -> dict:
    return {"checkpoint": run_id, "method": info.get("method", ""), "model": info.get("model", ""),
            "data": info.get("data", ""), "seed": info.get("seed", 0), "evaluation": r["evaluation"],
            "shift": r["shift"], "severity": int(r.get("severity", 0)), "kind": r.get("kind", ""), "metric": r["metric"],
            "value": r["value"], "ci_low": r.get("ci_low", math.nan), "ci_high": r.get("ci_high", math.nan),
            "n": int(r.get("n", 0)), "reference": reference, "note": r.get("note", "")}


def summary_rows(rows: list[dict], ref_rows: list[dict] | None, ref_id: str) -> list[dict]:
    """Derived rows of one checkpoint: each registered evaluation summarizes its own rows
    (and its reference checkpoint's rows of the same evaluation)."""
    from robustfeat.evaluations.base import evaluations_in_order

    by_evaluation: dict[str, list[dict]] = defaultdict(list)
    ref_by_evaluation: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_evaluation[r["evaluation"]].append(r)
    for r in ref_rows or []:
        ref_by_evaluation[r["evaluation"]].append(r)
    out: list[dict] = []
    for cls in evaluations_in_order():
        own = by_evaluation.get(cls.name)
        if not own:
            continue
        for r in cls.summarize(own, ref_by_evaluation.get(cls.name) if ref_rows else None, ref_id):
            if r.get("evaluation") != cls.name:
                raise ResultsError(f"evaluation '{cls.name}' summarized a row of '{r.get('evaluation')}'")
            out.append(r)
    return out
