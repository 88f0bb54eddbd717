"""Evaluations: the named units of the shift bank.

An :class:`Evaluation` lists its *cells* for a checkpoint (one per shift and severity)
and computes one cell at a time, returning tidy metric rows. The runner writes each
finished cell atomically, so a killed evaluation resumes cell by cell.

Each evaluation carries everything about itself, in its own module: the families it
applies to, its user options (:class:`Option`: the CLI flags of ``evaluate`` and the keys
of a grid's ``evaluate:`` mapping are generated from them), the summary rows derived from
its own rows (:meth:`Evaluation.summarize`), its headline metrics (:class:`Headline`: the
report's and the CLI's tables read them) and the plots it feeds. Nothing outside the
module names a particular evaluation.

The :class:`EvalContext` gives an evaluation what it needs for one checkpoint: the
fine-tuned model and its data (loaded on first use), the *base* model (the same
pretrained weights without fine-tuning, loaded on first use and shared by every
checkpoint of that base), and a cache for base-model outputs kept in the results folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from robustfeat.data.table import Table
from robustfeat.errors import RobustfeatError
from robustfeat.locks import locked
from robustfeat.metrics import bootstrap_ci
from robustfeat.evaluations.subject import Subject
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


def metric_row(metric: str, value: float, n: int, ci: tuple[float, float] | None = None, note: str = "",
               kind: str = "") -> dict:
    """One tidy row of a cell. ``kind`` says what sort of shift the row measures where an
    evaluation has several (``out-of-domain`` or ``near-domain`` for ``ood``)."""
    lo, hi = ci if ci is not None else (float("nan"), float("nan"))
    row = {"metric": metric, "value": float(value), "ci_low": float(lo), "ci_high": float(hi), "n": int(n),
           "note": note}
    if kind:
        row["kind"] = kind
    return row


def summary_row(evaluation: str, shift: str, metric: str, value: float, n: int, note: str = "",
                reference: str = "") -> dict:
    """A derived row (``severity`` 0, no CI): what :meth:`Evaluation.summarize` returns."""
    return {"evaluation": evaluation, "shift": shift, "severity": 0, "metric": metric, "value": float(value),
            "ci_low": float("nan"), "ci_high": float("nan"), "n": int(n), "note": note, "reference": reference}


def accuracy_rows(correct: np.ndarray, seed: int, note: str = "", kind: str = "") -> list[dict]:
    """accuracy with its bootstrap CI, and error (1 - accuracy) with the mirrored CI."""
    correct = np.asarray(correct, dtype=np.float64)
    lo, hi = bootstrap_ci(correct, seed=seed)
    acc = float(correct.mean())
    return [metric_row("accuracy", acc, len(correct), (lo, hi), note, kind),
            metric_row("error", 1.0 - acc, len(correct), (1.0 - hi, 1.0 - lo), note, kind)]


def cell_seed(seed: int, cell: Cell) -> int:
    """A seed for a cell's random draws (bootstrap) that depends only on what the cell is."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{cell.key}".encode()).digest()[:4], "little")


@dataclass
class EvalOptions:
    """The run-wide options every evaluation sees (an evaluation's own options are its
    parameters, declared with :class:`Option`)."""

    quick: bool = False
    seed: int = 0
    device: str | None = None
    batch_size: int = 64
    progress: bool = True


