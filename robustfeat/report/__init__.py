"""Reports: results folders into pandas, plots, and self-contained HTML/PDF reports.

    from robustfeat.report import load_results, headline_table, build_report
    res = load_results(["results/rt-seed0", "results/rt-seed1"])
    headline_table(res.frame)                  # one row per method
    build_report(["results/rt-seed0"], "report.html")
"""

from robustfeat.report.summary import Results, headline_table, headlines, load_results, per_checkpoint, per_seed

__all__ = ["Results", "build_report", "headline_table", "headlines", "load_results", "per_checkpoint", "per_seed"]


def build_report(*args, **kwargs):
    from robustfeat.report.render import build_report as _build

    return _build(*args, **kwargs)
