"""Where prepared data lives: a user cache directory, one folder per dataset version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """``$ROBUSTFEAT_CACHE``, else ``$XDG_CACHE_HOME/robustfeat``, else ``~/.cache/robustfeat``."""
    env = os.environ.get("ROBUSTFEAT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "robustfeat"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
