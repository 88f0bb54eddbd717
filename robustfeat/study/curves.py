"""Adapter-scale curves: every headline along alpha (the update scaled, 0 = the base, 1 = as
trained) per arm and seed, their figure, and the matched-gain reading: at an in-domain
gain over the base that every arm reaches, how much each one has forgotten, with a 95%
interval over seeds and the paired difference to ``lora``.

The gain is measured from one base shared by every arm of a seed. A classifier's alpha 0
is not that: it is the pretrained body with the arm's own trained head, and a head trained
together with a moving body (full fine-tuning) can be near chance on the frozen one. So
where the family has a head-only arm, its score on the same seed (the pretrained features
with a trained head) is the base; otherwise (a language model, whose alpha 0 is the
pretrained model itself for every arm) the alpha-0 score is."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from robustfeat.metrics.intervals import over_seeds, paired_difference
from robustfeat.report.summary import headlines, load_results, per_checkpoint

#: the in-domain headlines, by preference, and how a gain over the base is measured on each
GAIN = {"id_acc": "difference", "id_ppl": "log-ratio"}


def scale_table(dirs: dict[str, str]) -> pd.DataFrame:
    """One row per (arm, seed, alpha) with every headline present; ``dirs`` maps each scale
    results folder to its arm."""
    res = load_results(list(dirs), labels=dirs)
    pc = per_checkpoint(res.frame)
    alphas = []
    for _, r in pc.iterrows():
        info = res.provenance[r["results_dir"]]["checkpoints"].get(r["checkpoint"], {})
        alphas.append(float(info.get("scale", math.nan)))
    pc = pc.assign(alpha=alphas).rename(columns={"method": "arm"})
    keys = [h.key for h in headlines() if h.key in pc]
    return pc[["arm", "model", "data", "seed", "alpha", *keys]].sort_values(["arm", "seed", "alpha"]).reset_index(drop=True)


def in_domain_key(table: pd.DataFrame) -> str | None:
    return next((k for k in GAIN if k in table and table[k].notna().any()), None)


def with_gain(table: pd.DataFrame, base: dict[int, float] | None = None) -> pd.DataFrame:
    """``gain``: the in-domain improvement over the base (accuracy points; for perplexity
    log(ppl_base / ppl), so positive is better either way). ``base`` maps a seed to the base's
    in-domain score, shared by every arm of that seed; without it (or for a seed it lacks)
    each arm's own alpha-0 score of that seed is the base."""
    key = in_domain_key(table)
    if key is None:
        return table.assign(gain=math.nan)
    out = []
    for (_, seed), part in table.groupby(["arm", "seed"], sort=False):
        zero = part.loc[part.alpha == 0.0, key]
        z = float(zero.iloc[0]) if len(zero) else math.nan
        if base and int(seed) in base:
            z = float(base[int(seed)])
        v = part[key].to_numpy(dtype=float)
        g = v - z if GAIN[key] == "difference" else np.log(z / v)
        out.append(part.assign(gain=g))
    return pd.concat(out, ignore_index=True) if out else table.assign(gain=math.nan)


def base_scores(frame: pd.DataFrame, arm: str, key: str | None) -> dict[int, float]:
    """Per seed, ``arm``'s in-domain headline ``key`` in a family's seeds-stage rows (the
    head-only arm: the pretrained features with a trained head); empty without that arm."""
    from robustfeat.report.summary import per_seed

    if key is None or frame.empty:
        return {}
    ps = per_seed(frame)
    if key not in ps:
        return {}
    mine = ps[ps.method == arm]
    return {int(s): float(v) for s, v in zip(mine["seed"], mine[key]) if np.isfinite(v)}


def _at_gain(part: pd.DataFrame, key: str, target: float) -> float:
    """``key`` linearly interpolated where the curve (by increasing alpha) first reaches the
    gain ``target``: its first point where it starts at or above it (a head that already
    gains that much on the base body), NaN where it never does."""
    p = part.sort_values("alpha")
    g, v = p["gain"].to_numpy(dtype=float), p[key].to_numpy(dtype=float)
    if len(g) and np.isfinite(g[0]) and g[0] >= target:
        return float(v[0])
    for i in range(1, len(g)):
        lo, hi = g[i - 1], g[i]
        if np.isfinite(lo) and np.isfinite(hi) and lo <= target <= hi and hi > lo:
            w = (target - lo) / (hi - lo)
            return float(v[i - 1] + w * (v[i] - v[i - 1]))
        if np.isfinite(hi) and hi == target:
            return float(v[i])
    return math.nan


