"""Drift and forgetting metrics against hand-computed values."""

import math

import numpy as np
import pytest

from robustfeat.errors import RobustfeatError
from robustfeat.metrics import (
    agreement,
    effective_rank,
    geometry_retention,
    intruder_dimensions,
    linear_cka,
    relative_change,
)


def test_cka_invariances_and_a_hand_value():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)  # rotation, scale, shift
    # hand value: x = [1, 2, 3] (centred [-1, 0, 1]), y = [1, 1, 4] (centred [-1, -1, 2])
    # <x, y>^2 = 3^2 = 9; ||x||^2 = 2, ||y||^2 = 6 -> 9 / (2 * 6) = 0.75
    assert linear_cka([[1.0], [2.0], [3.0]], [[1.0], [1.0], [4.0]]) == pytest.approx(0.75)
    # orthogonal centred features -> 0
    assert linear_cka([[1.0], [-1.0], [1.0], [-1.0]], [[1.0], [1.0], [-1.0], [-1.0]]) == pytest.approx(0.0)


def test_cka_bad_input():
    with pytest.raises(RobustfeatError, match="same inputs"):
        linear_cka(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(RobustfeatError, match="NaN"):
        linear_cka([[np.nan], [1.0]], [[1.0], [2.0]])
    assert math.isnan(linear_cka(np.ones((4, 2)), np.arange(8.0).reshape(4, 2)))


def test_intruders_hadamard_rotation_by_hand():
    # W0 = diag(4, 3, 2, 1): its left singular vectors are e1..e4.
    # W = H diag(4, 3, 2, 1) with H the normalised 4x4 Hadamard matrix: every left singular
    # vector of W is a Hadamard column, whose |cosine| with every e_i is exactly 1/2.
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0
    w0 = np.diag([4.0, 3.0, 2.0, 1.0])
    rep = intruder_dimensions(h @ w0, w0, k=1)
    assert rep.max_similarity == pytest.approx([0.5])
    assert rep.count(0.49) == 0 and rep.count(0.51) == 1
    # top-2k = top-2 span of W0 is {e1, e2}; the first Hadamard column has energy
    # 1/4 + 1/4 there, so half of it lies outside
    assert rep.outside_share(0.51) == pytest.approx(0.5)
    assert math.isnan(rep.outside_share(0.49))
    same = intruder_dimensions(w0, w0, k=10)  # k is capped by the rank
    assert same.k == 4 and same.count(0.99) == 0


def test_intruder_rotation_among_tied_directions_stays_inside_span():
    # W0 with a tied pair of singular values: rotating inside that pair gives cosines of
    # 1/sqrt(2) (an intruder at eps 0.8) but no energy outside the top-2k span
    w0 = np.diag([5.0, 5.0, 1.0, 0.5])
    r = np.eye(4)
    r[:2, :2] = np.array([[1, -1], [1, 1]]) / math.sqrt(2)
    rep = intruder_dimensions(r @ w0, w0, k=2)
    assert rep.max_similarity == pytest.approx([1 / math.sqrt(2)] * 2)
    assert rep.count(0.8) == 2 and rep.count(0.5) == 0
    assert rep.outside_share(0.8) == pytest.approx(0.0, abs=1e-12)


def test_relative_change_and_effective_rank_by_hand():
    w0 = np.array([[3.0, 0.0], [0.0, 4.0]])  # ||W0||_F = 5
    assert relative_change(w0 + np.array([[0.0, 1.0], [0.0, 0.0]]), w0) == pytest.approx(0.2)
    assert effective_rank(np.diag([1.0, 1.0, 0.0])) == pytest.approx(2.0)
    p = np.array([0.75, 0.25])
    assert effective_rank(np.diag([3.0, 1.0])) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert effective_rank(np.zeros((3, 2))) == 0.0
    with pytest.raises(RobustfeatError, match="shape"):
        relative_change(np.ones((2, 2)), np.ones((2, 3)))


def test_geometry_retention():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(20, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert geometry_retention(e, 2.0 * e @ q) == pytest.approx(1.0)  # cosines unchanged
    # three points: base cosines (e1.e2, e1.e3, e2.e3) = (0, 0.6, 0.8); tuned reverses the order
    base = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    tuned = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # cosines (0.6, 0, 0.8)
    # ranks (1, 2, 3) vs (2, 1, 3): Spearman = 1 - 6 * (1 + 1) / (3 * 8) = 0.5
    assert geometry_retention(base, tuned) == pytest.approx(0.5)


def test_agreement_by_hand():
    base = np.array([[0.0, 0.0], [2.0, 0.0]])
    tuned = np.array([[0.0, 0.0], [0.0, 2.0]])
    top1, kl = agreement(base, tuned)
    # row 1: ties both ways (argmax 0 both) -> agree; row 2: disagree -> 0.5
    assert top1 == 0.5
    # KL row 2: p = (s, 1-s) with s = e^2/(1+e^2), q = (1-s, s): KL = (2s - 1) * 2
    s = math.exp(2) / (1 + math.exp(2))
    assert kl == pytest.approx(((2 * s - 1) * 2) / 2)
    with pytest.raises(RobustfeatError, match="equal"):
        agreement(np.ones((2, 3)), np.ones((2, 2)))
