"""ImageNet-C corruptions as batched torch functions on [0, 1] images.

Every corruption takes ``x`` of shape (N, 3, H, W) in [0, 1] (greyscale is expanded to
three channels first, as the reference implementation does), a severity 1..5 and a
``torch.Generator`` for the random ones, and returns a tensor of the same shape in [0, 1].
They run on whatever device ``x`` is on. Severity constants are the published ImageNet-C
ones (as in ``imagecorruptions``); the tests compare each against that reference.

All 19: gaussian, shot, impulse and speckle noise; defocus, glass, motion, zoom and gaussian
blur; snow, frost, fog, brightness and spatter; contrast, elastic transform, pixelate, JPEG
and saturate.

The building blocks live next door: ``filters`` (separable and FFT filters with scipy's
border modes), ``draws`` (seeded random draws on threads, 8-bit Poisson sampling) and
``eight_bit`` (PIL's 8-bit resize arithmetic for pixelate); spatter is in ``spatter``.

On CPU, ``corrupt`` works through a large batch in chunks of about 16 images at 224 px
(cache-sized), drawing from one generator in order, and large random draws are split into
a fixed number of independently seeded parts filled on several threads. Both are fixed by
the image size, not by the machine, so a seed gives the same images everywhere on CPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustfeat.errors import RobustfeatError
from robustfeat.registry import CORRUPTIONS
from robustfeat.shifts.draws import parallel_map, poisson_8bit, rand, randn
from robustfeat.shifts.eight_bit import box_downscale, nearest_upscale, to_levels
from robustfeat.shifts.filters import fft_filter, fft_size, gaussian_filter

# Bumped whenever a corruption's output changes, so cached corrupted sets are regenerated.
CORRUPTIONS_VERSION = 4

Fn = Callable[[torch.Tensor, int, torch.Generator | None], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    name: str
    family: str  # noise | blur | weather | digital
    random: bool  # draws random numbers (needs a seed to be deterministic)
    fn: Fn
    # works on the 8-bit image, like the reference's PIL and libjpeg calls: reads x in any
    # layout and returns 8-bit levels / 255, already within [0, 1]
    eight_bit: bool = False


def register(name: str, family: str, random: bool = False, eight_bit: bool = False) -> Callable[[Fn], Fn]:
    def deco(fn: Fn) -> Fn:
        CORRUPTIONS.register(name)(Corruption(name, family, random, fn, eight_bit))
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
    if x.shape[0] == 0:  # an empty batch: nothing to corrupt
        return x.clone()
    g = None
    if spec.random:
        g = torch.Generator(device=x.device)
        g.manual_seed(0 if seed is None else seed)
    # one chunk after another, drawing from the same generator: on CPU a chunk that stays in
    # cache runs faster than one pass over a large batch (the 8-bit ones, already compact,
    # only pay for the concatenation)
    chunked = x.device.type == "cpu" and not spec.eight_bit
    step = max(1, CHUNK_VALUES // x[0].numel()) if chunked else x.shape[0]
    parts = [_apply(spec, x[i:i + step], severity, g) for i in range(0, x.shape[0], step)]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(x.dtype)


# Images per chunk on CPU: this many values (16 images of 3 x 224 x 224, 9.6 MB in float32).
# Measured on 32 images at 224 px: 16 per chunk gave 1.15x the throughput of one pass, 8 no more.
CHUNK_VALUES = 16 * 3 * 224 * 224


def _apply(spec: Corruption, x: torch.Tensor, severity: int, g: torch.Generator | None) -> torch.Tensor:
    if spec.eight_bit:
        return spec.fn(x.float(), severity, g)
    # NCHW-contiguous first: a channels-last view (as permuted from HWC images) sends resizing
    # and colour operations down paths 2-3x slower
    return spec.fn(x.float().contiguous(), severity, g).clamp_(0.0, 1.0)


# --- noise ----------------------------------------------------------------------------------
@register("gaussian_noise", "noise", random=True)
def gaussian_noise(x, severity, g):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return torch.add(x, randn(x.shape, g, x.device), alpha=c)


@register("shot_noise", "noise", random=True)
def shot_noise(x, severity, g):
    c = [60, 25, 12, 5, 3][severity - 1]
    levels = (x * 255).round_()
    # 8-bit images (k / 255 exactly, as made from uint8) take the fast exact table sampler
    if x.device.type == "cpu" and torch.equal(levels / 255, x):
        return poisson_8bit(levels, c, g) / c
    return torch.poisson(x * c, generator=g) / c


@register("impulse_noise", "noise", random=True)
def impulse_noise(x, severity, g):
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    # each value independently: hit with probability `amount`, then salt (1) or pepper (0)
    # with probability 1/2; one uniform draw decides both (u < amount/2: salt)
    u = rand(x.shape, g, x.device)
    salt_or_pepper = (u < amount / 2).to(x.dtype)
    return torch.where(u < amount, salt_or_pepper, x)


@register("speckle_noise", "noise", random=True)
def speckle_noise(x, severity, g):
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    return randn(x.shape, g, x.device).mul_(x).mul_(c).add_(x)  # x + x * noise * c


# --- blur -----------------------------------------------------------------------------------
GLASS_VARIANTS = 16


def glass_scan(h: int, w: int, delta: int, iterations: int,
               draw: Callable[[int], list[tuple[int, int]]]) -> np.ndarray:
    """The (h*w,) source indices of ImageNet-C's glass-blur scan: from the bottom-right
    corner backwards, row by row, each interior pixel takes the value of the pixel
    (dx, dy) away, with (dx, dy) in [-delta, delta) from ``draw(n)``, which gives the n
    offsets of one row in scan order. The scan is sequential (a value can be carried
    several steps), so it is simulated on indices."""
    grid = np.arange(h * w).reshape(h, w).tolist()
    for _ in range(iterations):
        for r in range(h - delta, delta, -1):
            draws = draw(w - 2 * delta)
            for k, c in enumerate(range(w - delta, delta, -1)):
                dx, dy = draws[k]
                # The reference "swaps" two (3,)-channel views with a tuple assignment,
                # which copies the neighbour in and leaves it unchanged: reproduced
                # as is, since the published ImageNet-C numbers carry it.
                grid[r][c] = grid[r + dy][c + dx]
    return np.asarray(grid).reshape(-1)


@functools.lru_cache(maxsize=32)
def glass_permutations(h: int, w: int, delta: int, iterations: int) -> torch.Tensor:
    """(GLASS_VARIANTS, h*w) source indices of the glass-blur scan (``glass_scan``), once per
    size and severity; images draw one of the variants."""
    out = []
    for variant in range(GLASS_VARIANTS):
        rng = np.random.default_rng(variant)
        out.append(glass_scan(h, w, delta, iterations,
                              lambda n, rng=rng: rng.integers(-delta, delta, size=(n, 2)).tolist()))
    return torch.from_numpy(np.stack(out))


@register("glass_blur", "blur", random=True)
def glass_blur(x, severity, g):
    """Blur, shuffle pixels locally with the reference's sequential scan, blur again."""
    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = (gaussian_filter(x, sigma) * 255).floor() / 255  # the reference rounds to 8 bits here
    n, c, h, w = x.shape
    perms = glass_permutations(h, w, delta, iterations).to(x.device)
    pick = torch.randint(0, GLASS_VARIANTS, (n,), generator=g, device=x.device)
    idx = perms[pick][:, None, :].expand(n, c, h * w)
    shuffled = x.reshape(n, c, h * w).gather(2, idx).reshape(n, c, h, w)
    return gaussian_filter(shuffled, sigma)


