"""Report safety: every user-controlled string that reaches the HTML (title, folder name,
checkpoint ids, method, model, data, shift, metric, notes, references, provenance fields) is
escaped. Each field gets its own payload; in headless Chromium none runs, none reaches the
page as markup, and the page logs no error."""

from __future__ import annotations

import json
import shutil

import pandas as pd

from robustfeat.report import build_report

FIELDS = ["checkpoint", "method", "model", "data", "shift", "metric", "note", "reference"]


def _payload(i: int) -> str:
    return f'"><script>window.__pwned = (window.__pwned || []).concat({i})</script><img src=x onerror="window.__pwned={i}">'


def test_no_user_string_runs_in_the_report(tiny_results, tmp_path, browser):
    root = tmp_path / f'results <b onmouseover="window.__pwned=99">'
    shutil.copytree(tiny_results, root)
    frame = pd.read_csv(root / "results.csv", dtype=str, keep_default_na=False)
    for i, col in enumerate(FIELDS):
        frame[col] = frame[col].astype(str) + _payload(i)
    frame.to_csv(root / "results.csv", index=False)
    meta = json.loads((root / "results.json").read_text())
    meta["bank"] = _payload(20)
    meta["provenance"]["git_revision"] = _payload(21)
    meta["provenance"]["versions"] = {_payload(22): _payload(23)}
    meta["provenance"]["mce"] = _payload(24)
    for info in meta["checkpoints"].values():
        info.update(path=_payload(25), method=_payload(26), weights_sha256=_payload(27))
        info["trained_with"] = {"git_revision": _payload(28)}
    (root / "results.json").write_text(json.dumps(meta))
    html = build_report([root], tmp_path / "report.html", title=_payload(30))
    text = html.read_text()
    assert "<script>window.__pwned" not in text and "onerror=\"window" not in text
    assert "onmouseover=\"window" not in text
    browser.get(html.as_uri())
    assert browser.execute_script("return window.__pwned === undefined")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    page = browser.find_element("tag name", "body").text
    for i in (0, 1, 2, 3, 25, 30):  # shown to the reader as the text it is
        assert f"concat({i})" in page, i
