"""Spatter, ImageNet-C's held-out "extra" weather corruption: water drops (severities 1-3)
or mud (4-5) on the lens. The water shading needs batched torch versions of OpenCV's
Canny, distance transform and histogram equalisation, which live here with it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from robustfeat.shifts.corruptions import register
from robustfeat.shifts.draws import randn
from robustfeat.shifts.filters import gaussian_filter

SPATTER = [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
           (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)]
WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise, added on the R, G, B channels
MUD = (63 / 255, 42 / 255, 20 / 255)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's 3x3 box blur (border: reflect-101) on (N, 1, H, W)."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def correlate3x3(p: torch.Tensor, kernel: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    """3x3 correlation of an already padded (N, C, H + 2, W + 2) batch, as a sum of shifted
    slices over the non-zero taps (much faster on CPU than a one-channel conv2d)."""
    h, w = p.shape[-2] - 2, p.shape[-1] - 2
    out = torch.zeros(p.shape[:-2] + (h, w), dtype=p.dtype, device=p.device)
    for dy, row in enumerate(kernel):
        for dx, weight in enumerate(row):
            if weight:
                out.add_(p[..., dy:dy + h, dx:dx + w], alpha=weight)
    return out


def _distance_to(edges: torch.Tensor, limit: int = 20) -> torch.Tensor:
    """Euclidean distance from each pixel to the nearest edge pixel, capped at ``limit``:
    exact within the cap (batched, any device). Along rows the squared distance to the
    nearest edge comes from running maxima/minima of edge positions; down columns, the
    exact squared distance is the minimum over shifts k of row distance + k^2."""
    big = float(4 * limit * limit + 1)
    h, w = edges.shape[-2:]
    cols = torch.arange(w, device=edges.device, dtype=torch.float32)
    far = float(w + limit + 1)
    left = torch.where(edges, cols, -far).cummax(-1).values  # the nearest edge at or left of each pixel
    right = torch.where(edges, cols, 2 * far).flip(-1).cummin(-1).values.flip(-1)
    dx = torch.minimum(cols - left, right - cols)
    d = torch.where(dx <= limit, dx * dx, big)
    p = F.pad(d, (0, 0, limit, limit), value=big)
    best = d.clone()
    for k in range(-limit, limit + 1):
        if k:
            torch.minimum(best, p.narrow(-2, limit + k, h) + k * k, out=best)
    return best.sqrt().clamp(max=float(limit))


_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV's Canny (3x3 Sobel, L1 magnitude, its tie-breaking non-maximum suppression,
    8-connected hysteresis) on (N, 1, H, W) integer-valued images -> bool edges."""
    p = F.pad(img.float(), (1, 1, 1, 1), mode="replicate")
    gx = correlate3x3(p, ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1)))
    gy = correlate3x3(p, ((-1, -2, -1), (0, 0, 0), (1, 2, 1)))
    mag = gx.abs() + gy.abs()
    h, w = mag.shape[-2:]
    mp = F.pad(mag, (1, 1, 1, 1))  # zero magnitude beyond the border

    def at(dy: int, dx: int | torch.Tensor) -> torch.Tensor:
        return mp[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = gx.abs().long(), gy.abs().long() << 15
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << 16)
    horizontal = ay < tg22x
    vertical = ay > tg67x
    s = torch.where((gx < 0) ^ (gy < 0), -1, 1)
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    # diagonal: compare with (row - 1, col - s) and (row + 1, col + s)
    keep_d = torch.where(s < 0, (mag > at(-1, 1)) & (mag > at(1, -1)), (mag > at(-1, -1)) & (mag > at(1, 1)))
    peak = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d)) & (mag > low)
    return hysteresis(peak, peak & (mag > high))


def hysteresis(weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """The pixels of ``weak`` (N, 1, H, W) 8-connected to a pixel of ``strong`` through
    ``weak``. On CPU by connected-component labelling (scipy); elsewhere by growing the
    strong set one ring at a time until it stops changing (the same result)."""
    if weak.device.type == "cpu":
        from scipy import ndimage

        structure = np.zeros((3, 3, 3, 3), dtype=bool)
        structure[1, 1] = True  # 8-connected within an image, never across images
        labels, count = ndimage.label(weak.numpy(), structure=structure)
        keep = np.zeros(count + 1, dtype=bool)
        keep[labels[strong.numpy()]] = True
        keep[0] = False
        return torch.from_numpy(keep[labels])
    edges = strong
    for _ in range(weak.shape[-2] * weak.shape[-1]):
        grown = weak & (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges


def _equalize_hist(u8: torch.Tensor) -> torch.Tensor:
    """OpenCV's equalizeHist per image on (N, 1, H, W) integer-valued floats in [0, 255]."""
    n = u8.shape[0]
    v = u8.reshape(n, -1).long()
    hist = torch.zeros(n, 256, device=u8.device).scatter_add_(1, v, torch.ones_like(v, dtype=torch.float32))
    cdf = hist.cumsum(1)
    first = hist.gt(0).float().argmax(1, keepdim=True)
    low = hist.gather(1, first)  # count of the lowest value present
    total = float(v.shape[1])
    scale = 255.0 / (total - low).clamp(min=1.0)
    lut = torch.round((cdf - low) * scale).clamp(0, 255)
    lut = torch.where(torch.arange(256, device=u8.device).view(1, -1) < first, torch.zeros_like(lut), lut)
    flat = (total - low) == 0  # a constant image: OpenCV leaves it as it is
    lut = torch.where(flat, torch.arange(256, device=u8.device, dtype=torch.float32).view(1, -1), lut)
    return lut.gather(1, v).reshape(u8.shape)


@register("spatter", "weather", random=True)
def spatter(x, severity, g):
    """Water drops (severities 1-3) or mud (4-5) on the lens, following ImageNet-C's
    recipe: a thresholded blurred Gaussian field; for water, its edges' distance map is
    equalised, embossed and blurred into the drops' shading."""
    loc, scale, sigma, cut, strength, mud = SPATTER[severity - 1]
    n, _, h, w = x.shape
    liquid = randn((n, 1, h, w), g, x.device) * scale + loc
    liquid = gaussian_filter(liquid, sigma)
    liquid = torch.where(liquid < cut, torch.zeros_like(liquid), liquid)
    if mud:
        m = gaussian_filter((liquid > cut).float(), strength)
        m = torch.where(m < 0.8, torch.zeros_like(m), m)
        color = torch.tensor(MUD, device=x.device).view(1, 3, 1, 1)
        return x * (1 - m) + color * m
    level = torch.floor(liquid * 255).clamp(0, 255)
    edges = canny(level, 50.0, 150.0)
    dist = _distance_to(edges).clamp(max=20.0)
    dist = torch.floor(_box3(dist))
    dist = _equalize_hist(dist)
    emboss = ((-2, -1, 0), (-1, 1, 1), (0, 1, 2))
    dist = torch.round(correlate3x3(F.pad(dist, (1, 1, 1, 1), mode="reflect"), emboss)).clamp(0, 255)
    dist = torch.round(_box3(dist))  # OpenCV blurs the 8-bit image: rounded
    m = level / 255 * dist
    m = m / m.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12) * strength
    color = torch.tensor(WATER, device=x.device).view(1, 3, 1, 1)
    return x + m * color
