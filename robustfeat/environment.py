"""Facts about where robustfeat runs, recorded with every run and results folder: the
device to use, the git revision of the code, and the versions of the libraries."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from robustfeat.errors import DeviceError


def pick_device(device: str | None):
    """``cpu``, ``cuda`` or ``cuda:N`` as a torch device; ``None``/``auto``: a GPU when present.
    A device this machine does not have is one clear error."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {device!r} ({e}); use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device} was asked for, but no CUDA GPU is available here; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"there is no {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def git_revision() -> str:
    """The commit of the robustfeat source tree (``+dirty`` with uncommitted changes), or
    ``unknown`` outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def library_versions() -> dict[str, str]:
    """robustfeat, Python, torch, and transformers / peft / safetensors where installed."""
    import torch

    from robustfeat import __version__

    out = {"robustfeat": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for lib in ("transformers", "peft", "safetensors"):
        try:
            out[lib] = __import__(lib).__version__
        except ImportError:
            pass
    return out