def matched_gain(table: pd.DataFrame, reference: str = "lora",
                 base: dict[int, float] | None = None) -> tuple[float, pd.DataFrame]:
    """(the common gain, one row per (arm, forgetting headline)): each arm's forgetting at
    the gain (over ``base``, see :func:`with_gain`) that every arm reaches at alpha 1 on
    average (the smallest of their mean gains), mean with a 95% interval over the seeds whose
    curve reaches it, and the paired difference to ``reference``."""
    t = with_gain(table, base)
    at_one = t[t.alpha == 1.0].groupby("arm")["gain"].mean()
    if at_one.empty or not np.isfinite(at_one).any():
        return math.nan, pd.DataFrame()
    target = float(at_one[np.isfinite(at_one)].min())
    rows = []
    hs = [h for h in headlines() if h.role == "forgetting" and h.key in t and t[h.key].notna().any()]
    for h in hs:
        values = {arm: {int(s): _at_gain(part, h.key, target) for s, part in g.groupby("seed")}
                  for arm, g in t.groupby("arm")}
        for arm, by_seed in sorted(values.items()):
            iv = over_seeds(list(by_seed.values()), h.bounds)
            d = paired_difference(by_seed, values.get(reference, {}), h.bounds) if arm != reference else None
            rows.append({"arm": arm, "headline": h.key, "label": h.label, "higher_is_better": h.higher_is_better,
                         "gain": target, "mean": iv.mean, "ci_low": iv.low, "ci_high": iv.high, "seeds": iv.n,
                         "diff_vs_lora": d.mean if d else math.nan, "diff_low": d.low if d else math.nan,
                         "diff_high": d.high if d else math.nan})
    return target, pd.DataFrame(rows)


def plot_curves(table: pd.DataFrame, path: Path, title: str, base: dict[int, float] | None = None,
                base_name: str = "the base") -> Path:
    """The family's scale curves: the in-domain score, a robustness headline and each
    forgetting headline along alpha, and each forgetting headline against the in-domain
    gain (the learning-forgetting curve); mean over seeds with a 95% interval band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = with_gain(table, base)
    by_key = {h.key: h for h in headlines()}
    idk = in_domain_key(t)
    rob = next((h.key for h in headlines() if h.role == "robustness" and h.key in t and t[h.key].notna().any()), None)
    forget = [h.key for h in headlines() if h.role == "forgetting" and h.key in t and t[h.key].notna().any()]
    panels = [("alpha", k) for k in [idk, rob, *forget] if k] + [("gain", k) for k in forget]
    cols = min(3, max(len(panels), 1))
    rows = math.ceil(len(panels) / cols) if panels else 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    arms = sorted(t.arm.unique(), key=lambda a: (a != "lora", a))
    for ax, (x, key) in zip(axes.flat, panels):
        for arm in arms:
            part = t[t.arm == arm]
            stats = []
            for a, g in part.groupby("alpha"):
                iv = over_seeds(g[key].to_numpy(dtype=float), by_key[key].bounds)
                xv = float(g["gain"].mean()) if x == "gain" else float(a)
                stats.append((xv, iv.mean, iv.low, iv.high))
            stats.sort()
            xs, m, lo, hi = (np.array(c, dtype=float) for c in zip(*stats)) if stats else ([],) * 4
            line, = ax.plot(xs, m, marker="o", ms=3, label=arm)
            ok = np.isfinite(lo) & np.isfinite(hi)
            if ok.any():
                ax.fill_between(xs[ok], lo[ok], hi[ok], color=line.get_color(), alpha=0.15, lw=0)
        h = by_key[key]
        ax.set_ylabel(f"{h.label} ({'higher' if h.higher_is_better else 'lower'} is better)", fontsize=8)
        ax.set_xlabel("adapter scale alpha (0 = base, 1 = as trained)" if x == "alpha" else
                      f"in-domain gain over {base_name} (mean over seeds)", fontsize=8)
        if x == "alpha":
            ax.axvline(1.0, color="0.6", lw=0.8, ls=":")
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if panels:
        axes.flat[0].legend(fontsize=7, ncol=2)
    seeds = t.groupby("arm")["seed"].nunique()
    fig.suptitle(f"{title}: adapter-scale curves (mean over {int(seeds.min()) if len(seeds) else 0} seeds, "
                 "band = 95% t-interval)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