@register("gaussian_blur", "blur")
def gaussian_blur(x, severity, g):
    return gaussian_filter(x, [1, 2, 3, 4, 6][severity - 1])


def _gauss3(sigma: float) -> torch.Tensor:
    """OpenCV's 3-tap Gaussian for a given sigma (used to antialias the defocus disk)."""
    t = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


@functools.lru_cache(maxsize=16)
def disk_kernel(radius: int, alias_blur: float) -> torch.Tensor:
    """The defocus disk of ImageNet-C: a binary disk (on a grid of at least 17x17),
    normalised, then blurred by a small Gaussian (5x5 past radius 8, as the reference)."""
    half = max(8, radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    d = ((xx**2 + yy**2) <= radius**2).double()
    d /= d.sum()
    if radius <= 8:
        k = _gauss3(alias_blur)
    else:  # OpenCV's 5-tap kernel
        t5 = torch.arange(-2.0, 3.0, dtype=torch.float64)
        k = torch.exp(-(t5**2) / (2 * alias_blur**2))
        k = k / k.sum()
    r = (len(k) - 1) // 2
    d = F.pad(d[None, None], (r, r, r, r), mode="reflect")  # OpenCV's default border: reflect-101
    d = F.conv2d(d, k.view(1, 1, 1, -1))
    d = F.conv2d(d, k.view(1, 1, -1, 1))
    return d[0, 0].float()


@register("defocus_blur", "blur")
def defocus_blur(x, severity, g):
    radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    k = disk_kernel(radius, alias).to(x.device)
    r = (k.shape[0] - 1) // 2
    h, w = x.shape[-2:]
    # reflect-padded straight to the FFT size: r on the top and left, the rest (>= r) on
    # the other sides, so the FFT needs no zero-padded copy; only the centre is kept
    fh, fw = fft_size(h + 2 * r), fft_size(w + 2 * r)
    xp = F.pad(x, (r, fw - w - r, r, fh - h - r), mode="reflect")
    return fft_filter(xp, k)[..., r:r + h, r:r + w]


def motion_blur_at(x: torch.Tensor, radius: int, sigma: float, angle: float) -> torch.Tensor:
    """Motion blur along ``angle`` (degrees): a Gaussian-weighted sum of edge-replicated
    shifts, as ImageNet-C does. ``x`` is (N, C, H, W)."""
    width = 2 * radius + 1
    w = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma**2))
    w = (w / w.sum()).tolist()
    # the reference's arithmetic, to the last bit: it decides the rounding at half pixels
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    h, wd = x.shape[-2:]
    pad = width
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    out = torch.zeros_like(x)
    for i in range(width):
        dy = -math.ceil((i * point[0]) / hypot - 0.5)
        dx = -math.ceil((i * point[1]) / hypot - 0.5)
        if abs(dy) >= h or abs(dx) >= wd:
            break  # the motion left the image
        out.add_(xp[..., pad - dy:pad - dy + h, pad - dx:pad - dx + wd], alpha=w[i])
    return out


