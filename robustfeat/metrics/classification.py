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


def wilson_interval(correct: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / n``: unlike the normal
    (Wald) interval it stays inside [0, 1] and does not collapse to a point at 0 or n."""
    from scipy.stats import norm

    if n <= 0:
        raise RobustfeatError("a confidence interval of an empty set is undefined")
    if not 0 <= correct <= n:
        raise RobustfeatError(f"correct must be in [0, {n}], got {correct}")
    if not 0.0 < level < 1.0:
        raise RobustfeatError(f"level must be in (0, 1), got {level}")
    z = float(norm.ppf(0.5 + level / 2))
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_perplexity(nll: np.ndarray, tokens: np.ndarray, base_nll: np.ndarray | None = None, *,
                         level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over texts for perplexity exp(sum nll / sum tokens)
    (``nll``: each text's summed token NLL, ``tokens``: its scored tokens). With ``base_nll``
    (the base model's NLL of the same texts) the texts are resampled in pairs, giving
    intervals for the base's perplexity and for the increase (tuned - base) too:
    {"perplexity", "base_perplexity", "increase"}: (low, high)."""
    nll, tokens = np.asarray(nll, np.float64).ravel(), np.asarray(tokens, np.float64).ravel()
    n = len(nll)
    if n == 0 or len(tokens) != n or (base_nll is not None and len(base_nll) != n):
        raise RobustfeatError("bootstrap_perplexity needs equal-length, non-empty per-text arrays")
    if not 0.0 < level < 1.0:
        raise RobustfeatError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    base = None if base_nll is None else np.asarray(base_nll, np.float64).ravel()
    tuned_ppl, base_ppl = np.empty(resamples), np.empty(resamples)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, resamples, chunk):
        k = min(chunk, resamples - start)
        idx = rng.integers(0, n, (k, n))
        count = tokens[idx].sum(1)
        tuned_ppl[start:start + k] = np.exp(nll[idx].sum(1) / count)
        if base is not None:
            base_ppl[start:start + k] = np.exp(base[idx].sum(1) / count)
    alpha = (1.0 - level) / 2

    def q(v: np.ndarray) -> tuple[float, float]:
        lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
        return float(lo), float(hi)

    out = {"perplexity": q(tuned_ppl)}
    if base is not None:
        out["base_perplexity"] = q(base_ppl)
        out["increase"] = q(tuned_ppl - base_ppl)
    return out
