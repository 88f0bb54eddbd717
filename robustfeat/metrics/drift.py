"""Representation and weight drift: linear CKA, intruder dimensions, relative weight
change and effective rank. Pure functions on arrays (float64 throughout).

* Linear CKA (Kornblith et al. 2019) between two representations of the same n inputs:
  ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred X, Y.
* Intruder dimensions (Shuttleworth et al. 2024, arXiv 2410.21228): a top-k left singular
  vector of the fine-tuned weight is an intruder when its largest |cosine| with any left
  singular vector of the pre-trained weight is below a threshold eps.
  For each intruder, ``outside_top2k`` is the share of its energy outside the span of the
  pre-trained weight's top-2k left singular vectors: near 0 when the "intruder" is only a
  rotation among near-tied pre-trained directions, near 1 when it is genuinely new.
* Effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = s / sum(s)`` over the
  singular values s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robustfeat.errors import RobustfeatError

#: thresholds swept for intruder counts; 0.5 is the published default
INTRUDER_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _matrix(a, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise RobustfeatError(f"{what} must be a non-empty 2-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise RobustfeatError(f"{what} holds NaN or inf values")
    return a


def linear_cka(x, y) -> float:
    """Linear CKA of two (n, d1), (n, d2) representations of the same n inputs, in [0, 1]."""
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if len(x) != len(y):
        raise RobustfeatError(f"CKA needs the same inputs on both sides: {len(x)} vs {len(y)} rows")
    if len(x) < 2:
        raise RobustfeatError("CKA needs at least 2 inputs")
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if norm == 0:
        return float("nan")  # a constant representation has no geometry to compare
    return float(cross / norm)


@dataclass
class IntruderReport:
    k: int
    #: per top-k fine-tuned direction: its largest |cosine| with any pre-trained direction
    max_similarity: np.ndarray
    #: per top-k fine-tuned direction: share of its energy outside W0's top-2k span
    outside_top2k: np.ndarray

    def count(self, eps: float) -> int:
        return int((self.max_similarity < eps).sum())

    def outside_share(self, eps: float) -> float:
        """Mean ``outside_top2k`` over the intruders at ``eps`` (NaN when there are none)."""
        m = self.max_similarity < eps
        return float(self.outside_top2k[m].mean()) if m.any() else float("nan")


def intruder_dimensions(w_tuned, w_base, k: int = 10) -> IntruderReport:
    """Compare the top-``k`` left singular vectors of ``w_tuned`` with all of ``w_base``'s.

    Both are (d_out, d_in) matrices (flatten convolution kernels to (out, in*kh*kw) first).
    """
    wt, w0 = _matrix(w_tuned, "the fine-tuned weight"), _matrix(w_base, "the base weight")
    if wt.shape != w0.shape:
        raise RobustfeatError(f"weights differ in shape: {wt.shape} vs {w0.shape}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RobustfeatError(f"k must be a positive integer, got {k!r}")
    k = min(k, min(wt.shape))
    ut = np.linalg.svd(wt, full_matrices=False)[0][:, :k]
    u0 = np.linalg.svd(w0, full_matrices=False)[0]
    sim = np.abs(ut.T @ u0).max(1)
    span = u0[:, :2 * k]
    inside = np.clip((span.T @ ut) ** 2, 0, None).sum(0)
    return IntruderReport(k=k, max_similarity=sim, outside_top2k=np.clip(1.0 - inside, 0.0, 1.0))


def relative_change(w_tuned, w_base) -> float:
    """``||w_tuned - w_base||_F / ||w_base||_F``."""
    wt, w0 = _matrix(w_tuned, "the fine-tuned weight"), _matrix(w_base, "the base weight")
    if wt.shape != w0.shape:
        raise RobustfeatError(f"weights differ in shape: {wt.shape} vs {w0.shape}")
    den = np.linalg.norm(w0)
    return float(np.linalg.norm(wt - w0) / den) if den > 0 else float("inf")


def effective_rank(m) -> float:
    """``exp`` of the entropy of the normalised singular values; 0 for a zero matrix."""
    s = np.linalg.svd(_matrix(m, "the matrix"), compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _cosines(e: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(n > 0, n, 1.0)
    return (e @ e.T)[np.triu_indices(len(e), 1)]


def geometry_retention(emb_base, emb_tuned) -> float:
    """Spearman correlation between the pairwise cosine similarities of the same probe
    inputs embedded by the base and by the fine-tuned model (1 = geometry kept)."""
    from scipy.stats import spearmanr

    a, b = _matrix(emb_base, "the base embeddings"), _matrix(emb_tuned, "the fine-tuned embeddings")
    if len(a) != len(b):
        raise RobustfeatError(f"embeddings of different inputs: {len(a)} vs {len(b)} rows")
    if len(a) < 3:
        raise RobustfeatError("geometry retention needs at least 3 probe inputs")
    return float(spearmanr(_cosines(a), _cosines(b)).statistic)
