"""Studies: ``robustfeat study STUDY.yaml --out DIR [--backend local|ray]`` answers whether
feature-space adaptation forgets less, per family: the tuning, seeds and scale stages
(:mod:`robustfeat.study.stages`) run as sweep trials, then the verdicts, the scale curves
and the committed outputs (:mod:`robustfeat.study.outputs`) are written from what the
stages left. Every stage is resumable: a rerun skips every finished trial, so a study can
be built up over several separate runs (``--families`` runs some of them)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from robustfeat.study.spec import FamilySpec, StudyError, StudySpec, parse_study, read_study
from robustfeat.study.stages import (STAGES, Trial, choose_rates, extended, matched_ranks, scale_trials, seed_trials,
                                     tuning_trials)

__all__ = ["StudyError", "StudySpec", "FamilySpec", "parse_study", "read_study", "run_study", "STAGES"]

STUDY_FILE = "study.json"


def _check(spec: StudySpec, families: list[FamilySpec]) -> None:
    """Every family's evaluation settings against its real model and data before any trial
    runs (one arm each: the settings do not depend on the method)."""
    from robustfeat.sweep.grid import Grid, check_evaluations

    for fam in families:
        lora = fam.arm("lora")
        from robustfeat.study.stages import _spec

        specs = [_spec(fam, lora, fam.seeds[0], fam.rates["lora"][0], fam.evaluate, {})]
        if fam.scale_arms:
            specs.append(_spec(fam, lora, fam.seeds[0], fam.rates["lora"][0],
                               {**fam.scale_evaluate, "scales": list(fam.alphas)}, {}))
        try:
            check_evaluations(Grid(tuple(specs), spec.resources, f"{spec.source}: family '{fam.name}'"))
        except StudyError:
            raise
        except Exception as e:
            from robustfeat.errors import RobustfeatError

            if isinstance(e, RobustfeatError):
                raise StudyError(str(e)) from None
            raise


def _run_stage(trials: list[Trial], out: Path, backend, resources: dict, progress: bool) -> dict[str, dict]:
    """Run the unfinished trials of a stage; the records of all of them, by trial key."""
    from robustfeat.sweep.backends import pending
    from robustfeat.sweep.run import finished

    specs = list({t.spec.key: t.spec for t in trials}.values())
    todo = pending(specs, out)
    if todo:
        out.mkdir(parents=True, exist_ok=True)
        backend.run(todo, out, resources, progress)
    records = {}
    for s in specs:
        rec = finished(out, s)
        if rec is None:
            raise StudyError(f"trial {s.name} ran but left no done.json in {out}: --out must be a folder every "
                             "worker reaches at the same path")
        records[s.key] = rec
    return records


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def run_family(spec: StudySpec, fam: FamilySpec, out: Path, backend, progress: bool = True,
               stages: tuple[str, ...] = STAGES, log=print) -> dict[str, Any]:
    """Run the stages of one family into ``out/FAMILY``; returns what they chose and made."""
    root = out / fam.name
    matched = matched_ranks(fam, root / "matched.json")
    info: dict[str, Any] = {"model": fam.model, "data": fam.data, "arms": [a.name for a in fam.arms],
                            "matched_ranks": matched, "stages": {}}
    t0 = time.perf_counter()
    rates = dict(fam.rates)
    for grown in range(fam.extend + 1):
        tuning = tuning_trials(fam, matched, rates)
        log(f"[{fam.name}] tuning: {len(tuning)} fine-tunes ({len(fam.arms)} arms x their learning rates"
            + (f", grids grown at their edges {'once' if grown == 1 else f'{grown} times'}" if grown else "")
            + f"), seed {fam.tuning_seed}, picked on validation")
        recs = _run_stage(tuning, root, backend, spec.resources, progress)
        choices = choose_rates(fam, tuning, recs)
        wider = {a: extended(rates[a], c["chosen"]) for a, c in choices.items()}
        if grown == fam.extend or wider == {a: tuple(sorted(r)) for a, r in rates.items()}:
            break
        rates = wider
    info["choices"] = choices
    info["stages"]["tuning"] = _stage_info(tuning, recs, time.perf_counter() - t0)
    if "seeds" in stages:
        seeds = seed_trials(fam, choices, matched)
        t0 = time.perf_counter()
        log(f"[{fam.name}] seeds: {len(seeds)} trials ({len(fam.arms)} arms x {len(fam.seeds)} seeds), full bank")
        recs = _run_stage(seeds, root, backend, spec.resources, progress)
        info["stages"]["seeds"] = _stage_info(seeds, recs, time.perf_counter() - t0)
        info["results"] = {_rel(recs[t.spec.key]["results"], out): t.arm for t in seeds}
        from robustfeat.train.record import RunRecord

        for t in seeds:  # what each arm trains, and the toolkit's name of the family
            raw = RunRecord.read(recs[t.spec.key]["checkpoint"]).raw
            info.setdefault("trainable", {})[t.arm] = raw["model"]["trainable_parameters"]
            info["family"] = raw["model"]["family"]
    if "scale" in stages and fam.scale_arms:
        scale = scale_trials(fam, choices, matched)
        t0 = time.perf_counter()
        log(f"[{fam.name}] scale: {len(scale)} trials ({len(fam.scale_arms)} arms x {len(fam.seeds)} seeds x "
            f"{len(fam.alphas)} scales)")
        recs = _run_stage(scale, root, backend, spec.resources, progress)
        info["stages"]["scale"] = _stage_info(scale, recs, time.perf_counter() - t0)
        info["scale_results"] = {_rel(recs[t.spec.key]["results"], out): t.arm for t in scale}
    return info


def _rel(path: str, root: Path) -> str:
    """A path inside the study folder, relative to it (the folder can be moved or committed)."""
    return Path(path).absolute().relative_to(root).as_posix()


def _stage_info(trials: list[Trial], records: dict[str, dict], wall: float) -> dict[str, Any]:
    """A stage's trials and its machine time: the seconds each trial took when it ran (kept in
    its done.json, so a resumed stage still counts the work done earlier)."""
    keys = list(dict.fromkeys(t.spec.key for t in trials))
    return {"trials": len(keys), "machine_s": round(sum(float(records[k].get("seconds", 0.0)) for k in keys), 1),
            "wall_s_this_run": round(wall, 1)}


def run_study(study: str | os.PathLike | StudySpec, out: str | os.PathLike, backend: str = "local",
              address: str | None = None, families: list[str] | None = None, progress: bool = True,
              outputs: bool = True, log=print, command: str | None = None) -> dict[str, Any]:
    """Run the study's stages (skipping finished trials) and write its outputs into ``out``:
    ``study.json`` (choices, counts, machine time, and per family the ``command`` of every run
    that went over it), and with ``outputs`` the verdicts, ``summary.csv``, the figures,
    ``README.md`` and the report."""
    from robustfeat.sweep.backends import get_backend

    spec = study if isinstance(study, StudySpec) else read_study(study)
    names = [f.name for f in spec.families]
    if families:
        unknown = sorted(set(families) - set(names))
        if unknown:
            raise StudyError(f"no family {', '.join(unknown)} in the study (it has {', '.join(names)})")
    chosen = [f for f in spec.families if not families or f.name in families]
    runner = get_backend(backend, address)
    root = Path(out).expanduser().absolute()
    if root.exists() and not root.is_dir():
        raise StudyError(f"--out '{root}' is a file; give a folder for the study")
    _check(spec, chosen)  # every evaluation setting, before any trial runs
    root.mkdir(parents=True, exist_ok=True)
    record_path = root / STUDY_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.setdefault("families", {})
    record["source"] = str(spec.source)
    for fam in chosen:
        runs = list(record["families"].get(fam.name, {}).get("runs", []))
        info = run_family(spec, fam, root, runner, progress, log=log)
        stages = info.get("stages", {})
        info["runs"] = runs + [{"command": command or "run_study(...)",
                                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "wall_s": round(sum(v.get("wall_s_this_run", 0.0) for v in stages.values()), 1)}]
        record["families"][fam.name] = info
        _write_json(record_path, record)
    info = {"out": root, "record": record}
    if outputs:
        from robustfeat.study.outputs import write_outputs

        info.update(write_outputs(spec, root, record))
    return info
