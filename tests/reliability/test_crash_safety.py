"""Crash safety: ``robustfeat finetune``, ``evaluate`` and ``sweep`` are SIGKILLed (21 kills),
then the same command is run again; the rerun must complete, resume from exactly what the
killed run left, and end with the same output as an uninterrupted run.

Most kills are triggered by a file event, polled in the output folder every few milliseconds
while the command runs (the moments are drawn from a seeded generator):

- finetune (8): the saved training state at step >= k (5 kills, k drawn), the final
  checkpoint being written (its temporary folder beside the output), the run record just
  written, and one random moment;
- evaluate (8): the k-th finished cell file (4 kills, k drawn), the j-th (or a later) corrupted
  set being generated (its cache lock without its file; 3 kills, j drawn) and one random moment; the
  corrupted-set kills and the random one each get a cold cache of their own
  (``ROBUSTFEAT_CACHE``), so that generation really happens during the run;
- sweep (5): the first trial's training state at step >= k, its k-th cell (cold cache), its
  done marker, the second trial's first cell, and one random moment.

After the killed process is gone, what it left is recorded and the kill is classified:
*nothing* resumable yet, resumable *state* (a training state at step s, n finished cells,
finished trials) or a *finished* output. The rerun must show it resumed from that state: the
run record's ``resumed_from_step`` is s and the command says so; the n cell files are the same
files (inode and mtime kept) and ``evaluate`` says n cells were already done; done markers are
kept and ``sweep`` counts them as already finished. Then everything is compared with an
uninterrupted run: the folder listings (no stray temporary file or state left), checkpoint
bytes, the run record and ``results.json`` (times, dates and git revision removed, nothing
else), results CSV and Parquet bytes, every cell file (its timing removed), the cached base
outputs and corrupted sets (array by array), trial records and done markers. Each kill point
gets its own output folder; two run side by side to save wall time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

KILLS = {"finetune": 8, "evaluate": 8, "sweep": 5}
TRAIN = ["--model", "tiny-cnn", "--data", "mnist-5k", "--image-size", "32", "--max-examples", "384",
         "--max-eval-examples", "64", "--epochs", "3", "--checkpoint-every", "3"]
STEPS = 36  # 384 examples in batches of 32, 3 epochs; training state every 3 steps
SHIFTS = "clean,fog,gaussian_noise,cka,weights"
GRID = {"models": ["tiny-cnn"], "datasets": ["mnist-5k"], "methods": ["lora", "vefa"], "seeds": [0],
        "train": {"image_size": 32, "max_examples": 256, "max_eval_examples": 64, "checkpoint_every": 3},
        "evaluate": {"quick": True, "shifts": ["clean", "fog", "cka"]}, "resources": {"threads": 1}}
TRIAL_STEPS = 8  # 256 examples in batches of 32, one epoch (training state at steps 3 and 6)
#: what differs between two identical runs: timings, dates, the code's git revision
RUN_VOLATILE = {"train_time_s", "peak_rss_mb", "created", "git_revision"}
POLL_S = 0.003
STATE, OLD_STATE = ".train_state", ".train_state.old"


# --- running and killing -------------------------------------------------------------------------

def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "robustfeat", *map(str, args)]


# Runs the CLI with one function made slow (it sleeps after it returns), so that a short window,
# such as the final checkpoint's temporary folder, stays open long enough to be seen and killed in.
_SLOWED = """
import sys, time, importlib, functools
mod, name, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
m = importlib.import_module(mod)
f = getattr(m, name)
@functools.wraps(f)
def slow(*a, **k):
    r = f(*a, **k)
    time.sleep(delay)
    return r
setattr(m, name, slow)
from robustfeat.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _slowed_cmd(slow: tuple[str, str, float], *args) -> list[str]:
    return [sys.executable, "-c", _SLOWED, *map(str, slow), *map(str, args)]


def _env(cache: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if cache is not None:
        env["ROBUSTFEAT_CACHE"] = str(cache)
    return env


def _run(args, cache: Path | None = None, timeout: float = 600) -> tuple[float, str]:
    """Run a command to its end: (seconds, stdout)."""
    t0 = time.perf_counter()
    r = subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=timeout, env=_env(cache))
    assert r.returncode == 0, r.stderr[-3000:]
    return time.perf_counter() - t0, r.stdout


