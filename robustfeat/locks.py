"""Inter-process locks on files, so that two robustfeat processes never write the same
cache entry or output folder at once.

A lock is a file held with ``flock`` and removed by its holder on release, together with
any folder it had to create for it, so that nothing is left behind: a command that is
refused, or one that finishes, leaves no ``.lock`` file and no empty folder (a folder made
for a lock is removed by the process that made it, when nothing else was put in it). Removing a
lock file while others wait on it is safe because a process that wins the ``flock``
checks that the file it holds is still the one at the path, and starts again otherwise."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from robustfeat.errors import RobustfeatError


def _missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str, wait: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed, removed on release).
    ``wait=False`` fails at once with a clear message when another process holds it."""
    path = Path(path)
    created: list[Path] = []
    while True:
        created = _missing_parents(path) or created  # folders this process made for the lock
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            f = open(path, "a+")
        except FileNotFoundError:  # a releasing holder removed the folder it had made: make it again
            continue
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            _remove_empty(created)
            raise RobustfeatError(f"{what} is being written by another robustfeat process; wait for it "
                                  "to finish or choose another output") from None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the holder before us removed it on release: lock the file now at the path
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a lock created, deepest first, where nothing else was put in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (the command wrote its output there) or already gone
            break
