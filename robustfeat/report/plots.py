"""Plots of results: the tidy results frame in (``load_results(...).frame``), a matplotlib
``Figure`` out. No files are read or written here and pyplot's global state is not used,
so the functions are safe in notebooks, servers and tests.

Every figure states its metric and units in the axis labels, and in a footnote the number
of seeds and what the error bars are. ``PLOTS`` lists them with the evaluations each one
needs; :func:`available` says which can be drawn for a frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from robustfeat.errors import RobustfeatError
from robustfeat.metrics.intervals import t_half_width
from robustfeat.report.effective import is_reference, line_curve, lines, ood_points
from robustfeat.report.summary import GROUP, per_checkpoint
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def _label(model: str, data: str, method: str, many: bool) -> str:
    return f"{method} ({model} / {data})" if many else method


def _groups(frame: pd.DataFrame) -> tuple[list[tuple[str, str, str]], bool]:
    groups = sorted({tuple(g) for g in frame[GROUP].drop_duplicates().itertuples(index=False)})
    return groups, len({(m, d) for m, d, _ in groups}) > 1


def _color(groups: list, g: tuple) -> str:
    return COLORS[groups.index(g) % len(COLORS)]


def _seed_note(frame: pd.DataFrame) -> str:
    seeds = frame.groupby(GROUP)["seed"].nunique()
    if seeds.empty:
        return "no checkpoints"
    lo, hi = int(seeds.min()), int(seeds.max())
    return f"{lo} seed{'s' if lo != 1 else ''} per method" if lo == hi else f"{lo}-{hi} seeds per method"


def _interval(vals: np.ndarray) -> float:
    """Half-width of the 95% t-interval of the mean over seeds (0 for one seed)."""
    vals = vals[~np.isnan(vals)]
    return 0.0 if len(vals) < 2 else t_half_width(vals)


def _footnote(fig: Figure, text: str) -> None:
    fig.text(0.01, 0.005, text, fontsize=7.5, color="#444444", ha="left", va="bottom", wrap=True)


def _need(frame: pd.DataFrame, evaluation: str, what: str) -> pd.DataFrame:
    rows = frame[frame.evaluation == evaluation]
    if rows.empty:
        raise RobustfeatError(f"no '{evaluation}' rows in these results: the {what} plot needs them "
                              f"(run robustfeat evaluate with a bank that has '{evaluation}')")
    return rows


def id_vs_ood(frame: pd.DataFrame) -> Figure:
    """ID accuracy vs mean OOD accuracy, one panel per model and dataset: one small point
    per checkpoint (seed), a large marker with 95% error bars per method, the base
    (``linear``) as a star, and the effective-robustness line: fitted in logit space on
    distinct reference models where there are several spanning enough ID accuracy, else
    slope 1 through the mean base point (the legend says which)."""
    _need(frame, "ood", "ID vs OOD")
    pc = per_checkpoint(frame)
    pc = pc.dropna(subset=["id_acc", "ood_acc"]) if {"id_acc", "ood_acc"} <= set(pc) else pc.iloc[:0]
    if pc.empty:
        raise RobustfeatError("the ID vs OOD plot needs clean and mean-OOD accuracy rows for the same checkpoints")
    refs = lines(ood_points(frame))
    pairs = _pairs(pc)
    fig = Figure(figsize=(6.4 * len(pairs), 5.0))
    for col, (model, data) in enumerate(pairs):
        ax = fig.add_subplot(1, len(pairs), col + 1)
        sub = pc[(pc.model == model) & (pc.data == data)]
        groups = sorted({tuple(g) for g in sub[GROUP].drop_duplicates().itertuples(index=False)})
        for g in groups:
            part = sub[sub.method == g[2]]
            x, y = part.id_acc.to_numpy(float), part.ood_acc.to_numpy(float)
            base = is_reference(g[2])
            c = _color(groups, g)
            ax.scatter(x, y, s=14, color=c, alpha=0.45)
            if part.seed.nunique() > 1:
                xs_, ys_ = part.groupby("seed").id_acc.mean().to_numpy(float), part.groupby("seed").ood_acc.mean()
                xe, ye = _interval(xs_), _interval(ys_.to_numpy(float))
            else:  # one seed: the bootstrap CIs of the two cells
                xe = np.array([[x[0] - part.id_acc_lo.iloc[0]], [part.id_acc_hi.iloc[0] - x[0]]])
                ye = np.array([[y[0] - part.ood_acc_lo.iloc[0]], [part.ood_acc_hi.iloc[0] - y[0]]]) \
                    if "ood_acc_lo" in part and not np.isnan(part.ood_acc_lo.iloc[0]) else None
            ax.errorbar(x.mean(), y.mean(), xerr=xe, yerr=ye, fmt="*" if base else "o", ms=14 if base else 8,
                        color=c, mec="black", capsize=3, label=g[2] + (" (base)" if base else ""))
        line = refs.get((model, data, "mean-ood"))
        if line is not None:
            xs = np.linspace(max(0.01, sub.id_acc.min() - 0.05), min(0.99, sub.id_acc.max() + 0.05), 100)
            ax.plot(xs, line_curve(line, xs), "--", color="#555555", lw=1,
                    label=f"effective-robustness line:\n{line[2]}")
        ax.set_xlabel("in-distribution accuracy (fraction correct, test split)")
        ax.set_ylabel("mean out-of-distribution accuracy (fraction)")
        ax.set_title(f"{model} on {data}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("In-distribution vs out-of-distribution accuracy")
    fig.subplots_adjust(bottom=0.2, wspace=0.3)
    _footnote(fig, f"{_seed_note(pc)}. Small dots: single seeds; large markers: mean. Error bars: 95% "
                   "t-interval over seeds, or the cells' 95% bootstrap CI for a single seed. Above the line: "
                   "more OOD accuracy than the reference models' trend predicts (effective robustness).")
    return fig


def _corruption_errors(frame: pd.DataFrame) -> pd.DataFrame:
    rows = _need(frame, "corruptions", "corruption")
    err = rows[(rows.metric == "error") & (rows.severity > 0)]
    if err.empty:
        raise RobustfeatError("the corruption plots need per-severity 'error' rows of the corruptions evaluation")
    return err


def corruption_by_severity(frame: pd.DataFrame) -> Figure:
    """Corruption error by severity (mean over corruptions), one line per method."""
    err = _corruption_errors(frame)
    groups, many = _groups(err)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    per_ckpt = err.groupby([*GROUP, "checkpoint", "results_dir", "severity"])["value"].mean().reset_index()
    for g in groups:
        part = per_ckpt[(per_ckpt.model == g[0]) & (per_ckpt.data == g[1]) & (per_ckpt.method == g[2])]
        sev = sorted(part.severity.unique())
        mean = [part[part.severity == s].value.mean() for s in sev]
        half = [_interval(part[part.severity == s].value.to_numpy(float)) for s in sev]
        ax.errorbar(sev, mean, yerr=half, marker="o", capsize=3, color=_color(groups, g), label=_label(*g, many))
    ax.set_xlabel("severity")
    ax.set_ylabel("error (fraction wrong), mean over corruptions")
    ax.set_xticks(sorted(err.severity.unique()))
    ax.set_title("Corruption error by severity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.18)
    n_corr = err["shift"].nunique()
    _footnote(fig, f"{_seed_note(err)}; {n_corr} corruptions. Error bars: 95% t-interval over seeds "
                   "(none with one seed).")
    return fig


def corruption_heatmap(frame: pd.DataFrame) -> Figure:
    """Error per corruption (mean over severities and seeds) x method."""
    err = _corruption_errors(frame)
    groups, many = _groups(err)
    corruptions = sorted(err["shift"].unique())
    grid = np.full((len(corruptions), len(groups)), np.nan)
    for j, g in enumerate(groups):
        part = err[(err.model == g[0]) & (err.data == g[1]) & (err.method == g[2])]
        for i, c in enumerate(corruptions):
            vals = part[part["shift"] == c].value
            if len(vals):
                grid[i, j] = vals.mean()
    fig = Figure(figsize=(1.6 + 1.1 * len(groups), 1.2 + 0.38 * len(corruptions)))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="magma_r", vmin=0, vmax=max(1e-9, np.nanmax(grid)), aspect="auto")
    ax.set_xticks(range(len(groups)), [_label(*g, many) for g in groups], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(corruptions)), corruptions, fontsize=8)
    for i in range(len(corruptions)):
        for j in range(len(groups)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i, j] > 0.6 * np.nanmax(grid) else "black")
    fig.colorbar(im, ax=ax, label="error (fraction wrong)")
    ax.set_title("Error per corruption (mean over severities)")
    fig.subplots_adjust(bottom=0.28, left=0.3)
    _footnote(fig, f"{_seed_note(err)}; values averaged over severities and seeds.")
    return fig


def mce_bars(frame: pd.DataFrame) -> Figure:
    """mCE, relative mCE (both against the reference) and the plain mean error, side by side."""
    _need(frame, "corruptions", "mCE")
    keys = [("mce", "mCE (vs reference)"), ("relative_mce", "relative mCE (vs reference)"),
            ("mean_error", "mean error (no reference)")]
    pc = per_checkpoint(frame)
    keys = [(k, lab) for k, lab in keys if k in pc and pc[k].notna().any()]
    groups, many = _groups(pc)
    fig = Figure(figsize=(max(6.4, 1.5 * len(groups) * len(keys) / 2), 4.4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(groups))
    for j, g in enumerate(groups):
        part = pc[(pc.model == g[0]) & (pc.data == g[1]) & (pc.method == g[2])]
        finite = {k: part[k].to_numpy(float)[np.isfinite(part[k].to_numpy(float))] for k, _ in keys}
        means = [finite[k].mean() if len(finite[k]) else np.nan for k, _ in keys]  # inf: undefined ratio
        half = [_interval(finite[k]) for k, _ in keys]
        pos = np.arange(len(keys)) + (j - (len(groups) - 1) / 2) * width
        bars = ax.bar(pos, means, width, yerr=half, capsize=3, color=_color(groups, g), label=_label(*g, many))
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(keys)), [lab for _, lab in keys])
    ax.set_ylabel("ratio (mCE: 1 = the reference) / error (fraction)")
    ax.axhline(1.0, color="#888888", lw=0.8, ls=":")
    ax.set_title("mCE, relative mCE and mean corruption error")
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.2)
    refs = sorted({r for r in frame[(frame.evaluation == "corruptions") & (frame.metric == "mce")].reference if r})
    _footnote(fig, f"{_seed_note(pc)}. Error bars: 95% t-interval over seeds (none with one seed). "
                   f"Reference for mCE: {', '.join(refs) or 'none (only the mean error is shown)'}. A missing bar: "
                   "undefined (relative mCE divides by the reference's error increase, which can be 0).")
    return fig


FORGETTING = (("probe_forgetting", "linear-probe accuracy lost"), ("imagenet_agreement", "1 - ImageNet top-1 agreement"),
              ("ppl_increase", "perplexity increase"), ("geometry", "1 - embedding-geometry rho"))


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted({(m, d) for m, d in frame[["model", "data"]].drop_duplicates().itertuples(index=False)})


def forgetting_tradeoff(frame: pd.DataFrame) -> Figure:
    """x: ID accuracy gain over the base (the ``linear`` checkpoint of the same model,
    data and seed); y: forgetting, by the first probe each model has. One panel per model
    and dataset, one marker per method and seed."""
    pc = per_checkpoint(frame)
    panels = []
    for model, data in _pairs(pc):
        part = pc[(pc.model == model) & (pc.data == data)]
        measure = next(((k, lab) for k, lab in FORGETTING if k in part and part[k].notna().any()), None)
        base = part[part.method.map(is_reference)].set_index("seed").id_acc if "id_acc" in part else None
        if measure is None or base is None or base.empty:
            continue
        key, label = measure
        base = base[~base.index.duplicated()]
        y = 1 - part[key] if key in ("imagenet_agreement", "geometry") else part[key]
        gain = part.id_acc - part.seed.map(base)
        panels.append(((model, data), label, part.assign(gain=gain, forget=y).dropna(subset=["gain", "forget"])))
    if not panels:
        raise RobustfeatError("the forgetting trade-off plot needs clean accuracy, a forgetting probe (linear-probe, "
                              "imagenet-agreement, perplexity or embedding-geometry) and the base: a 'linear' "
                              "checkpoint of the same model and data (robustfeat finetune --method linear)")
    methods = sorted({m for _, _, p in panels for m in p.method})
    markers = "osD^vP*Xh"
    fig = Figure(figsize=(5.2 * len(panels), 4.6))
    for i, ((model, data), label, part) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for m in methods:
            pts = part[part.method == m]
            if len(pts):
                j = methods.index(m)
                ax.scatter(pts.gain, pts.forget, s=60, marker=markers[j % len(markers)], color=COLORS[j % len(COLORS)],
                           edgecolor="black", label=m)
        ax.axhline(0, color="#888888", lw=0.8)
        ax.axvline(0, color="#888888", lw=0.8)
        ax.set_xlabel("ID accuracy gain over the base (fraction)")
        ax.set_ylabel(f"forgetting: {label}")
        ax.set_title(f"{model} on {data}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Forgetting vs in-distribution gain")
    fig.subplots_adjust(bottom=0.22, wspace=0.35)
    _footnote(fig, f"{_seed_note(pc)}; one marker per method and seed, no error bars. Gain: fine-tuned - linear "
                   "probe of the same seed. Best: right (more gain) and low (less forgetting).")
    return fig


def drift_by_layer(frame: pd.DataFrame) -> Figure:
    """Per adapted layer: CKA to the base, intruder dimensions (eps 0.5) and ||dW|| / ||W0||,
    one line per method (mean over seeds); one column of panels per model and dataset."""
    panels = [("cka", "cka", "linear CKA to the base\n(1 = unchanged)"),
              ("weights", "intruders", "intruder dimensions\n(count, k = 10, eps 0.5)"),
              ("weights", "relative_change", "||dW||_F / ||W0||_F\n(ratio)")]
    rows = frame[frame.evaluation.isin(["cka", "weights"]) & (frame["shift"] != "all")]
    panels = [p for p in panels if ((rows.evaluation == p[0]) & (rows.metric == p[1])).any()]
    if not panels:
        raise RobustfeatError("the drift plot needs 'cka' or 'weights' rows (the drift evaluations)")
    rows = aligned_layers(rows)
    pairs = _pairs(rows)
    methods = sorted(set(rows.method))
    fig = Figure(figsize=(max(7.2, 5.6 * len(pairs)), 2.4 * len(panels) + 1.4))
    for col, (model, data) in enumerate(pairs):
        sub = rows[(rows.model == model) & (rows.data == data)]
        layers = list(dict.fromkeys(sub["shift"]))
        axes = [fig.add_subplot(len(panels), len(pairs), r * len(pairs) + col + 1) for r in range(len(panels))]
        for ax, (ev, metric, ylabel) in zip(axes, panels):
            sel = sub[(sub.evaluation == ev) & (sub.metric == metric)]
            for m in methods:
                part = sel[sel.method == m]
                if part.empty:
                    continue
                mean = part.groupby("shift").value.mean()
                xs = [i for i, lay in enumerate(layers) if lay in mean.index]
                ax.plot(xs, [mean[layers[i]] for i in xs], marker="o", ms=3,
                        color=COLORS[methods.index(m) % len(COLORS)], label=m)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(alpha=0.3)
            ax.set_xticks(range(len(layers)), [""] * len(layers))
        step = max(1, len(layers) // 12)
        axes[-1].set_xticks(range(len(layers)), [_short(lay) if i % step == 0 else "" for i, lay in enumerate(layers)],
                            rotation=60, ha="right", fontsize=6)
        axes[0].set_title(f"{model} on {data} ({len(layers)} layers)", fontsize=10)
        axes[0].legend(fontsize=7.5, ncol=min(4, len(methods)))
    fig.suptitle("Drift by adapted layer")
    fig.subplots_adjust(bottom=0.2, hspace=0.18, left=0.15 / len(pairs) + 0.03, right=0.98, wspace=0.4)
    _footnote(fig, f"{_seed_note(rows)}; lines are means over seeds. Layers in model order.")
    return fig


def layer_key(name: str) -> str:
    """A layer's name from its block on (``layer.0.attention.self.query``): the same layer of
    the same base is named by its wrapper too (``bert.`` in a PEFT-made sequence classifier,
    ``encoder.encoder.`` in robustfeat's MiniLM), and this part is what they share."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        if parts[i].isdigit():
            return ".".join(parts[i - 1:])
    return name


def aligned_layers(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with each checkpoint's layer names (``shift``) cut to :func:`layer_key`, so that
    checkpoints of one base made by different tools line up layer by layer; a checkpoint whose
    cut names would collide keeps its full names."""
    out = []
    for _, part in rows.groupby(["results_dir", "checkpoint"], sort=False) if "results_dir" in rows else \
            rows.groupby("checkpoint", sort=False):
        names = list(dict.fromkeys(part["shift"]))
        keys = {n: layer_key(n) for n in names}
        out.append(part.assign(shift=part["shift"].map(keys)) if len(set(keys.values())) == len(names) else part)
    return pd.concat(out).loc[rows.index] if out else rows


def _short(layer: str) -> str:
    parts = layer.split(".")
    return ".".join(parts[-4:]) if len(parts) > 4 else layer


def domain_bars(frame: pd.DataFrame) -> Figure:
    """Accuracy per domain and method (95% error bars), the worst domain of each method
    drawn hatched."""
    rows = _need(frame, "domains", "domain")
    acc = rows[(rows.metric == "accuracy") & (rows["shift"] != "worst")]
    if acc.empty:
        raise RobustfeatError("the domain plot needs per-domain accuracy rows")
    groups, many = _groups(acc)
    domains = sorted(acc["shift"].unique())
    fig = Figure(figsize=(max(6.4, 0.9 * len(domains) * max(1, len(groups)) / 2), 4.4))
    ax = fig.add_subplot()
    width = 0.8 / len(groups)
    handles = []
    for j, g in enumerate(groups):
        part = acc[(acc.model == g[0]) & (acc.data == g[1]) & (acc.method == g[2])]
        means, errs = [], [[], []]
        for d in domains:
            v = part[part["shift"] == d]
            m = v.value.mean() if len(v) else np.nan
            means.append(m)
            if len(v) == 1:
                errs[0].append(m - v.ci_low.iloc[0])
                errs[1].append(v.ci_high.iloc[0] - m)
            else:
                half = _interval(v.value.to_numpy(float))
                errs[0].append(half)
                errs[1].append(half)
        pos = np.arange(len(domains)) + (j - (len(groups) - 1) / 2) * width
        worst = int(np.nanargmin(means)) if not np.all(np.isnan(means)) else -1
        bars = ax.bar(pos, means, width, yerr=np.nan_to_num(np.array(errs)), capsize=2, color=_color(groups, g))
        handles.append(Patch(facecolor=_color(groups, g), label=_label(*g, many)))
        if worst >= 0:
            bars[worst].set_hatch("///")
            bars[worst].set_edgecolor("black")
    ax.set_xticks(range(len(domains)), domains, rotation=20, ha="right")
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy per domain (worst domain hatched)")
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="worst domain of a method"))
    ax.legend(handles=handles, fontsize=8)
    fig.subplots_adjust(bottom=0.25)
    _footnote(fig, f"{_seed_note(acc)}. Error bars: the cell's 95% bootstrap CI (one seed) or a 95% "
                   "t-interval over seeds.")
    return fig


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    fn: Callable[[pd.DataFrame], Figure]


PLOTS: tuple[Plot, ...] = (
    Plot("id-vs-ood", "ID vs OOD accuracy", id_vs_ood),
    Plot("forgetting-tradeoff", "Forgetting vs ID gain", forgetting_tradeoff),
    Plot("corruption-severity", "Corruption error by severity", corruption_by_severity),
    Plot("corruption-heatmap", "Error per corruption", corruption_heatmap),
    Plot("mce", "mCE, relative mCE, mean error", mce_bars),
    Plot("drift", "Drift by layer", drift_by_layer),
    Plot("domains", "Domains", domain_bars),
)


def feeders(plot: str) -> list[str]:
    """The evaluations that declare they feed ``plot`` (any of them makes it possible)."""
    from robustfeat.evaluations.base import evaluations_in_order

    return [cls.name for cls in evaluations_in_order() if plot in cls.plots]


def available(frame: pd.DataFrame) -> list[Plot]:
    """The plots fed by an evaluation present in ``frame``."""
    present = set(frame.evaluation)
    return [p for p in PLOTS if present & set(feeders(p.name))]