def _fresh_cache(path: Path) -> Path:
    """A cache folder with no corrupted sets: the prepared datasets and models of the user's
    cache are linked in, everything else starts empty."""
    from robustfeat.data.cache import cache_root

    path.mkdir(parents=True)
    home = cache_root()
    for entry in sorted(home.iterdir()) if home.is_dir() else []:
        if entry.name != "corrupted":
            (path / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    return path


@dataclass
class Kill:
    """One kill point: ``when`` is a predicate polled while the command runs (an event) or a
    number of seconds after the start (a random moment); ``cold`` gives it its own cache."""

    trigger: str
    when: Callable[[Path, Path | None], bool] | float
    cold: bool = False
    slow: tuple[str, str, float] | None = None  # (module, function, seconds): see _SLOWED


@dataclass
class Outcome:
    kill: Kill
    out: Path
    cache: Path | None
    killed: bool  # False: the command finished before the kill
    left: dict[str, Any] = field(default_factory=dict)  # what the killed run left (see the inspectors)
    kind: str = ""  # nothing | state | finished
    stdout: str = ""

    def line(self) -> str:
        return f"{self.out.name}: {self.kill.trigger} -> {self.kind if self.killed else 'missed'} {self.left.get('what', '')}"


def _safe(pred: Callable[[], bool]) -> bool:
    try:
        return bool(pred())
    except (OSError, ValueError, KeyError, TypeError):  # a file swapped or half-written as it was read
        return False


def _start_and_kill(args, kill: Kill, out: Path, cache: Path | None) -> bool:
    """Start the command, SIGKILL it when its event is seen (or its moment comes); whether the
    kill landed (the process was still running)."""
    cmd = _slowed_cmd(kill.slow, *args) if kill.slow else _cmd(*args)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(cache))
    t0 = time.perf_counter()
    while proc.poll() is None:
        if callable(kill.when):
            fire = _safe(lambda: kill.when(out, cache))
        else:
            fire = time.perf_counter() - t0 >= kill.when
        if fire:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(POLL_S)
    return proc.wait() == -signal.SIGKILL


def _kill_all(kills: list[Kill], make_args: Callable[[Path], list], inspect: Callable[[Path, Path | None], dict],
              root: Path, cache: Path) -> list[Outcome]:
    """Each kill point in a folder of its own: start, kill, record what was left, rerun. A kill
    whose command finished first is tried once more in a new folder (a random moment at half
    its time)."""

    def one(i: int) -> Outcome:
        kill = kills[i]
        for attempt in range(2):
            out = root / (f"kill-{i}" + ("b" if attempt else ""))
            c = _fresh_cache(root / f"cache-{out.name}") if kill.cold else cache
            o = Outcome(kill, out, c, _start_and_kill(make_args(out), kill, out, c))
            if o.killed:
                break
            if not callable(kill.when):
                kill = Kill(kill.trigger, kill.when / 2, kill.cold, kill.slow)
        if o.killed:
            o.left = inspect(o.out, c)
            o.kind = o.left["kind"]
            _, o.stdout = _run(make_args(o.out), c)
        return o

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(one, range(len(kills))))
    print("\n".join(o.line() for o in outcomes))
    missed = [o.line() for o in outcomes if not o.killed]
    assert not missed, f"kills that never landed: {missed}"
    return outcomes


# --- what a folder holds ---------------------------------------------------------------------------

def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _stamp(path: Path) -> tuple[int, int, bytes]:
    """Enough to tell a kept file from one written again: inode, mtime and bytes."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def _step(folder: Path) -> int | None:
    """The step of the training state in ``folder`` (a checkpoint folder being trained)."""
    for name in (STATE, OLD_STATE):  # .old: killed while a newer state was being swapped in
        try:
            return int(json.loads((folder / name / "state.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def _cells(results: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.relative_to(results).as_posix(): _stamp(p) for p in sorted(results.glob("cells/*/*/*.json"))}


def _generating(cache: Path | None) -> list[str]:
    """Corrupted sets whose generation had started (a lock) and not finished (no file)."""
    if cache is None:
        return []
    return sorted(p.stem for p in cache.glob("corrupted/*/*.lock") if not p.with_suffix(".npz").exists())


def _generated(cache: Path) -> list[Path]:
    return [p for p in cache.glob("corrupted/*/*.npz") if not p.name.endswith(".tmp.npz")]


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _same_arrays(a: Path, b: Path) -> bool:
    x, y = _npz(a), _npz(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def _run_record(path: Path) -> dict:
    rec = json.loads((path / "robustfeat.json").read_text())
    return {k: v for k, v in rec.items() if k not in RUN_VOLATILE | {"resumed_from_step"}}


def _adapter_config(path: Path) -> dict:
    return {k: v for k, v in json.loads((path / "adapter_config.json").read_text()).items() if k != "created"}


def _check_checkpoint(ckpt: Path, ref: Path, where) -> None:
    """The same weights, byte for byte; the same adapter config and run record but for times
    and git revision (``resumed_from_step`` is checked by the caller)."""
    assert (ckpt / "adapter_model.safetensors").read_bytes() == (ref / "adapter_model.safetensors").read_bytes(), where
    assert _adapter_config(ckpt) == _adapter_config(ref), where
    assert _run_record(ckpt) == _run_record(ref), where


def _results_meta(results: Path, out: Path) -> dict:
    """results.json without its dates and git revision, the output folder's path as OUT."""
    meta = json.loads((results / "results.json").read_text().replace(str(out), "OUT"))
    meta.pop("created")
    meta["provenance"].pop("date")
    meta["provenance"].pop("git_revision")
    return meta


