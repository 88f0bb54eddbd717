"""Finished work is keyed by what it computes: a trial by its configuration, the training
code's version and (when it evaluates) the evaluation code's and banks' version. A change
elsewhere in the package (the report, the CLI), or to a docstring or comment, reuses every
finished trial; a change to the training code reruns the fine-tunes, one to the bank or
an evaluation reruns the evaluations but keeps the checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from robustfeat.sweep import grid as grid_mod
from robustfeat.sweep import parse_grid, sweep
from tests.test_sweep import TINY

SMALL = {**TINY, "methods": ["lora"], "seeds": [0], "hyperparameters": {},
         "evaluate": {"quick": True, "shifts": ["clean", "cka"]}}


@pytest.fixture()
def package(tmp_path, monkeypatch):
    """A copy of the package's sources whose edits decide the code versions of the keys."""
    root = tmp_path / "pkg"
    shutil.copytree(grid_mod.package_root(), root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(grid_mod, "package_root", lambda: root)
    grid_mod._code_version.cache_clear()
    yield root
    grid_mod._code_version.cache_clear()


def edit(root: Path, rel: str, old: str, new: str) -> None:
    p = root / rel
    text = p.read_text()
    assert old in text, (rel, old)
    p.write_text(text.replace(old, new, 1))
    grid_mod._code_version.cache_clear()


def bump_text_bank(root: Path) -> None:
    """The text bank's version, one up (what a change to what its cells compute does)."""
    import re

    p = root / "evaluations/banks.py"
    text = p.read_text()
    new, n = re.subn(r'name="text", version=(\d+)', lambda m: f'name="text", version={int(m[1]) + 1}', text)
    assert n == 1
    p.write_text(new)
    grid_mod._code_version.cache_clear()


def keys() -> tuple[str, str]:
    t = parse_grid(SMALL).trials[0]
    return t.train_key, t.key


def test_docstrings_comments_and_other_modules_do_not_count(package):
    train, trial = keys()
    edit(package, "train/loop.py", '"""', '"""A docstring changed. ')  # the module docstring
    edit(package, "train/loop.py", "\nimport ", "\n# a comment\nimport ")
    edit(package, "report/render.py", "\nimport ", "\nimport os as _changed_import\nimport ")
    edit(package, "cli.py", "def main(", "def _added():\n    return 1\n\n\ndef main(")
    assert keys() == (train, trial)


def test_training_code_changes_every_key(package):
    train, trial = keys()
    edit(package, "adapters/lora.py", "scale_identity = ", "scale_identity_changed = 1\n    scale_identity = ")
    t2, k2 = keys()
    assert t2 != train and k2 != trial


def test_evaluation_code_or_bank_changes_the_trial_not_the_fine_tune(package):
    train, trial = keys()
    bump_text_bank(package)
    t2, k2 = keys()
    assert t2 == train and k2 != trial
    edit(package, "metrics/intervals.py", "FEW_SEEDS = 3", "FEW_SEEDS = 4")
    assert keys()[1] not in (trial, k2)
    edit(package, "evaluations/ood_pairs.yaml", "\n", "\n# another pair list\n")  # data beside the code counts too
    assert keys()[0] == train


def test_a_fine_tune_only_trial_is_not_keyed_by_the_bank(package):
    t = parse_grid(SMALL).trials[0]
    bare = type(t)(t.train, None, t.varied)
    before = bare.key
    bump_text_bank(package)
    assert bare.key == before and bare.train_key == t.train_key


def test_a_rerun_reuses_or_recomputes_what_each_change_touches(package, tmp_path):
    g = tmp_path / "grid.yaml"
    g.write_text(json.dumps(SMALL))
    out = tmp_path / "sweep"
    first = sweep(g, out, progress=False, report=False)
    assert first["ran"] == 1
    ckpt = Path(first["records"][0]["checkpoint"])
    stamp = (ckpt / "robustfeat.json").read_bytes()

    edit(package, "report/render.py", "\nimport ", "\nimport os as _changed_import\nimport ")
    assert sweep(g, out, progress=False, report=False)["ran"] == 0  # an unrelated change: all reused

    bump_text_bank(package)
    again = sweep(g, out, progress=False, report=False)
    assert again["ran"] == 1  # the evaluation again ...
    assert Path(again["records"][0]["checkpoint"]) == ckpt and (ckpt / "robustfeat.json").read_bytes() == stamp

    edit(package, "train/loop.py", "\ndef ", "\nTRAINING_CHANGED = 1\n\n\ndef ")
    last = sweep(g, out, progress=False, report=False)
    assert last["ran"] == 1 and Path(last["records"][0]["checkpoint"]) != ckpt  # ... and a new fine-tune
    assert json.loads((Path(last["records"][0]["checkpoint"]) / "robustfeat.json").read_text())["steps"] > 0
