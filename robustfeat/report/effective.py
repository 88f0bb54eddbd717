"""Effective robustness (Taori et al. 2020) per (model, data, OOD set): OOD accuracy above
the line the reference models predict from ID accuracy. Reference points are distinct
reference models (the ``linear`` rows, one point per label, averaged over seeds), never
the seeds of one model; see :func:`robustfeat.metrics.robustness.reference_line`."""

from __future__ import annotations


import numpy as np
import pandas as pd

from robustfeat.metrics.intervals import over_seeds
from robustfeat.metrics.robustness import effective_robustness, reference_line

#: the frozen base with a trained head: "the base" in plots and the effective-robustness line
REFERENCE_METHODS = ("linear",)


def is_reference(method: str) -> bool:
    """``linear``, or a sweep label of it (``linear lr=0.01``)."""
    return str(method).split(" ")[0] in REFERENCE_METHODS


def ood_points(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (checkpoint, OOD set): model, data, method, seed, id_acc and ood_acc (the
    set's accuracy), plus the mean over out-of-domain sets as the set ``mean-ood``."""
    keys = ["results_dir", "checkpoint"]
    clean = frame[(frame.evaluation == "clean") & (frame["shift"] == "test") & (frame.metric == "accuracy")]
    clean = clean.drop_duplicates(keys).set_index(keys)["value"].rename("id_acc")
    ood = frame[(frame.evaluation == "ood") & (frame.metric == "accuracy")]
    kind = ood["kind"] if "kind" in ood else pd.Series("", index=ood.index)
    ood = ood[(kind == "out-of-domain") | (ood["shift"] == "mean-ood")]
    ood = ood.drop_duplicates([*keys, "shift"])
    out = ood[[*keys, "model", "data", "method", "seed", "shift", "value"]].rename(columns={"value": "ood_acc",
                                                                                          "shift": "set"})
    out = out.join(clean, on=keys).dropna(subset=["id_acc", "ood_acc"])
    return out.reset_index(drop=True)


def lines(points: pd.DataFrame) -> dict[tuple[str, str, str], tuple[float, float, str]]:
    """The reference line per (model, data, set), from the reference models' seed means."""
    out = {}
    for (model, data, set_), part in points.groupby(["model", "data", "set"], sort=True):
        ref = part[part.method.map(is_reference)]
        if ref.empty:
            continue
        by_model = ref.groupby("method")[["id_acc", "ood_acc"]].mean()
        out[(model, data, set_)] = reference_line(list(by_model.itertuples(index=False, name=None)))
    return out


def effective_robustness_per_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, data, method, set, seed): effective robustness against the reference
    line of its (model, data, set), averaged over that seed's checkpoints, and the line."""
    pts = ood_points(frame)
    rows = []
    for (model, data, set_), line in lines(pts).items():
        part = pts[(pts.model == model) & (pts.data == data) & (pts.set == set_)]
        for method, m in part.groupby("method", sort=True):
            er = m.assign(er=[effective_robustness(i, o, line[:2]) for i, o in zip(m.id_acc, m.ood_acc)])
            by_seed = er.groupby("seed", sort=True).er.mean()
            for seed, value in by_seed.items():
                rows.append({"model": model, "data": data, "method": method, "set": set_, "seed": seed,
                             "effective_robustness": round(float(value), 12),  # no 1e-16 noise on the line
                             "line": line[2], "slope": line[0], "intercept": line[1]})
    return pd.DataFrame(rows, columns=["model", "data", "method", "set", "seed", "effective_robustness", "line",
                                       "slope", "intercept"])


def effective_robustness_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (model, data, method, set): effective robustness averaged over seeds with its 95%
    interval over seeds (no interval for one seed), and how the line was made."""
    rows = []
    per_seed = effective_robustness_per_seed(frame)
    for (model, data, set_, method), part in per_seed.groupby(["model", "data", "set", "method"], sort=True):
        iv = over_seeds(part.effective_robustness.to_numpy(float), (-1.0, 1.0))
        first = part.iloc[0]
        rows.append({"model": model, "data": data, "method": method, "set": set_, "effective_robustness": iv.mean,
                     "lo": iv.low, "hi": iv.high, "seeds": iv.n, "line": first.line, "slope": first.slope,
                     "intercept": first.intercept})
    return pd.DataFrame(rows, columns=["model", "data", "method", "set", "effective_robustness", "lo", "hi", "seeds",
                                       "line", "slope", "intercept"])


def line_curve(line: tuple[float, float, str], xs: np.ndarray) -> np.ndarray:
    slope, intercept = line[:2]
    xs = np.clip(xs, 1e-6, 1 - 1e-6)
    return 1 / (1 + np.exp(-(slope * np.log(xs / (1 - xs)) + intercept)))


__all__ = ["REFERENCE_METHODS", "effective_robustness_per_seed", "effective_robustness_table", "is_reference",
           "line_curve", "lines", "ood_points"]