def _cell_payloads(results: Path) -> dict[str, dict]:
    return {k: {f: v for f, v in json.loads(s[2]).items() if f != "seconds"} for k, s in _cells(results).items()}


def _strays(out: Path) -> list[str]:
    """What a run of ``out`` left beside it other than its lock (e.g. a temporary folder)."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*") if p.name != f".{out.name}.lock")


# --- reference runs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20261128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of the three commands (evaluate and sweep on a cache that starts
    cold), and how long each took."""
    root = tmp_path_factory.mktemp("reference")
    t_train, _ = _run(["finetune", *TRAIN, "--method", "lora", "--out", root / "ckpt", "--no-progress"])
    cache = _fresh_cache(root / "cache")
    t_eval, _ = _run(["evaluate", root / "ckpt", "--quick", "--shifts", SHIFTS, "--out", root / "results",
                      "--no-progress"], cache)
    sets = _listing(cache / "corrupted")  # what the evaluation generated (before the sweep adds its own)
    grid = root / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    t_sweep, _ = _run(["sweep", grid, "--out", root / "sweep", "--no-progress", "--no-report"], cache)
    specs = [json.loads(p.read_text()) for p in (root / "sweep").glob("trials/*/trial.json")]
    trials = {t["label"]: t["key"] for t in specs}
    assert sorted(trials) == ["lora", "vefa"]
    return {"root": root, "cache": cache, "sets": sets, "trials": [trials["lora"], trials["vefa"]],
            "checkpoints": {t["key"]: f"checkpoints/{t['train_key']}" for t in specs},
            "times": {"finetune": t_train, "evaluate": t_eval, "sweep": t_sweep}}


# --- finetune --------------------------------------------------------------------------------------

def finetune_kills(rng, duration: float) -> list[Kill]:
    def state_at(k):
        return lambda out, _: (_step(out) or 0) >= k

    ks = sorted(rng.choice(np.arange(3, STEPS, 3), size=5, replace=False).tolist())
    return [*(Kill(f"training state at step >= {k}", state_at(k)) for k in ks),
            # The final checkpoint's folder lives for milliseconds: its writer is slowed so the
            # window is seen on a busy machine too.
            Kill("final checkpoint being written", lambda out, _: bool(_strays(out)),
                 slow=("robustfeat.train.loop", "save_adapters", 1.0)),
            Kill("run record written", lambda out, _: (out / "robustfeat.json").exists()),
            Kill("random moment", float(rng.uniform(0.2, 0.9) * duration))]


def _inspect_finetune(out: Path, cache) -> dict:
    step = _step(out)
    if (out / "robustfeat.json").exists():
        left = " and its training state" if step is not None else ""
        return {"kind": "finished", "record": _stamp(out / "robustfeat.json"), "what": f"(finished checkpoint{left})"}
    if step is not None:
        return {"kind": "state", "step": step, "what": f"(training state at step {step})"}
    return {"kind": "nothing", "what": ""}


def test_finetune_survives_sigkills(reference, rng, tmp_path):
    ref = reference["root"] / "ckpt"
    kills = finetune_kills(rng, reference["times"]["finetune"])
    outcomes = _kill_all(kills, lambda out: ["finetune", *TRAIN, "--method", "lora", "--out", out, "--no-progress"],
                         _inspect_finetune, tmp_path, None)
    assert json.loads((ref / "robustfeat.json").read_text())["resumed_from_step"] == 0
    for o in outcomes:
        out, where = o.out, o.line()
        rec = json.loads((out / "robustfeat.json").read_text())
        if o.kind == "state":  # resumed from the state the kill left, not from scratch
            assert rec["resumed_from_step"] == o.left["step"], where
            assert f"(resumed from step {o.left['step']})" in o.stdout, where
        elif o.kind == "finished":  # the rerun found the finished checkpoint and left it alone
            assert _stamp(out / "robustfeat.json") == o.left["record"], where
        else:
            assert rec["resumed_from_step"] == 0 and "resumed" not in o.stdout, where
        assert _listing(out) == _listing(ref), where  # no training state or partial file left behind
        assert not _strays(out), where
        _check_checkpoint(out, ref, where)
    kinds = Counter(o.kind for o in outcomes)
    assert kinds["state"] >= 5, kinds


