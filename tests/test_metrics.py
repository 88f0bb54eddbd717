"""Metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robustfeat.errors import RobustfeatError
from robustfeat.metrics import (
    ALEXNET_MEAN_ERROR,
    COMMON,
    accuracy,
    bootstrap_ci,
    bootstrap_perplexity,
    corruption_errors,
    effective_robustness,
    error,
    expected_calibration_error,
    fit_robustness_line,
    forgetting,
    mean_corruption_error,
    wilson_interval,
    worst_domain,
)


def test_accuracy_and_error_edge_cases():
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5 and error([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5
    assert accuracy([0, 0], [1, 1]) == 0.0 and accuracy([3, 3, 3], [3, 3, 3]) == 1.0
    with pytest.raises(RobustfeatError, match="empty"):
        accuracy([], [])
    with pytest.raises(RobustfeatError, match="equal-length"):
        accuracy([1, 2], [1])


def test_mce_on_a_table_worked_out_by_hand():
    # model and reference errors on two corruptions, two severities each
    model = {"a": {1: 0.2, 2: 0.4}, "b": {1: 0.5, 2: 0.7}}
    ref = {"a": {1: 0.4, 2: 0.6}, "b": {1: 0.5, 2: 0.9}}
    s = corruption_errors(model, clean_error=0.1, reference=ref, reference_clean_error=0.2,
                          reference_name="base", corruptions=("a", "b"))
    # CE_a = (0.2+0.4)/(0.4+0.6) = 0.6 ; CE_b = (0.5+0.7)/(0.5+0.9) = 1.2/1.4
    assert s.ce["a"] == pytest.approx(0.6) and s.ce["b"] == pytest.approx(6 / 7)
    assert s.mce == pytest.approx((0.6 + 6 / 7) / 2)  # 0.728571...
    # relative CE_a = (0.1+0.3)/(0.2+0.4) = 2/3 ; relative CE_b = (0.4+0.6)/(0.3+0.7) = 1
    assert s.relative_ce["a"] == pytest.approx(2 / 3) and s.relative_ce["b"] == pytest.approx(1.0)
    assert s.relative_mce == pytest.approx(5 / 6)
    assert s.mean_error == pytest.approx(0.45)  # (0.2+0.4+0.5+0.7)/4: no reference involved
    assert s.reference == "base"


def test_mce_against_alexnet():
    same = {c: {k: ALEXNET_MEAN_ERROR[c] for k in range(1, 6)} for c in COMMON}
    assert corruption_errors(same, clean_error=0.4).mce == pytest.approx(1.0)  # AlexNet is 100% by definition
    half = {c: {k: ALEXNET_MEAN_ERROR[c] / 2 for k in range(1, 6)} for c in COMMON}
    s = corruption_errors(half, clean_error=0.2)
    assert s.mce == pytest.approx(0.5) and s.reference == "alexnet"
    assert s.relative_mce is None  # needs AlexNet's clean error, which is not embedded
    assert s.mean_error == pytest.approx(np.mean(list(ALEXNET_MEAN_ERROR.values())) / 2)
    # with a clean error given: relative CE_c = 5 (E_c - e) / 5 (A_c - a)
    s = corruption_errors(half, clean_error=0.2, reference_clean_error=0.4)
    c = "fog"
    assert s.relative_ce[c] == pytest.approx((ALEXNET_MEAN_ERROR[c] / 2 - 0.2) / (ALEXNET_MEAN_ERROR[c] - 0.4))


def test_mce_bad_input():
    with pytest.raises(RobustfeatError, match="no errors for"):
        mean_corruption_error({"fog": {1: 0.2}})
    with pytest.raises(RobustfeatError, match="not in"):
        corruption_errors({"a": {1: 1.5}}, 0.1, {"a": {1: 0.5}}, corruptions=("a",))
    with pytest.raises(RobustfeatError, match="different severities"):
        corruption_errors({"a": {1: 0.5}}, 0.1, {"a": {2: 0.5}}, corruptions=("a",))
    with pytest.raises(RobustfeatError, match="AlexNet has no published error"):
        corruption_errors({"spatter": {1: 0.5}}, 0.1, corruptions=("spatter",))


def test_ece_worked_out_by_hand():
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.7, 0.2], [0.7, 0.1, 0.2], [0.45, 0.35, 0.2]])
    labels = np.array([0, 0, 0, 0])
    # 5 bins: 0.9 correct -> (0.8,1]: |1-0.9| * 1/4 = 0.025 ; 0.7 wrong and 0.7 correct -> (0.6,0.8]:
    # |0.5-0.7| * 2/4 = 0.1 ; 0.45 correct -> (0.4,0.6]: |1-0.45| * 1/4 = 0.1375
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.2625)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0
    assert expected_calibration_error(perfect, np.array([1, 0])) == pytest.approx(1.0)  # all wrong


def test_bootstrap_ci():
    correct = np.array([1] * 80 + [0] * 20)
    low, high = bootstrap_ci(correct, seed=0)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 100)  # normal approximation: 0.078
    assert low < 0.8 < high and (high - low) == pytest.approx(2 * half, rel=0.2)
    assert bootstrap_ci(correct, seed=0) == (low, high)  # seeded
    assert bootstrap_ci(np.ones(50)) == (1.0, 1.0)
    x = np.random.default_rng(1).normal(3.0, 2.0, 400)  # non-binary values: index resampling
    lo, hi = bootstrap_ci(x, seed=0)
    assert lo < x.mean() < hi and (hi - lo) == pytest.approx(2 * 1.96 * x.std() / 20, rel=0.2)
    with pytest.raises(RobustfeatError):
        bootstrap_ci([])


def test_worst_domain_and_forgetting():
    assert worst_domain({"amazon": 0.8, "nyt": 0.6, "tweets": 0.7}) == ("nyt", 0.6)
    assert forgetting(0.9, 0.85) == pytest.approx(0.05)
    assert forgetting(10.0, 12.0, higher_is_better=False) == pytest.approx(2.0)  # perplexity rose by 2
    with pytest.raises(RobustfeatError):
        worst_domain({})


def test_effective_robustness_from_a_known_line():
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    xs = np.array([-1.0, 0.0, 1.0, 2.0])
    line = fit_robustness_line(sig(xs), sig(0.5 * xs - 1.0))
    assert line == pytest.approx((0.5, -1.0))
    assert effective_robustness(sig(1.0), sig(-0.5) + 0.05, line) == pytest.approx(0.05)
    assert effective_robustness(sig(1.0), sig(-0.5), line) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(RobustfeatError, match="two reference points"):
        fit_robustness_line([0.5], [0.4])


# --- intervals --------------------------------------------------------------------------------
def test_wilson_interval_by_hand():
    # p = 0.8, n = 10, z = 1.959964: centre (p + z^2/2n) / (1 + z^2/n), half z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    assert wilson_interval(8, 10) == pytest.approx((0.490162, 0.943318), abs=1e-6)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((0.722467, 1.0), abs=1e-6)
    with pytest.raises(Exception, match="empty"):
        wilson_interval(0, 0)


def test_bootstrap_perplexity():
    nll, tokens = np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])  # every text at 2 nats per token
    ci = bootstrap_perplexity(nll, tokens, nll)
    assert ci["perplexity"] == pytest.approx((np.exp(2), np.exp(2))) and ci["increase"] == (0.0, 0.0)
    ci = bootstrap_perplexity(np.array([1.0, 3.0]), np.ones(2), np.array([1.0, 1.0]), seed=1)
    assert ci["perplexity"][0] == pytest.approx(np.e) and ci["perplexity"][1] == pytest.approx(np.exp(3))
    assert ci["increase"][0] == pytest.approx(0.0) and ci["increase"][1] == pytest.approx(np.exp(3) - np.e)
