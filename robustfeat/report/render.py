"""``robustfeat report``: one self-contained HTML file (figures embedded, no network
fetches, every string escaped) or a PDF of the same template (WeasyPrint)."""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import inspect
import io
import math
import os
from pathlib import Path

import pandas as pd

from robustfeat.errors import RobustfeatError
from robustfeat.report.conclusions import conclusions
from robustfeat.report.verdicts import format_p, verdicts
from robustfeat.report.plots import PLOTS, available, feeders
from robustfeat.report.summary import (
    Results,
    best_per_column,
    few_seeds,
    format_value,
    headline_table,
    headlines,
    load_results,
)
from robustfeat.evaluations.base import evaluations_in_order

FORMATS = ("html", "pdf")
CELL_HEADERS = ("checkpoint", "method", "seed", "shift", "severity", "kind", "metric", "value", "95% CI", "n",
                "reference", "note")

# Sorting for the per-cell tables: our only script, allowed by its hash in the page's
# Content-Security-Policy (so nothing else can run, even if a string slipped through).
SORT_SCRIPT = """
(function () {
  function key(td) {
    var t = td.textContent.trim();
    return /^-?[0-9.]+(e[-+]?[0-9]+)?$/i.test(t) ? parseFloat(t) : t.toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute("data-order") !== "asc";
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        });
        rows.forEach(function (r) { body.appendChild(r); });
        th.setAttribute("data-order", asc ? "asc" : "desc");
      });
    });
  });
})();
"""


def _fmt(v, digits: int = 4) -> str:
    return format_value(v, digits)


def _ci(lo, hi) -> str:
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)) or (isinstance(hi, float) and math.isnan(hi)):
        return ""
    return f"[{lo:.3g}, {hi:.3g}]"


def summary_context(frame: pd.DataFrame) -> dict:
    table = headline_table(frame)
    present = [h for h in headlines() if h.key in table and table[h.key].notna().any()]
    best = best_per_column(table)
    headers = [{"label": "model", "title": "model"}, {"label": "data", "title": "data"},
               {"label": "method", "title": "method"}, {"label": "seeds", "title": "number of seeds"}]
    headers += [{"label": f"{h.label} {'↑' if h.higher_is_better else '↓'}",
                 "title": f"{h.description} ({'higher' if h.higher_is_better else 'lower'} is better)"}
                for h in present]
    rows, clipped = [], False
    for i, r in table.iterrows():
        row = [{"value": r["model"], "cls": "name"}, {"value": r["data"], "cls": "name"},
               {"value": r["method"], "cls": "name"}, {"value": int(r["seeds"]), "cls": ""}]
        for h in present:
            ci = _ci(r.get(f"{h.key}_lo"), r.get(f"{h.key}_hi"))
            cut = bool(r.get(f"{h.key}_clipped")) and bool(ci)
            clipped |= cut
            row.append({"value": _fmt(r[h.key]), "ci": ci + ("*" if cut else ""),
                        "cls": "best" if i in best.get(h.key, set()) else ""})
        rows.append(row)
    return {"headers": headers, "rows": rows, "clipped": clipped, "few_seeds": few_seeds(table),
            "max_seeds": int(table["seeds"].max()) if len(table) else 0}


def conclusions_context(frame: pd.DataFrame) -> list[dict]:
    out = []
    for sec in conclusions(frame):
        grouped: dict[str, list] = {}
        for c in sec.comparisons:
            grouped.setdefault(c.method, []).append(c)
        by_method: dict[str, list[str]] = {}
        for method, comps in grouped.items():
            if all(c.difference.n == 1 for c in comps):  # one shared seed: one line, no verdicts
                diffs = ", ".join(f"{c.headline.label} {c.difference.mean:+.4g}" for c in comps)
                by_method[method] = [f"One seed shared with {sec.against}, so no interval and no conclusion; the "
                                     f"differences (method - {sec.against}) are: {diffs}."]
            else:
                by_method[method] = [c.sentence() for c in comps]
        if sec.against is None:
            lead = (f"No lora or linear row to compare against ({', '.join(sec.methods)} only); the table below "
                    "gives each method's own numbers.")
        elif len(sec.methods) == 1:
            lead = f"Only {sec.against} was evaluated, so there is nothing to compare it with."
        else:
            lead = (f"Each method against {sec.against}: the mean paired difference over the seeds both have "
                    "(method - " + sec.against + ") with its 95% t-interval. An interval that holds 0 is no "
                    "evidence of a difference.")
        out.append({"title": f"{sec.model} on {sec.data}", "lead": lead,
                    "methods": [{"name": m, "sentences": v} for m, v in by_method.items()]})
    return out


