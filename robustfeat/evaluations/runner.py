"""``evaluate(checkpoints, out)``: run a bank over fine-tuned checkpoints, cell by cell.

Every finished cell is written atomically before the next starts, so a killed run
restarted with the same command skips what is done and ends with the same table as an
uninterrupted run. Two processes may evaluate different checkpoints into the same folder;
one checkpoint is evaluated by one process at a time.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from robustfeat.errors import UnknownNameError
from robustfeat.locks import locked
from robustfeat.registry import BANKS, CORRUPTIONS, EVALUATIONS
from robustfeat.results import ResultsStore, safe_name
from robustfeat.evaluations.banks import Bank, bank_for_family
from robustfeat.evaluations.base import BasePool, EvalContext, EvalOptions, EvaluationError

log = logging.getLogger(__name__)


def run_id(path: Path, record: dict[str, Any]) -> str:
    """The checkpoint's name in the results: its folder name and a digest of its config
    and weights (two different checkpoints never share an id)."""
    from robustfeat.adapters.checkpoint import WEIGHTS_NAME
    from robustfeat.data.cache import sha256_file

    h = hashlib.sha256(record.get("config_digest", "").encode())
    h.update(sha256_file(path / WEIGHTS_NAME).encode())
    return f"{safe_name(path.name)}-{h.hexdigest()[:8]}"


def _read(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    from robustfeat.train.loop import read_run

    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise EvaluationError(f"'{path}' is not a checkpoint folder (it {'is a file' if p.exists() else 'does not exist'}); "
                              "pass a folder written by `robustfeat finetune`")
    from robustfeat.adapters.checkpoint import read_checkpoint

    record = read_run(p)
    read_checkpoint(p)  # weights present, safe (never a pickle), complete and finite, before any work
    return p, record


def choose_bank(name: str | None, families: set[str]) -> Bank:
    if name is not None:
        bank = BANKS.get(name)
        wrong = families - {bank.family}
        if wrong:
            raise EvaluationError(f"bank '{name}' is for {bank.family} models; the checkpoints include "
                                  f"{', '.join(sorted(wrong))} models (robustfeat ls banks)")
        return bank
    if len(families) != 1:
        raise EvaluationError(f"the checkpoints mix model families ({', '.join(sorted(families))}); evaluate each "
                              "family separately (into different --out folders)")
    return bank_for_family(next(iter(families)))


def reference_facts(record: dict[str, Any]) -> dict[str, Any]:
    """What a CE reference must share with the checkpoint it normalises: the model, the data
    (its fingerprint), the image size and the test examples kept (the evaluated subsample)."""
    cfg = record["config"]
    return {"model": cfg["model"], "data": record["data"]["name"], "data fingerprint": record["data"]["fingerprint"],
            "image size": record["model"].get("image_size") or cfg.get("image_size"),
            "test examples kept (max_eval_examples)": cfg.get("max_eval_examples")}


def reference_mismatch(record: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    a, b = reference_facts(record), reference_facts(ref)
    return [f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]


def pick_reference(entries: list[tuple[Path, dict, str]], explicit: str | None) -> dict[str, str]:
    """Each checkpoint's CE reference: ``explicit`` (a checkpoint path) when given, else a
    ``linear`` checkpoint (frozen base + trained head) of the same model, data, image size and
    test subsample. An explicit reference that differs from a checkpoint in any of these is
    refused; the default pick never mixes them."""
    refs: dict[str, str] = {}
    if explicit is not None:
        p = Path(explicit).expanduser().absolute()
        match = [(rec, rid) for path, rec, rid in entries if path == p]
        if not match:
            raise EvaluationError(f"--reference '{explicit}' must be one of the checkpoints being evaluated")
        ref_rec, ref_id = match[0]
        for path, rec, rid in entries:
            diff = reference_mismatch(rec, ref_rec)
            if diff:
                raise EvaluationError(f"--reference '{explicit}' cannot normalise the corruption errors of "
                                      f"'{path}': they differ in {'; '.join(diff)} (a reference must share model, "
                                      "data, image size and test examples)")
        return {rid: ref_id for _, _, rid in entries}
    for _, rec, rid in entries:
        for _, other, oid in entries:
            if other["config"]["method"] == "linear" and not reference_mismatch(rec, other):
                refs[rid] = oid
                break
    return refs


def evaluate(checkpoints: list[str | os.PathLike], out: str | os.PathLike, *, bank: str | None = None,
             shifts: list[str] | None = None, quick: bool = False, reference: str | None = None,
             device: str | None = None, seed: int = 0, batch_size: int = 64, progress: bool = True,
             **options: Any):
    """Evaluate ``checkpoints`` with a bank and write the results folder ``out``; returns
    the tidy table (a pandas DataFrame). ``options`` are the evaluations' own options
    (``robustfeat ls options``: ``pairs``, ``domain_column``, ``imagenet``, ...)."""
    from tqdm.auto import tqdm

    from robustfeat.evaluations.base import option_overrides, require_in_bank

    if not checkpoints:
        raise EvaluationError("give at least one checkpoint folder to evaluate")
    if batch_size < 1:
        raise EvaluationError(f"batch size must be positive, got {batch_size}")
    overrides = option_overrides(options)  # unknown options and bad values fail before anything is read
    entries = []
    for c in dict.fromkeys(map(str, checkpoints)):
        path, record = _read(c)
        entries.append((path, record, run_id(path, record)))
    chosen = choose_bank(bank, {rec["model"]["family"] for _, rec, _ in entries})
    require_in_bank(overrides, {e.evaluation for e in chosen.entries}, chosen.name)
    if reference is not None and Path(reference).expanduser().absolute() not in [p for p, _, _ in entries]:
        path, record = _read(reference)
        entries.append((path, record, run_id(path, record)))
    refs = pick_reference(entries, reference)
    tag = chosen.tag + ("-quick" if quick else "") + (f"-seed{seed}" if seed else "")
    store = ResultsStore(out, tag)
    run_options = EvalOptions(quick=quick, seed=seed, device=device, batch_size=batch_size, progress=progress)
    evaluations = chosen.evaluations(quick, overrides)
    wanted = set(shifts) if shifts else None
    pool = BasePool()
    store.update(provenance=_provenance(chosen, tag, quick, seed))
    plans = []
    for i, (path, record, rid) in enumerate(entries):
        ctx = EvalContext(path=path, record=record, run_id=rid, options=run_options, base_dir=store.root / "base",
                          pool=pool)
        plan = [(name, ev, ev.select(ev.cells(ctx), wanted)) for name, ev in evaluations if ctx.family in ev.families]
        if i == 0 and wanted:
            _check_shifts(wanted, plan)
        ctx.release()  # planning may load the model; only the checkpoint being evaluated stays in memory
        plans.append((ctx, plan))
    # one overall bar over every cell of every checkpoint, its ETA from the start
    total = sum(len(cells) for _, plan in plans for _, _, cells in plan)
    finished = sum(store.done(ctx.run_id, c) for ctx, plan in plans for _, _, cells in plan for c in cells)
    bar = tqdm(total=total, initial=finished, desc=f"evaluate {len(entries)} checkpoint{'s' if len(entries) != 1 else ''}",
               unit="cell", disable=not progress or not total, dynamic_ncols=True, position=0)
    try:
        for ctx, plan in plans:
            rid = ctx.run_id
            with locked(store.root / "cells" / f".{rid}.lock", f"checkpoint {rid} in '{store.root}'", wait=False):
                store.update(checkpoints={rid: _checkpoint_info(ctx.path, ctx.record, refs.get(rid))})
                for name, ev, cells in plan:
                    for cell in [c for c in cells if not store.done(rid, c)]:
                        shift = f"{cell.shift} s{cell.severity}" if cell.severity else cell.shift
                        bar.set_postfix_str(f"{rid} {name} {shift}")
                        t0 = time.perf_counter()
                        rows = ev.run(ctx, cell)
                        store.write_cell(rid, cell, rows, time.perf_counter() - t0)
                        bar.update(1)
                notes = ctx.memo.get("dataset_notes")
                if notes:
                    store.update(dataset_notes=notes)
            ctx.release()
    finally:
        bar.close()
    return store.write_table()


def _check_shifts(wanted: set[str], plan) -> None:
    known = {c.shift for _, _, cells in plan for c in cells} | {n for n, _, _ in plan}
    every = sorted(known | set(CORRUPTIONS.names()) | set(EVALUATIONS.names()))
    for s in sorted(wanted):
        if s not in every:
            close = difflib.get_close_matches(s, every, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UnknownNameError(f"unknown shift '{s}' for this bank.{hint} Shifts here: {', '.join(sorted(known))}.")
    if not any(c for _, _, cells in plan for c in cells):
        raise EvaluationError(f"--shifts {','.join(sorted(wanted))} selects no cell of this bank for the first checkpoint")


def _checkpoint_info(path: Path, record: dict[str, Any], reference: str | None) -> dict[str, Any]:
    from robustfeat.adapters.checkpoint import CONFIG_NAME, WEIGHTS_NAME
    from robustfeat.data.cache import sha256_file
    import json

    cfg = json.loads((path / CONFIG_NAME).read_text())
    return {"path": str(path), "method": record["config"]["method"], "model": record["config"]["model"],
            "data": record["data"]["name"], "seed": record["seed"], "config_digest": record.get("config_digest"),
            "weights_sha256": sha256_file(path / WEIGHTS_NAME), "base_fingerprint": cfg["base_model"]["fingerprint"],
            "data_fingerprint": record["data"]["fingerprint"], "validation": record.get("validation"),
            "reference": reference, "trained_with": {"git_revision": record.get("git_revision"),
                                                      "versions": record.get("versions")}}


def _provenance(bank: Bank, tag: str, quick: bool, seed: int) -> dict[str, Any]:
    from robustfeat.adapters.checkpoint import _versions
    from robustfeat.train.loop import git_revision

    return {"bank": tag, "bank_version": bank.version, "quick": quick, "seed": seed, "versions": _versions(), "git_revision": git_revision(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "evaluations": {e.evaluation: {**e.params, **(e.quick if quick else {})} for e in bank.entries},
            "mce": "CE_c = sum_s E_sc / sum_s E_sc(ref), mCE = mean_c CE_c; relative uses E_sc - E_clean; the "
                   "reference is the checkpoint named in the 'reference' column (the frozen base with a trained "
                   "head by default), never AlexNet here. mean_error needs no reference."}