@register("motion_blur", "blur", random=True)
def motion_blur(x, severity, g):
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    angles = (torch.rand(x.shape[0], generator=g, device=x.device) * 90 - 45).tolist()  # one per image
    return torch.cat([motion_blur_at(x[i:i + 1], radius, sigma, a) for i, a in enumerate(angles)])


@register("zoom_blur", "blur")
def zoom_blur(x, severity, g):
    stops = [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)][severity - 1]
    zooms = np.arange(1, stops[0], stops[1])
    h, w = x.shape[-2:]
    out = x * 2  # the image itself, and its zoom by exactly 1 (an identity)
    for z in zooms[1:]:
        out += clipped_zoom(x, z)[..., :h, :w]
    return out.div_(len(zooms) + 1)


def clipped_zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    """Zoom into the centre by ``z``: crop ceil(size / z), resize linearly (corner to corner,
    as scipy.ndimage.zoom(order=1)) to round(crop * z). May exceed the input size."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / z), math.ceil(w / z)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    return F.interpolate(crop, size=(round(ch * z), round(cw * z)), mode="bilinear", align_corners=True)


def plasma_fractal(n: int, size: int, decay: float, g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` diamond-square height maps of side ``size`` (a power of two) in [0, 1], as
    ImageNet-C's fog draws them (the same steps and wibble schedule), batched."""
    m = torch.zeros(n, size, size, device=device)
    step, wibble = size, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * (rand(a.shape, g, device) * 2 * wibble - wibble)

    while step >= 2:
        half = step // 2
        corners = m[:, 0:size:step, 0:size:step]
        sq = corners + torch.roll(corners, -1, dims=1)
        sq = sq + torch.roll(sq, -1, dims=2)
        m[:, half:size:step, half:size:step] = wibbled(sq)
        dr = m[:, half:size:step, half:size:step]
        ul = m[:, 0:size:step, 0:size:step]
        lt = dr + torch.roll(dr, 1, dims=1) + ul + torch.roll(ul, -1, dims=2)
        m[:, 0:size:step, half:size:step] = wibbled(lt)
        tt = dr + torch.roll(dr, 1, dims=2) + ul + torch.roll(ul, -1, dims=1)
        m[:, half:size:step, 0:size:step] = wibbled(tt)
        step //= 2
        wibble /= decay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


@register("fog", "weather", random=True)
def fog(x, severity, g):
    strength, decay = [(1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    h, w = x.shape[-2:]
    size = 1 << (max(h, w) - 1).bit_length()
    fractal = plasma_fractal(x.shape[0], size, decay, g, x.device)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * fractal) * peak / (peak + strength)


@register("snow", "weather", random=True)
def snow(x, severity, g):
    loc, scale, zoom, threshold, radius, sigma, blend = [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)][severity - 1]
    n, _, h, w = x.shape
    layer = randn((n, 1, h, w), g, x.device) * scale + loc
    layer = clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    angles = (torch.rand(n, generator=g, device=x.device) * 90 - 135).tolist()  # falling: -135..-45 degrees
    layer = torch.cat([motion_blur_at(layer[i:i + 1], radius, sigma, a) for i, a in enumerate(angles)])
    layer = ((layer * 255).round() / 255)[..., :h, :w]
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # OpenCV's RGB2GRAY weights
    x = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


