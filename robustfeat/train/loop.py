"""The fine-tuning loop: ``finetune(config, out)`` -> a checkpoint folder.

Deterministic (the same seed gives the same checkpoint bit for bit on the CPU),
resumable (state saved every ``checkpoint_every`` steps, without pickle), and it never
overwrites a finished checkpoint unless asked to.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustfeat.adapters import AdapterConfig, adapter_state_dict, count_trainable, inject_adapters, save_adapters
from robustfeat.adapters.checkpoint import CONFIG_NAME
from robustfeat.environment import git_revision, library_versions, pick_device
from robustfeat.data.api import DatasetBundle, load_dataset
from robustfeat.data.table import Table
from robustfeat.errors import RobustfeatError, TrainingError
from robustfeat.models.handle import ModelHandle
from robustfeat.models.zoo import load_model
from robustfeat.registry import ADAPTERS
from robustfeat.train.config import TrainConfig
from robustfeat.train.record import RUN_FILE, RUN_FORMAT, RunRecord
from robustfeat.train.state import STATE_DIR, clear_state, load_state, read_meta, recover_state, save_state

log = logging.getLogger(__name__)

@dataclass
class RunResult:
    out: Path
    metric: str
    value: float
    steps: int
    resumed_from: int
    record: dict[str, Any]
    #: the same command had already finished in ``out``: nothing was trained this time
    already_finished: bool = False


def finished_run(out: Path, config: TrainConfig) -> RunResult | None:
    """The finished run in ``out`` if it was made from exactly ``config`` (with intact
    weights), else None: rerunning a finished command is a no-op, not an error."""
    try:
        record = RunRecord.read(out)
        from robustfeat.adapters.checkpoint import read_checkpoint

        read_checkpoint(out)
    except RobustfeatError:
        return None
    if not record.matches(config):
        return None
    val = record.validation
    return RunResult(out, val.get("metric", ""), float(val.get("value", float("nan"))), record.steps,
                     int(record.raw.get("resumed_from_step") or 0), record.raw, already_finished=True)


def check_output(out: Path, digest: str, overwrite: bool) -> bool:
    """Decide what to do with ``out``: returns True to resume an interrupted run."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise TrainingError(f"'{out}' exists and is not a folder; choose another --out")
    meta = read_meta(out)
    if (out / RUN_FILE).exists():
        if overwrite:  # an interrupted overwrite of this same run resumes
            return meta is not None and meta.get("digest") == digest
        raise TrainingError(f"'{out}' already holds a finished checkpoint; pass --overwrite to replace it "
                            "or choose another --out")
    if meta is not None:
        if meta.get("digest") == digest and not overwrite:
            return True
        if not overwrite:
            raise TrainingError(f"'{out}' holds an interrupted run with a different configuration; pass "
                                "--overwrite to discard it, or rerun with the same options to resume it")
        return False
    if any(p for p in out.iterdir() if not p.name.startswith(STATE_DIR)):
        raise TrainingError(f"'{out}' is a non-empty folder that is not a robustfeat run; choose another --out")
    return False


def train_mode(model: torch.nn.Module) -> None:
    """``model.train()``, except that normalisation layers whose weights are frozen keep
    their running statistics: they belong to the frozen base, and updating them would
    change the base behind the adapters' back (and break eval-mode outputs)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters(recurse=False)):
            m.eval()


def batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's shuffled batches; a pure function of (seed, epoch), so resuming needs
    no sampler state."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def lr_at(step: int, total: int, base: float, warmup_ratio: float) -> float:
    """Linear warm-up, then linear decay to zero."""
    warm = max(1, int(round(total * warmup_ratio)))
    if step < warm:
        return base * (step + 1) / warm
    return base * max(0.0, (total - step) / max(1, total - warm))


@torch.no_grad()
def validation_score(handle: ModelHandle, table: Table, batch_size: int = 64) -> tuple[str, float, int]:
    """The family's validation metric on ``table``: (name, value, examples)."""
    modes = {m: m.training for m in handle.model.modules()}
    handle.model.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(table), batch_size):
        part = table.select(slice(start, start + batch_size))
        for k, v in handle.eval_sums(handle.preprocess(part), part).items():
            totals[k] = totals.get(k, 0.0) + v
    for m, mode in modes.items():
        m.training = mode
    name, value = handle.metric(totals)
    return name, value, len(table)


def adapter_kwargs(config: TrainConfig) -> dict[str, Any]:
    return config.adapter_kwargs()


