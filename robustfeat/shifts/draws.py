"""Random draws for the corruptions, and the threads they (and libjpeg) run on.

torch's CPU generator is one sequential stream, and its draws dominate the noise
corruptions. Large CPU draws are split into ``RNG_CHUNKS`` parts, each with its own generator
seeded from the caller's, and filled on threads (torch releases the GIL). The split is fixed,
so the numbers never depend on the thread count. ``poisson_8bit`` samples 8-bit shot noise
from inverse-CDF tables.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch


# --- work on threads ------------------------------------------------------------------------
# Some steps are sequential inside torch (a CPU generator is one stream; libjpeg codes one
# image at a time) but release the GIL, so independent parts of them run on threads, as many
# as torch's own thread count. What is split, and how, never depends on that count.
_pools: dict[int, ThreadPoolExecutor] = {}


def parallel_map(fn: Callable[[list], list], items: list) -> list:
    """``fn`` (a list of items to the list of their results) applied to interleaved groups
    of ``items``, one group per thread; the results in the order of ``items``."""
    workers = min(torch.get_num_threads(), len(items), 8)
    if workers <= 1:
        return fn(items)
    pid = os.getpid()  # a forked child must not reuse its parent's (threadless) pool
    if pid not in _pools:
        _pools.clear()
        _pools[pid] = ThreadPoolExecutor(8, thread_name_prefix="robustfeat-corrupt")
    out: list = [None] * len(items)
    for i, results in enumerate(_pools[pid].map(fn, [items[i::workers] for i in range(workers)])):
        out[i::workers] = results
    return out


# --- random draws ---------------------------------------------------------------------------
# torch's CPU generator is one sequential stream, and the draws dominate the noise
# corruptions. Large CPU draws are split into RNG_CHUNKS parts, each with its own generator
# seeded from ``g``, filled on threads. The chunking is fixed, so the numbers do not depend
# on the number of threads.
RNG_CHUNKS = 4
_PARALLEL_DRAW = 1 << 16  # fewer values than this: one stream


def _draw(shape, g: torch.Generator | None, device: torch.device, normal: bool) -> torch.Tensor:
    numel = math.prod(shape)
    if torch.device(device).type != "cpu" or numel < _PARALLEL_DRAW:
        return (torch.randn if normal else torch.rand)(shape, generator=g, device=device)
    seeds = torch.randint(0, 2**62, (RNG_CHUNKS,), generator=g).tolist()
    out = torch.empty(shape)
    flat = out.view(-1)
    bounds = [numel * i // RNG_CHUNKS for i in range(RNG_CHUNKS + 1)]

    def fill(chunks: list[int]) -> list[None]:
        for i in chunks:
            gi = torch.Generator()
            gi.manual_seed(seeds[i])
            part = flat[bounds[i]:bounds[i + 1]]
            part.normal_(generator=gi) if normal else part.uniform_(generator=gi)
        return [None] * len(chunks)

    parallel_map(fill, list(range(RNG_CHUNKS)))
    return out


def rand(shape, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) float32 values, deterministic for ``g``'s state."""
    return _draw(tuple(shape), g, device, normal=False)


def randn(shape, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal float32 values, deterministic for ``g``'s state."""
    return _draw(tuple(shape), g, device, normal=True)


POISSON_GUIDE = 1024


@functools.lru_cache(maxsize=8)
def _poisson_tables(c: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Inverse-CDF tables for the 256 rates c * level / 255.

    ``cdf``: (256, K) float32 CDF rows, the last column forced to 1. ``guide``: (256 *
    POISSON_GUIDE,) int16, for each level and cell j of [0, 1) in POISSON_GUIDE equal cells,
    2 * (the smallest count whose CDF exceeds j / POISSON_GUIDE) + 1 if a CDF step falls
    inside the cell (the answer then needs a check), + 0 if not (the answer is final).
    ``steps``: the most CDF steps inside one cell. The guide (512 KB) stays in cache.
    """
    lam = torch.arange(256, dtype=torch.float64).view(-1, 1) * c / 255
    kmax = int(c + 12 * math.sqrt(c) + 30)
    k = torch.arange(kmax + 1, dtype=torch.float64).view(1, -1)
    logpmf = k * torch.log(lam.clamp(min=1e-300)) - lam - torch.lgamma(k + 1)
    cdf = torch.where(lam > 0, logpmf.exp(), (k == 0).double()).cumsum(1).float()
    cdf[:, -1] = 1.0  # the mass beyond kmax (< 1e-15) goes to the last count
    cells = torch.arange(POISSON_GUIDE + 1, dtype=torch.float32) / POISSON_GUIDE
    first = torch.searchsorted(cdf, cells.expand(256, -1).contiguous(), right=True)
    start, end = first[:, :-1], first[:, 1:]
    ambiguous = end > start  # the CDF steps past a count inside the cell
    guide = (start * 2 + ambiguous).to(torch.int16).reshape(-1)
    return cdf, guide, int((end - start).max())


def poisson_8bit(levels: torch.Tensor, c: int, g: torch.Generator | None) -> torch.Tensor:
    """Poisson(c * levels / 255) samples for integer-valued float ``levels`` in 0..255 by
    inverse-CDF sampling: one uniform draw per value; a guide table gives the answer
    directly for most draws; the few (1-3%) that land in a cell holding a CDF step step
    up from there (twice at most), and the rare rest search their CDF row. Exact up to the float32 resolution of the
    uniforms; several times faster than torch.poisson on CPU."""
    cdf, guide, steps = _poisson_tables(c)
    u = rand(levels.shape, g, levels.device).view(-1)
    key = u.mul(POISSON_GUIDE).floor_().clamp_(max=POISSON_GUIDE - 1)
    key = key.add_(levels.reshape(-1), alpha=POISSON_GUIDE).int()
    hit = guide.index_select(0, key)
    k = hit.bitwise_right_shift(1)
    idx = hit.bitwise_and_(1).nonzero().squeeze(1)
    if len(idx):
        sub_k = k.index_select(0, idx).int()
        row = key.index_select(0, idx).div_(POISSON_GUIDE, rounding_mode="floor").mul_(cdf.shape[1])
        sub_u = u.index_select(0, idx)
        flat_cdf = cdf.view(-1)
        for _ in range(min(steps, 2)):  # CDF rows increase: once past u, a step adds nothing
            sub_k += flat_cdf.index_select(0, row + sub_k) <= sub_u
        if steps > 2:  # cells with more steps (the far tail, u near 1): a search per value
            left = (flat_cdf.index_select(0, row + sub_k.clamp(max=cdf.shape[1] - 1)) <= sub_u).nonzero().squeeze(1)
            if len(left):
                rows = cdf.index_select(0, row.index_select(0, left) // cdf.shape[1])
                found = torch.searchsorted(rows, sub_u.index_select(0, left)[:, None], right=True)[:, 0]
                sub_k.index_copy_(0, left, found.int().clamp_(max=cdf.shape[1] - 1))
        k.index_copy_(0, idx, sub_k.to(k.dtype))
    return k.view(levels.shape).float()
