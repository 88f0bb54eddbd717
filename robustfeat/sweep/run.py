"""Running sweep trials: one trial is a fine-tune then its evaluation. The fine-tune's
checkpoint is ``OUT/checkpoints/TRAIN_KEY/`` (trials that train alike share it); the
trial's own folder ``OUT/trials/KEY/`` holds its results and ``done.json``, written last and
atomically, so a trial is either finished or will be (re)done, and a rerun skips finished
trials."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from robustfeat.sweep.grid import TrialSpec

DONE = "done.json"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def trial_dir(out: str | os.PathLike, spec: TrialSpec) -> Path:
    return Path(out) / "trials" / spec.key


def checkpoint_dir(out: str | os.PathLike, spec: TrialSpec) -> Path:
    return Path(out) / "checkpoints" / spec.train_key


def finished(out: str | os.PathLike, spec: TrialSpec) -> dict | None:
    path = trial_dir(out, spec) / DONE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("key") == spec.key else None


def run_trial(spec: TrialSpec, out: str | os.PathLike, threads: int | None = None) -> dict[str, Any]:
    """Fine-tune and evaluate one trial (resuming whatever a killed attempt left) and return
    its record. Safe to call again on a finished trial: it returns the record. ``threads``
    fixes torch's thread count (results are bit-identical only at equal thread counts)."""
    done = finished(out, spec)
    if done is not None:
        return done
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run(spec, out)
    finally:
        torch.set_num_threads(previous)


def _run(spec: TrialSpec, out: str | os.PathLike) -> dict[str, Any]:
    from robustfeat.evaluations.runner import evaluate
    from robustfeat.train import TrainConfig, finetune

    t0 = time.perf_counter()
    root = trial_dir(out, spec)
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / "trial.json", {"key": spec.key, "train_key": spec.train_key, "name": spec.name,
                                     "label": spec.label, "train": spec.train,
                                     "evaluate": spec.evaluate, "varied": spec.varied})
    ckpt, results = checkpoint_dir(out, spec), root / "results"
    from robustfeat.train.record import RUN_FILE, RunRecord

    config = TrainConfig.from_dict(spec.train)
    # a finished checkpoint of this fine-tune returns at once (tidied of what a kill may have left)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    finetune(config, ckpt, overwrite=(ckpt / RUN_FILE).is_file() and not RunRecord.finished(ckpt, config),
             progress=False)
    if spec.evaluate is not None:
        opts = dict(spec.evaluate)
        shifts = opts.pop("shifts", None)
        # the base model's outputs are shared by every trial of the sweep (computed once per base)
        evaluate([ckpt], results, shifts=list(shifts) if shifts else None, progress=False,
                 base_cache=Path(out) / "base-outputs", **opts)
    info = {"key": spec.key, "name": spec.name, "label": spec.label,
            "results": str(results) if spec.evaluate is not None else None,
            "checkpoint": str(ckpt), "seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
    _write_json(root / DONE, info)
    return info