@dataclass(frozen=True)
class Option:
    """A user option of one evaluation: the flag ``--NAME`` (underscores as dashes) of
    ``robustfeat evaluate``, the keyword ``NAME`` of :func:`robustfeat.evaluations.runner.evaluate`
    and the key ``NAME`` of a grid's ``evaluate:`` mapping. The value becomes the
    evaluation's parameter ``param`` (default: ``name``). ``check`` validates the value
    before anything runs (it raises a :class:`RobustfeatError` saying what is wrong)."""

    name: str
    help: str
    type: type = str
    metavar: str | None = None
    param: str | None = None
    check: Callable[[Any], Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def target(self) -> str:
        return self.param or self.name

    def validate(self, value: Any) -> Any:
        if self.type is str:
            if not isinstance(value, (str, os.PathLike)):
                raise EvaluationError(f"{self.flag} takes a string, got {value!r}")
            value = os.fspath(value)
        elif isinstance(value, bool) != (self.type is bool) or not isinstance(value, self.type):
            raise EvaluationError(f"{self.flag} takes a {self.type.__name__}, got {value!r}")
        if self.check is not None:
            self.check(value)
        return value


#: what a headline says about a method: which of the study's claims it bears on
ROLES = ("in-domain", "robustness", "forgetting", "drift")


@dataclass(frozen=True)
class Headline:
    """One headline metric of an evaluation: where its rows are (``shift`` None: the
    evaluation's one cell per checkpoint), how to read it, and the range its values live in
    (intervals never leave it)."""

    key: str
    label: str
    metric: str
    higher_is_better: bool
    description: str
    role: str
    shift: str | None = None
    bounds: tuple[float, float] = (-math.inf, math.inf)
    evaluation: str = ""  # filled in from the declaring evaluation


#: bounds of fractions (accuracies, errors, agreement, CKA)
FRACTION = (0.0, 1.0)


class BasePool:
    """Base models by key, loaded on first use; only the most recent one is kept. Each runs
    on the fast inference path (:meth:`ModelHandle.fast_inference`) while it is kept, the
    path the fine-tuned models run on, so that a fine-tune that changed nothing compares
    equal to its base bit for bit."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._handle: ModelHandle | None = None
        self._fast = ExitStack()

    def get(self, key: str, load: Callable[[], ModelHandle]) -> ModelHandle:
        if self._key != key:
            self.close()
            handle = load()
            handle.model.eval()
            self._fast.enter_context(handle.fast_inference())
            self._handle, self._key = handle, key
        assert self._handle is not None
        return self._handle

    def close(self) -> None:
        """Forget the kept base model, its layout put back."""
        self._fast.close()
        self._handle = self._key = None


@dataclass
class EvalContext:
    """One checkpoint under evaluation: its :class:`~robustfeat.evaluations.subject.Subject`
    (the fine-tuned model, the base it came from, its data and identity), the run-wide
    options, and a cache of base-model outputs in the results folder."""

    subject: Subject
    options: EvalOptions
    base_dir: Path  # where base-model outputs are cached (inside the results folder)
    pool: BasePool
    #: per-checkpoint scratch space shared by the cells of one run (e.g. resized images)
    memo: dict[str, Any] = field(default_factory=dict, repr=False)
    _loaded: tuple | None = field(default=None, repr=False)
    _fast: ExitStack = field(default_factory=ExitStack, repr=False)

    @contextmanager
    def steps(self, what: str, names: tuple[str, ...]):
        """Progress inside one long cell: a second bar under the overall one, advanced by
        calling the yielded function once per finished step (names label the next step)."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc=f"  {what}", unit="step", leave=False, position=1, dynamic_ncols=True,
                   disable=not self.options.progress)
        bar.set_postfix_str(names[0] if names else "")

        def step() -> None:
            bar.update(1)
            if bar.n < len(names):
                bar.set_postfix_str(names[bar.n])

        try:
            yield step
        finally:
            bar.close()

    def release(self) -> None:
        """Forget the loaded fine-tuned model (it is loaded again on first use), put back as
        it was loaded (adapters unmerged, its layout)."""
        self._fast.close()
        self._loaded = None

    # --- the fine-tuned model --------------------------------------------------------------
    def _load(self) -> tuple:
        """The fine-tuned model, in eval mode on the fast inference path (adapters merged,
        the family's fastest layout: :meth:`ModelHandle.fast_inference`) until
        :meth:`release`; every evaluation reads it so (``weights`` reads the merged weights,
        ``cka`` the adapted layers' outputs, which merging leaves as they are)."""
        if self._loaded is None:
            handle, data = self.subject.load(self.options.device)
            handle.model.eval()
            self._fast.enter_context(handle.fast_inference())
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
        return self.subject.family

    # --- the base model --------------------------------------------------------------------
    def base(self) -> ModelHandle:
        return self.pool.get(self.subject.base_key, lambda: self.subject.load_base(self.options.device))

    def base_cached(self, name: str, parts: list[Any], compute: Callable[[ModelHandle], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Base-model outputs for ``name`` on the inputs described by ``parts``, computed once
        per base and kept in the results folder (so every checkpoint of that base reuses them)."""
        digest = hashlib.sha256(json.dumps([name, *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = self.base_dir / self.subject.base_key / f"{name}-{digest}.npz"
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


class Evaluation:
    """Base class of the bank's evaluations. Subclasses set ``name``, ``summary`` and
    ``families``, take their parameters as keyword arguments (a bank sets them; ``--quick``
    uses the bank's quick values; a user :class:`Option` sets its own) and implement
    :meth:`cells` and :meth:`run`. They may declare ``options``, ``headlines`` and
    ``plots`` (names in :data:`robustfeat.report.plots.PLOTS`) and override
    :meth:`summarize`; ``order`` places their headlines in tables."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: the model families it applies to; None: every family (robustfeat ls families)
    families: ClassVar[frozenset[str] | None] = None
    options: ClassVar[tuple[Option, ...]] = ()
    headlines: ClassVar[tuple[Headline, ...]] = ()
    plots: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 500
    #: whether it compares with the base model (drift, forgetting); a checkpoint evaluated
    #: without its base (a transformers folder given no --base) skips these, and says so
    needs_base: ClassVar[bool] = False
    #: how to read this evaluation's headlines, for the report's "how to read this" (plain
    #: text; ``{reference}`` is replaced by what the CE reference was)
    explain: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        self.params = params

    def cells(self, ctx: EvalContext) -> list[Cell]:
        raise NotImplementedError

    def select(self, cells: list[Cell], wanted: set[str] | None) -> list[Cell]:
        """The cells ``--shifts`` keeps (all of them when ``wanted`` is None): those whose
        shift or evaluation is named. An evaluation whose summary needs a companion cell
        (the corruptions' uncorrupted images) keeps it here."""
        if wanted is None or self.name in wanted:
            return cells
        return [c for c in cells if c.shift in wanted]

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        raise NotImplementedError

    @classmethod
    def summarize(cls, rows: list[dict], reference_rows: list[dict] | None, reference: str) -> list[dict]:
        """Derived rows (:func:`summary_row`) from this evaluation's own rows of one
        checkpoint, and of its reference checkpoint (``reference``, its id) where it has
        one. Every row returned has ``evaluation == cls.name``."""
        return []

    @classmethod
    def applies_to(cls, family: str) -> bool:
        return cls.families is None or family in cls.families

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))


def register_evaluation(cls: type[Evaluation]) -> type[Evaluation]:
    for h in cls.headlines:
        if h.role not in ROLES:
            raise RobustfeatError(f"evaluation '{cls.name}': headline '{h.key}' has role {h.role!r}; one of {ROLES}")
    return EVALUATIONS.register(cls.name)(cls)


def evaluations_in_order() -> list[type[Evaluation]]:
    """Every registered evaluation, in table order (``order``, then name)."""
    return sorted((cls for _, cls in EVALUATIONS.items()), key=lambda c: (c.order, c.name))


def all_headlines() -> tuple[Headline, ...]:
    """Every registered evaluation's headlines, in table order, each naming its evaluation."""
    out, seen = [], {}
    for cls in evaluations_in_order():
        for h in cls.headlines:
            if h.key in seen:
                raise RobustfeatError(f"headline '{h.key}' is declared by both '{seen[h.key]}' and '{cls.name}'")
            seen[h.key] = cls.name
            out.append(replace(h, evaluation=cls.name))
    return tuple(out)


def all_options() -> dict[str, tuple[str, Option]]:
    """Every registered evaluation's user options: {option name: (evaluation, Option)}."""
    out: dict[str, tuple[str, Option]] = {}
    for cls in evaluations_in_order():
        for o in cls.options:
            if o.name in out:
                raise RobustfeatError(f"option '{o.name}' is declared by both '{out[o.name][0]}' and '{cls.name}'")
            out[o.name] = (cls.name, o)
    return out


def option_overrides(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validated user option values (``None`` means not given) as per-evaluation parameter
    overrides: {evaluation: {parameter: value}}. An unknown option or a bad value is one
    clear error."""
    known = all_options()
    out: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise EvaluationError(f"unknown evaluation option '{name}'.{hint} Options: {', '.join(sorted(known))}")
        evaluation, option = known[name]
        out.setdefault(evaluation, {})[option.target] = option.validate(value)
    return out


def require_in_bank(overrides: dict[str, dict[str, Any]], bank_evaluations: set[str], bank: str) -> None:
    """Options given for an evaluation the bank does not run are an error, not ignored."""
    flags = {ev: o.flag for ev, o in all_options().values()}
    for evaluation in sorted(set(overrides) - bank_evaluations):
        raise EvaluationError(f"{flags.get(evaluation, evaluation)} is an option of the '{evaluation}' evaluation, "
                              f"which bank '{bank}' does not run (robustfeat ls banks)")


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
