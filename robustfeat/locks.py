"""Inter-process locks on files, so that two robustfeat processes never write the same
cache entry or output folder at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from robustfeat.errors import RobustfeatError


@contextlib.contextmanager
def locked(path: str | os.PathLike, what: str, wait: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed). ``wait=False`` fails at once
    with a clear message when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RobustfeatError(f"{what} is being written by another robustfeat process; wait for it "
                                  "to finish or choose another output") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
