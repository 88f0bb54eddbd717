"""The study's stages, each a list of sweep trials run by a sweep backend into the family's
folder (``OUT/FAMILY/``: ``checkpoints/`` and ``trials/``, see :mod:`robustfeat.sweep.run`):

1. **tuning**: every arm at every learning rate of its grid on the tuning seed, fine-tuned
   only; the rate with the best *validation* score is chosen (never a shift result);
2. **seeds**: every arm at its chosen rate on every seed, evaluated on the family's bank
   (the tuning seed's fine-tune is the same run, so it is reused, not repeated);
3. **scale**: every seed checkpoint of the scalable arms evaluated with its update scaled
   by each alpha.

Trials are keyed by what they compute, so a rerun skips every finished trial and an
interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustfeat.study.spec import Arm, FamilySpec, StudyError
from robustfeat.sweep.grid import TrialSpec

STAGES = ("tuning", "seeds", "scale")
#: validation metrics where lower is better (the rest: higher)
LOWER_IS_BETTER = {"perplexity", "loss"}


@dataclass(frozen=True)
class Trial:
    """A trial of a stage, with the arm it belongs to."""

    stage: str
    arm: str
    spec: TrialSpec


def _config(fam: FamilySpec, arm: Arm, seed: int, lr: float, extra: dict[str, Any]):
    from robustfeat.train import TrainConfig
    from robustfeat.train.loop import preflight

    try:
        config = TrainConfig(model=fam.model, data=fam.data, method=arm.method, seed=seed, lr=lr,
                             **{**fam.train, **arm.train, **extra})
        preflight(config)
    except TypeError as e:
        raise StudyError(f"family '{fam.name}', arm {arm.name}: {e}") from None
    except StudyError:
        raise
    except Exception as e:  # a RobustfeatError from the configuration's own checks
        from robustfeat.errors import RobustfeatError

        if isinstance(e, RobustfeatError):
            raise StudyError(f"family '{fam.name}', arm {arm.name}: {e}") from None
        raise
    return config


def _spec(fam: FamilySpec, arm: Arm, seed: int, lr: float, evaluate: dict | None, matched: dict[str, int]) -> TrialSpec:
    extra = {"rank": matched[arm.name]} if arm.matched_to else {}
    config = _config(fam, arm, seed, lr, extra)
    varied = {"lr": lr, **extra}
    return TrialSpec(json.loads(json.dumps(config.to_dict())), None if evaluate is None else dict(sorted(evaluate.items())),
                     varied)


def matched_ranks(fam: FamilySpec, cache: Path | None = None) -> dict[str, int]:
    """The rank of each budget-matched LoRA arm: the one whose adapter parameter count (the
    head left out) is closest to its target arm's on this model. Remembered in ``cache``."""
    arms = [a for a in fam.arms if a.matched_to]
    if not arms:
        return {}
    key = json.dumps({"model": fam.model, "train": fam.train, "arms": [a.name for a in arms]}, sort_keys=True)
    if cache is not None and cache.is_file():
        try:
            held = json.loads(cache.read_text())
            if held.get("key") == key:
                return {k: int(v) for k, v in held["ranks"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    ranks = {}
    for arm in arms:
        target = fam.arm(arm.matched_to)
        want = _adapter_count(fam, target, {})
        per_rank = _adapter_count(fam, arm, {"rank": 1})
        ranks[arm.name] = max(1, round(want / max(per_rank, 1)))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "ranks": ranks, "note": "LoRA's count is linear in its rank"}, indent=1))
    return ranks


def _adapter_count(fam: FamilySpec, arm: Arm, extra: dict[str, Any]) -> int:
    """Trainable parameters the arm adds to the model, its task head left out."""
    from robustfeat.adapters import AdapterConfig, inject_adapters
    from robustfeat.adapters.base import under_modules
    from robustfeat.models.zoo import load_model
    from robustfeat.registry import ADAPTERS

    config = _config(fam, arm, 0, 1e-3, extra)
    handle = load_model(config.model, num_labels=2, seed=0, max_length=config.max_length, image_size=config.image_size)
    kw = config.adapter_kwargs()
    if ADAPTERS.get(config.method).uses_targets:
        kw["target_modules"] = config.targets if config.targets is not None else handle.default_targets
    inject_adapters(handle.model, AdapterConfig(method=config.method, modules_to_save=list(handle.head), seed=0, **kw))
    head = tuple(handle.head)
    return sum(p.numel() for n, p in handle.model.named_parameters() if p.requires_grad and not under_modules(n, head))


def tuning_trials(fam: FamilySpec, matched: dict[str, int],
                  rates: dict[str, tuple[float, ...]] | None = None) -> list[Trial]:
    rates = rates or fam.rates
    return [Trial("tuning", arm.name, _spec(fam, arm, fam.tuning_seed, lr, None, matched))
            for arm in fam.arms for lr in rates[arm.name]]


def extended(rates: tuple[float, ...], chosen: float) -> tuple[float, ...]:
    """The grid grown by one rate beyond the edge where ``chosen`` lies (the step between the
    edge and its neighbour, on a log scale); the same grid where it lies inside."""
    r = sorted(rates)
    if chosen == r[-1]:
        return (*r, float(f"{r[-1] * r[-1] / r[-2]:.6g}"))
    if chosen == r[0]:
        return (float(f"{r[0] * r[0] / r[1]:.6g}"), *r)
    return tuple(r)


def choose_rates(fam: FamilySpec, trials: list[Trial], records: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Per arm: every candidate rate with its validation score, and the chosen one (the best
    score; a tie goes to the rate nearest the method's default, then the smaller)."""
    from robustfeat.registry import ADAPTERS
    from robustfeat.train.record import RunRecord

    out: dict[str, dict[str, Any]] = {}
    for arm in (a for a in fam.arms if any(t.arm == a.name for t in trials)):
        scores, metric = {}, None
        for t in (t for t in trials if t.arm == arm.name):
            rec = RunRecord.read(records[t.spec.key]["checkpoint"]).raw["validation"]
            metric = rec["metric"]
            scores[t.spec.train["lr"]] = float(rec["value"])
        lower = metric in LOWER_IS_BETTER
        default = float(arm.train.get("lr") or ADAPTERS.get(arm.method).default_lr)
        import math

        best = min(scores, key=lambda lr: ((scores[lr] if lower else -scores[lr]), abs(math.log(lr / default)), lr))
        edge = best in (min(scores), max(scores))
        out[arm.name] = {"metric": metric, "higher_is_better": not lower, "scores": {f"{k:g}": v for k, v in sorted(scores.items())},
                         "chosen": best, "seed": fam.tuning_seed, "at_edge": edge}
    return out


def seed_trials(fam: FamilySpec, choices: dict[str, dict], matched: dict[str, int]) -> list[Trial]:
    return [Trial("seeds", arm.name, _spec(fam, arm, s, choices[arm.name]["chosen"], fam.evaluate, matched))
            for arm in fam.arms for s in fam.seeds]


def scale_trials(fam: FamilySpec, choices: dict[str, dict], matched: dict[str, int]) -> list[Trial]:
    ev = {**fam.scale_evaluate, "scales": list(fam.alphas)}
    return [Trial("scale", name, _spec(fam, fam.arm(name), s, choices[name]["chosen"], ev, matched))
            for name in fam.scale_arms for s in fam.seeds]