def preflight(config: TrainConfig) -> None:
    """Cheap checks of every name and option before anything heavy is loaded."""
    from robustfeat.registry import DATASETS, MODELS

    # names, values and contradictions (the head's real name is known once the model loads)
    AdapterConfig(method=config.method, modules_to_save=["head"], **adapter_kwargs(config))
    m = config.model
    if m not in MODELS and not m.startswith(("hf:", "torchvision:", "timm:")) and not (Path(m).expanduser() / "config.json").is_file():
        from robustfeat.errors import UnknownNameError

        raise UnknownNameError(
            f"{MODELS.unknown_message(m)} Or pass a local transformers folder, hf:ID, torchvision:NAME or timm:NAME."
        )
    d = config.data
    if d not in DATASETS and not d.startswith("hf:") and not Path(d).expanduser().exists():
        from robustfeat.errors import UnknownNameError

        raise UnknownNameError(f"{DATASETS.unknown_message(d)} Or give a CSV/JSON file, an image folder or hf:ID.")


def build(config: TrainConfig, device: torch.device, progress: bool = True) -> tuple[ModelHandle, DatasetBundle, AdapterConfig]:
    """Load the data and the model and inject the adapters, as the run (and a reload) needs."""
    method = ADAPTERS.get(config.method)
    data = load_dataset(config.data, seed=config.seed, max_examples=config.max_examples,
                        max_eval_examples=config.max_eval_examples, text_column=config.text_column,
                        label_column=config.label_column, image_column=config.image_column, progress=progress)
    handle = load_model(config.model, num_labels=max(data.num_labels, 2), seed=config.seed,
                        max_length=config.max_length, image_size=config.image_size)
    if data.task == "text" and handle.info.family == "text-classifier":
        raise TrainingError(f"dataset '{config.data}' has no labels (no 'label' column); a text classifier "
                            "needs them (a causal LM can learn unlabelled text)")
    from robustfeat.registry import FAMILIES

    if data.task not in FAMILIES.get(handle.info.family).tasks:
        fits = " or ".join(sorted(n for n, f in FAMILIES.items() if data.task in f.tasks))
        raise TrainingError(
            f"model '{config.model}' ({handle.info.family}) cannot learn dataset '{config.data}' "
            f"({data.task}); pick a model of family {fits}"
        )
    handle.to(device)
    kw = adapter_kwargs(config)
    if method.uses_targets:
        kw["target_modules"] = config.targets if config.targets is not None else handle.default_targets
    adapter = AdapterConfig(method=config.method, modules_to_save=list(handle.head), seed=config.seed, **kw)
    inject_adapters(handle.model, adapter)
    return handle, data, adapter


def finetune(config: TrainConfig, out: str | os.PathLike, *, device: str | None = None, overwrite: bool = False,
             progress: bool = True, stop_after: int | None = None) -> RunResult:
    """Fine-tune and write a checkpoint folder to ``out``. ``stop_after`` stops after that
    many steps, leaving resumable state (used to test resuming). Two runs into the same
    ``out`` at once are refused."""
    from robustfeat.locks import locked

    out = Path(out).absolute()
    preflight(config)
    with locked(out.parent / f".{out.name}.lock", f"'{out}'", wait=False):
        return _finetune(config, out, device, overwrite, progress, stop_after)


