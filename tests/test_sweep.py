"""Sweeps: grid parsing and trial keys, the local backend with resume and partial reruns,
the ray backend on a local Ray instance (same results as local; a killed worker loses and
duplicates nothing), and one-line errors for bad grids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from robustfeat.sweep import GridError, parse_grid, sweep

TINY = {
    "models": ["tiny-bert"],
    "datasets": ["rotten-tomatoes"],
    "methods": ["linear", "lora"],
    "seeds": [0, 1],
    "hyperparameters": {"lr": [0.001, 0.003]},
    "train": {"max_examples": 64, "max_eval_examples": 32, "checkpoint_every": 100},
    "evaluate": {"quick": True, "shifts": ["clean", "vader-nyt", "cka"]},
    "resources": {"cpus": 1, "threads": 1},
}


def _grid(tmp_path: Path, doc: dict, name: str = "grid.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return p


def test_grid_expands_to_keyed_trials():
    g = parse_grid(TINY)
    assert len(g.trials) == 1 * 1 * 2 * 2 * 2
    assert len({c.key for c in g.trials}) == 8
    assert {c.label for c in g.trials} == {"linear lr=0.001", "linear lr=0.003", "lora lr=0.001", "lora lr=0.003"}
    assert all(c.train["max_examples"] == 64 and c.evaluate["quick"] for c in g.trials)
    # adding a seed adds trials and leaves every existing key as it was
    more = parse_grid({**TINY, "seeds": [0, 1, 2]})
    assert {c.key for c in g.trials} < {c.key for c in more.trials} and len(more.trials) == 12
    # changing a fixed field changes every key; changing the evaluation too
    assert not {c.key for c in g.trials} & {c.key for c in parse_grid({**TINY, "train": {**TINY["train"],
                                                                                         "max_examples": 65}}).trials}
    assert not {c.key for c in g.trials} & {c.key for c in parse_grid({**TINY, "evaluate": {"quick": True}}).trials}


@pytest.mark.parametrize("change, match", [
    ({"colour": 1}, "unknown key"),
    ({"methods": []}, "'methods' is empty"),
    ({"seeds": ["zero"]}, "not a int"),
    ({"seeds": [0, 0]}, "lists a value twice"),
    ({"hyperparameters": {"model": ["x"]}}, "unknown or reserved"),
    ({"hyperparameters": {"lr": [0.1]}, "train": {"lr": 0.2}}, "both fixed in 'train' and swept"),
    ({"train": {"rank": "big"}}, "rank"),
    ({"train": {"epochs": -1}}, "epochs must be a positive number"),
    ({"evaluate": {"fast": True}}, "'evaluate' has unknown field"),
    ({"resources": {"gpus": -0.5}}, "resources.gpus must be a number >= 0"),
    ({"resources": {"nodes": 2}}, "'resources' has unknown field"),
    ({"models": None}, "not a str"),
])
def test_bad_grids_are_one_clear_error(change, match):
    doc = {**TINY, **change}
    with pytest.raises(GridError, match=match):
        parse_grid(doc)


def test_bad_grid_files(tmp_path):
    from robustfeat.sweep import read_grid

    with pytest.raises(GridError, match="does not exist"):
        read_grid(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [a\n")
    with pytest.raises(GridError, match="not valid YAML"):
        read_grid(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(GridError, match="a grid is a mapping"):
        read_grid(bad)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    grid = _grid(root, TINY)
    info = sweep(grid, root / "local", backend="local", progress=False)
    return root, grid, info


def _tables(out: Path) -> dict[str, bytes]:
    return {p.parent.parent.name: p.read_bytes() for p in sorted(out.glob("trials/*/results/results.csv"))}


def test_local_sweep_runs_every_trial_then_resumes(local_sweep, tmp_path):
    root, grid, info = local_sweep
    out = root / "local"
    assert (info["trials"], info["ran"], info["skipped"]) == (8, 8, 0)
    assert len(_tables(out)) == 8 and info["report"].is_file()
    html = info["report"].read_text()
    assert "lora lr=0.003" in html and "linear lr=0.001" in html
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    again = sweep(grid, out, backend="local", report=False, progress=False)
    assert (again["ran"], again["skipped"]) == (0, 8)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == before
    # one more seed: only its 4 trials run
    grown = _grid(tmp_path, {**TINY, "seeds": [0, 1, 2]})
    more = sweep(grown, out, backend="local", report=False, progress=False)
    assert (more["ran"], more["skipped"]) == (4, 8)


def test_sweep_bad_input_leaves_the_sweep_alone(local_sweep, tmp_path, capsys):
    from robustfeat.cli import main

    root, grid, _ = local_sweep
    out = root / "local"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    file_out = tmp_path / "a-file"
    file_out.write_text("x")
    cases = [([grid, "--backend", "slurm"], "unknown backend 'slurm'"),
             ([grid, "--address", "10.0.0.1:6379"], "--address is for the ray backend"),
             ([tmp_path / "missing.yaml"], "does not exist"),
             ([_grid(tmp_path, {**TINY, "methods": ["lorra"]}, "typo.yaml")], "lorra")]
    for args, match in cases:
        code = main(["sweep", *map(str, args), "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and match in err[0], err
    assert main(["sweep", str(grid), "--out", str(file_out), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err and file_out.read_text() == "x"
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert after == before


# --- the ray backend on a local Ray instance --------------------------------------------------
def test_ray_backend_gives_the_local_results(local_sweep):
    root, grid, _ = local_sweep
    info = sweep(grid, root / "ray", backend="ray", report=False, progress=False)
    assert (info["ran"], info["skipped"]) == (8, 0)
    ray_tables, local_tables = _tables(root / "ray"), _tables(root / "local")
    assert len(ray_tables) == 8 and ray_tables == {k: local_tables[k] for k in ray_tables}
    pids = {json.loads(p.read_text())["pid"] for p in (root / "ray").glob("trials/*/done.json")}
    assert os.getpid() not in pids  # the trials ran in Ray's worker processes


def _trial_workers(pid: int) -> list:
    """The Ray workers running a trial for the sweep process ``pid``, and no one else's: its
    own Ray instance's raylet is its child and starts the workers (a process a worker forks
    carries the worker's title too, so only the raylet's children count)."""
    import psutil

    workers = []
    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for p in below:
        try:
            if "ray::run_trial" in " ".join(p.cmdline()) and "raylet" in " ".join(p.parent().cmdline()):
                workers.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            pass
    return workers


def test_a_killed_ray_worker_loses_and_duplicates_nothing(tmp_path):
    import pandas as pd

    doc = {**TINY, "methods": ["lora"], "hyperparameters": {},
           "train": {"max_examples": 512, "epochs": 3.0, "max_eval_examples": 32, "checkpoint_every": 4}}
    grid = _grid(tmp_path, doc)
    out = tmp_path / "ray"
    proc = subprocess.Popen([sys.executable, "-m", "robustfeat", "sweep", str(grid), "--backend", "ray",
                             "--out", str(out), "--no-progress", "--no-report"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim, deadline = None, time.time() + 240
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            if list(out.glob("checkpoints/*/.train_state/*")):  # a trial is mid-training
                found = _trial_workers(proc.pid)
                if found:
                    victim = found[0].pid
                    found[0].send_signal(signal.SIGKILL)
            time.sleep(0.1)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "no trial was caught mid-training"
    assert proc.returncode == 0, output[-2000:]
    done = [json.loads(p.read_text()) for p in out.glob("trials/*/done.json")]
    assert len(done) == 2 and victim not in {d["pid"] for d in done}  # the killed attempt was retried
    for p in out.glob("trials/*/results/results.csv"):
        f = pd.read_csv(p)
        assert len(f) and not f.duplicated(["checkpoint", "evaluation", "shift", "severity", "metric"]).any()
    # and the results are those of an uninterrupted local run
    sweep(grid, tmp_path / "local", backend="local", report=False, progress=False)
    assert _tables(out) == _tables(tmp_path / "local")


def test_local_backend_runs_one_trial_per_gpu_in_parallel(local_sweep, tmp_path, monkeypatch):
    """With several GPUs the local backend runs trials in one process per GPU, each pinned to
    its own device (simulated here: two 'GPUs' on the CPU); the results are the same."""
    import robustfeat.sweep.backends as backends

    root, grid, _ = local_sweep
    monkeypatch.setattr(backends, "gpu_count", lambda: 2)
    g = parse_grid({**TINY, "methods": ["lora"], "hyperparameters": {"lr": [0.001]}})
    info = sweep(g, tmp_path / "gpus", backend="local", report=False, progress=False)
    done = [json.loads(p.read_text()) for p in (tmp_path / "gpus").glob("trials/*/done.json")]
    assert info["ran"] == 2 and len({d["pid"] for d in done}) >= 1 and os.getpid() not in {d["pid"] for d in done}
    local = _tables(root / "local")
    assert _tables(tmp_path / "gpus") == {k: local[k] for k in _tables(tmp_path / "gpus")}
