"""Corruption errors (Hendrycks & Dietterich 2019): CE, mCE, relative mCE, and the plain
mean corruption error, always side by side, with the reference named.

Definitions, for errors E in [0, 1] by corruption c and severity s:
    CE_c          = sum_s E_sc / sum_s E_sc(ref)
    relative CE_c = sum_s (E_sc - E_clean) / sum_s (E_sc(ref) - E_clean(ref))
    mCE           = mean over the corruptions of CE_c      (the 15 ImageNet-C ones by default)
    mean error    = mean over corruptions and severities of E_sc (no reference at all)
The reference is AlexNet on ImageNet (errors below) and the base model elsewhere: data
without a published reference model has no AlexNet numbers.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from robustfeat.errors import RobustfeatError

#: The 15 ImageNet-C corruptions (mCE averages over these) and the 4 held-out extras.
COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
          "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
          "jpeg_compression")
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")

#: AlexNet's ImageNet-C top-1 error per corruption, averaged over the 5 severities (as
#: published with the AugMix code). Averages suffice for CE: sum_s E_sc = 5 * mean_s E_sc.
ALEXNET_MEAN_ERROR = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816,
    "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204,
    "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}

Errors = dict[str, dict[int, float]]  # corruption -> severity -> error


@dataclass
class CorruptionSummary:
    reference: str  # "alexnet" or the reference model's name
    corruptions: tuple[str, ...]
    ce: dict[str, float]
    relative_ce: dict[str, float] | None
    mce: float
    relative_mce: float | None
    mean_error: float
    clean_error: float
    notes: list[str] = field(default_factory=list)


def _check(errors: Errors, corruptions: tuple[str, ...], what: str) -> None:
    missing = [c for c in corruptions if c not in errors or not errors[c]]
    if missing:
        raise RobustfeatError(f"{what} has no errors for {', '.join(missing)}")
    for c in corruptions:
        for s, e in errors[c].items():
            if not 0.0 <= e <= 1.0:
                raise RobustfeatError(f"{what}: error {e!r} for {c} severity {s} is not in [0, 1]")


def _check_clean(value: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise RobustfeatError(f"{what}: clean error {value!r} is not in [0, 1]")


def mean_corruption_error(errors: Errors, corruptions: tuple[str, ...] = COMMON) -> float:
    """Plain mean error over corruptions and severities: no reference model."""
    _check(errors, corruptions, "the model")
    return float(np.mean([e for c in corruptions for e in errors[c].values()]))


def corruption_errors(errors: Errors, clean_error: float, reference: Errors | None = None,
                      reference_clean_error: float | None = None, reference_name: str = "base model",
                      corruptions: tuple[str, ...] = COMMON) -> CorruptionSummary:
    """CE per corruption, mCE, relative mCE and the plain mean error.

    With ``reference=None`` the reference is AlexNet (ImageNet only): CE uses its
    published mean errors; relative CE also needs ``reference_clean_error``, AlexNet's
    clean error, and is left out (None) when that is not given.
    """
    _check(errors, corruptions, "the model")
    _check_clean(clean_error, "the model")
    if reference_clean_error is not None:
        _check_clean(reference_clean_error, "the reference")
    notes: list[str] = []
    if reference is None:
        unknown = [c for c in corruptions if c not in ALEXNET_MEAN_ERROR]
        if unknown:
            raise RobustfeatError(f"AlexNet has no published error for {', '.join(unknown)}; use a reference model")
        name = "alexnet"
        ref_sum = {c: ALEXNET_MEAN_ERROR[c] * len(errors[c]) for c in corruptions}
        if any(len(errors[c]) != 5 for c in corruptions):
            notes.append("AlexNet's errors are averages over 5 severities; this model was not evaluated on all 5")
        ref_rel = None
        if reference_clean_error is not None:
            ref_rel = {c: ref_sum[c] - len(errors[c]) * reference_clean_error for c in corruptions}
    else:
        _check(reference, corruptions, "the reference")
        name = reference_name
        for c in corruptions:
            if set(reference[c]) != set(errors[c]):
                raise RobustfeatError(f"model and reference were evaluated on different severities of {c}")
        ref_sum = {c: sum(reference[c].values()) for c in corruptions}
        ref_rel = None
        if reference_clean_error is not None:
            ref_rel = {c: sum(e - reference_clean_error for e in reference[c].values()) for c in corruptions}
    ce = {c: _ratio(sum(errors[c].values()), ref_sum[c], c) for c in corruptions}
    rel = None
    if ref_rel is not None:
        rel = {c: _ratio(sum(e - clean_error for e in errors[c].values()), ref_rel[c], c) for c in corruptions}
    return CorruptionSummary(
        reference=name,
        corruptions=tuple(corruptions),
        ce=ce,
        relative_ce=rel,
        mce=float(np.mean(list(ce.values()))),
        relative_mce=None if rel is None else float(np.mean(list(rel.values()))),
        mean_error=mean_corruption_error(errors, corruptions),
        clean_error=clean_error,
        notes=notes,
    )


def _ratio(num: float, den: float, corruption: str) -> float:
    if den == 0:
        return float("nan") if num == 0 else float("inf")
    return float(num / den)
