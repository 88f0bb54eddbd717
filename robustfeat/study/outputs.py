"""What a study leaves for its readers, written from the stages' results (nothing here
trains or evaluates): ``verdicts.csv``, ``summary.csv`` (per family, arm and headline: the
mean over seeds with its 95% interval and the paired difference to lora), ``matched_gain.csv``,
the scale-curve figures, ``README.md`` (a section per family) and the report
(``study.html``, ``study.pdf``) with the verdicts on top."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from robustfeat.metrics.intervals import paired_difference
from robustfeat.report.summary import Results, headline_table, headlines, load_results, per_seed
from robustfeat.study.spec import FamilySpec, StudySpec

SUMMARY_COLUMNS = ["family", "study_family", "model", "data", "method", "lr", "trainable_parameters", "seeds",
                   "metric", "label", "higher_is_better", "mean", "ci_low", "ci_high",
                   "diff_vs_lora", "diff_low", "diff_high", "diff_seeds"]


def _fmt(x: float, digits: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _signed(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.3g}"


#: the arm whose checkpoint of the same seed normalises corruption errors (mCE, relative mCE)
REFERENCE_ARM = "linear"


def family_results(root: Path, info: dict[str, Any]) -> Results:
    """The seeds stage's results, with the rows that need a reference (mCE, relative mCE, CE
    per corruption) computed against the ``linear`` checkpoint of the same seed, as ``robustfeat
    evaluate`` does when both are evaluated together (each trial is evaluated alone). The
    verdicts of the README and those of the report are computed from these same rows."""
    dirs = {str(root / rel): arm for rel, arm in info.get("results", {}).items()}
    results = load_results(list(dirs), labels=dirs)
    return Results(with_reference(results.frame, REFERENCE_ARM), results.provenance)


def family_frame(root: Path, info: dict[str, Any]) -> pd.DataFrame:
    """:func:`family_results`' rows."""
    return family_results(root, info).frame


def with_reference(frame: pd.DataFrame, arm: str) -> pd.DataFrame:
    from robustfeat.results import summary_rows

    refs = {int(s): g for s, g in frame[frame.method == arm].groupby("seed")}
    if not refs:
        return frame
    cell = frame[frame["reference"].fillna("") == ""]
    added = []
    for (results_dir, ckpt), own in cell.groupby(["results_dir", "checkpoint"], sort=True):
        seed = int(own["seed"].iloc[0])
        ref = refs.get(seed)
        if ref is None:
            continue
        ref_id = str(ref["checkpoint"].iloc[0])
        ident = own.iloc[0][["results_dir", "checkpoint", "method", "model", "data", "seed"]].to_dict()
        for r in summary_rows(own.to_dict("records"), ref[ref["reference"].fillna("") == ""].to_dict("records"), ref_id):
            if r.get("reference"):
                added.append({**ident, "kind": "", "note": "", **r})
    if not added:
        return frame
    return pd.concat([frame, pd.DataFrame(added)], ignore_index=True)


def summary_rows(fam: FamilySpec, info: dict[str, Any], frame: pd.DataFrame) -> list[dict]:
    """Per arm and headline: the mean over seeds with its 95% interval, and the paired
    difference to lora over the seeds both have."""
    from robustfeat.report.verdicts import UNDER_TEST

    table = headline_table(frame)
    table = table.iloc[sorted(range(len(table)), key=lambda i: (table["method"].iloc[i] != "lora",
                                                                 table["method"].iloc[i] not in UNDER_TEST,
                                                                 table["method"].iloc[i]))]
    ps = per_seed(frame)
    ref = ps[ps.method == "lora"].set_index("seed")
    rows = []
    for _, r in table.iterrows():
        mine = ps[ps.method == r["method"]].set_index("seed")
        for h in headlines():
            if h.key not in table or pd.isna(r.get(h.key)):
                continue
            d = paired_difference(mine[h.key].to_dict(), ref[h.key].to_dict(), h.bounds) \
                if r["method"] != "lora" and h.key in ref else None
            rows.append({"family": info.get("family", ""), "study_family": fam.name, "model": fam.model,
                         "data": fam.data, "method": r["method"],
                         "lr": info["choices"].get(r["method"], {}).get("chosen"),
                         "trainable_parameters": info.get("trainable", {}).get(r["method"]),
                         "seeds": int(r["seeds"]), "metric": h.key, "label": h.label,
                         "higher_is_better": h.higher_is_better, "mean": r[h.key],
                         "ci_low": r.get(f"{h.key}_lo"), "ci_high": r.get(f"{h.key}_hi"),
                         "diff_vs_lora": d.mean if d else math.nan, "diff_low": d.low if d else math.nan,
                         "diff_high": d.high if d else math.nan, "diff_seeds": d.n if d else 0})
    return rows