def _finetune(config: TrainConfig, out: Path, device: str | None, overwrite: bool, progress: bool,
              stop_after: int | None) -> RunResult:
    from tqdm.auto import tqdm

    digest = config.digest()
    if out.is_dir():
        recover_state(out)
    done = finished_run(out, config) if not overwrite else None
    if done is not None:  # the same command again after it finished (e.g. killed just at the end)
        _tidy_finished(out)
        return done
    resume = check_output(out, digest, overwrite)
    if overwrite and out.exists() and not resume:
        clear_state(out)
    dev = pick_device(device)
    torch.manual_seed(config.seed)
    handle, data, adapter = build(config, dev, progress)
    model = handle.model
    method = ADAPTERS.get(config.method)
    lr = config.lr if config.lr is not None else method.default_lr
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    train = data["train"]
    per_epoch = math.ceil(len(train) / config.batch_size)
    total = max(1, math.ceil(config.epochs * per_epoch))
    tensors = adapter_state_dict(model)
    curve: list[dict[str, float]] = []
    step = start = 0
    elapsed = 0.0
    if resume:
        saved = read_meta(out) or {}
        if saved.get("data_fingerprint") not in (None, data.fingerprint):
            raise TrainingError(f"the data changed since the interrupted run in '{out}' started (fingerprint "
                                "differs); pass --overwrite to start again on the new data")
        meta = load_state(out, tensors, optimizer)
        step = start = int(meta["step"])
        curve, elapsed = meta["curve"], float(meta["elapsed"])
        log.info("resuming %s from step %d", out, step)
    out.mkdir(parents=True, exist_ok=True)

    train_mode(model)
    t0 = time.perf_counter()
    seen = 0
    bar = tqdm(total=total, initial=step, desc=f"{config.method} {handle.info.name}", unit="step",
               disable=not progress, dynamic_ncols=True)
    while step < total:
        epoch, i = divmod(step, per_epoch)
        idx = batches(len(train), config.batch_size, config.seed, epoch)[i]
        part = train.select(np.sort(idx))
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, total, lr, config.warmup_ratio)
        optimizer.zero_grad(set_to_none=True)
        loss = handle.loss(handle.preprocess(part), part)
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss became {loss.item()} at step {step}; lower the learning rate "
                                f"(now {lr:g}) or check the data")
        loss.backward()
        optimizer.step()
        step += 1
        seen += len(part)
        value = loss.item()
        curve.append({"step": step, "epoch": round(step / per_epoch, 4), "loss": round(value, 6),
                      "lr": float(optimizer.param_groups[0]["lr"])})
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(loss=f"{value:.4f}", ex_per_s=f"{rate:.1f}")
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == stop_after:
            save_state(out, tensors, optimizer, {"step": step, "digest": digest, "curve": curve,
                                                 "data_fingerprint": data.fingerprint,
                                                 "elapsed": elapsed + time.perf_counter() - t0,
                                                 "config": config.to_dict()})
        if stop_after is not None and step >= stop_after and step < total:
            bar.close()
            raise KeyboardInterrupt(f"stopped after step {step} (stop_after)")
    bar.close()
    train_time = elapsed + time.perf_counter() - t0
    metric, value, n_val = validation_score(handle, data["validation"])
    record = {
        "format": RUN_FORMAT,
        "format_version": 1,
        "config": config.to_dict(),
        "config_digest": digest,
        "adapter": adapter.to_dict(),
        "learning_rate": lr,
        "model": {"name": handle.info.name, "family": handle.info.family, "source": handle.info.source,
                  "num_parameters": handle.info.num_parameters, "trainable_parameters": count_trainable(model),
                  **handle.info.extra},
        "data": {"name": data.name, "task": data.task, "fingerprint": data.fingerprint,
                 "label_names": data.label_names, "provenance": data.provenance},
        "seed": config.seed,
        "device": str(dev),
        "steps": total,
        "resumed_from_step": start,
        "curve": curve,
        "validation": {"metric": metric, "value": value, "examples": n_val},
        "train_time_s": round(train_time, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": library_versions(),
        "git_revision": git_revision(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_final(model, out, record, handle.info.name)
    return RunResult(out, metric, value, total, start, record)


def _final_tmp(out: Path) -> Path:
    """Where the final checkpoint is written before it is moved into ``out``: beside it, a
    fixed name (the caller holds ``out``'s lock), so what a killed run left there is found."""
    return out.parent / f".{out.name}.final"


def _tidy_finished(out: Path) -> None:
    """Drop what a kill just after the run record was moved in can leave: the resumable state
    and the temporary folder of the final checkpoint."""
    clear_state(out)
    shutil.rmtree(_final_tmp(out), ignore_errors=True)


def _write_final(model: torch.nn.Module, out: Path, record: dict[str, Any], base_id: str) -> None:
    """Checkpoint files and the run record appear together: written beside ``out`` and
    swapped in, then the resumable state is dropped."""
    tmp = _final_tmp(out)
    shutil.rmtree(tmp, ignore_errors=True)  # a killed run's
    tmp.mkdir()
    try:
        ckpt = save_adapters(model, tmp / "ckpt", base_id=base_id)
        (ckpt / RUN_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n")
        # The run record marks a finished run: drop an old one first, put the new one last.
        (out / RUN_FILE).unlink(missing_ok=True)
        for f in sorted(ckpt.iterdir(), key=lambda p: p.name == RUN_FILE):
            os.replace(f, out / f.name)
        clear_state(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert (out / CONFIG_NAME).exists()


def read_run(path: str | os.PathLike) -> dict[str, Any]:
    """The run record of ``path`` as a dictionary (validated); see :class:`RunRecord`."""
    return RunRecord.read(path).raw


def load_run(path: str | os.PathLike, device: str | None = None, progress: bool = False) -> tuple[ModelHandle, DatasetBundle, dict[str, Any]]:
    """Rebuild a finished run: the base model with its adapters loaded, its data, and the record."""
    from robustfeat.adapters.checkpoint import refuse_pickle

    refuse_pickle(path)  # before the record is read and the base model built
    record = RunRecord.read(path)
    handle, data = record.rebuild(device, progress)
    return handle, data, record.raw
