"""Corrupted inputs are generated once per (data, corruption, severity, seed) and cached,
not regenerated for every checkpoint that is evaluated on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustfeat.data.cache import cache_root
from robustfeat.errors import RobustfeatError
from robustfeat.locks import locked
from robustfeat.shifts.corruptions import CORRUPTIONS_VERSION, corrupt
from robustfeat.shifts.eight_bit import to_levels


def corrupted_images(images: np.ndarray, name: str, severity: int, *, key: str, seed: int = 0,
                     batch_size: int = 64, device: str | torch.device = "cpu", use_cache: bool = True) -> np.ndarray:
    """``images`` (N, H, W) or (N, H, W, 3) uint8, corrupted -> (N, H, W, 3) uint8.

    ``key`` identifies the images (a dataset fingerprint). The result depends on the seed
    and on how images are grouped into batches (random draws are per batch), so both are
    part of the cache file's name; the same call always gives the same bytes.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise RobustfeatError(f"images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}")
    if not key or not isinstance(key, str):
        raise RobustfeatError("corrupted_images needs a key naming the images (e.g. the dataset fingerprint)")
    n, h, w = images.shape[:3]
    # the code version and the device kind are in the name too: random streams differ by device
    device_kind = torch.device(device).type
    path = (cache_root() / "corrupted" / key[:24]
            / f"{name}-v{CORRUPTIONS_VERSION}-s{severity}-seed{seed}-b{batch_size}-{device_kind}-{n}x{h}x{w}.npz")
    if not use_cache:
        return _generate(images, name, severity, seed, batch_size, device)
    with locked(path.with_suffix(".lock"), f"the corrupted-set cache {path.name}", wait=True):
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    cached = data["images"]
                if cached.shape == (n, h, w, 3):
                    return cached
            except (OSError, ValueError, KeyError):
                pass  # damaged: generate again
        out = _generate(images, name, severity, seed, batch_size, device)
        _save(path, out)
        return out


def _generate(images: np.ndarray, name: str, severity: int, seed: int, batch_size: int, device) -> np.ndarray:
    out = []
    for b, start in enumerate(range(0, len(images), batch_size)):
        part = torch.from_numpy(images[start:start + batch_size]).to(device)
        x = part.unsqueeze(1) if part.ndim == 3 else part.permute(0, 3, 1, 2)
        y = corrupt(x.float() / 255, name, severity, seed=seed * 1_000_003 + b)
        out.append(to_levels(y, torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.ascontiguousarray(np.concatenate(out))  # the same layout as a set read back from the cache


def _save(path: Path, images: np.ndarray) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images)
    os.replace(tmp, path)  # a reader never sees half a file