@functools.lru_cache(maxsize=len(FROST_FILES))
def frost_texture(i: int) -> torch.Tensor:
    """ImageNet-C's i-th frost photo as (3, h, w) in [0, 255]. The six photos ship in the PyPI
    package imagecorruptions-imaug (Apache-2.0); they are read from its folder, and the
    package itself is never imported."""
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("imagecorruptions")
    locations = list(spec.submodule_search_locations or []) if spec else []
    folder = Path(locations[0]) / "frost" if locations else None
    if folder is None or not (folder / FROST_FILES[i]).is_file():
        raise RobustfeatError(
            "the frost corruption needs ImageNet-C's frost photos, which ship in the PyPI package "
            "imagecorruptions-imaug: `pip install imagecorruptions-imaug==1.1.5`"
        )
    with Image.open(folder / FROST_FILES[i]) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)  # alpha dropped, as OpenCV's imread does
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


@functools.lru_cache(maxsize=64)
def _frost_for(i: int, h: int, w: int) -> torch.Tensor:
    """The texture scaled (bicubic) so that it covers an h x w image with 10% to spare."""
    tex = frost_texture(i)
    th, tw = tex.shape[-2:]
    scale = max(h / th, w / tw, 1.0) * 1.1
    size = (math.ceil(th * scale), math.ceil(tw * scale))
    return F.interpolate(tex[None], size=size, mode="bicubic", align_corners=False)[0]


@register("frost", "weather", random=True)
def frost(x, severity, g):
    keep, add = [(1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    n, _, h, w = x.shape
    which = torch.randint(0, len(FROST_FILES), (n,), generator=g, device=x.device).tolist()
    out = []
    for i, k in enumerate(which):
        tex = _frost_for(k, h, w).to(x.device)
        top = int(torch.randint(0, tex.shape[-2] - h, (1,), generator=g, device=x.device))
        left = int(torch.randint(0, tex.shape[-1] - w, (1,), generator=g, device=x.device))
        out.append(keep * x[i] + add * tex[:, top:top + h, left:left + w] / 255)
    return torch.stack(out)


def elastic_warp(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` at (row + dy, col + dx) with linear interpolation and half-sample
    symmetric borders (scipy's map_coordinates(order=1, mode='reflect')). dx, dy: (N, H, W)."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None] + dy
    cols = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :] + dx
    # align_corners=False: pixel i sits at (2i + 1) / size - 1, and reflection is about the edges
    grid = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@register("elastic_transform", "digital", random=True)
def elastic_transform(x, severity, g):
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    n, _, h, w = x.shape
    max_d = h * 0.005
    fields = (rand((n, 2, h, w), g, x.device) * 2 - 1) * max_d
    fields = gaussian_filter(fields, (0.01 * h, 0.01 * w), truncate=3.0, mode="reflect") * alpha
    return elastic_warp(x, fields[:, 0], fields[:, 1])


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


@register("pixelate", "digital", eight_bit=True)
def pixelate(x, severity, g):
    """PIL BOX down to c * size, 8-bit, then NEAREST back up: the reference's two resizes,
    bit for bit. PIL resizes in two passes through an 8-bit image; since Pillow 13 the
    vertical one goes first when the height shrinks by more than twice the width."""
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    h, w = x.shape[-2:]
    p, q = int(h * c), int(w * c)
    levels = to_levels(x, torch.int16).contiguous()
    if h - p > 2 * (w - q):
        small = box_downscale(box_downscale(levels, 2, p), 3, q)
    else:
        small = box_downscale(box_downscale(levels, 3, q), 2, p)
    return nearest_upscale(small.float().div_(255), h, w)


@register("jpeg_compression", "digital", eight_bit=True)
def jpeg_compression(x, severity, g):
    """JPEG round trip at the ImageNet-C quality through libjpeg (torchvision.io), on the
    8-bit image as the reference does; its output equals the reference's."""
    from torchvision.io import decode_jpeg, encode_jpeg

    quality = [25, 18, 15, 10, 7][severity - 1]
    # HWC 8-bit images, the layout libjpeg reads; a (C, H, W) view of each goes in as is
    hwc = to_levels(x.permute(0, 2, 3, 1), torch.uint8).cpu().contiguous()
    # one image at a time inside libjpeg, but without the GIL: the images go to threads
    decoded = parallel_map(lambda ims: decode_jpeg(encode_jpeg([im.permute(2, 0, 1) for im in ims], quality=quality)),
                            list(hwc))
    out = torch.stack([im.permute(1, 2, 0) for im in decoded]).float().div_(255).permute(0, 3, 1, 2)
    if not x.permute(0, 2, 3, 1).is_contiguous():
        out = out.contiguous()  # NCHW in, NCHW out; channels-last stays channels-last
    return out.to(x.device)