# --- evaluate --------------------------------------------------------------------------------------

def evaluate_kills(rng, duration: float, cells: int, sets: int) -> list[Kill]:
    def cell(k):
        return lambda out, _: len(list(out.glob("cells/*/*/*.json"))) >= k

    def generating(j):  # the j-th set or, when its window was too short to see, a later one
        return lambda out, cache: len(_generated(cache)) >= j - 1 and bool(_generating(cache))

    ks = sorted(rng.choice(np.arange(1, cells), size=4, replace=False).tolist())
    js = sorted(rng.choice(np.arange(1, sets + 1), size=3, replace=False).tolist())
    return [*(Kill(f"cell {k} of {cells} written", cell(k)) for k in ks),
            *(Kill(f"corrupted set >= {j} of {sets} being generated", generating(j), cold=True) for j in js),
            Kill("random moment", float(rng.uniform(0.2, 0.9) * duration), cold=True)]


def _inspect_evaluate(out: Path, cache, total: int) -> dict:
    cells = _cells(out)
    gen = _generating(cache)
    left = {"cells": cells, "generating": gen,
            "what": f"({len(cells)} of {total} cells" + (f"; generating {', '.join(gen)}" if gen else "") + ")"}
    left["kind"] = "finished" if len(cells) == total else "state" if cells else "nothing"
    return left


def _check_results(results: Path, ref: Path, out: Path, ref_out: Path, where: str) -> None:
    """A results folder equals the uninterrupted one: listing, tables, cells, metadata, base outputs."""
    assert _listing(results) == _listing(ref), where
    for name in ("results.csv", "results.parquet"):
        if (ref / name).exists():
            assert (results / name).read_bytes() == (ref / name).read_bytes(), (where, name)
    assert _cell_payloads(results) == _cell_payloads(ref), where
    assert _results_meta(results, out) == _results_meta(ref, ref_out), where
    for p in sorted(ref.glob("base/*/*.npz")):
        assert _same_arrays(results / p.relative_to(ref), p), (where, p.name)


def _check_cells_kept(o: Outcome, results: Path, cells: dict) -> None:
    for rel, stamp in cells.items():
        assert _stamp(results / rel) == stamp, (o.line(), f"cell {rel} was computed again")


def test_evaluate_survives_sigkills(reference, rng, tmp_path):
    root, cache = reference["root"], reference["cache"]
    ref = root / "results"
    total = len(_cells(ref))
    sets = [cache / "corrupted" / p for p in reference["sets"] if p.endswith(".npz")]
    assert total == 14 and len(sets) == 6
    kills = evaluate_kills(rng, reference["times"]["evaluate"], total, len(sets))
    outcomes = _kill_all(kills, lambda out: ["evaluate", root / "ckpt", "--quick", "--shifts", SHIFTS, "--out", out,
                                             "--no-progress"],
                         lambda out, c: _inspect_evaluate(out, c, total), tmp_path, cache)
    for o in outcomes:
        where, n = o.line(), len(o.left["cells"])
        _check_cells_kept(o, o.out, o.left["cells"])
        if n:
            assert f"resumed: {n} of {total} cells were already done" in o.stdout, (where, o.stdout)
        else:
            assert "resumed" not in o.stdout, where
        _check_results(o.out, ref, o.out, ref, where)
        if o.cache is not cache:  # a cold cache: the sets generated around the kill equal the reference's
            assert _listing(o.cache / "corrupted") == reference["sets"], where  # no half-written set left
            for p in sets:
                assert _same_arrays(o.cache / p.relative_to(cache), p), (where, p.name)
    kinds = Counter(o.kind for o in outcomes)
    assert kinds["state"] >= 6, kinds
    assert sum(bool(o.left["generating"]) for o in outcomes) >= 2, "too few kills landed during corrupted-set generation"


# --- sweep -----------------------------------------------------------------------------------------

