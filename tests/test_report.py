"""Reports: the headline table and every plot against hand-computed values on a results
frame built here; the HTML report in headless Chromium (loads with no console error, a
planted <script> does not run, tables sort); the PDF's pages and text; one-line errors
that leave an existing report alone."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from robustfeat.errors import RobustfeatError
from robustfeat.report import build_report, headline_table, load_results
from robustfeat.report import plots

LAYERS = ["enc.0.query", "enc.0.value", "enc.1.query"]
CORR = ["fog", "gaussian_noise"]


def _row(ckpt, method, seed, evaluation, shift, metric, value, severity=0, lo=math.nan, hi=math.nan, ref=""):
    return {"results_dir": "r", "checkpoint": ckpt, "method": method, "model": "m", "data": "d", "seed": seed,
            "evaluation": evaluation, "shift": shift, "severity": severity, "metric": metric, "value": value,
            "ci_low": lo, "ci_high": hi, "n": 100, "reference": ref, "note": ""}


def synthetic() -> pd.DataFrame:
    """3 methods x 2 seeds with values chosen so every plotted number is easy to check."""
    rows = []
    for method, base in (("linear", 0.70), ("lora", 0.80), ("vefa", 0.78)):
        for seed in (0, 1):
            c = f"{method}-{seed}"
            acc = base + 0.01 * seed
            rows.append(_row(c, method, seed, "clean", "test", "accuracy", acc, lo=acc - 0.02, hi=acc + 0.02))
            rows.append(_row(c, method, seed, "ood", "mean-ood", "accuracy", acc - 0.1))
            for i, corr in enumerate(CORR):
                for s in (1, 3, 5):
                    rows.append(_row(c, method, seed, "corruptions", corr, "error", 0.1 * s + 0.05 * i + seed * 0.01,
                                     severity=s))
            rows.append(_row(c, method, seed, "corruptions", "all", "mce", 1.0 if method == "linear" else 0.9,
                             ref="linear-0"))
            rows.append(_row(c, method, seed, "corruptions", "all", "mean_error", 0.35 + 0.01 * seed))
            rows.append(_row(c, method, seed, "linear-probe", "digits:label", "forgetting",
                             0.0 if method == "linear" else 0.02 * (seed + 1)))
            for j, layer in enumerate(LAYERS):
                rows.append(_row(c, method, seed, "cka", layer, "cka", 1.0 if method == "linear" else 0.9 - 0.1 * j))
                rows.append(_row(c, method, seed, "weights", layer, "intruders", 0 if method == "linear" else j))
                rows.append(_row(c, method, seed, "weights", layer, "relative_change", 0.01 * j))
            rows.append(_row(c, method, seed, "cka", "all", "cka", 1.0 if method == "linear" else 0.8))
            for k, dom in enumerate(["amazon", "nyt", "tweets"]):
                a = acc - 0.05 * k
                rows.append(_row(c, method, seed, "domains", dom, "accuracy", a, lo=a - 0.03, hi=a + 0.03))
    return pd.DataFrame(rows)


def test_headline_table_means_and_t_intervals_by_hand():
    t = headline_table(synthetic()).set_index("method")
    assert list(t.index) == ["linear", "lora", "vefa"] and (t.seeds == 2).all()
    assert t.loc["lora", "id_acc"] == pytest.approx(0.805)
    # two seeds 0.80, 0.81: half-width t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.00707 / 1.414
    half = 12.7062047 * np.std([0.80, 0.81], ddof=1) / math.sqrt(2)
    assert t.loc["lora", "id_acc_hi"] - t.loc["lora", "id_acc"] == pytest.approx(half, rel=1e-6)
    assert t.loc["vefa", "probe_forgetting"] == pytest.approx(0.03)
    assert t.loc["linear", "mce"] == 1.0 and t.loc["lora", "mce"] == pytest.approx(0.9)


def test_headline_single_seed_uses_the_cells_ci():
    f = synthetic()
    t = headline_table(f[f.seed == 0]).set_index("method")
    assert t.loc["lora", "id_acc_lo"] == pytest.approx(0.78) and t.loc["lora", "id_acc_hi"] == pytest.approx(0.82)


def _texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text")))


def test_id_vs_ood_plot_points_line_and_labels():
    fig = plots.id_vs_ood(synthetic())
    ax = fig.axes[0]
    assert "accuracy" in ax.get_xlabel() and "fraction" in ax.get_ylabel()
    dots = [c.get_offsets() for c in ax.collections if len(c.get_offsets()) == 2]
    xs = sorted(float(x) for d in dots for x in d[:, 0])
    assert xs == pytest.approx([0.70, 0.71, 0.78, 0.79, 0.80, 0.81])  # one point per seed
    # the base points have ID 0.70/0.71 and OOD 0.60/0.61: the fitted line passes through them
    line = [l for l in ax.lines if l.get_linestyle() == "--"][0]
    xd, yd = line.get_data()
    assert np.interp(0.705, xd, yd) == pytest.approx(0.605, abs=0.003)
    text = _texts(fig)
    assert "2 seeds per method" in text and "95%" in text and "(base)" in text


def test_corruption_plots_values_by_hand():
    f = synthetic()
    fig = plots.corruption_by_severity(f)
    lora = [c for c in fig.axes[0].containers if c.get_label() == "lora"][0].lines[0]
    # mean over the 2 corruptions and 2 seeds at severity 1: (0.1 + 0.15 + 0.11 + 0.16) / 4
    assert lora.get_ydata()[0] == pytest.approx(0.13)
    heat = plots.corruption_heatmap(f)
    grid = heat.axes[0].images[0].get_array()
    # fog (row 0) for linear (column 0): mean over severities 1, 3, 5 and seeds 0, 1
    assert grid[0, 0] == pytest.approx(np.mean([0.1, 0.3, 0.5, 0.11, 0.31, 0.51]))
    bars = plots.mce_bars(f)
    heights = sorted(round(p.get_height(), 6) for p in bars.axes[0].patches)
    assert 0.9 in heights and 1.0 in heights and 0.355 in heights
    assert "Reference for mCE: linear-0" in _texts(bars)


def test_forgetting_tradeoff_gain_is_against_the_same_seeds_base():
    fig = plots.forgetting_tradeoff(synthetic())
    pts = {c.get_label(): c.get_offsets() for c in fig.axes[0].collections}
    lora = np.asarray(pts["lora"])
    assert sorted(map(tuple, lora.round(6))) == [(0.1, 0.02), (0.1, 0.04)]  # 0.80 - 0.70 and 0.81 - 0.71
    assert np.allclose(np.asarray(pts["linear"]), 0)


def test_drift_and_domain_plots():
    f = synthetic()
    fig = plots.drift_by_layer(f)
    assert len(fig.axes) == 3
    cka_lora = [l for l in fig.axes[0].lines if l.get_label() == "lora"][0]
    assert list(cka_lora.get_ydata()) == pytest.approx([0.9, 0.8, 0.7])
    intr = [l for l in fig.axes[1].lines if l.get_label() == "lora"][0]
    assert list(intr.get_ydata()) == [0, 1, 2]
    dom = plots.domain_bars(f)
    hatched = [p for p in dom.axes[0].patches if p.get_hatch()]
    assert len(hatched) == 3  # one worst domain per method (tweets)
    assert all(p.get_height() == pytest.approx(min(q.get_height() for q in dom.axes[0].patches
                                                    if q.get_facecolor() == p.get_facecolor())) for p in hatched)


def test_plots_say_what_they_need():
    f = synthetic()
    with pytest.raises(RobustfeatError, match="'domains' rows"):
        plots.domain_bars(f[f.evaluation != "domains"])
    names = [p.name for p in plots.available(f[f.evaluation.isin(["clean", "cka"])])]
    assert names == ["drift"]


# --- real results, real browser --------------------------------------------------------------
@pytest.fixture(scope="module")
def results(tiny_results, tmp_path_factory):
    """The shared tiny results folder, and a copy of it in which one method name is a script."""
    res = tiny_results
    root = tmp_path_factory.mktemp("report")
    evil = root / "evil"
    shutil.copytree(res, evil)
    frame = pd.read_csv(evil / "results.csv")
    frame.loc[frame.method == "lora", "method"] = '<script>window.__pwned = 1; document.title = "pwned"</script>'
    frame.to_csv(evil / "results.csv", index=False)
    meta = json.loads((evil / "results.json").read_text())
    for info in meta["checkpoints"].values():
        info["path"] = '<img src=x onerror="window.__pwned = 2">'
    (evil / "results.json").write_text(json.dumps(meta))
    return res, evil


def test_html_report_in_a_real_browser(results, tmp_path, browser):
    from selenium.webdriver.common.by import By

    res, evil = results
    html = build_report([evil], tmp_path / "report.html")
    text = html.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    assert "<script>window.__pwned" not in text and "&lt;script&gt;" in text
    driver = browser
    driver.get(html.as_uri())
    assert driver.title.startswith("robustfeat report")
    assert driver.execute_script("return window.__pwned === undefined")  # neither planted script ran
    logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert logs == [], logs
    assert "<script>window.__pwned" in driver.find_element(By.ID, "summary-table").text  # shown as text
    imgs = driver.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(imgs) >= 4 and all(driver.execute_script("return arguments[0].naturalWidth", i) > 100 for i in imgs)
    # the per-cell tables sort by a click on a header (our one allowed script runs)
    table = driver.find_element(By.CSS_SELECTOR, "table.sortable")
    col = [h.text for h in table.find_elements(By.TAG_NAME, "th")].index("value")
    table.find_elements(By.TAG_NAME, "th")[col].click()
    vals = [float(r.find_elements(By.TAG_NAME, "td")[col].get_attribute("textContent"))
            for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert vals == sorted(vals) and len(vals) > 1


def test_pdf_report_pages_and_text(results, tmp_path):
    res, _ = results
    pdf = build_report([res], tmp_path / "report.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 3
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    for needle in ("Summary", "How to read this", "mCE", "lora", "linear", "Provenance", "torch 2.", "image-v5-quick"):
        assert needle in text, needle


def test_report_errors_leave_an_existing_report_alone(results, tmp_path, capsys):
    from robustfeat.cli import main

    res, _ = results
    out = tmp_path / "report.html"
    out.write_text("my old report")
    cases = [([tmp_path / "missing"], "does not exist"), ([tmp_path], "not a finished results folder"),
             ([res, "--out", tmp_path / "report.docx"], "unknown report format 'docx'"),
             ([res, "--out", tmp_path], "is a folder")]
    for args, match in cases:
        argv = ["report", *map(str, args)]
        if "--out" not in argv:
            argv += ["--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
    assert out.read_text() == "my old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_load_results_joins_folders(results):
    res, evil = results
    r = load_results([res, evil])
    assert set(r.frame.results_dir) == {str(res), str(evil)} and len(r.provenance) == 2
    assert len(r.checkpoints) == 4


def test_two_models_are_compared_within_their_own_group():
    from robustfeat.report.summary import best_per_column

    a = synthetic()
    # lora well ahead (intervals apart) on ID accuracy, so its best is marked
    a.loc[(a.evaluation == "clean") & (a.method != "lora"), "value"] -= 0.3
    b = a.assign(model="m2")
    b.loc[b.metric == "accuracy", "value"] -= 0.3  # a much weaker model: its best is still marked
    table = headline_table(pd.concat([a, b], ignore_index=True))
    best = best_per_column(table)
    marked = table.iloc[sorted(best["id_acc"])]
    assert sorted(zip(marked.model, marked.method)) == [("m", "lora"), ("m2", "lora")]
    fig = plots.forgetting_tradeoff(pd.concat([a, b], ignore_index=True))
    assert [ax.get_title() for ax in fig.axes] == ["m on d", "m2 on d"]
    drift = plots.drift_by_layer(pd.concat([a, b], ignore_index=True))
    assert len(drift.axes) == 6  # 3 measures x 2 models


def test_drift_lines_up_one_bases_layers_named_by_different_wrappers():
    """A PEFT-made classifier names MiniLM's layers ``bert.encoder.layer.N...``, robustfeat's
    run ``encoder.encoder.layer.N...``: the drift plot puts the same layer at the same place."""
    f = synthetic()
    drift = f[f.evaluation.isin(["cka", "weights"]) & (f["shift"] != "all")]
    layers = list(dict.fromkeys(drift["shift"]))
    assert len(layers) >= 2
    lora = f.method == "lora"
    f.loc[lora, "shift"] = f.loc[lora, "shift"].map(lambda s: s if s == "all" else "bert." + s)
    other = f["shift"].isin(layers) & ~lora
    f.loc[other, "shift"] = "encoder.encoder." + f.loc[other, "shift"]
    fig = plots.drift_by_layer(f)
    assert fig.axes[0].get_title().endswith(f"({len(layers)} layers)")
    assert plots.layer_key("bert.encoder.layer.3.attention.self.query") == "layer.3.attention.self.query"
    assert plots.layer_key("head") == "head"
    # names that would collide once cut keep their full form
    two = pd.DataFrame({"checkpoint": "c", "shift": ["encoder.layer.0.q", "decoder.layer.0.q"], "value": [1, 2]})
    assert list(plots.aligned_layers(two)["shift"]) == ["encoder.layer.0.q", "decoder.layer.0.q"]


def test_a_single_checkpoint_report(tiny_results, tmp_path):
    """One checkpoint alone still gives a report: its numbers, the plots that apply, and
    a note for each plot that needs more (the forgetting trade-off needs the base)."""
    one = tmp_path / "one"
    shutil.copytree(tiny_results, one)
    frame = pd.read_csv(one / "results.csv")
    keep = frame[frame.method == "lora"].checkpoint.iloc[0]
    frame[frame.checkpoint == keep].to_csv(one / "results.csv", index=False)
    meta = json.loads((one / "results.json").read_text())
    meta["checkpoints"] = {k: v for k, v in meta["checkpoints"].items() if k == keep}
    (one / "results.json").write_text(json.dumps(meta))
    html = build_report([one], tmp_path / "one.html").read_text()
    assert "1 checkpoint from 1 results folder" in html
    assert 'Plot "Forgetting vs ID gain" not drawn' in html and "linear" in html
    assert html.count("<figure") >= 2


def test_domain_legend_matches_its_bars_and_drift_labels_fit():
    f = synthetic()
    dom = plots.domain_bars(f)
    legend = dom.axes[0].get_legend()
    handles = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert {"linear", "lora", "vefa"} <= set(handles)
    assert all(not handles[m].get_hatch() for m in ("linear", "lora", "vefa"))  # colours, not the worst bar's hatch
    assert handles["worst domain of a method"].get_hatch() == "///"
    # the drift figure's y labels stay inside the figure, so its panels can be told apart
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.drift_by_layer(f)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        box = ax.yaxis.label.get_window_extent(renderer)
        assert box.x0 >= 0 and ax.yaxis.label.get_text(), ax.yaxis.label.get_text()


def test_a_text_only_report_explains_only_what_it_holds(tmp_path):
    """No mCE reading note without corruption rows; each plot left out says why; the per-cell
    tables open on the clean cells; conclusions against lora lead the report."""
    f = synthetic()
    f = f[~f.evaluation.isin(["corruptions"])]
    res = tmp_path / "res"
    res.mkdir()
    f.drop(columns=["results_dir"]).to_csv(res / "results.csv", index=False)
    (res / "results.json").write_text(json.dumps({"format": "robustfeat.results", "checkpoints": {}}))
    import html as _html

    html = _html.unescape(build_report([res], tmp_path / "r.html").read_text())
    howto = html[html.index("How to read this"):html.index('<h2 id="plots">')]
    assert "mCE" not in howto and "mean CKA" in howto and "worst domain" in howto
    assert "mCE definition" not in html  # no empty provenance row for what is not there
    for title in ("Corruption error by severity", "Error per corruption", "mCE, relative mCE, mean error"):
        assert f'Plot "{title}" not drawn: these results have no \'corruptions\' rows' in html
    first = html.index("<details")
    assert html[first:first + 60].startswith('<details open id="cells-clean"')
    assert html.index('id="conclusions"') < html.index('id="summary"')
    assert "vefa" in html and "against lora" in html and "over 2 paired seeds" in html
    assert "trained with (git revision)" in html and "trained at" not in html
    # effective robustness in a table, saying which line it stands on (the synthetic frame's OOD rows have no
    # kind, so only the mean over OOD sets is there)
    table = html[html.index('id="effective-table"'):]
    table = table[:table.index("</table>")]
    assert "mean-ood" in table and "slope 1 in logit space through the mean base point" in table


# --- the summary numbers a reader sees are the headline table's --------------------------------
def _three_seeds(res, root):
    """``res`` with every checkpoint repeated as seeds 1 and 2 (values scaled slightly), so the
    summary has t-intervals to show."""
    out = root / "three-seeds"
    shutil.copytree(res, out)
    frame = pd.read_csv(out / "results.csv")
    meta = json.loads((out / "results.json").read_text())
    parts = [frame]
    for s in (1, 2):
        more = frame.copy()
        more["checkpoint"] = more.checkpoint + f"-s{s}"
        more["seed"] = s
        more["value"] = more.value * (1 - 0.013 * s)
        parts.append(more)
        for k, v in list(meta["checkpoints"].items()):
            if not k.endswith(("-s1", "-s2")):
                meta["checkpoints"][f"{k}-s{s}"] = {**v, "seed": s}
    pd.concat(parts).to_csv(out / "results.csv", index=False)
    (out / "results.json").write_text(json.dumps(meta))
    return out


def _shown(text: str, value: float, digits: int) -> bool:
    """Whether ``text`` shows ``value`` to ``digits`` significant digits."""
    shown = float(text.strip().rstrip("*"))
    if value == 0:
        return shown == 0
    return abs(shown - value) <= 0.5 * 10 ** (math.floor(math.log10(abs(value))) - digits + 1) * 1.0001


def _expected(res):
    from robustfeat.report.summary import headlines

    table = headline_table(load_results([res]).frame)
    present = [h for h in headlines() if h.key in table and table[h.key].notna().any()]
    assert len(present) >= 4 and (table["seeds"] == 3).all()
    return table, present


class _SummaryTable:
    """The cells of the HTML report's summary table: per row, per cell, (value text, CI text)."""

    def __init__(self, html: str) -> None:
        from html.parser import HTMLParser

        rows: list[list[list[str]]] = []
        headers: list[str] = []
        state = {"in": False, "cell": None, "ci": False, "th": None}

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                if tag == "table" and a.get("id") == "summary-table":
                    state["in"] = True
                elif state["in"] and tag == "tr":
                    rows.append([])
                elif state["in"] and tag == "td":
                    state["cell"] = ["", ""]
                elif state["in"] and tag == "th":
                    state["th"] = ""
                elif state["in"] and tag == "span" and "ci" in (a.get("class") or ""):
                    state["ci"] = True

            def handle_endtag(self, tag):
                if tag == "table" and state["in"]:
                    state["in"] = False
                elif state["in"] and tag == "td":
                    rows[-1].append(state["cell"])
                    state["cell"] = None
                elif state["in"] and tag == "th":
                    headers.append(state["th"].strip())
                    state["th"] = None
                elif tag == "span":
                    state["ci"] = False

            def handle_data(self, data):
                if state["cell"] is not None:
                    state["cell"][1 if state["ci"] else 0] += data
                elif state["th"] is not None:
                    state["th"] += data

        P().feed(html)
        self.headers = headers
        self.rows = [r for r in rows if r]


