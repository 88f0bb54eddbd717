"""Sweep grids: a YAML file naming models, datasets, methods, seeds and hyperparameter
lists, expanded into trials. Each trial is one fine-tune followed by its evaluation, keyed by
what it computes: its training configuration and the version of the training code (the
fine-tune's key, which names its checkpoint), its evaluation settings and the version of the
evaluation code and banks. A code version is a digest of the syntax of the modules that do
that computation, docstrings and comments left out, so a rerun after a change elsewhere
(the report, the CLI, the docs) reuses every finished trial, while a change to how a model
is trained or evaluated reruns what it touches.

    models: [minilm-l6]
    datasets: [rotten-tomatoes]
    methods: [linear, lora, lorfa, vefa]
    seeds: [0, 1, 2]
    hyperparameters:           # every list is crossed with the others
      lr: [0.001, 0.003]
    train: {max_examples: 2000}   # fixed TrainConfig fields for every trial
    evaluate: {quick: true, shifts: [clean, ood, cka, weights]}
                               # also: sizes: {ood: {examples: 500}} (sizes other than the bank's),
                               # scales: [0, 0.5, 1] (each checkpoint with its update scaled)
    resources: {cpus: 1, gpus: 0}  # per trial, for the ray backend (fractional GPUs allowed);
                                   # threads: torch threads per trial (same number, same bytes)
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from robustfeat.errors import RobustfeatError

KEYS = {"models", "datasets", "methods", "seeds", "hyperparameters", "train", "evaluate", "resources"}
#: the run-wide keys of a grid's ``evaluate:``; each evaluation's own options are added from their declarations
RUN_EVALUATE_KEYS = {"quick", "shifts", "bank", "seed", "batch_size", "scales", "sizes"}


def evaluate_keys() -> set[str]:
    from robustfeat.evaluations.base import all_options

    return RUN_EVALUATE_KEYS | set(all_options())
RESOURCE_KEYS = {"cpus", "gpus", "memory_gb", "retries", "threads"}


class GridError(RobustfeatError):
    """A sweep grid file that cannot be used as written."""


@dataclass(frozen=True)
class TrialSpec:
    """One trial: the training configuration and how to evaluate it."""

    train: dict[str, Any]
    evaluate: dict[str, Any] | None  # None: fine-tune only (a study's tuning trials)
    varied: dict[str, Any] = field(default_factory=dict)  # the hyperparameters this trial sets

    @property
    def train_key(self) -> str:
        """What the fine-tune computes: its configuration and the training code's version
        (trials that train alike share one checkpoint)."""
        return _digest({"train": self.train, "code": code_version(TRAINING_CODE)})

    @property
    def key(self) -> str:
        """What the trial computes: its fine-tune, and its evaluation settings with the
        evaluation code's version (``evaluate`` None: a fine-tune only)."""
        bank = None if self.evaluate is None else code_version(EVALUATION_CODE)
        return _digest({"train": self.train_key, "evaluate": self.evaluate, "code": bank})

    @property
    def label(self) -> str:
        """The method with the hyperparameters varied in the grid (how reports group trials)."""
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.varied.items()))
        return f"{self.train['method']} {extra}".strip()

    @property
    def name(self) -> str:
        t = self.train
        return f"{t['model']}/{t['data']}/{self.label}/seed{t['seed']}"


@dataclass(frozen=True)
class Grid:
    trials: tuple[TrialSpec, ...]
    resources: dict[str, Any]
    source: str


#: the modules whose code decides what a fine-tune computes (the folders and files of the package)
TRAINING_CODE = ("train", "adapters", "models", "data")
#: ... and what an evaluation computes (banks, evaluations, corruptions, metrics, the cells' store)
EVALUATION_CODE = ("evaluations", "shifts", "metrics", "results.py")


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def package_root() -> Path:
    import robustfeat

    return Path(robustfeat.__file__).resolve().parent


def code_version(parts: tuple[str, ...], root: Path | None = None) -> str:
    """A digest of the code of ``parts`` (folders or files of the package): each module's
    syntax tree with its docstrings dropped, so comments, docstrings and formatting do not
    count and everything else does. Data files beside the code (e.g. the OOD pairs' YAML)
    count byte for byte."""
    return _code_version(tuple(parts), root or package_root())


@functools.lru_cache(maxsize=16)
def _code_version(parts: tuple[str, ...], root: Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        base = root / part
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for p in files:
            if "__pycache__" in p.parts or p.suffix == ".pyc":
                continue
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(_module_code(p) if p.suffix == ".py" else p.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:12]


def _module_code(path: Path) -> bytes:
    import ast

    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False).encode()


def _list(doc: dict, key: str, kind: type | tuple[type, ...], required: bool = True) -> list:
    if key not in doc:
        if required:
            raise GridError(f"the grid needs '{key}': a list, e.g. {key}: [...]")
        return []
    value = doc[key]
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise GridError(f"'{key}' is empty: give at least one value")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, kind):
            raise GridError(f"'{key}' holds {v!r}, which is not a {getattr(kind, '__name__', 'valid value')}")
    if len(set(map(repr, value))) != len(value):
        raise GridError(f"'{key}' lists a value twice: {value}")
    return value


