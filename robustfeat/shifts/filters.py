"""Separable and FFT filters for the blur corruptions, with scipy.ndimage's border modes.

Short 1-D kernels are a sum of shifted slices and long ones a banded matmul, both far faster
on CPU than a depthwise convolution; dense 2-D kernels (the defocus disk) go through FFTs of
5-smooth sizes.
"""

from __future__ import annotations

import functools

import torch


def _border_index(n: int, r: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source index of each of the n + 2r padded positions under scipy's border ``mode``:
    'nearest' (a a | a b c | c c) or 'reflect' (b a | a b c | c b)."""
    idx = torch.arange(-r, n + r, device=device)
    if mode == "nearest":
        return idx.clamp(0, n - 1)
    idx = idx % (2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


@functools.lru_cache(maxsize=64)
def _filter_matrix(n: int, kernel: tuple[float, ...], mode: str) -> torch.Tensor:
    """(n, n) matrix M with ``x @ M`` = the 1-D correlation of x's last axis with ``kernel``."""
    r = (len(kernel) - 1) // 2
    src = _border_index(n, r, mode, torch.device("cpu")).unfold(0, len(kernel), 1)  # (n, taps)
    dst = torch.arange(n).view(-1, 1).expand_as(src)
    k = torch.tensor(kernel, dtype=torch.float64).expand_as(src)
    m = torch.zeros(n, n, dtype=torch.float64).index_put_((src.reshape(-1), dst.reshape(-1)), k.reshape(-1), accumulate=True)
    return m.float()


def _pad(x: torch.Tensor, dim: int, r: int, mode: str) -> torch.Tensor:
    """x padded by r on both sides of ``dim`` under scipy's border ``mode``. Concatenated
    edge slices: an index_select along the last axis is 15x slower on CPU."""
    n = x.shape[dim]
    if r == 0:
        return x
    if r > n:  # reflect wraps around more than once
        return x.index_select(dim, _border_index(n, r, mode, x.device))
    if mode == "nearest":
        shape = list(x.shape)
        shape[dim] = r
        left, right = x.narrow(dim, 0, 1).expand(shape), x.narrow(dim, n - 1, 1).expand(shape)
    else:
        left, right = x.narrow(dim, 0, r).flip(dim), x.narrow(dim, n - r, r).flip(dim)
    return torch.cat([left, x, right], dim=dim)


def filter1d(x: torch.Tensor, kernel: torch.Tensor, dim: int, mode: str = "nearest") -> torch.Tensor:
    """Correlate ``x`` with an odd 1-D ``kernel`` along ``dim`` (-1 or -2), scipy border
    ``mode``. Short kernels: a sum of shifted slices; long ones: one banded matmul (both
    far faster on CPU than a depthwise convolution)."""
    n, taps = x.shape[dim], len(kernel)
    if taps > 17:
        m = _filter_matrix(n, tuple(kernel.tolist()), mode).to(x.device)
        return x @ m if dim == -1 else m.t() @ x
    r = (taps - 1) // 2
    xp = _pad(x, dim, r, mode)
    weights = kernel.tolist()
    out = xp.narrow(dim, 0, n) * weights[0]
    for i in range(1, taps):
        out.add_(xp.narrow(dim, i, n), alpha=weights[i])
    return out


def gaussian_kernel(sigma: float, truncate: float = 4.0, device: torch.device | None = None) -> torch.Tensor:
    """scipy.ndimage's sampled Gaussian: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(x: torch.Tensor, sigma: float | tuple[float, float], truncate: float = 4.0,
                    mode: str = "nearest") -> torch.Tensor:
    """Separable Gaussian blur as scipy.ndimage.gaussian_filter on the last two axes
    (``sigma`` one value or (sigma_y, sigma_x); default border 'nearest', edge replication)."""
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    x = filter1d(x, gaussian_kernel(sx, truncate, x.device), -1, mode)
    return filter1d(x, gaussian_kernel(sy, truncate, x.device), -2, mode)


def fft_filter(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Circular correlation of every channel with the odd-sized kernel ``k``, by FFT (a
    17x17 or 21x21 dense kernel is several times faster this way than as a convolution).
    Callers pad first and crop the border, so the wrap-around never reaches the result."""
    h, w = x.shape[-2:]
    fh, fw = fft_size(h), fft_size(w)  # zeros past the end: read only by the cropped border
    kh, kw = k.shape
    kern = torch.zeros(fh, fw, device=x.device, dtype=torch.float32)
    kern[:kh, :kw] = k
    kern = torch.roll(kern, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))  # centre at the origin
    # correlation = convolution with the flipped kernel; the disk is symmetric, so either
    spec = torch.fft.rfft2(x.float(), s=(fh, fw)) * torch.fft.rfft2(kern)
    return torch.fft.irfft2(spec, s=(fh, fw))[..., :h, :w]


@functools.lru_cache(maxsize=256)
def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: FFTs of such sizes are several times faster than of
    sizes with a large prime factor (244 = 4 x 61)."""
    best = 1 << (n - 1).bit_length()
    p2 = 1
    while p2 < 2 * n:
        p3 = p2
        while p3 < 2 * n:
            p5 = p3
            while p5 < n:
                p5 *= 5
            best = min(best, p5)
            p3 *= 3
        p2 *= 2
    return best
