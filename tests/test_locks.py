"""Locks: exclusive between processes, removed with the folders they created when released
(so nothing is left behind), and still exclusive while waiters race the removal."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from robustfeat.errors import RobustfeatError
from robustfeat.locks import locked


def _count(path: str, rounds: int) -> None:
    counter = Path(path) / "counter"
    for _ in range(rounds):
        with locked(Path(path) / "x.lock", "the counter", wait=True):
            n = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(n + 1))  # a lost update shows as a short count


def test_lock_is_exclusive_across_processes_and_leaves_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_count, args=(str(tmp_path), 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert (tmp_path / "counter").read_text() == "160"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["counter"]  # no lock file left


def test_a_held_lock_refuses_at_once_and_the_refusal_leaves_nothing(tmp_path):
    lock = tmp_path / "a" / "b" / ".run.lock"
    with locked(tmp_path / "a" / ".other.lock", "x", wait=False):
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            # a held lock seen from another process: refused, and the 'b' folder it made is gone again
            assert pool.apply(_try, (str(tmp_path / "a" / ".other.lock"),)) == "refused"
            assert pool.apply(_try, (str(lock),)) == "took it"
    assert not (tmp_path / "a").exists()


def _try(path: str) -> str:
    try:
        with locked(path, "the thing", wait=False):
            return "took it"
    except RobustfeatError as e:
        assert "being written by another robustfeat process" in str(e)
        return "refused"


def test_an_existing_folder_is_kept(tmp_path):
    (tmp_path / "keep").mkdir()
    with locked(tmp_path / "keep" / ".x.lock", "x", wait=False):
        assert (tmp_path / "keep" / ".x.lock").exists()
    assert (tmp_path / "keep").is_dir() and not any((tmp_path / "keep").iterdir())


def test_an_error_inside_still_releases(tmp_path):
    with pytest.raises(ValueError):
        with locked(tmp_path / "n" / ".x.lock", "x", wait=False):
            raise ValueError("boom")
    assert not (tmp_path / "n").exists()
    with locked(tmp_path / "n" / ".x.lock", "x", wait=False):  # free again
        pass
