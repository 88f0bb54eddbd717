"""The quickstart: a declared set of fine-tunes and evaluations ending in one report.
``robustfeat quickstart`` runs the shipped one (``QUICKSTART``) on real models and data:
all-MiniLM-L6-v2 on Rotten Tomatoes (OOD: VADER's Amazon, NYT and tweets) and
EfficientNet-Lite0 on Fashion-MNIST (corruptions), each with LoRA, LoRFA and VeFA next to
the frozen base with a trained head (``linear``, the reference).

Everything is resumable: a finished checkpoint is reused, finished evaluation cells are
skipped, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustfeat.errors import RobustfeatError


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    data: str
    methods: tuple[str, ...]
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    shifts: tuple[str, ...] | None = None  # evaluations / shifts of the quick bank to run (None: all)
    #: rough seconds per fine-tune and for the evaluation on a 2-core CPU, for the ETA
    finetune_s: float = 60.0
    evaluate_s: float = 60.0


QUICKSTART: tuple[Scenario, ...] = (
    Scenario("text", "minilm-l6", "rotten-tomatoes", ("linear", "lora", "lorfa", "vefa"),
             train={"max_examples": 2000, "max_eval_examples": 500, "max_length": 64},
             shifts=("clean", "ood", "embedding-geometry", "cka", "weights"), finetune_s=35, evaluate_s=75),
    Scenario("images", "efficientnet-lite0", "fashion-mnist", ("linear", "lora", "lorfa", "vefa"),
             train={"max_examples": 1600, "max_eval_examples": 256, "image_size": 112, "batch_size": 32},
             shifts=("clean", "corruptions", "imagenet-agreement", "linear-probe", "cka", "weights"),
             finetune_s=30, evaluate_s=90),
)


@dataclass(frozen=True)
class Stage:
    label: str
    estimate_s: float
    run: Any  # () -> None


def _finetune_stage(scenario: Scenario, method: str, out: Path) -> Stage:
    def run() -> None:
        from robustfeat.train import TrainConfig, finetune

        from robustfeat.train.record import RUN_FILE, RunRecord

        config = TrainConfig(model=scenario.model, data=scenario.data, method=method, **scenario.train)
        if RunRecord.finished(out, config):
            return  # finished with the same configuration: reuse it
        finetune(config, out, overwrite=(out / RUN_FILE).is_file(), progress=False)

    return Stage(f"fine-tune {scenario.model} on {scenario.data} with {method}", scenario.finetune_s, run)


def _set_aside_older_results(scenario: Scenario, out: Path) -> None:
    """A results folder from an older version of the quick bank is renamed (to
    ``results-<its bank>``), not overwritten, so the study evaluates its checkpoints afresh."""
    from robustfeat.registry import MODELS
    from robustfeat.evaluations.banks import bank_for_family

    meta_file = out / "results.json"
    if not meta_file.is_file():
        return
    try:
        held = json.loads(meta_file.read_text()).get("bank")
    except (OSError, ValueError, AttributeError):
        return  # not ours to move: evaluate() says what is wrong with it
    wanted = bank_for_family(MODELS.get(scenario.model).family).tag + "-quick"
    if isinstance(held, str) and held != wanted:
        target, n = out.with_name(f"{out.name}-{held}"), 1
        while target.exists():
            n += 1
            target = out.with_name(f"{out.name}-{held}-{n}")
        out.rename(target)
        print(f"robustfeat quickstart: {out} held results of bank {held}; moved them to {target.name} "
              f"and evaluating with {wanted}", file=sys.stderr)


def _evaluate_stage(scenario: Scenario, checkpoints: list[Path], out: Path) -> Stage:
    def run() -> None:
        from robustfeat.evaluations.runner import evaluate

        _set_aside_older_results(scenario, out)
        evaluate(checkpoints, out, quick=True, shifts=list(scenario.shifts) if scenario.shifts else None,
                 progress=False)

    return Stage(f"evaluate {scenario.name} ({len(checkpoints)} checkpoints, quick bank)", scenario.evaluate_s, run)


def plan(out: Path, scenarios: tuple[Scenario, ...] = QUICKSTART, pdf: bool = True) -> list[Stage]:
    stages: list[Stage] = []
    results = []
    for sc in scenarios:
        ckpts = [out / sc.name / "checkpoints" / m for m in sc.methods]
        stages += [_finetune_stage(sc, m, c) for m, c in zip(sc.methods, ckpts)]
        res = out / sc.name / "results"
        stages.append(_evaluate_stage(sc, ckpts, res))
        results.append(res)

    def report() -> None:
        from robustfeat.report import build_report

        title = "robustfeat quickstart: " + "; ".join(f"{s.model} on {s.data}" for s in scenarios)
        build_report(results, out / "report.html", title=title)
        if pdf:
            build_report(results, out / "report.pdf", title=title)

    stages.append(Stage("write report.html" + (" and report.pdf" if pdf else ""), 20.0, report))
    return stages


def run_study(out: str | os.PathLike, scenarios: tuple[Scenario, ...] = QUICKSTART, pdf: bool = True,
              progress: bool = True) -> dict[str, Any]:
    """Run every stage in order (skipping finished work) with a progress display of the
    stage and the estimated time left; returns wall time, peak memory and the paths."""
    import resource

    from tqdm.auto import tqdm

    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise RobustfeatError(f"--out '{out}' is a file; give a folder for the study")
    out.mkdir(parents=True, exist_ok=True)
    stages = plan(out, scenarios, pdf)
    t0 = time.perf_counter()
    total = sum(s.estimate_s for s in stages)
    bar = tqdm(total=round(total), unit="s", disable=not progress, dynamic_ncols=True,
               bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed} elapsed{postfix}]")
    done_estimate, timings, speed = 0.0, [], 1.0
    for i, stage in enumerate(stages):
        # the time left: the estimates of the stages to come, at the speed measured so far
        left = sum(s.estimate_s for s in stages[i:]) * speed
        bar.set_description_str(f"[{i + 1}/{len(stages)}] {stage.label}", refresh=False)
        bar.set_postfix_str(f"about {int(left // 60)}:{int(left % 60):02d} left", refresh=True)
        start = time.perf_counter()
        stage.run()
        timings.append((stage.label, time.perf_counter() - start))
        done_estimate += stage.estimate_s
        elapsed = time.perf_counter() - t0
        speed = elapsed / max(done_estimate, 1e-9)
        bar.total = round(elapsed + sum(s.estimate_s for s in stages[i + 1:]) * speed)
        bar.n = round(elapsed)
    bar.set_postfix_str("done", refresh=False)
    bar.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_mb, "stages": timings,
            "report_html": out / "report.html", "report_pdf": out / "report.pdf" if pdf else None,
            "results": [out / sc.name / "results" for sc in scenarios]}
