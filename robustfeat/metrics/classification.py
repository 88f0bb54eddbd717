"""Accuracy, error, calibration and confidence intervals: pure functions on arrays."""

from __future__ import annotations

import numpy as np

from robustfeat.errors import RobustfeatError


def _labels(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 1:
        raise RobustfeatError(f"predictions {pred.shape} and labels {labels.shape} must be equal-length vectors")
    if len(labels) == 0:
        raise RobustfeatError("accuracy of an empty set is undefined")
    return pred, labels


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Share of predictions equal to the labels."""
    pred, labels = _labels(pred, labels)
    return float((pred == labels).mean())


def error(pred: np.ndarray, labels: np.ndarray) -> float:
    """1 - accuracy."""
    return 1.0 - accuracy(pred, labels)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): confidences (max probability) in ``bins`` equal-width bins
    (lo, hi]; the bin-size-weighted mean of |accuracy - mean confidence|."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise RobustfeatError(f"probs must be (N, classes) matching {len(labels)} labels, got {probs.shape}")
    if bins < 1:
        raise RobustfeatError(f"bins must be >= 1, got {bins}")
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # (lo, hi]; 0 joins the first bin
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def bootstrap_ci(values: np.ndarray, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    For 0/1 values (per-example correctness) the bootstrap distribution of the mean is
    exactly Binomial(n, mean) / n, which is drawn directly: no index resampling needed.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = len(values)
    if n == 0:
        raise RobustfeatError("a confidence interval of an empty set is undefined")
    if not 0.0 < level < 1.0:
        raise RobustfeatError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    if np.isin(values, (0.0, 1.0)).all():
        means = rng.binomial(n, values.mean(), size=resamples) / n
    else:
        means = np.empty(resamples)
        chunk = max(1, 2_000_000 // n)
        for start in range(0, resamples, chunk):
            k = min(chunk, resamples - start)
            means[start:start + k] = values[rng.integers(0, n, (k, n))].mean(1)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)
