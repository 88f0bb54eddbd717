"""Evaluations: the named units of the shift bank.

An :class:`Evaluation` lists its *cells* for a checkpoint (one per shift and severity)
and computes one cell at a time, returning tidy metric rows. The runner writes each
finished cell atomically, so a killed evaluation resumes cell by cell.

The :class:`EvalContext` gives an evaluation what it needs for one checkpoint: the
fine-tuned model and its data (loaded on first use), the *base* model (the same
pretrained weights without fine-tuning, loaded on first use and shared by every
checkpoint of that base), and a cache for base-model outputs kept in the results folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from robustfeat.data.table import Table
from robustfeat.errors import RobustfeatError
from robustfeat.locks import locked
from robustfeat.metrics import bootstrap_ci
from robustfeat.models.handle import ModelHandle
from robustfeat.registry import EVALUATIONS


class EvaluationError(RobustfeatError):
    """An evaluation cannot run on this checkpoint (missing data, wrong family, ...)."""


@dataclass(frozen=True, order=True)
class Cell:
    evaluation: str
    shift: str
    severity: int = 0

    @property
    def key(self) -> str:
        return f"{self.evaluation}/{self.shift}/{self.severity}"


def metric_row(metric: str, value: float, n: int, ci: tuple[float, float] | None = None, note: str = "") -> dict:
    lo, hi = ci if ci is not None else (float("nan"), float("nan"))
    return {"metric": metric, "value": float(value), "ci_low": float(lo), "ci_high": float(hi), "n": int(n), "note": note}


def accuracy_rows(correct: np.ndarray, seed: int, note: str = "") -> list[dict]:
    """accuracy with its bootstrap CI, and error (1 - accuracy) with the mirrored CI."""
    correct = np.asarray(correct, dtype=np.float64)
    lo, hi = bootstrap_ci(correct, seed=seed)
    acc = float(correct.mean())
    return [metric_row("accuracy", acc, len(correct), (lo, hi), note),
            metric_row("error", 1.0 - acc, len(correct), (1.0 - hi, 1.0 - lo), note)]


def cell_seed(seed: int, cell: Cell) -> int:
    """A seed for a cell's random draws (bootstrap) that depends only on what the cell is."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{cell.key}".encode()).digest()[:4], "little")


@dataclass
class EvalOptions:
    quick: bool = False
    seed: int = 0
    device: str | None = None
    batch_size: int = 64
    progress: bool = True
    #: extra OOD pairs (a YAML file) next to the shipped ones
    pairs: str | None = None
    #: an ImageNet-layout folder for the kept head's accuracy (imagenet-accuracy)
    imagenet: str | None = None


