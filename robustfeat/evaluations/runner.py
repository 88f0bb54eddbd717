"""``evaluate(checkpoints, out)``: run a bank over fine-tuned checkpoints, cell by cell.

Every finished cell is written atomically before the next starts, so a killed run
restarted with the same command skips what is done and ends with the same table as an
uninterrupted run. Two processes may evaluate different checkpoints into the same folder;
one checkpoint is evaluated by one process at a time.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import logging
import os
import time
from pathlib import Path
from typing import Any

from robustfeat.environment import pick_device
from robustfeat.errors import UnknownNameError
from robustfeat.locks import locked
from robustfeat.registry import BANKS, CORRUPTIONS, EVALUATIONS
from robustfeat.results import ResultsStore
from robustfeat.evaluations.banks import Bank, bank_for_family
from robustfeat.evaluations.base import BasePool, EvalContext, EvalOptions, EvaluationError
from robustfeat.evaluations.subject import RunSubject, Subject

log = logging.getLogger(__name__)


def read_subject(path: str | os.PathLike, imported=None) -> Subject:
    """The checkpoint at ``path`` as a subject of evaluation (validated before any work): a
    robustfeat run, or the first kind of checkpoint made elsewhere
    (:data:`~robustfeat.evaluations.imported.IMPORTED_KINDS`) that recognises it, read with
    ``imported`` (an :class:`~robustfeat.evaluations.imported.ImportOptions`: base, data)."""
    from robustfeat.evaluations.imported import IMPORTED_KINDS
    from robustfeat.train.record import RUN_FILE

    p = Path(path).expanduser()
    if not (p / RUN_FILE).is_file():
        for kind in IMPORTED_KINDS:
            if kind.detect(p):
                return kind(p, imported)
    if imported is not None and (p / RUN_FILE).is_file():
        from robustfeat.train.record import RunRecord

        given = imported.against_a_run(RunRecord.read(p).config)
        if given:
            raise EvaluationError(f"'{path}' is a robustfeat run, which records its {', '.join(given)} otherwise; "
                                  f"drop {' and '.join('--' + g.replace('_', '-') for g in given)} (they are for "
                                  "checkpoints made elsewhere; --data moves a run's data to a new place)")
    return RunSubject(path, data=imported.data if imported is not None else None)


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


def reference_mismatch(subject: Subject, reference: Subject) -> list[str]:
    """What differs between a checkpoint and a would-be CE reference (nothing: it may serve)."""
    a, b = subject.reference_facts(), reference.reference_facts()
    return [f"{k} {a[k]} vs {b.get(k)}" for k in a if a[k] != b.get(k)]


def pick_reference(subjects: list[Subject], explicit: Subject | None) -> dict[str, str]:
    """Each checkpoint's CE reference: ``explicit`` when given, else a ``linear`` checkpoint
    (frozen base + trained head) of the same model, data, image size and test subsample. An
    explicit reference that differs from a checkpoint in any of these is refused; the default
    pick never mixes them."""
    if explicit is not None:
        for s in subjects:
            diff = reference_mismatch(s, explicit)
            if diff:
                raise EvaluationError(f"--reference '{explicit.path}' cannot normalise the corruption errors of "
                                      f"'{s.path}': they differ in {'; '.join(diff)} (a reference must share model, "
                                      "data, image size and test examples)")
        return {s.id: explicit.id for s in subjects}
    refs: dict[str, str] = {}
    for s in subjects:
        for other in subjects:
            if other.method == "linear" and not reference_mismatch(s, other):
                refs[s.id] = other.id
                break
    return refs


def evaluate(checkpoints: list[str | os.PathLike], out: str | os.PathLike, *, bank: str | None = None,
             shifts: list[str] | None = None, quick: bool = False, reference: str | None = None,
             device: str | None = None, seed: int = 0, batch_size: int = 64, progress: bool = True,
             scales: list[float] | None = None, sizes: dict[str, dict[str, Any]] | None = None,
             base_cache: str | os.PathLike | None = None, base: str | None = None, data: str | None = None,
             data_seed: int = 0, max_eval_examples: int | None = 1000, label_column: str = "label",
             text_column: str | None = None, image_column: str = "image", image_size: int | None = None,
             max_length: int = 128, **options: Any):
    """Evaluate ``checkpoints`` with a bank and write the results folder ``out``; returns
    the tidy table (a pandas DataFrame). ``options`` are the evaluations' own options
    (``robustfeat ls options``: ``pairs``, ``domain_column``, ``imagenet``, ...). Every check
    runs before anything is written: a refused call leaves ``out`` as it was. The table's
    ``attrs["cells"]`` says how many cells this call planned (``total``) and how many of them
    an earlier run had already finished and were reused (``reused``). ``scales``: evaluate
    each checkpoint with its fine-tuning update scaled by each of these factors instead
    (adapter-scale curves; :class:`~robustfeat.evaluations.subject.ScaledSubject`).
    ``sizes``: per evaluation, sizes other than the bank's (``{"ood": {"examples": 500}}``);
    results of other sizes are never mixed in one folder. ``base_cache``: where the base
    model's outputs are kept, to share them between results folders (a sweep's trials);
    default: inside ``out``. Checkpoints made elsewhere (a PEFT adapter folder) record no data
    and may name no base: ``data`` names the evaluation data (read with ``data_seed``,
    ``max_eval_examples``, ``label_column``, ``text_column``), ``base`` the base model (a zoo
    name, a hub id a zoo entry declares, a local transformers folder); ``image_size`` and
    ``max_length`` shape their inputs. Robustfeat runs record all of these."""
    from tqdm.auto import tqdm

    from robustfeat.evaluations.imported import ImportOptions

    if not checkpoints:
        raise EvaluationError("give at least one checkpoint folder to evaluate")
    imported = ImportOptions(base=base, data=data, data_seed=data_seed, max_eval_examples=max_eval_examples,
                             label_column=label_column, text_column=text_column, image_column=image_column,
                             image_size=image_size, max_length=max_length)
    subjects = [read_subject(c, imported) for c in dict.fromkeys(map(str, checkpoints))]
    if scales is not None:
        from robustfeat.evaluations.subject import ScaledSubject

        if not scales:
            raise EvaluationError("give at least one adapter scale (e.g. 0, 0.5, 1)")
        made = [s.path for s in subjects if not isinstance(s, RunSubject)]
        if made:
            raise EvaluationError(f"--scales scales a robustfeat run's fine-tuning update; '{made[0]}' was made "
                                  "elsewhere (export it, or evaluate it without --scales)")
        subjects = [ScaledSubject(s.path, a, data=s.data_override) for s in subjects
                    for a in dict.fromkeys(map(float, scales))]
    ref = None
    if reference is not None:
        ref = next((s for s in subjects if s.path == Path(reference).expanduser().absolute()), None)
        if ref is None:  # evaluated too, so that its errors are there to divide by
            ref = read_subject(reference, imported)
            subjects.append(ref)
    refs = pick_reference(subjects, ref)
    chosen, tag, plans, store = plan(subjects, out, bank=bank, shifts=shifts, quick=quick, device=device,
                                     seed=seed, batch_size=batch_size, progress=progress, sizes=sizes,
                                     base_cache=base_cache, **options)
    assert store is not None
    # every check passed: only now is the results folder made or touched
    store.create()
    store.update(provenance=_provenance(chosen, tag, quick, seed, sizes or {}))
    # one overall bar over every cell of every checkpoint, its ETA from the start
    total = sum(len(cells) for _, plan_ in plans for _, _, cells in plan_)
    finished = sum(store.done(ctx.subject.id, c) for ctx, plan_ in plans for _, _, cells in plan_ for c in cells)
    bar = tqdm(total=total, initial=finished, desc=f"evaluate {len(subjects)} checkpoint{'s' if len(subjects) != 1 else ''}",
               unit="cell", disable=not progress or not total, dynamic_ncols=True, position=0)
    try:
        for ctx, plan_ in plans:
            rid = ctx.subject.id
            with locked(store.root / "cells" / f".{rid}.lock", f"checkpoint {rid} in '{store.root}'", wait=False):
                skipped = {"skipped": ctx.memo["skipped"]} if ctx.memo.get("skipped") else {}
                store.update(checkpoints={rid: {**ctx.subject.provenance(), "reference": refs.get(rid), **skipped}})
                for name, ev, cells in plan_:
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
    frame = store.write_table()
    frame.attrs["cells"] = {"total": total, "reused": finished}
    return frame


def plan(subjects: list[Subject], out: str | os.PathLike | None, *, bank: str | None = None, shifts: list[str] | None = None,
         quick: bool = False, device: str | None = None, seed: int = 0, batch_size: int = 64,
         progress: bool = True, sizes: dict[str, dict[str, Any]] | None = None,
         base_cache: str | os.PathLike | None = None, **options: Any) -> tuple[Bank, str, list, ResultsStore | None]:
    """Check an evaluation completely and lay it out, writing nothing: the bank, its results
    tag, per subject its context with ``[(evaluation name, evaluation, cells)]``, and the
    results store of ``out`` (checked, not created; None without ``out``). Unknown
    options, bad values, an unavailable device, shift names that select nothing and options
    that do not fit the model or data are refused here."""
    from robustfeat.evaluations.base import option_overrides, require_in_bank

    if batch_size < 1:
        raise EvaluationError(f"batch size must be positive, got {batch_size}")
    overrides = option_overrides(options)  # unknown options and bad values fail before anything is read
    chosen = choose_bank(bank, {s.family for s in subjects})
    require_in_bank(overrides, {e.evaluation for e in chosen.entries}, chosen.name)
    if sizes:
        for name, params in check_sizes(sizes, chosen).items():
            overrides[name] = {**params, **overrides.get(name, {})}
    tag = chosen.tag + ("-quick" if quick else "") + (f"-seed{seed}" if seed else "") + sizes_tag(sizes)
    store = ResultsStore(out, tag) if out is not None else None  # checks the folder; writes nothing
    if base_cache is not None:
        base_dir = Path(base_cache).absolute()
    else:
        base_dir = store.root / "base" if store is not None else Path(os.devnull)
    pick_device(device)  # an unavailable device is refused before anything is written
    run_options = EvalOptions(quick=quick, seed=seed, device=device, batch_size=batch_size, progress=progress)
    evaluations = chosen.evaluations(quick, overrides)
    wanted = set(shifts) if shifts else None
    pool = BasePool()
    plans = []
    for i, subject in enumerate(subjects):
        ctx = EvalContext(subject=subject, options=run_options, base_dir=base_dir, pool=pool)
        fits = [(name, ev) for name, ev in evaluations if ev.applies_to(ctx.family)]
        without = [name for name, ev in fits if ev.needs_base and not subject.has_base]
        if without:  # no base to compare with: drift and forgetting are skipped, and the results say so
            asked = sorted(wanted & set(without)) if wanted else []
            if asked:
                raise EvaluationError(f"{', '.join(asked)} compare{'s' if len(asked) == 1 else ''} '{subject.path}' "
                                      "with its base model, which is not known; pass --base MODEL")
            ctx.memo["skipped"] = {n: "needs the base model (pass --base)" for n in without}
        every = [(name, ev, ev.cells(ctx)) for name, ev in fits if name not in without]
        if i == 0 and wanted:
            check_shifts(wanted, every, chosen.name + (" (quick)" if quick else ""))
        ctx.release()  # planning may load the model; only the checkpoint being evaluated stays in memory
        plans.append((ctx, [(name, ev, ev.select(cells, wanted)) for name, ev, cells in every]))
    if wanted and not any(c for _, _, cells in plans[0][1] for c in cells):
        raise EvaluationError(f"the shifts asked for ({', '.join(sorted(wanted))}) select no cell of bank "
                              f"{chosen.name} for the first checkpoint")
    return chosen, tag, plans, store


def check_sizes(sizes: Any, bank: Bank) -> dict[str, dict[str, Any]]:
    """``sizes`` checked against ``bank``: each names an evaluation of the bank and only
    parameters its entry sets (numbers of examples, ``k``), each a positive whole number."""
    if not isinstance(sizes, dict):
        raise EvaluationError(f"sizes must map evaluations to their sizes, e.g. {{ood: {{examples: 500}}}}; got {sizes!r}")
    entries = {e.evaluation: e for e in bank.entries}
    for name, params in sizes.items():
        if name not in entries:
            raise EvaluationError(f"sizes: bank {bank.name} has no evaluation '{name}' ({', '.join(entries)})")
        known = {k for k, v in entries[name].params.items() if v is None or (isinstance(v, int) and not isinstance(v, bool))}
        if not isinstance(params, dict) or not params:
            raise EvaluationError(f"sizes: '{name}' needs a mapping of its sizes ({', '.join(sorted(known)) or 'none'})")
        for k, v in params.items():
            if k not in known:
                raise EvaluationError(f"sizes: evaluation '{name}' has no size '{k}' (its sizes: "
                                      f"{', '.join(sorted(known)) or 'none'})")
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise EvaluationError(f"sizes: {name}.{k} must be a whole number >= 1, got {v!r}")
    return sizes


def sizes_tag(sizes: dict[str, dict[str, Any]] | None) -> str:
    """The part of a results tag that keeps results of other sizes apart ('' for the bank's)."""
    if not sizes:
        return ""
    import hashlib
    import json

    return "-sizes" + hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:8]