def sweep_kills(rng, duration: float, first: str, second: str, first_checkpoint: str) -> list[Kill]:
    k = int(rng.choice(np.arange(3, TRIAL_STEPS, 3)))
    c = int(rng.integers(1, 8))
    t1, t2 = f"trials/{first}", f"trials/{second}"
    return [Kill(f"trial 1 training state at step >= {k}", lambda out, _: (_step(out / first_checkpoint) or 0) >= k),
            Kill(f"trial 1 cell {c} written", lambda out, _: len(list(out.glob(f"{t1}/results/cells/*/*/*.json"))) >= c,
                 cold=True),
            Kill("trial 1 done", lambda out, _: (out / t1 / "done.json").exists()),
            Kill("trial 2 cell 1 written", lambda out, _: any(out.glob(f"{t2}/results/cells/*/*/*.json"))),
            Kill("random moment", float(rng.uniform(0.2, 0.9) * duration))]


def _inspect_sweep(out: Path, cache, keys: list[str], checkpoints: dict[str, str]) -> dict:
    trials, what = {}, []
    for i, key in enumerate(keys, 1):
        d = out / "trials" / key
        ckpt = out / checkpoints[key]
        t = {"done": _stamp(d / "done.json") if (d / "done.json").exists() else None,
             "record": _stamp(ckpt / "robustfeat.json") if (ckpt / "robustfeat.json").exists() else None,
             "step": _step(ckpt), "cells": _cells(d / "results")}
        trials[key] = t
        if t["done"]:
            what.append(f"trial {i} done")
        elif t["record"] or t["step"] is not None or t["cells"]:
            what.append(f"trial {i}: " + ("checkpoint finished" if t["record"] else f"state at step {t['step']}")
                        + (f", {len(t['cells'])} cells" if t["cells"] else ""))
    done = sum(t["done"] is not None for t in trials.values())
    busy = any(t["record"] or t["step"] is not None or t["cells"] for t in trials.values())
    kind = "finished" if done == len(keys) else "state" if done or busy else "nothing"
    return {"kind": kind, "trials": trials, "done": done, "what": f"({'; '.join(what)})" if what else ""}


def test_sweep_survives_sigkills(reference, rng, tmp_path):
    root, keys, ckpts = reference["root"], reference["trials"], reference["checkpoints"]
    ref = root / "sweep"
    kills = sweep_kills(rng, reference["times"]["sweep"], *keys, ckpts[keys[0]])
    outcomes = _kill_all(kills, lambda out: ["sweep", root / "grid.yaml", "--out", out, "--no-progress", "--no-report"],
                         lambda out, c: _inspect_sweep(out, c, keys, ckpts), tmp_path, reference["cache"])
    assert _listing(ref / "trials") and len(keys) == 2
    for o in outcomes:
        where, out = o.line(), o.out
        assert _listing(out) == _listing(ref), where
        done = o.left["done"]
        assert f"{len(keys) - done} trials run, {done} already finished" in o.stdout, (where, o.stdout)
        for key in keys:
            d, r, t = out / "trials" / key, ref / "trials" / key, o.left["trials"][key]
            if t["done"]:  # a finished trial is kept as it is
                assert _stamp(d / "done.json") == t["done"], where
            ckpt = out / ckpts[key]
            if t["record"]:
                assert _stamp(ckpt / "robustfeat.json") == t["record"], where
            elif t["step"] is not None:  # resumed from the trial's training state
                assert json.loads((ckpt / "robustfeat.json").read_text())["resumed_from_step"] == t["step"], where
            else:
                assert json.loads((ckpt / "robustfeat.json").read_text())["resumed_from_step"] == 0, where
            _check_cells_kept(o, d / "results", t["cells"])
            assert (d / "trial.json").read_bytes() == (r / "trial.json").read_bytes(), where
            _check_checkpoint(ckpt, ref / ckpts[key], (where, key))
            _check_results(d / "results", r / "results", out, ref, where)

            def marker(p: Path, base: Path) -> dict:
                return {k: v for k, v in json.loads(p.read_text().replace(str(base), "OUT")).items()
                        if k not in ("seconds", "pid")}

            assert marker(d / "done.json", out) == marker(r / "done.json", ref), (where, key)
    kinds = Counter(o.kind for o in outcomes)
    assert kinds["state"] >= 3, kinds


def test_the_kill_points_add_up():
    rng = np.random.default_rng(0)
    plans = {"finetune": finetune_kills(rng, 10.0), "evaluate": evaluate_kills(rng, 10.0, 14, 6),
             "sweep": sweep_kills(rng, 10.0, "a", "b", "checkpoints/c")}
    assert {k: len(v) for k, v in plans.items()} == KILLS and sum(KILLS.values()) >= 21
    events = sum(callable(k.when) for v in plans.values() for k in v)
    assert events >= 18 and sum(k.cold for v in plans.values() for k in v) >= 5
