"""PIL's 8-bit arithmetic in torch, bit for bit: what pixelate and JPEG need.

The reference runs pixelate and JPEG on uint8 images through PIL and libjpeg. Both are
reproduced exactly: the input is rounded to 8 bits (``to_levels``), pixelate's BOX downscale
follows PIL's windows and fixed-point rounding, and its NEAREST upscale PIL's source index.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def to_levels(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round [0, 1] images to integer levels 0..255 of ``dtype`` in x's own layout. Via int16:
    float -> uint8 is an unvectorised conversion in torch, float -> int16 -> uint8 is not."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.int16).to(dtype)


@functools.lru_cache(maxsize=64)
def box_windows(n_in: int, n_out: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """First input index and pixel count of each output's window in PIL's BOX downscaling
    (``precompute_coeffs`` in Resample.c): output j's filter centre is (j + 0.5) * scale and
    input i is in its window when -0.5 < (i - centre + 0.5) / scale <= 0.5, computed in
    double in PIL's order. Windows can skip an input whose centre lies on a box edge."""
    scale = n_in / n_out
    ss, support = 1.0 / scale, 0.5 * scale
    first, count = [], []
    for j in range(n_out):
        centre = (j + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        inside = [i for i in range(lo, hi) if -0.5 < (i - centre + 0.5) * ss <= 0.5]
        first.append(inside[0])
        count.append(len(inside))
    return tuple(first), tuple(count)


@functools.lru_cache(maxsize=64)
def _box_plan(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, kk): the output window of each input (n_out for none), and PIL's fixed-point
    weights round(2^22 / count) per output."""
    first, count = box_windows(n_in, n_out)
    owner = torch.full((n_in,), n_out, dtype=torch.long)
    for j, (lo, n) in enumerate(zip(first, count)):
        owner[lo:lo + n] = j
    kk = (torch.tensor(count, dtype=torch.float64).reciprocal() * (1 << 22) + 0.5).floor().int()
    return owner, kk


def box_downscale(levels: torch.Tensor, dim: int, n_out: int) -> torch.Tensor:
    """One pass of PIL's 8-bit BOX resize along ``dim`` of int16 ``levels`` (0..255):
    window sums, then PIL's rounding (sum * kk + 2^21) >> 22, back to int16."""
    owner, kk = _box_plan(levels.shape[dim], n_out)
    shape = list(levels.shape)
    shape[dim] = n_out + 1  # a spare slot for inputs in no window
    sums = torch.zeros(shape, dtype=torch.int16, device=levels.device)
    sums = sums.index_add_(dim, owner.to(levels.device), levels).narrow(dim, 0, n_out)
    kk = kk.to(levels.device).view([-1] + [1] * (levels.ndim - dim - 1))
    return sums.to(torch.int32).mul_(kk).add_(1 << 21).bitwise_right_shift_(22).to(torch.int16)


@functools.lru_cache(maxsize=64)
def nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output in PIL's NEAREST resize (``ImagingScaleAffine``): the
    position starts at scale / 2 and adds scale per output, in double, truncated."""
    scale, pos, out = n_in / n_out, n_in / n_out * 0.5, []
    for _ in range(n_out):
        out.append(min(int(pos), n_in - 1))
        pos += scale
    return torch.tensor(out)


@functools.lru_cache(maxsize=64)
def _torch_nearest_is_pils(n_in: int, n_out: int) -> bool:
    """Whether torch's nearest-exact upsampling picks PIL's source pixels for this size
    (it computes the index in float32; at some sizes a tie rounds the other way)."""
    probe = torch.arange(n_in, dtype=torch.float64).view(1, 1, n_in, 1)
    picked = F.interpolate(probe, size=(n_out, 1), mode="nearest-exact").view(-1).long()
    return torch.equal(picked, nearest_index(n_in, n_out))


def nearest_upscale(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's NEAREST resize of (N, C, p, q) to (N, C, h, w)."""
    p, q = x.shape[-2:]
    if _torch_nearest_is_pils(p, h) and _torch_nearest_is_pils(q, w):
        return F.interpolate(x, size=(h, w), mode="nearest-exact")
    cols = x.index_select(3, nearest_index(q, w).to(x.device))
    return cols.index_select(2, nearest_index(p, h).to(x.device))