def parse_grid(doc: Any, source: str = "<grid>") -> Grid:
    """Validate a grid document (the parsed YAML) and expand it into trials."""
    from robustfeat.train import TrainConfig
    from robustfeat.train.loop import preflight

    if not isinstance(doc, dict):
        raise GridError(f"{source}: a grid is a mapping with models, datasets, methods and seeds")
    unknown = sorted(set(doc) - KEYS)
    if unknown:
        raise GridError(f"{source}: unknown key(s) {', '.join(unknown)}; a grid has {', '.join(sorted(KEYS))}")
    models, datasets = _list(doc, "models", str), _list(doc, "datasets", str)
    methods, seeds = _list(doc, "methods", str), _list(doc, "seeds", int)
    hyper = doc.get("hyperparameters") or {}
    train = doc.get("train") or {}
    evaluate = doc.get("evaluate") or {}
    resources = doc.get("resources") or {}
    for name, value in (("hyperparameters", hyper), ("train", train), ("evaluate", evaluate), ("resources", resources)):
        if not isinstance(value, dict):
            raise GridError(f"{source}: '{name}' must be a mapping, got {type(value).__name__}")
    train_fields = {f.name for f in fields(TrainConfig)}
    reserved = {"model", "data", "method", "seed"}
    for where, keys in (("hyperparameters", hyper), ("train", train)):
        bad = sorted(set(keys) - (train_fields - reserved))
        if bad:
            raise GridError(f"{source}: '{where}' has unknown or reserved field(s) {', '.join(bad)} "
                            f"(training fields: {', '.join(sorted(train_fields - reserved))})")
    both = sorted(set(hyper) & set(train))
    if both:
        raise GridError(f"{source}: {', '.join(both)} is both fixed in 'train' and swept in 'hyperparameters'")
    keys = evaluate_keys()
    bad = sorted(set(evaluate) - keys)
    if bad:
        raise GridError(f"{source}: 'evaluate' has unknown field(s) {', '.join(bad)} ({', '.join(sorted(keys))})")
    try:
        from robustfeat.evaluations.base import option_overrides

        option_overrides({k: v for k, v in evaluate.items() if k not in RUN_EVALUATE_KEYS})
    except RobustfeatError as e:
        raise GridError(f"{source}: evaluate: {e}") from None
    bad = sorted(set(resources) - RESOURCE_KEYS)
    if bad:
        raise GridError(f"{source}: 'resources' has unknown field(s) {', '.join(bad)} ({', '.join(sorted(RESOURCE_KEYS))})")
    for k in ("cpus", "gpus", "memory_gb", "retries", "threads"):
        v = resources.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v):
            raise GridError(f"{source}: resources.{k} must be a number >= 0, got {v!r}")
    hyper_lists = {k: _list(hyper, k, (int, float, str)) for k in sorted(hyper)}
    trials = []
    for model, data, method, seed, *values in itertools.product(models, datasets, methods, seeds,
                                                                  *hyper_lists.values()):
        varied = dict(zip(hyper_lists, values))
        try:
            config = TrainConfig(model=model, data=data, method=method, seed=seed, **train, **varied)
            preflight(config)  # names, adapter options and contradictions: before any trial runs
        except RobustfeatError as e:
            raise GridError(f"{source}: trial {model}/{data}/{method}/seed {seed}: {e}") from None
        except TypeError as e:
            raise GridError(f"{source}: {e}") from None
        trials.append(TrialSpec(json.loads(json.dumps(config.to_dict())), dict(sorted(evaluate.items())), varied))
    return Grid(tuple(trials), dict(resources), source)


def check_evaluations(grid: Grid) -> None:
    """Check each trial's evaluation against its real model and data before any trial runs:
    shift names, options that name columns or files, the bank. The base model and data of
    each distinct (model, data, method) are loaded once for this; nothing is trained or written."""
    from robustfeat.evaluations.runner import plan
    from robustfeat.evaluations.subject import PlannedSubject
    from robustfeat.train import TrainConfig

    seen = set()
    for spec in grid.trials:
        t = spec.train
        if spec.evaluate is None:
            continue
        key = (t["model"], t["data"], t["method"], json.dumps(spec.evaluate, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        opts = dict(spec.evaluate)
        shifts = opts.pop("shifts", None)
        scales = opts.pop("scales", None)  # a planned subject has no update yet: the scales are checked here
        try:
            if scales is not None and (not isinstance(scales, list) or not scales or any(
                    isinstance(a, bool) or not isinstance(a, (int, float)) or a != a for a in scales)):
                raise RobustfeatError(f"scales must be a list of numbers, e.g. [0, 0.5, 1]; got {scales!r}")
            from robustfeat.registry import ADAPTERS

            if scales is not None and not ADAPTERS.get(t["method"]).scalable():
                raise RobustfeatError(f"method '{t['method']}' has no fine-tuning update to scale (scales are "
                                      f"for {', '.join(n for n, m in ADAPTERS.items() if m.scalable())})")
            plan([PlannedSubject(TrainConfig.from_dict(t))], None, shifts=list(shifts) if shifts else None,
                 progress=False, **opts)
        except RobustfeatError as e:
            raise GridError(f"{grid.source}: trial {spec.name}: evaluate: {e}") from None


def read_yaml(path: str | os.PathLike, what: str, error: type[RobustfeatError]) -> Any:
    """The parsed YAML of a ``what`` file (a grid, a study): one ``error`` when it is missing
    or not YAML."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise error(f"{what} file '{path}' does not exist")
    try:
        return yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise error(f"{what} file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None


def read_grid(path: str | os.PathLike) -> Grid:
    return parse_grid(read_yaml(path, "grid", GridError), str(path))
