"""ImageNet-C corruptions as batched torch functions on [0, 1] images.

Every corruption takes ``x`` of shape (N, 3, H, W) in [0, 1] (greyscale is expanded to
three channels first, as the reference implementation does), a severity 1..5 and a
``torch.Generator`` for the random ones, and returns a tensor of the same shape in [0, 1].
They run on whatever device ``x`` is on. Severity constants are the published ImageNet-C
ones (as in ``imagecorruptions``); the tests compare each against that reference.

Corruptions implemented so far: the noises (gaussian, shot, impulse, speckle), gaussian
blur, brightness, contrast, saturate and pixelate. The rest of the 15 + 4 follow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustfeat.errors import RobustfeatError
from robustfeat.registry import CORRUPTIONS

Fn = Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str  # noise | blur | weather | digital
    random: bool  # draws random numbers (needs a seed to be deterministic)
    fn: Fn


def register(name: str, family: str, random: bool = False) -> Callable[[Fn], Fn]:
    def deco(fn: Fn) -> Fn:
        CORRUPTIONS.register(name)(Corruption(name, family, random, fn))
        return fn

    return deco


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int | None = 0) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a batch (N, C, H, W) in [0, 1]."""
    spec = CORRUPTIONS.get(name)
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise RobustfeatError(f"severity must be an integer from 1 to 5, got {severity!r}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise RobustfeatError(f"images must be a (N, 1 or 3, H, W) tensor, got {shape}")
    if min(x.shape[-2:]) < 32:
        raise RobustfeatError(f"corruptions need images of at least 32x32 px, got {x.shape[-2]}x{x.shape[-1]}")
    if not x.is_floating_point():
        raise RobustfeatError(f"images must be floating point in [0, 1], got {x.dtype}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    g = None
    if spec.random:
        g = torch.Generator(device=x.device)
        g.manual_seed(0 if seed is None else seed)
    return spec.fn(x.float(), severity, g).clamp_(0.0, 1.0).to(x.dtype)


# --- noise ----------------------------------------------------------------------------------
@register("gaussian_noise", "noise", random=True)
def gaussian_noise(x, severity, g):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return x + torch.randn(x.shape, generator=g, device=x.device) * c


@register("shot_noise", "noise", random=True)
def shot_noise(x, severity, g):
    c = [60, 25, 12, 5, 3][severity - 1]
    return torch.poisson(x * c, generator=g) / c


@register("impulse_noise", "noise", random=True)
def impulse_noise(x, severity, g):
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    u = torch.rand(x.shape, generator=g, device=x.device)
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    hit = u < amount  # each value independently, half salt (1) and half pepper (0)
    return torch.where(hit, salt.to(x.dtype), x)


@register("speckle_noise", "noise", random=True)
def speckle_noise(x, severity, g):
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    return x + x * torch.randn(x.shape, generator=g, device=x.device) * c


# --- blur -----------------------------------------------------------------------------------
def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with edge replication (scipy's mode='nearest')."""
    k = _gaussian_kernel(sigma, x.device)
    r = (len(k) - 1) // 2
    c = x.shape[1]
    x = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@register("gaussian_blur", "blur")
def gaussian_blur(x, severity, g):
    return gaussian_filter(x, [1, 2, 3, 4, 6][severity - 1])


# --- digital --------------------------------------------------------------------------------
@register("contrast", "digital")
def contrast(x, severity, g):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * c + means


def _with_value(x: torch.Tensor, new_v: torch.Tensor) -> torch.Tensor:
    """RGB with the HSV value channel replaced, hue and saturation kept: every channel
    scales with V; black pixels (V = 0, no hue) become grey."""
    v = x.amax(dim=1, keepdim=True)
    scaled = x * (new_v / v.clamp(min=1e-12))
    return torch.where(v > 0, scaled, new_v.expand_as(x))


@register("brightness", "weather")
def brightness(x, severity, g):
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    v = x.amax(dim=1, keepdim=True)
    return _with_value(x, (v + c).clamp(0, 1))


@register("saturate", "digital")
def saturate(x, severity, g):
    a, b = [(0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2)][severity - 1]
    v = x.amax(dim=1, keepdim=True)
    mn = x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, (v - mn) / v.clamp(min=1e-12), torch.zeros_like(v))
    s_new = (s * a + b).clamp(0, 1)
    # In HSV each channel is V - V*S*k(H): scaling S scales every channel's distance to V.
    coloured = v - (v - x) * (s_new / s.clamp(min=1e-12))
    # Grey pixels have hue 0 (red) in the reference: (V, V(1-S'), V(1-S')).
    red = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], dim=1)
    return torch.where(s > 0, coloured, red)


def _box_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    return _box_matrix_cpu(n_in, n_out).to(device)


@functools.lru_cache(maxsize=64)
def _box_matrix_cpu(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of PIL's BOX downscaling: output pixel j averages the input
    pixels whose centres fall in its box [(j + 0.5) s - s/2, (j + 0.5) s + s/2), s = n_in / n_out
    (whole pixels, not fractional coverage; the same bounds arithmetic as PIL)."""
    scale = n_in / n_out
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for j in range(n_out):
        center = (j + 0.5) * scale
        lo = max(int(center - 0.5 * scale + 0.5), 0)
        hi = min(int(center + 0.5 * scale + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - center + 0.5) / scale
            if -0.5 <= t < 0.5:
                w[j, i] = 1.0
    return (w / w.sum(1, keepdim=True)).float()


@register("pixelate", "digital")
def pixelate(x, severity, g):
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    h, w = x.shape[-2:]
    small_h, small_w = int(h * c), int(w * c)
    rows, cols = _box_matrix(h, small_h, x.device), _box_matrix(w, small_w, x.device)
    small = torch.einsum("ph,nchw,qw->ncpq", rows, x, cols)
    small = (small * 255).round() / 255  # the reference stores the small image as 8-bit
    return F.interpolate(small, size=(h, w), mode="nearest-exact")


def names(family: str | None = None) -> list[str]:
    return [n for n, c in CORRUPTIONS.items() if family is None or c.family == family]


