"""Study files: the families to study, each a model and its fine-tuning data with the arms
(methods) to compare, how to tune them, the seeds, the bank, the scale curves and the
margins of the equivalence tests, all stated before anything runs.

    families:
      text:                                   # a section per family (the name is yours)
        model: minilm-l6
        data: rotten-tomatoes
        methods: [lora, lorfa, vefa, full, linear, ia3, vera, lora-matched]
        train: {max_examples: 2000, max_length: 64}      # TrainConfig fields for every run
        tuning: {seed: 0, factors: [0.3, 1, 3]}          # lr = factor x the method's default
                                                         # (extend: 2, see below)
        seeds: [0, 1, 2, 3, 4]
        evaluate: {shifts: [clean, ood, embedding-geometry, linear-probe, cka, weights],
                   sizes: {ood: {examples: 1000}}}       # the seeds stage's bank
        scale:                                           # adapter-scale curves (WiSE-FT for adapters)
          alphas: [0, 0.25, 0.5, 0.75, 1, 1.25]
          methods: [lora, lorfa, vefa, full]
          evaluate: {shifts: [clean, ood, embedding-geometry]}
        margins: {id_acc: 0.02}                          # TOST margins by headline
    resources: {threads: 2}

``lora-matched`` is LoRA at the rank whose trainable count is closest to VeFA's on the same
model (the budget-matched LoRA). An arm may also be a mapping ``{name: lora-r16, method:
lora, train: {rank: 16}}``. Tuning may give explicit rates instead of factors:
``tuning: {lr: {lora: [1e-4, 3e-4, 1e-3]}}``; a grid must hold at least three rates spanning
at least ten times. Where the best validation score lies at an edge of an arm's grid, the grid
grows by one rate beyond that edge (the grid's own step) and the pick is made again, up to
``extend`` times (default 2); a pick still at the edge then is reported as such.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from robustfeat.errors import RobustfeatError

#: the comparison every verdict is paired against
REFERENCE_ARM = "lora"
MATCHED = "lora-matched"
DEFAULT_FACTORS = (0.3, 1.0, 3.0)
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
MIN_RATES, MIN_SPAN = 3, 10.0

FAMILY_KEYS = {"model", "data", "methods", "train", "tuning", "seeds", "evaluate", "scale", "margins"}
TUNING_KEYS = {"seed", "factors", "lr", "extend"}
#: how many rates a grid may grow by, on the side where its best rate lies at the edge
DEFAULT_EXTEND = 2
SCALE_KEYS = {"alphas", "methods", "evaluate"}


class StudyError(RobustfeatError):
    """A study file that cannot be used as written."""


@dataclass(frozen=True)
class Arm:
    """One compared method: its name in results, the adapter method, extra training fields."""

    name: str
    method: str
    train: dict[str, Any] = field(default_factory=dict)
    matched_to: str | None = None  # lora-matched: the arm whose trainable count it matches


@dataclass(frozen=True)
class FamilySpec:
    name: str
    model: str
    data: str
    arms: tuple[Arm, ...]
    train: dict[str, Any]
    tuning_seed: int
    rates: dict[str, tuple[float, ...]]  # arm -> learning rates to try
    extend: int  # rates each grid may grow by where its best rate lies at its edge
    seeds: tuple[int, ...]
    evaluate: dict[str, Any]
    alphas: tuple[float, ...]
    scale_arms: tuple[str, ...]
    scale_evaluate: dict[str, Any]
    margins: dict[str, float]

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


@dataclass(frozen=True)
class StudySpec:
    families: tuple[FamilySpec, ...]
    resources: dict[str, Any]
    source: str


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _unknown(doc: dict, allowed: set[str], where: str) -> None:
    bad = sorted(set(doc) - allowed)
    if bad:
        raise StudyError(f"{where}: unknown key(s) {', '.join(bad)}; it takes {', '.join(sorted(allowed))}")


def _numbers(value: Any, where: str, positive: bool = False) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise StudyError(f"{where} must be a non-empty list of numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            raise StudyError(f"{where} holds {v!r}; give {'positive ' if positive else ''}numbers")
    if len(set(value)) != len(value):
        raise StudyError(f"{where} lists a value twice: {value}")
    return tuple(float(v) for v in value)


def _method(name: str, where: str) -> None:
    from robustfeat.registry import ADAPTERS

    try:
        ADAPTERS.get(name)
    except RobustfeatError as e:  # an unknown method: one error with the closest name
        raise StudyError(f"{where}.methods: {e}") from None


def _arms(value: Any, where: str) -> tuple[Arm, ...]:
    if not isinstance(value, list) or not value:
        raise StudyError(f"{where}.methods must be a non-empty list of method names")
    arms = []
    for item in value:
        if item == MATCHED:
            arms.append(Arm(MATCHED, "lora", {}, matched_to="vefa"))
        elif isinstance(item, str):
            _method(item, where)
            arms.append(Arm(item, item))
        elif isinstance(item, dict):
            _unknown(item, {"name", "method", "train"}, f"{where}.methods entry {item}")
            name, method = item.get("name"), item.get("method")
            if not isinstance(name, str) or not isinstance(method, str):
                raise StudyError(f"{where}.methods entry {item} needs a name and a method")
            _method(method, where)
            arms.append(Arm(name, method, dict(_mapping(item.get("train"), f"{where}.methods {name}.train"))))
        else:
            raise StudyError(f"{where}.methods holds {item!r}: give a method name or {{name, method, train}}")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise StudyError(f"{where}.methods names an arm twice: {names}")
    if REFERENCE_ARM not in names:
        raise StudyError(f"{where}.methods must include '{REFERENCE_ARM}': every verdict is paired against it")
    if any(a.matched_to for a in arms) and "vefa" not in names:
        raise StudyError(f"{where}: '{MATCHED}' matches vefa's trainable count; list vefa too")
    return tuple(arms)


def _rates(tuning: dict, arms: tuple[Arm, ...], where: str) -> dict[str, tuple[float, ...]]:
    from robustfeat.registry import ADAPTERS

    explicit = _mapping(tuning.get("lr"), f"{where}.tuning.lr")
    unknown = sorted(set(explicit) - {a.name for a in arms})
    if unknown:
        raise StudyError(f"{where}.tuning.lr names arm(s) not studied: {', '.join(unknown)}")
    factors = _numbers(tuning.get("factors", list(DEFAULT_FACTORS)), f"{where}.tuning.factors", positive=True)
    rates = {}
    for arm in arms:
        if arm.name in explicit:
            grid = _numbers(explicit[arm.name], f"{where}.tuning.lr.{arm.name}", positive=True)
        else:
            default = float(arm.train.get("lr") or ADAPTERS.get(arm.method).default_lr)
            grid = tuple(float(f"{default * f:.6g}") for f in factors)
        if len(grid) < MIN_RATES or max(grid) / min(grid) < MIN_SPAN * (1 - 1e-9):
            raise StudyError(f"{where}: the learning rates tried for {arm.name} ({', '.join(f'{r:g}' for r in grid)}) "
                             f"must be at least {MIN_RATES} values spanning at least {MIN_SPAN:g}x")
        rates[arm.name] = tuple(sorted(grid))
    return rates


def parse_family(name: str, doc: Any, source: str) -> FamilySpec:
    from robustfeat.train import TrainConfig

    where = f"{source}: family '{name}'"
    doc = _mapping(doc, where)
    _unknown(doc, FAMILY_KEYS, where)
    for key in ("model", "data"):
        if not isinstance(doc.get(key), str):
            raise StudyError(f"{where} needs '{key}': a name")
    arms = _arms(doc.get("methods"), where)
    train = dict(_mapping(doc.get("train"), f"{where}.train"))
    bad = sorted(set(train) - ({f.name for f in fields(TrainConfig)} - {"model", "data", "method", "seed", "lr"}))
    if bad:
        raise StudyError(f"{where}.train: unknown or reserved field(s) {', '.join(bad)} (model, data, method, seed "
                         "and lr are set by the study)")
    tuning = _mapping(doc.get("tuning"), f"{where}.tuning")
    _unknown(tuning, TUNING_KEYS, f"{where}.tuning")
    seeds = doc.get("seeds", [0, 1, 2, 3, 4])
    if (not isinstance(seeds, list) or len(seeds) < 2 or len(set(seeds)) != len(seeds)
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise StudyError(f"{where}.seeds must list at least two distinct whole numbers >= 0, got {seeds!r}")
    tuning_seed = tuning.get("seed", seeds[0])
    if isinstance(tuning_seed, bool) or not isinstance(tuning_seed, int) or tuning_seed < 0:
        raise StudyError(f"{where}.tuning.seed must be a whole number >= 0, got {tuning_seed!r}")
    scale = _mapping(doc.get("scale"), f"{where}.scale")
    _unknown(scale, SCALE_KEYS, f"{where}.scale")
    alphas = _numbers(scale.get("alphas", list(DEFAULT_ALPHAS)), f"{where}.scale.alphas")
    if 0.0 not in alphas or 1.0 not in alphas:
        raise StudyError(f"{where}.scale.alphas must include 0 (the base) and 1 (as trained)")
    scale_arms = scale.get("methods", [a.name for a in arms if _scalable(a)])
    if not isinstance(scale_arms, list) or any(s not in {a.name for a in arms} for s in scale_arms):
        raise StudyError(f"{where}.scale.methods must list studied arms, got {scale_arms!r}")
    for s in scale_arms:
        if not _scalable(next(a for a in arms if a.name == s)):
            raise StudyError(f"{where}.scale.methods: '{s}' has no fine-tuning update to scale")
    from robustfeat.report.verdicts import DEFAULT_MARGINS

    margins = {**DEFAULT_MARGINS, **_mapping(doc.get("margins"), f"{where}.margins")}
    for k, v in margins.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise StudyError(f"{where}.margins.{k} must be a positive number, got {v!r}")
    evaluate = dict(_mapping(doc.get("evaluate"), f"{where}.evaluate"))
    scale_evaluate = dict(_mapping(scale.get("evaluate"), f"{where}.scale.evaluate")) or dict(evaluate)
    for w, ev in (("evaluate", evaluate), ("scale.evaluate", scale_evaluate)):
        if "scales" in ev:
            raise StudyError(f"{where}.{w}: the scales come from scale.alphas")
    extend = tuning.get("extend", DEFAULT_EXTEND)
    if isinstance(extend, bool) or not isinstance(extend, int) or extend < 0:
        raise StudyError(f"{where}.tuning.extend must be a whole number >= 0, got {extend!r}")
    return FamilySpec(name, doc["model"], doc["data"], arms, train, tuning_seed, _rates(tuning, arms, where), extend,
                      tuple(seeds), evaluate, alphas, tuple(scale_arms), scale_evaluate,
                      {k: float(v) for k, v in margins.items()})


def _scalable(arm: Arm) -> bool:
    from robustfeat.registry import ADAPTERS

    return ADAPTERS.get(arm.method).scalable()


def parse_study(doc: Any, source: str = "<study>") -> StudySpec:
    if not isinstance(doc, dict):
        raise StudyError(f"{source}: a study is a mapping with 'families' (and optionally 'resources')")
    _unknown(doc, {"families", "resources"}, source)
    families = _mapping(doc.get("families"), f"{source}: families")
    if not families:
        raise StudyError(f"{source}: 'families' is empty; give at least one family section")
    resources = dict(_mapping(doc.get("resources"), f"{source}: resources"))
    return StudySpec(tuple(parse_family(str(n), d, source) for n, d in families.items()), resources, source)


def read_study(path: str | os.PathLike) -> StudySpec:
    from robustfeat.sweep.grid import read_yaml

    return parse_study(read_yaml(path, "study", StudyError), str(path))
