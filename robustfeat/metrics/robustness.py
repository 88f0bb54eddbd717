"""Worst-domain accuracy, forgetting, and effective robustness (Taori et al. 2020)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from robustfeat.errors import RobustfeatError


def worst_domain(accuracies: Mapping[str, float]) -> tuple[str, float]:
    """The domain with the lowest accuracy, and that accuracy."""
    if not accuracies:
        raise RobustfeatError("worst-domain accuracy needs at least one domain")
    name = min(accuracies, key=lambda k: (accuracies[k], k))
    return name, float(accuracies[name])


def forgetting(base_score: float, tuned_score: float, higher_is_better: bool = True) -> float:
    """The drop of the pre-training task's score: base - tuned (or tuned - base for scores
    where lower is better, such as perplexity). Positive means forgotten."""
    return float(base_score - tuned_score) if higher_is_better else float(tuned_score - base_score)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_robustness_line(id_acc: Sequence[float], ood_acc: Sequence[float]) -> tuple[float, float]:
    """Least-squares line logit(OOD) = slope * logit(ID) + intercept over reference models."""
    x, y = _logit(id_acc), _logit(ood_acc)
    if len(x) != len(y) or len(x) < 2:
        raise RobustfeatError("the robustness line needs at least two reference points (ID, OOD)")
    if np.ptp(x) == 0:
        raise RobustfeatError("the reference points share one ID accuracy; a line cannot be fitted")
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


#: the smallest spread of ID accuracy (in accuracy units) over reference points for a fitted line
MIN_ID_RANGE = 0.05


def reference_line(points: Sequence[tuple[float, float]], min_id_range: float = MIN_ID_RANGE
                   ) -> tuple[float, float, str]:
    """The effective-robustness line over reference points, each a distinct reference model
    (its (ID, OOD) accuracy averaged over seeds; seeds of one model are one point): fitted in
    logit space when there are at least two points spanning ``min_id_range`` of ID accuracy,
    otherwise slope 1 in logit space through their mean. Returns (slope, intercept, how)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise RobustfeatError("the robustness line needs at least one reference point")
    if len(pts) >= 2 and np.ptp(pts[:, 0]) >= min_id_range:
        slope, intercept = fit_robustness_line(pts[:, 0], pts[:, 1])
        return slope, intercept, f"fitted in logit space on {len(pts)} reference models"
    mx, my = _logit(pts[:, 0].mean()), _logit(pts[:, 1].mean())
    why = ("one reference model" if len(pts) == 1 else
           f"{len(pts)} reference models spanning less than {min_id_range:g} ID accuracy")
    return 1.0, float(my - mx), f"slope 1 in logit space through the mean base point ({why}; no fit)"


def effective_robustness(id_acc: float, ood_acc: float, line: tuple[float, float]) -> float:
    """OOD accuracy above the line's prediction at this ID accuracy (in accuracy units)."""
    slope, intercept = line
    predicted = 1.0 / (1.0 + np.exp(-(slope * _logit(id_acc) + intercept)))
    return float(ood_acc - predicted)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def agreement(logits_base, logits_tuned) -> tuple[float, float]:
    """Forgetting with no labels: (top-1 agreement, mean KL(p_base || p_tuned) in nats)
    between two models' outputs on the same probe inputs."""
    a, b = np.asarray(logits_base, dtype=np.float64), np.asarray(logits_tuned, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or 0 in a.shape:
        raise RobustfeatError(f"logits must be two equal (N, classes) arrays, got {a.shape} and {b.shape}")
    la, lb = _log_softmax(a), _log_softmax(b)
    kl = (np.exp(la) * (la - lb)).sum(1)
    return float((a.argmax(1) == b.argmax(1)).mean()), float(kl.mean())
