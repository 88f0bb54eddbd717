"""Crash safety: ``robustfeat finetune``, ``evaluate`` and ``sweep`` are SIGKILLed at random
points (21 in total, drawn from a seeded generator); after each kill the same command is
run again and must complete, and its results must equal an uninterrupted run's. Each kill
point gets its own output folder; two run side by side to save wall time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

KILLS = {"finetune": 8, "evaluate": 8, "sweep": 5}
TRAIN = ["--model", "tiny-cnn", "--data", "mnist-5k", "--image-size", "32", "--max-examples", "384",
         "--max-eval-examples", "64", "--epochs", "3", "--checkpoint-every", "3"]
RUN_TIME_FIELDS = {"train_time_s", "peak_rss_mb", "created", "resumed_from", "finished", "git_revision"}


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "robustfeat", *map(str, args)]


def _run(args, timeout=600) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.perf_counter() - t0


def _kill_then_rerun(args, delay: float) -> bool:
    """Start the command, SIGKILL it after ``delay`` seconds, then run it again to the end.
    Returns whether the kill landed (the first start had not finished yet)."""
    proc = subprocess.Popen(_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = True
    _run(args)
    return killed


def _kill_points(make_args, kills: int, duration: float, rng: np.random.Generator, root: Path) -> list[Path]:
    """Output folders, each killed once at a random moment and rerun, until ``kills`` kills
    have landed (a start that finishes before its moment does not count, and the moments
    are drawn earlier after a miss). Two run side by side, so a run takes about twice
    its solo duration."""
    from concurrent.futures import ThreadPoolExecutor

    outs: list[Path] = []
    landed, hi = 0, 0.95
    with ThreadPoolExecutor(2) as pool:
        while landed < kills:
            assert len(outs) < 3 * kills, "the kill points keep missing the run"
            batch = [root / f"kill-{len(outs) + i}" for i in range(min(2, kills - landed))]
            delays = rng.uniform(0.3, hi, size=len(batch)) * duration * len(batch)
            hits = list(pool.map(lambda od: _kill_then_rerun(make_args(od[0]), od[1]), zip(batch, delays)))
            landed += sum(hits)
            hi = max(0.5, hi - 0.15 * (len(hits) - sum(hits)))
            outs += batch
    return outs


def _run_record(path: Path) -> dict:
    rec = json.loads((path / "robustfeat.json").read_text())
    return {k: v for k, v in rec.items() if k not in RUN_TIME_FIELDS}


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20261128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of the three commands, and how long each took."""
    root = tmp_path_factory.mktemp("reference")
    t_train = _run(["finetune", *TRAIN, "--method", "lora", "--out", root / "ckpt", "--no-progress"])
    t_eval = _run(["evaluate", root / "ckpt", "--quick", "--shifts", "clean,fog,gaussian_noise,cka,weights",
                   "--out", root / "results", "--no-progress"])
    grid = root / "grid.yaml"
    grid.write_text(yaml.safe_dump({"models": ["tiny-cnn"], "datasets": ["mnist-5k"], "methods": ["lora", "vefa"],
                                    "seeds": [0], "train": {"image_size": 32, "max_examples": 256,
                                                            "max_eval_examples": 64, "checkpoint_every": 3},
                                    "evaluate": {"quick": True, "shifts": ["clean", "fog", "cka"]},
                                    "resources": {"threads": 1}}))
    t_sweep = _run(["sweep", grid, "--out", root / "sweep", "--no-progress", "--no-report"])
    return root, {"finetune": t_train, "evaluate": t_eval, "sweep": t_sweep}


def test_finetune_survives_sigkills(reference, rng, tmp_path):
    root, times = reference
    outs = _kill_points(lambda out: ["finetune", *TRAIN, "--method", "lora", "--out", out, "--no-progress"],
                        KILLS["finetune"], times["finetune"], rng, tmp_path)
    want = (root / "ckpt" / "adapter_model.safetensors").read_bytes()
    for out in outs:
        assert (out / "adapter_model.safetensors").read_bytes() == want, out
        assert _run_record(out)["validation"] == _run_record(root / "ckpt")["validation"]


def test_evaluate_survives_sigkills(reference, rng, tmp_path):
    root, times = reference
    outs = _kill_points(lambda out: ["evaluate", root / "ckpt", "--quick", "--shifts",
                                     "clean,fog,gaussian_noise,cka,weights", "--out", out, "--no-progress"],
                        KILLS["evaluate"], times["evaluate"], rng, tmp_path)
    want = (root / "results" / "results.csv").read_bytes()
    for out in outs:
        assert (out / "results.csv").read_bytes() == want, out


def test_sweep_survives_sigkills(reference, rng, tmp_path):
    root, times = reference
    outs = _kill_points(lambda out: ["sweep", root / "grid.yaml", "--out", out, "--no-progress", "--no-report"],
                        KILLS["sweep"], times["sweep"], rng, tmp_path)

    def tables(d: Path) -> dict[str, bytes]:
        return {p.parent.parent.name: p.read_bytes() for p in d.glob("trials/*/results/results.csv")}

    want = tables(root / "sweep")
    assert len(want) == 2
    for out in outs:
        assert tables(out) == want and len(list(out.glob("trials/*/done.json"))) == 2, out


def test_the_kill_points_add_up():
    assert sum(KILLS.values()) >= 20
