"""Results folders into pandas: the tidy rows of one or more ``robustfeat evaluate``
folders, and the per-method headline table the report, the CLI and notebooks share."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robustfeat.errors import RobustfeatError
from robustfeat.metrics.intervals import FEW_SEEDS, clip, over_seeds
from robustfeat.evaluations.base import Headline, all_headlines

#: what identifies a compared method: a method fine-tuned on one model and dataset
GROUP = ["model", "data", "method"]


def headlines() -> tuple[Headline, ...]:
    """The headline metrics, as the registered evaluations declare them, in table order."""
    return all_headlines()


@dataclass
class Results:
    """The rows of several results folders (column ``results_dir`` says which) and each
    folder's ``results.json`` provenance."""

    frame: pd.DataFrame
    provenance: dict[str, dict]

    @property
    def checkpoints(self) -> pd.DataFrame:
        cols = ["results_dir", "checkpoint", *GROUP, "seed"]
        return self.frame[cols].drop_duplicates().reset_index(drop=True)


def load_results(paths: list[str | os.PathLike] | str | os.PathLike,
                 labels: dict[str, str] | None = None) -> Results:
    """Read one or more results folders written by ``robustfeat evaluate``. ``labels``
    renames the method of a folder's rows ({folder: label}), e.g. to tell sweep trials that
    differ in a hyperparameter apart."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise RobustfeatError("give at least one results folder (written by robustfeat evaluate --out DIR)")
    frames, provenance = [], {}
    for p in paths:
        root = Path(p).expanduser()
        meta_path, csv_path = root / "results.json", root / "results.csv"
        if not root.is_dir():
            raise RobustfeatError(f"results folder '{p}' does not exist")
        if not meta_path.is_file() or not csv_path.is_file():
            raise RobustfeatError(f"'{p}' is not a finished results folder (no results.json and results.csv); "
                                  f"run robustfeat evaluate CHECKPOINT --out {p} first")
        try:
            meta = json.loads(meta_path.read_text())
            frame = pd.read_csv(csv_path, dtype={"note": str, "reference": str, "checkpoint": str, "method": str,
                                                 "model": str, "data": str, "shift": str, "kind": str})
        except (ValueError, OSError) as e:
            raise RobustfeatError(f"cannot read the results in '{p}': {e}") from None
        if meta.get("format") != "robustfeat.results":
            raise RobustfeatError(f"'{p}/results.json' is not a robustfeat results file")
        missing = {"checkpoint", "method", "model", "data", "seed", "evaluation", "shift", "severity", "metric",
                   "value"} - set(frame.columns)
        if missing:
            raise RobustfeatError(f"'{csv_path}' lacks the columns {sorted(missing)}; was it written by robustfeat?")
        key = str(root)
        frame.insert(0, "results_dir", key)
        if labels and str(p) in labels:
            frame["method"] = labels[str(p)]
        frames.append(frame)
        provenance[key] = meta
    frame = pd.concat(frames, ignore_index=True)
    for col in ("note", "reference", "kind"):
        if col in frame:
            frame[col] = frame[col].fillna("")
    return Results(frame, provenance)


def select(frame: pd.DataFrame, h: Headline) -> pd.DataFrame:
    sel = (frame.evaluation == h.evaluation) & (frame.metric == h.metric)
    if h.shift is not None:
        sel &= frame["shift"] == h.shift
    return frame[sel]


def per_checkpoint(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint (in each results folder): GROUP, seed and each headline
    metric present, with ``<key>_lo`` / ``<key>_hi`` from the CI of the same row."""
    keys = ["results_dir", "checkpoint", *GROUP]
    out = frame[[*keys, "seed"]].drop_duplicates(keys).set_index(keys)
    for h in headlines():
        rows = select(frame, h)
        if rows.empty:
            continue
        first = rows.drop_duplicates(keys, keep="first").set_index(keys)
        out[h.key] = first["value"]
        if "ci_low" in first:
            out[f"{h.key}_lo"], out[f"{h.key}_hi"] = first["ci_low"], first["ci_high"]
    return out.reset_index()


