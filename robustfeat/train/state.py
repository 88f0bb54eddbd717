"""Resumable training state, written without pickle: tensors in safetensors, the rest
in JSON. A state folder is swapped in whole, so a kill never leaves half of one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

STATE_DIR = ".train_state"


def save_state(out: Path, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = out / (STATE_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
    opt = {}
    for i, st in optimizer.state_dict()["state"].items():
        for key, value in st.items():
            opt[f"{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    opt["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws from these
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            opt[f"cuda_rng.{i}"] = state
    save_file(opt, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1) + "\n")
    final, old = out / STATE_DIR, out / (STATE_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)  # a kill while the last one was dropped leaves it
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_state(out: Path) -> None:
    """Put back the newest complete state when a kill fell between :func:`save_state`'s two
    renames (the current state moved to ``.old``, the new one not yet in place), so that
    the rerun resumes from it rather than from the start."""
    final, old = out / STATE_DIR, out / (STATE_DIR + ".old")
    if not final.exists() and (old / "state.json").is_file():
        os.replace(old, final)


def read_meta(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / STATE_DIR / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_state(out: Path, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    from robustfeat.adapters.checkpoint import refuse_pickle

    folder = out / STATE_DIR
    refuse_pickle(folder)  # safetensors and JSON only; a planted pickle is named as one
    saved = load_file(str(folder / "model.safetensors"))
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(saved[name])
    opt = load_file(str(folder / "optimizer.safetensors"))
    torch.set_rng_state(opt.pop("torch_rng"))
    cuda = sorted((k for k in opt if k.startswith("cuda_rng.")), key=lambda k: int(k.split(".")[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([opt[k] for k in cuda][: torch.cuda.device_count()])
    for k in cuda:
        del opt[k]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in opt.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)
    meta = read_meta(out)
    assert meta is not None
    return meta


def clear_state(out: Path) -> None:
    for name in (STATE_DIR, STATE_DIR + ".tmp", STATE_DIR + ".old"):
        shutil.rmtree(out / name, ignore_errors=True)
