"""Sweeps: ``robustfeat sweep GRID.yaml [--backend local|ray] --out DIR`` fine-tunes and
evaluates every trial of a grid (see :mod:`robustfeat.sweep.grid`), skipping finished ones,
then writes one report over all trials."""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from robustfeat.errors import RobustfeatError
from robustfeat.sweep.backends import get_backend, pending
from robustfeat.sweep.grid import (EVALUATION_CODE, TRAINING_CODE, Grid, GridError, TrialSpec, check_evaluations,
                                   code_version, parse_grid, read_grid)
from robustfeat.sweep.run import DONE, finished, run_trial, trial_dir

__all__ = ["TrialSpec", "Grid", "GridError", "code_version", "TRAINING_CODE", "EVALUATION_CODE", "parse_grid", "read_grid", "run_trial", "sweep"]


def sweep(grid: str | os.PathLike | Grid, out: str | os.PathLike, backend: str = "local", address: str | None = None,
          report: bool = True, progress: bool = True,
          on_start: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run every unfinished trial of ``grid`` with ``backend`` into ``out`` and write
    ``out/report.html`` over all trials; returns the trial records, counts and wall time.
    The whole grid is checked first; ``on_start(trials, to_run)`` is called once it passed."""
    g = grid if isinstance(grid, Grid) else read_grid(grid)
    runner = get_backend(backend, address)  # a bad backend or address fails before any work
    out = Path(out).expanduser().absolute()  # workers elsewhere (a Ray cluster's) have another working folder
    if out.exists() and not out.is_dir():
        raise RobustfeatError(f"--out '{out}' is a file; give a folder for the sweep")
    check_evaluations(g)  # the whole grid, evaluation settings included, before any trial runs
    trials = list(g.trials)
    todo = pending(trials, out)
    if on_start is not None:
        on_start(len(trials), len(todo))
    t0 = time.perf_counter()
    if todo:
        made = [p for p in (out, *out.parents) if not p.exists()]  # the folders mkdir makes, innermost first
        out.mkdir(parents=True, exist_ok=True)
        try:
            runner.run(todo, out, g.resources, progress)
        except BaseException:
            if made and not any(out.iterdir()):  # refused before any trial began: leave nothing behind
                for p in made:
                    try:
                        p.rmdir()
                    except OSError:
                        break
            raise
    records = []
    for spec in trials:  # all finished now: each has its done.json, read here and never run again here
        record = finished(out, spec)
        if record is None:
            raise RobustfeatError(f"trial {spec.name} ran on the {backend} backend but "
                                  f"{trial_dir(out, spec) / DONE} is not there: --out must be a folder every "
                                  "worker reaches at the same path")
        records.append(record)
    info: dict[str, Any] = {"trials": len(trials), "ran": len(todo), "skipped": len(trials) - len(todo),
                            "wall_s": time.perf_counter() - t0, "records": records, "report": None}
    if report:
        from robustfeat.report import build_report

        labels = {r["results"]: r["label"] for r in records}
        info["report"] = build_report(list(labels), out / "report.html", labels=labels,
                                      title=f"robustfeat sweep: {Path(g.source).name} ({len(trials)} trials)")
    return info