def check_shifts(wanted: set[str], plan, bank: str) -> None:
    """Refuse shift names that name no cell and no evaluation of ``plan`` (``[(name,
    evaluation, cells)]``, before selection); a suggestion comes from the same names the
    message lists."""
    here = sorted({c.shift for _, _, cells in plan for c in cells} | {n for n, _, _ in plan})
    for s in sorted(wanted):
        if s in here:
            continue
        if s in CORRUPTIONS or s in EVALUATIONS:
            raise UnknownNameError(f"shift '{s}' is not part of bank {bank} for this checkpoint. "
                                   f"Shifts here: {', '.join(here)}.")
        close = difflib.get_close_matches(s, here, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownNameError(f"unknown shift '{s}'.{hint} Shifts here: {', '.join(here)}.")


def _provenance(bank: Bank, tag: str, quick: bool, seed: int, sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from robustfeat.environment import git_revision, library_versions

    return {"bank": tag, "bank_version": bank.version, "quick": quick, "seed": seed, "versions": library_versions(), "git_revision": git_revision(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "evaluations": {e.evaluation: {**e.params, **(e.quick if quick else {}), **sizes.get(e.evaluation, {})}
                            for e in bank.entries},
            "mce": "CE_c = sum_s E_sc / sum_s E_sc(ref), mCE = mean_c CE_c; relative uses E_sc - E_clean; the "
                   "reference is the checkpoint named in the 'reference' column (the frozen base with a trained "
                   "head by default), never AlexNet here. mean_error needs no reference."}