class BasePool:
    """Base models by key, loaded on first use; only the most recent one is kept."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._handle: ModelHandle | None = None

    def get(self, key: str, load: Callable[[], ModelHandle]) -> ModelHandle:
        if self._key != key:
            self._handle = None
            self._handle = load()
            self._handle.model.eval()
            self._key = key
        assert self._handle is not None
        return self._handle


@dataclass
class EvalContext:
    """One checkpoint under evaluation."""

    path: Path
    record: dict[str, Any]
    run_id: str
    options: EvalOptions
    base_dir: Path  # where base-model outputs are cached (inside the results folder)
    pool: BasePool
    #: per-checkpoint scratch space shared by the cells of one run (e.g. resized images)
    memo: dict[str, Any] = field(default_factory=dict, repr=False)
    _loaded: tuple | None = field(default=None, repr=False)

    # --- the fine-tuned model --------------------------------------------------------------
    def _load(self) -> tuple:
        if self._loaded is None:
            from robustfeat.train.loop import load_run

            handle, data, _ = load_run(self.path, device=self.options.device, progress=False)
            handle.model.eval()
            self._loaded = (handle, data)
        return self._loaded

    @property
    def handle(self) -> ModelHandle:
        return self._load()[0]

    @property
    def data(self):
        return self._load()[1]

    @property
    def family(self) -> str:
        return self.record["model"]["family"]

    @property
    def method(self) -> str:
        return self.record["config"]["method"]

    # --- the base model --------------------------------------------------------------------
    @property
    def base_key(self) -> str:
        """Identifies the base: model, its pretrained fingerprint, and the load options that
        shape its inputs (image size, max length)."""
        cfg = self.record["config"]
        fp = _base_fingerprint(self.path)
        parts = [cfg["model"], fp, str(cfg.get("image_size")), str(cfg.get("max_length")), str(cfg["seed"])]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def base(self) -> ModelHandle:
        from robustfeat.models.zoo import load_model
        from robustfeat.train.loop import pick_device

        cfg = self.record["config"]
        labels = self.record["data"].get("label_names") or []

        def load() -> ModelHandle:
            return load_model(cfg["model"], num_labels=max(len(labels), 2), seed=cfg["seed"],
                              max_length=cfg.get("max_length") or 128, image_size=cfg.get("image_size"),
                              device=pick_device(self.options.device))

        return self.pool.get(self.base_key, load)

    def base_cached(self, name: str, parts: list[Any], compute: Callable[[ModelHandle], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Base-model outputs for ``name`` on the inputs described by ``parts``, computed once
        per base and kept in the results folder (so every checkpoint of that base reuses them)."""
        digest = hashlib.sha256(json.dumps([name, *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = self.base_dir / self.base_key / f"{name}-{digest}.npz"
        with locked(path.with_suffix(".lock"), f"the base-output cache {path.name}", wait=True):
            if path.is_file():
                try:
                    with np.load(path, allow_pickle=False) as f:
                        return {k: f[k] for k in f.files}
                except (OSError, ValueError):
                    pass  # damaged: compute again
            out = compute(self.base())
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, **out)
            os.replace(tmp, path)
            return out


def _base_fingerprint(path: Path) -> str:
    from robustfeat.adapters.checkpoint import CONFIG_NAME

    try:
        return json.loads((path / CONFIG_NAME).read_text())["base_model"]["fingerprint"]
    except (OSError, KeyError, json.JSONDecodeError):
        return "unknown"


class Evaluation:
    """Base class of the bank's evaluations. Subclasses set ``name``, ``summary`` and
    ``families``, take their parameters as keyword arguments (a bank sets them; ``--quick``
    uses the bank's quick values) and implement :meth:`cells` and :meth:`run`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    families: ClassVar[frozenset[str]] = frozenset({"text-classifier", "causal-lm", "image-classifier"})

    def __init__(self, **params: Any) -> None:
        self.params = params

    def cells(self, ctx: EvalContext) -> list[Cell]:
        raise NotImplementedError

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        raise NotImplementedError

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))


def register_evaluation(cls: type[Evaluation]) -> type[Evaluation]:
    return EVALUATIONS.register(cls.name)(cls)


# --- model helpers shared by the evaluations ----------------------------------------------------
def batched(table: Table, batch_size: int):
    for start in range(0, len(table), batch_size):
        yield table.select(slice(start, start + batch_size))


@torch.no_grad()
def predict_logits(handle: ModelHandle, table: Table, batch_size: int = 64,
                   fn: Callable[[ModelHandle, dict], torch.Tensor] | None = None) -> np.ndarray:
    """Logits (N, classes) as float32 numpy; ``fn`` picks another output (e.g. the
    pretrained head's logits)."""
    outs = []
    for part in batched(table, batch_size):
        inputs = handle.preprocess(part)
        out = handle.logits(inputs) if fn is None else fn(handle, inputs)
        outs.append(out.float().cpu().numpy())
    return np.concatenate(outs)


@torch.no_grad()
def embed(handle: ModelHandle, table: Table, batch_size: int = 64, layers: list[str] | None = None) -> dict[str, np.ndarray]:
    """``handle.features`` over a table, concatenated: {layer: (N, D)} float32."""
    layers = layers or ["embedding"]
    outs: dict[str, list[np.ndarray]] = {k: [] for k in layers}
    for part in batched(table, batch_size):
        feats = handle.features(handle.preprocess(part), layers)
        for k in layers:
            outs[k].append(feats[k].float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def subsample(table: Table, n: int | None, seed: int) -> Table:
    """At most ``n`` rows, a fixed random subset in original order."""
    if n is None or len(table) <= n:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(len(table), size=n, replace=False))
    return table.select(idx)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise EvaluationError(message)