def _table_md(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _family_md(fam: FamilySpec, info: dict[str, Any], verdicts: pd.DataFrame, summary: pd.DataFrame,
               gain: float, matched: pd.DataFrame, figure: str | None, head_base: bool = False) -> str:
    lines = [f"## {fam.name}: {fam.model} on {fam.data} ({info.get('family', '')})", ""]
    seeds = ", ".join(map(str, fam.seeds))
    lines += [f"Arms: {', '.join(a.name for a in fam.arms)}; seeds {seeds}; every verdict is paired by seed "
              "against `lora`, Holm-corrected over all tests of this family.", ""]
    if not verdicts.empty:
        lines += ["### Verdicts", ""]
        rows = []
        for _, v in verdicts.iterrows():
            margin = f"±{_fmt(v['margin'], 3)}" if not pd.isna(v["margin"]) else ""
            tost = (f"[{_signed(v['tost90_low'])}, {_signed(v['tost90_high'])}] {margin}"
                    if not pd.isna(v["tost90_low"]) else "")
            rows.append([v["claim"], v["method"], v["label"], f"{_signed(v['mean'])} [{_signed(v['ci95_low'])}, "
                         f"{_signed(v['ci95_high'])}]", tost, _fmt(v["p"], 2), _fmt(v["p_holm"], 2),
                         f"**{v['verdict']}**"])
        lines += [_table_md(["claim", "method", "metric", "difference vs lora [95% CI]", "TOST 90% CI, margin",
                             "p", "Holm p", "verdict"], rows), ""]
        lines += ["Verdict sentences:", ""] + [f"- {s}" for s in verdicts["sentence"]] + [""]
    lines += ["### Learning rates, chosen on validation data", "",
              f"Each arm was fine-tuned at every rate of its grid on seed {fam.tuning_seed}; the rate with the best "
              "validation score (the fine-tuning data's validation split, never a test or shift result) was kept "
              f"for all seeds. Where the best rate lay at an edge of the grid, the grid grew by one rate beyond it "
              f"and the pick was made again (at most {fam.extend} times); \"(edge)\" marks a pick still at an edge.",
              ""]
    rows = []
    for arm in fam.arms:
        c = info["choices"][arm.name]
        scores = ", ".join(f"{lr}: {_fmt(v)}" for lr, v in c["scores"].items())
        rows.append([arm.name, c["metric"] + (" (higher is better)" if c["higher_is_better"] else " (lower is better)"),
                     scores, f"{c['chosen']:g}" + (" (edge)" if c.get("at_edge") else ""),
                     str(info.get("trainable", {}).get(arm.name, "-"))])
    lines += [_table_md(["arm", "validation metric", "candidates (lr: score)", "chosen lr", "trainable parameters"],
                        rows), ""]
    if info.get("matched_ranks"):
        lines += ["Budget-matched LoRA: " + ", ".join(f"{k} uses rank {v}" for k, v in info["matched_ranks"].items())
                  + " (the rank whose adapter parameter count is closest to vefa's).", ""]
    if not summary.empty:
        lines += ["### Every headline (mean over seeds, 95% t-interval; paired difference to lora)", ""]
        rows = [[r["method"], r["label"], f"{_fmt(r['mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]",
                 str(r["seeds"]), "" if r["method"] == "lora" else
                 f"{_signed(r['diff_vs_lora'])} [{_signed(r['diff_low'])}, {_signed(r['diff_high'])}]"]
                for _, r in summary.iterrows()]
        lines += [_table_md(["method", "metric", "mean [95% CI]", "seeds", "minus lora [95% CI]"], rows), ""]
    if figure:
        lines += ["### Adapter-scale curves", "", f"![scale curves of {fam.name}]({figure})", "",
                  f"Each scalable arm's seed checkpoints evaluated with the update scaled by alpha in "
                  f"{{{', '.join(f'{a:g}' for a in fam.alphas)}}} (0 = the base with the trained head, 1 = as trained; "
                  "VeFA: lam -> 1 + alpha (lam - 1); full: theta0 + alpha (theta - theta0)), on "
                  f"{', '.join(fam.scale_evaluate.get('shifts') or ['the bank'])}.", ""]
    if not matched.empty:
        over = (f"over `{REFERENCE_ARM}` of the same seed (the pretrained features with a trained head: a "
                "classifier's alpha 0 keeps the arm's own head, which a full fine-tune trained on a moving body)"
                if head_base else "over the base model (alpha 0, the same model for every arm)")
        lines += [f"Matched-gain reading: forgetting at the in-domain gain {gain:.4g} {over}. That gain is the "
                  "smallest of the arms' mean gains at alpha 1, so every arm reaches it on average; each seed's "
                  "value is interpolated along its curve, and a seed whose curve never reaches the gain is left "
                  "out (the seeds column); one whose curve starts at or above it (its head alone gains that much) "
                  "is read at alpha 0:", ""]
        rows = [[r["arm"], r["label"], f"{_fmt(r['mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]",
                 str(r["seeds"]), "" if r["arm"] == "lora" else
                 f"{_signed(r['diff_vs_lora'])} [{_signed(r['diff_low'])}, {_signed(r['diff_high'])}]"]
                for _, r in matched.iterrows()]
        lines += [_table_md(["arm", "forgetting metric", "at matched gain [95% CI]", "seeds", "minus lora [95% CI]"],
                            rows), ""]
    if info.get("runs"):
        lines += ["Built up over these runs (a rerun skips every finished trial; wall time of the stages in "
                  "that run):", ""] + [f"- `{r['command']}` (finished {r['finished']}, {r['wall_s'] / 60:.1f} min)"
                                       for r in info["runs"]] + [""]
    st = info.get("stages", {})
    if st:
        lines += ["Machine time (the seconds each trial took when it ran, summed): " + "; ".join(
            f"{k} {v['machine_s'] / 60:.1f} min over {v['trials']} trials" for k, v in st.items()) + ".", ""]
    return "\n".join(lines)


CANNOT_SAY = """## What this study cannot say

- The models are small (MiniLM-L6, EfficientNet-Lite0, SmolLM2-135M in a 4-bit GGUF build) and run on a
  2-core CPU: data, test sets and banks are subsampled to fit (sizes in the study file). The paper's
  claim is about CLIP, larger NLU models and GPT-2; a verdict here is evidence at this scale only.
- LoRFA and VeFA are reconstructed from the paper's abstracts (its body and code could not be read):
  the layer choice, initialisation and any schedule of the original may differ.
- Learning rates were tuned on one seed over a grid of three rates spanning 10x around each method's
  default; a finer or wider search could move a method's in-domain score.
- *inconclusive* means the intervals could not separate the methods at this many seeds and examples; it
  is not evidence of equality (the equivalence claim is tested separately, with its margin).
"""


def write_outputs(spec: StudySpec, root: Path, record: dict[str, Any], command: str | None = None,
                  pdf: bool = True) -> dict[str, Any]:
    """Write every output of the families whose seeds stage finished; returns their paths."""
    from robustfeat.report import build_report
    from robustfeat.report.verdicts import verdict_table
    from robustfeat.study.curves import base_scores, in_domain_key, matched_gain, plot_curves, scale_table

    sections, summaries, verdict_frames, gains, frames, provenance = [], [], [], [], [], {}
    margins: dict[str, float] = {}
    for fam in spec.families:
        info = record.get("families", {}).get(fam.name)
        if not info or not info.get("results"):
            continue
        results = family_results(root, info)
        frame = results.frame
        v = verdict_table(frame, margins=fam.margins)
        s = pd.DataFrame(summary_rows(fam, info, frame), columns=SUMMARY_COLUMNS)
        figure, gain, matched, base = None, math.nan, pd.DataFrame(), {}
        if info.get("scale_results"):
            table = scale_table({str(root / rel): arm for rel, arm in info["scale_results"].items()})
            table.to_csv(root / f"{fam.name}-scale.csv", index=False, float_format="%.6g")
            figure = f"figures/{fam.name}-scale.png"
            base = base_scores(frame, REFERENCE_ARM, in_domain_key(table))
            base_name = f"{REFERENCE_ARM} (same seed)" if base else "alpha 0"
            plot_curves(table, root / figure, f"{fam.name}: {fam.model} on {fam.data}", base, base_name)
            gain, matched = matched_gain(table, base=base)
            if not matched.empty:
                gains.append(matched.assign(study_family=fam.name))
        sections.append(_family_md(fam, info, v, s, gain, matched, figure, bool(base)))
        summaries.append(s)
        verdict_frames.append(v.assign(study_family=fam.name))
        margins.update(fam.margins)
        frames.append(frame)
        provenance.update(results.provenance)
    out: dict[str, Any] = {}
    if not sections:
        return out
    pd.concat(summaries, ignore_index=True).to_csv(root / "summary.csv", index=False, float_format="%.6g")
    pd.concat(verdict_frames, ignore_index=True).to_csv(root / "verdicts.csv", index=False, float_format="%.6g")
    if gains:
        pd.concat(gains, ignore_index=True).to_csv(root / "matched_gain.csv", index=False, float_format="%.6g")
    src = Path(spec.source)
    if src.is_file() and src.resolve() != (root / src.name).resolve():
        shutil.copyfile(src, root / src.name)
    cmd = command or f"robustfeat study {src.name} --out {root.name}"
    head = ["# robustfeat study: does feature-space adaptation forget less?", "",
            "The claim under test (arXiv 2510.19155): LoRFA and VeFA reach in-domain accuracy comparable to LoRA "
            "while being more robust under distribution shift and forgetting less. Each family below gives one "
            "verdict per claim and method: *supported*, *contradicted* or *inconclusive*, with the numbers behind "
            "it.", "", f"Made by: `{cmd}` (study file: `{src.name}`, copied here). The report with every table: "
            "`study.html` / `study.pdf`; tidy numbers: `summary.csv`, `verdicts.csv`, `matched_gain.csv`.", ""]
    (root / "README.md").write_text("\n".join(head) + "\n" + "\n\n".join(sections) + "\n\n" + CANNOT_SAY)
    title = "robustfeat study: " + "; ".join(f"{f.model} on {f.data}" for f in spec.families
                                             if record.get("families", {}).get(f.name, {}).get("results"))
    every = Results(pd.concat(frames, ignore_index=True), provenance)
    out["report_html"] = build_report(every, root / "study.html", title=title, margins=margins)
    if pdf:  # the PDF leaves the table of every cell to the HTML (it ran to a thousand pages)
        out["report_pdf"] = build_report(every, root / "study.pdf", title=title, margins=margins,
                                         every_cell="study.html")
    out["readme"] = root / "README.md"
    return out


#: what a study folder holds for its readers (copied by :func:`publish`); the checkpoints and
#: the trials' results stay where the study ran
PUBLISHED = ("README.md", "summary.csv", "verdicts.csv", "matched_gain.csv", "study.html", "study.pdf", "study.json")


def publish(root: Path, dest: Path, spec: StudySpec) -> list[Path]:
    """Copy the outputs of the study folder ``root`` (and its study file) into ``dest``, e.g.
    a folder of the repository; returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    names = [n for n in PUBLISHED if (root / n).is_file()]
    names += sorted(p.name for p in root.glob("*-scale.csv"))
    out = []
    for n in names:
        shutil.copyfile(root / n, dest / n)
        out.append(dest / n)
    for fig in sorted((root / "figures").glob("*.png")):
        (dest / "figures").mkdir(exist_ok=True)
        shutil.copyfile(fig, dest / "figures" / fig.name)
        out.append(dest / "figures" / fig.name)
    src = Path(spec.source)
    if src.is_file() and src.resolve() != (dest / src.name).resolve():
        shutil.copyfile(src, dest / src.name)
        out.append(dest / src.name)
    return out