def test_html_summary_numbers_are_the_headline_table(results, tmp_path):
    res = _three_seeds(results[0], tmp_path)
    table, present = _expected(res)
    shown = _SummaryTable(build_report([res], tmp_path / "r.html").read_text())
    assert [h.split(" ")[0] for h in shown.headers[4:]] == [h.label.split(" ")[0] for h in present]
    assert len(shown.rows) == len(table)
    checked = 0
    for (_, r), cells in zip(table.iterrows(), shown.rows):
        assert [c[0] for c in cells[:4]] == [r["model"], r["data"], r["method"], str(int(r["seeds"]))]
        for h, (value, ci) in zip(present, cells[4:]):
            assert _shown(value, r[h.key], 4), (h.key, value, r[h.key])
            lo, hi = ci.strip().rstrip("*").strip("[]").split(",")
            assert _shown(lo, r[f"{h.key}_lo"], 3) and _shown(hi, r[f"{h.key}_hi"], 3), (h.key, ci)
            assert ci.endswith("*") == bool(r[f"{h.key}_clipped"])
            checked += 1
    assert checked >= 8


def test_pdf_summary_numbers_are_the_headline_table(results, tmp_path):
    """The PDF's summary section holds exactly the headline table's numbers (values, interval
    ends and seed counts), each shown to its printed precision."""
    import re

    res = _three_seeds(results[0], tmp_path)
    table, present = _expected(res)
    pdf = build_report([res], tmp_path / "r.pdf")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "Summary")
    end = next(i for i, l in enumerate(lines) if i > start and l.strip() == "Effective robustness")
    header = next(i for i in range(start, end) if lines[i].lstrip().startswith("model"))
    body = "\n".join(l for l in lines[header + 1:end] if not re.fullmatch(r"\s*page \d+ of \d+\s*", l))  # no footer
    for name in set(table.model) | set(table.data) | set(table.method):
        body = body.replace(name, " ")
    numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", body)]
    wanted = []
    for _, r in table.iterrows():
        wanted.append((float(r["seeds"]), 9))
        for h in present:
            wanted += [(r[h.key], 4), (r[f"{h.key}_lo"], 3), (r[f"{h.key}_hi"], 3)]
    assert len(numbers) == len(wanted), (numbers, wanted)
    left = list(numbers)
    for value, digits in wanted:
        match = next((p for p in left if _shown(repr(p), value, digits)), None)
        assert match is not None, (value, digits, left)
        left.remove(match)
