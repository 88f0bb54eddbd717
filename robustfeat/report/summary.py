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

#: what identifies a compared method: a method fine-tuned on one model and dataset
GROUP = ["model", "data", "method"]


@dataclass(frozen=True)
class Headline:
    """One headline metric: where its rows are in the tidy table and how to read it."""

    key: str
    label: str
    evaluation: str
    shift: str | None  # None: any shift (one cell per checkpoint)
    metric: str
    higher_is_better: bool
    description: str


HEADLINES: tuple[Headline, ...] = (
    Headline("id_acc", "ID acc", "clean", "test", "accuracy", True, "accuracy on the fine-tuning data's test split"),
    Headline("ood_acc", "mean OOD acc", "ood", "mean-ood", "accuracy", True, "mean accuracy over the out-of-domain sets"),
    Headline("worst_domain", "worst domain", "domains", "worst", "accuracy", True, "accuracy on the worst domain"),
    Headline("mean_error", "corr. mean err", "corruptions", "all", "mean_error", False,
             "plain mean error over the corruptions and severities run (no reference)"),
    Headline("mce", "mCE", "corruptions", "all", "mce", False, "mean corruption error relative to the reference"),
    Headline("relative_mce", "rel. mCE", "corruptions", "all", "relative_mce", False,
             "mean of (corrupted - clean error), relative to the reference's"),
    Headline("probe_forgetting", "probe forgetting", "linear-probe", None, "forgetting", False,
             "linear-probe accuracy lost on a held-out task (base - fine-tuned)"),
    Headline("geometry", "geometry rho", "embedding-geometry", None, "geometry_spearman", True,
             "Spearman correlation of pairwise cosine similarities, base vs fine-tuned"),
    Headline("imagenet_agreement", "ImageNet agree", "imagenet-agreement", None, "top1_agreement", True,
             "top-1 agreement of the kept ImageNet head, base vs fine-tuned"),
    Headline("imagenet_acc", "ImageNet acc", "imagenet-accuracy", None, "accuracy", True,
             "accuracy of the kept ImageNet head on the --imagenet folder"),
    Headline("ppl_increase", "ppl increase", "perplexity", None, "forgetting", False,
             "perplexity increase on generic text"),
    Headline("cka", "mean CKA", "cka", "all", "cka", True, "linear CKA to the base, mean over adapted layers"),
    Headline("intruders", "intruders", "weights", "all", "intruders", False,
             "intruder dimensions at eps 0.5, total over adapted layers"),
)


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
    renames the method of a folder's rows ({folder: label}), e.g. to tell sweep cells that
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
                                                 "model": str, "data": str, "shift": str})
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
    for col in ("note", "reference"):
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
    metric present, with ``<key>_lo`` / ``<key>_hi`` from the cell's CI where it has one."""
    base = frame[["results_dir", "checkpoint", *GROUP, "seed"]].drop_duplicates()
    out = base.set_index(["results_dir", "checkpoint"])
    for h in HEADLINES:
        rows = select(frame, h)
        if rows.empty:
            continue
        first = rows.groupby(["results_dir", "checkpoint"]).first()
        out[h.key] = first["value"]
        if "ci_low" in first:
            out[f"{h.key}_lo"], out[f"{h.key}_hi"] = first["ci_low"], first["ci_high"]
    return out.reset_index()


def _t95(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def headline_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, data, method): ``seeds`` and, per headline metric present, the
    mean over seeds with a 95% interval: the cell's bootstrap CI for one seed, a
    t-interval over seeds for more (``<key>_lo`` / ``<key>_hi``)."""
    pc = per_checkpoint(frame)
    keys = [h.key for h in HEADLINES if h.key in pc]
    rows = []
    for group, part in pc.groupby(GROUP, sort=True):
        row = dict(zip(GROUP, group))
        row["seeds"] = int(part.seed.nunique())
        for k in keys:
            vals = part[k].dropna().to_numpy(dtype=float)
            if len(vals) == 0:
                row[k] = row[f"{k}_lo"] = row[f"{k}_hi"] = math.nan
            elif len(vals) == 1:
                row[k] = vals[0]
                row[f"{k}_lo"] = float(part[f"{k}_lo"].iloc[0]) if f"{k}_lo" in part else math.nan
                row[f"{k}_hi"] = float(part[f"{k}_hi"].iloc[0]) if f"{k}_hi" in part else math.nan
            else:
                m, half = float(vals.mean()), _t95(len(vals)) * float(vals.std(ddof=1)) / math.sqrt(len(vals))
                row[k], row[f"{k}_lo"], row[f"{k}_hi"] = m, m - half, m + half
        rows.append(row)
    return pd.DataFrame(rows)


def best_per_column(table: pd.DataFrame) -> dict[str, set[int]]:
    """Row positions holding the best value of each headline column among the methods of
    the same model and data (methods are compared, models and datasets are not; ties all
    marked)."""
    best: dict[str, set[int]] = {}
    positions = np.arange(len(table))
    for h in HEADLINES:
        if h.key not in table:
            continue
        vals = table[h.key].to_numpy(dtype=float)
        for _, idx in table.groupby(["model", "data"], sort=False).indices.items():
            part = vals[idx]
            finite = part[np.isfinite(part)]
            if len(finite) == 0:
                continue
            target = finite.max() if h.higher_is_better else finite.min()
            best.setdefault(h.key, set()).update(
                int(positions[i]) for i, v in zip(idx, part) if np.isfinite(v) and math.isclose(v, target, rel_tol=1e-9))
    return best