def per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, data, method, seed): each headline metric averaged over that
    seed's checkpoints, so the same checkpoint evaluated into several results folders (or
    several checkpoints of one seed) counts once. ``<key>_lo`` / ``<key>_hi`` is the cell's
    CI where the seed has one value; ``folders`` counts the rows averaged."""
    pc = per_checkpoint(frame)
    keys = [h.key for h in headlines() if h.key in pc]
    rows = []
    for (model, data, method, seed), part in pc.groupby([*GROUP, "seed"], sort=True):
        row = {"model": model, "data": data, "method": method, "seed": seed, "folders": len(part)}
        for k in keys:
            cols = [c for c in (k, f"{k}_lo", f"{k}_hi") if c in part]
            vals = part[cols].dropna(subset=[k]).drop_duplicates()
            row[k] = float(vals[k].mean()) if len(vals) else math.nan
            one = len(vals) == 1
            row[f"{k}_lo"] = float(vals[f"{k}_lo"].iloc[0]) if one and f"{k}_lo" in vals else math.nan
            row[f"{k}_hi"] = float(vals[f"{k}_hi"].iloc[0]) if one and f"{k}_hi" in vals else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "data", "method", "seed", "folders",
                                       *[f"{k}{x}" for k in keys for x in ("", "_lo", "_hi")]])


def headline_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, data, method): ``seeds`` (distinct seeds) and, per headline
    metric present, the mean over seeds with a 95% interval (``<key>_lo`` / ``<key>_hi``):
    the cell's CI for one seed, a t-interval with (seeds - 1) degrees of freedom for more,
    each kept within the metric's range (``<key>_clipped`` says where it was cut) and
    ``<key>_n``, the number of seeds behind it (below 3: an interval from few seeds)."""
    ps = per_seed(frame)
    hs = [h for h in headlines() if h.key in ps]
    rows = []
    for group, part in ps.groupby(GROUP, sort=True):
        row = dict(zip(GROUP, group))
        row["seeds"] = int(part.seed.nunique())
        for h in hs:
            k = h.key
            vals = part.dropna(subset=[k])
            if len(vals) == 1:
                lo, hi = float(vals[f"{k}_lo"].iloc[0]), float(vals[f"{k}_hi"].iloc[0])
                cut = False
                if not (math.isnan(lo) or math.isnan(hi)):
                    lo, hi, cut = clip(lo, hi, h.bounds)
                iv = (float(vals[k].iloc[0]), lo, hi, 1, cut)
            else:
                i = over_seeds(vals[k].to_numpy(float), h.bounds)
                iv = (i.mean, i.low, i.high, i.n, i.clipped)
            row[k], row[f"{k}_lo"], row[f"{k}_hi"], row[f"{k}_n"], row[f"{k}_clipped"] = iv
        rows.append(row)
    return pd.DataFrame(rows)


def best_per_column(table: pd.DataFrame) -> dict[str, set[int]]:
    """Row positions holding the best value of each headline column among the methods of
    the same model and data (methods are compared, models and datasets are not), marked
    only where the best one's interval does not overlap the runner-up's; with overlapping
    or missing intervals, or a single method, nothing is marked."""
    best: dict[str, set[int]] = {}
    for h in headlines():
        if h.key not in table:
            continue
        vals = table[h.key].to_numpy(dtype=float)
        lo = table.get(f"{h.key}_lo", pd.Series(np.nan, index=table.index)).to_numpy(dtype=float)
        hi = table.get(f"{h.key}_hi", pd.Series(np.nan, index=table.index)).to_numpy(dtype=float)
        for _, idx in table.groupby(["model", "data"], sort=False).indices.items():
            idx = [i for i in idx if np.isfinite(vals[i])]
            if len(idx) < 2:
                continue
            order = sorted(idx, key=lambda i: -vals[i] if h.higher_is_better else vals[i])
            top, runner = order[0], order[1]
            if h.higher_is_better:
                separated = lo[top] > hi[runner]
            else:
                separated = hi[top] < lo[runner]
            if separated:  # NaN bounds compare False: no interval, no mark
                best.setdefault(h.key, set()).add(int(top))
    return best


def format_value(v, digits: int = 4) -> str:
    """How every table a person reads shows a number: ``-`` for a missing one."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}"
    return str(v)


def few_seeds(table: pd.DataFrame) -> bool:
    """Whether any interval of the table comes from fewer than 3 seeds (and is a t-interval)."""
    ns = [c for c in table if c.endswith("_n")]
    return bool(len(table) and any(((table[c] >= 2) & (table[c] < FEW_SEEDS)).any() for c in ns))
