"""The identity of a base model: a fingerprint of its weights and a weight-independent
description of its structure. Checkpoints record both; injection takes them before the
layers are wrapped; loading compares them."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the parameter or module path ``name`` is one of ``prefixes`` or inside one."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def fingerprint(model: nn.Module, exclude: tuple[str, ...] = ()) -> str:
    """SHA-256 of the model's parameters and persistent buffers (names under ``exclude``
    left out), in name order. Two models share it iff they hold the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(_base_tensors(model).items()):
        if under(name, exclude):
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        data = t.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            h.update(data.view(torch.uint8).numpy().data)
    return h.hexdigest()


def structure(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Weight-independent facts of the base: a hash of names and shapes, and the dtypes, so
    that a refused base can be told apart as another architecture or another dtype."""
    h = hashlib.sha256()
    dtypes = set()
    for name, t in sorted(_base_tensors(model).items()):
        if under(name, exclude):
            continue
        h.update(f"{name}|{tuple(t.shape)}\n".encode())
        dtypes.add(str(t.dtype).replace("torch.", ""))
    return {"shapes": h.hexdigest()[:16], "dtypes": sorted(dtypes)}


def _base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    persistent = set(model.state_dict(keep_vars=True))
    out = dict(model.named_parameters())
    out.update({n: b for n, b in model.named_buffers() if n in persistent and b is not None})
    return out