def verdicts_context(frame: pd.DataFrame, margins: dict[str, float] | None = None) -> list[dict]:
    """The claims' verdicts per (model, data) with a ``lora`` row: a table and a sentence each."""
    out = []
    for sec in verdicts(frame, margins):
        if not sec.verdicts:
            continue
        title = f"{sec.model} on {sec.data}"
        if all(v.reason for v in sec.verdicts):
            out.append({"title": title, "rows": [], "sentences": [],
                        "lead": f"No claim could be tested: no method shares two or more seeds with {sec.against}, "
                                "so every verdict is inconclusive."})
            continue
        rows = []
        for v in sec.verdicts:
            label = v.headline.label + (" (relative)" if v.relative else "")
            arrow = "↑" if v.headline.higher_is_better else "↓"
            d = v.difference
            diff = "-" if math.isnan(d.mean) else v.number(d.mean)
            tost = f"{v.interval_text(v.tost90)} / {v.margin_text}" if v.margin is not None else ""
            rows.append({"claim": v.claim_text, "method": v.method, "metric": f"{label} {arrow}", "n": v.n,
                         "difference": diff, "ci": v.interval_text(d) if d.n >= 2 else "", "tost": tost,
                         "p": format_p(v.p), "p_holm": format_p(v.p_holm), "verdict": v.verdict,
                         "direction": v.direction if v.verdict == "contradicted" else ""})
        out.append({"title": title, "lead": sec.lead(), "rows": rows,
                    "sentences": [v.sentence() for v in sec.verdicts]})
    return out


def effective_context(frame: pd.DataFrame) -> list[dict]:
    """Effective robustness per (model, data, OOD set, method), with the kind of line used."""
    from robustfeat.report.effective import effective_robustness_table

    table = effective_robustness_table(frame)
    rows = []
    for r in table.itertuples(index=False):
        rows.append({"model": r.model, "data": r.data, "set": r.set, "method": r.method,
                     "value": _fmt(r.effective_robustness), "ci": _ci(r.lo, r.hi), "seeds": int(r.seeds),
                     "line": r.line})
    return rows


def howto_context(frame: pd.DataFrame, reference_text: str) -> list[str]:
    """The reading notes of the evaluations these results hold, and no others."""
    present = set(frame.evaluation)
    return [cls.explain.format(reference=reference_text) for cls in evaluations_in_order()
            if cls.name in present and cls.explain]


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures_context(frame: pd.DataFrame) -> tuple[list[dict], list[tuple[str, str]]]:
    figures, skipped = [], []
    drawable = {p.name for p in available(frame)}
    for plot in PLOTS:
        if plot.name not in drawable:
            need = " or ".join(f"'{e}'" for e in feeders(plot.name)) or "an evaluation that feeds it"
            skipped.append((plot.title, f"these results have no {need} rows"))
            continue
        try:
            fig = plot.fn(frame)
        except RobustfeatError as e:  # the evaluation is there but not what this plot needs
            skipped.append((plot.title, str(e)))
            continue
        doc = inspect.getdoc(plot.fn) or ""
        figures.append({"name": plot.name, "title": plot.title, "png": _figure_png(fig),
                        "caption": " ".join(doc.replace("``", "").split())})
    return figures, skipped


def cells_context(frame: pd.DataFrame) -> list[dict]:
    out = []
    order = {cls.name: i for i, cls in enumerate(evaluations_in_order())}
    groups = sorted(frame.groupby("evaluation", sort=False), key=lambda g: (order.get(g[0], len(order)), g[0]))
    for ev, part in groups:
        rows = []
        for r in part.itertuples(index=False):
            rows.append({"checkpoint": r.checkpoint, "method": r.method, "seed": r.seed, "shift": r.shift,
                         "severity": r.severity or "", "kind": getattr(r, "kind", "") or "", "metric": r.metric,
                         "value": _fmt(r.value, 5), "95% CI": _ci(getattr(r, "ci_low", None), getattr(r, "ci_high", None)),
                         "n": _fmt(getattr(r, "n", None)), "reference": getattr(r, "reference", "") or "",
                         "note": getattr(r, "note", "") or ""})
        out.append({"name": ev, "rows": rows})
    return out


def provenance_context(results: Results) -> list[dict]:
    folders = []
    for path, top in results.provenance.items():
        meta = {**top, **(top.get("provenance") or {})}  # run-level facts live under "provenance"
        versions = meta.get("versions") or {}
        fields = [("bank", f"{meta.get('bank', '?')} (version {meta.get('bank_version', '?')})"),
                  ("quick bank", str(meta.get("quick"))), ("seed", str(meta.get("seed"))),
                  ("date", str(meta.get("date"))), ("git revision", str(meta.get("git_revision"))),
                  ("library versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))),
                  ("mCE definition", str(meta.get("mce", "")))]
        fields = [(k, v) for k, v in fields if v not in ("", "None")]  # nothing to say: no row
        ckpts = []
        for cid, info in sorted((meta.get("checkpoints") or {}).items()):
            trained = info.get("trained_with") or {}
            ckpts.append({"id": cid, "method": info.get("method", ""), "path": info.get("path", ""),
                          "sha": info.get("weights_sha256", ""), "base": info.get("base_fingerprint", ""),
                          "data": info.get("data_fingerprint", ""), "git": trained.get("git_revision") or ""})
        folders.append({"path": path, "fields": fields, "checkpoints": ckpts})
    return folders


def render_html(results: Results, title: str | None = None, margins: dict[str, float] | None = None,
                every_cell: str | None = None) -> str:
    """The report as one HTML page. ``margins``: the in-domain equivalence margins by
    headline key (see :data:`robustfeat.report.verdicts.DEFAULT_MARGINS`). ``every_cell``:
    where the table of every cell is instead (a file name; the table is then left out)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from robustfeat import __version__

    frame = results.frame
    env = Environment(loader=PackageLoader("robustfeat.report", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    refs = sorted({r for r in frame.get("reference", pd.Series(dtype=str)) if r})
    script_hash = "sha256-" + base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    groups = frame[["model", "data"]].drop_duplicates()
    default_title = "robustfeat report: " + ", ".join(f"{m} on {d}" for m, d in groups.itertuples(index=False))
    figures, skipped = figures_context(frame)
    reference_text = ", ".join(refs) if refs else ("not available (no linear checkpoint or --reference was "
                                                   "evaluated, so only the plain mean error is shown)")
    return env.get_template("report.html.j2").render(
        title=title or default_title, generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__, folders=provenance_context(results), n_checkpoints=len(results.checkpoints),
        summary=summary_context(frame), verdicts=verdicts_context(frame, margins),
        conclusions=conclusions_context(frame), effective=effective_context(frame),
        howto=howto_context(frame, reference_text), figures=figures, skipped=skipped,
        cells=[] if every_cell else cells_context(frame), cells_elsewhere=every_cell,
        cell_headers=CELL_HEADERS, script=SORT_SCRIPT, script_hash=script_hash)


def write_pdf(html: str, path: Path) -> None:
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as e:  # OSError: the Pango libraries are missing
        raise RobustfeatError(f"PDF output needs WeasyPrint (pip install 'robustfeat[pdf]', and the Pango "
                              f"libraries: apt-get install libpango-1.0-0 libpangoft2-1.0-0): {e}") from None
    HTML(string=html).write_pdf(str(path))


def build_report(results_dirs, out: str | os.PathLike, format: str | None = None, title: str | None = None,
                 labels: dict[str, str] | None = None, margins: dict[str, float] | None = None,
                 every_cell: str | None = None) -> Path:
    """Write the report of one or more results folders to ``out`` (``.html`` or ``.pdf``;
    ``format`` overrides the suffix). The file appears complete or not at all. ``margins``:
    the in-domain equivalence margins of the verdicts, by headline key (the study's own).
    ``results_dirs`` may also be a :class:`Results` already read (and prepared, as a study
    prepares its rows); ``every_cell`` names where the table of every cell is instead."""
    out = Path(out).expanduser()
    fmt = (format or out.suffix.lstrip(".") or "html").lower()
    if fmt not in FORMATS:
        raise RobustfeatError(f"unknown report format '{fmt}': use html or pdf (--format, or an .html/.pdf name)")
    if out.is_dir():
        raise RobustfeatError(f"--out '{out}' is a folder; give a file name such as {out / ('report.' + fmt)}")
    results = results_dirs if isinstance(results_dirs, Results) else load_results(results_dirs, labels)
    html = render_html(results, title, margins, every_cell)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "html":
            tmp.write_text(html, encoding="utf-8")
        else:
            write_pdf(html, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
