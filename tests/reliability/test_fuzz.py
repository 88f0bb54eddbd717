"""Fuzzing with hypothesis: grid and training-config parsing, the corruption functions on
random shapes, dtypes and severities, and the metric functions on edge cases. Whatever the
input, the outcome is a valid result or robustfeat's own clear error, never a crash."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from robustfeat.errors import RobustfeatError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3))
grid_keys = st.sampled_from(["models", "datasets", "methods", "seeds", "hyperparameters", "train", "evaluate",
                             "resources", "extra"])
train_keys = st.sampled_from(["lr", "rank", "alpha", "epochs", "batch_size", "max_examples", "seed", "model",
                              "image_size", "warmup_ratio", "weight_decay", "bogus"])
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(train_keys, scalars, max_size=3),
                   st.dictionaries(train_keys, st.lists(scalars, max_size=3), max_size=2))


@FUZZ
@given(st.one_of(st.dictionaries(grid_keys, values, max_size=8), scalars))
def test_grid_parsing_never_crashes(doc):
    from robustfeat.sweep import GridError, parse_grid

    try:
        g = parse_grid(doc)
    except GridError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert all(c.key for c in g.trials)


@FUZZ
@given(st.dictionaries(train_keys, scalars, max_size=6))
def test_training_config_parsing_never_crashes(fields):
    from robustfeat.train import TrainConfig

    doc = {"model": "tiny-cnn", "data": "mnist-5k", "method": "lora", **fields}
    try:
        config = TrainConfig.from_dict(doc)
    except RobustfeatError as e:
        assert str(e)
    else:
        assert TrainConfig.from_dict(config.to_dict()) == config


CORRUPTION_NAMES = None


def _names():
    from robustfeat.registry import CORRUPTIONS

    return sorted(CORRUPTIONS.names())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(_names()), severity=st.one_of(st.integers(-1, 7), st.floats(1, 5), st.booleans()),
       n=st.integers(0, 2), c=st.integers(1, 4), h=st.integers(1, 48), w=st.integers(1, 48),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64]),
       ndim=st.sampled_from([3, 4, 5]), seed=st.one_of(st.none(), st.integers(0, 2**31)))
def test_corruptions_never_crash(name, severity, n, c, h, w, dtype, ndim, seed):
    """Anything: a corrupted batch or a clear error."""
    from robustfeat.shifts.corruptions import corrupt

    shape = {3: (c, h, w), 4: (n, c, h, w), 5: (n, 1, c, h, w)}[ndim]
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    x = (x * 255).to(dtype) if dtype in (torch.uint8, torch.int64) else x.to(dtype)
    try:
        y = corrupt(x, name, severity, seed=seed)
    except RobustfeatError as e:
        assert str(e)
        event("refused")
        return
    event("corrupted")
    assert y.shape[0] == n and y.shape[-2:] == (h, w) and y.dtype == dtype


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(_names()), severity=st.integers(1, 5), n=st.integers(0, 3), c=st.sampled_from([1, 3]),
       h=st.integers(32, 72), w=st.integers(32, 72), dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
       seed=st.one_of(st.none(), st.integers(0, 2**31)),
       fill=st.sampled_from(["random", "zeros", "ones", "constant"]))
def test_valid_images_of_any_size_are_corrupted_into_range(name, severity, n, c, h, w, dtype, seed, fill):
    """Valid input of odd sizes, greyscale, half precision, flat images: a batch of the same
    size and dtype in [0, 1], finite, the same for the same seed."""
    from robustfeat.shifts.corruptions import corrupt

    x = {"random": torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(1)),
         "zeros": torch.zeros(n, c, h, w), "ones": torch.ones(n, c, h, w),
         "constant": torch.full((n, c, h, w), 0.5)}[fill].to(dtype)
    y = corrupt(x, name, severity, seed=seed)
    assert y.shape == (n, 3, h, w) and y.dtype == dtype
    assert torch.isfinite(y.float()).all() and (y.numel() == 0 or (y.min() >= 0 and y.max() <= 1))
    if seed is not None:
        assert torch.equal(y, corrupt(x, name, severity, seed=seed))


@FUZZ
@given(n=st.integers(0, 40), classes=st.integers(1, 5), mode=st.sampled_from(["random", "all-right", "all-wrong",
                                                                              "one-class"]),
       seed=st.integers(0, 1000))
def test_classification_metrics_on_edge_cases(n, classes, mode, seed):
    from robustfeat.metrics import accuracy, bootstrap_ci, error, expected_calibration_error

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n) if mode != "one-class" else np.zeros(n, dtype=int)
    probs = rng.dirichlet(np.ones(classes), n) if n else np.zeros((0, classes))
    pred = probs.argmax(1) if n else np.zeros(0, dtype=int)
    if mode == "all-right":
        pred = labels.copy()
    elif mode == "all-wrong":
        pred = labels + 1
    try:
        acc = accuracy(pred, labels)
    except RobustfeatError:
        assert n == 0
        return
    assert 0 <= acc <= 1 and math.isclose(acc + error(pred, labels), 1.0)
    assert acc == {"all-right": 1.0, "all-wrong": 0.0}.get(mode, acc)
    lo, hi = bootstrap_ci((pred == labels).astype(float), seed=seed)
    assert 0 <= lo <= acc <= hi <= 1
    ece = expected_calibration_error(probs, labels)
    assert 0 <= ece <= 1


@FUZZ
@given(n=st.integers(0, 12), d=st.integers(0, 6), seed=st.integers(0, 1000), scale=st.sampled_from([0.0, 1e-30, 1.0,
                                                                                                   1e30]))
def test_drift_and_agreement_metrics_on_edge_cases(n, d, seed, scale):
    from robustfeat.metrics import linear_cka
    from robustfeat.metrics.robustness import agreement

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * scale
    y = rng.normal(size=(n, d))
    for a, b in ((x, y), (x, x)):
        try:
            v = linear_cka(a, b)
        except RobustfeatError as e:
            assert str(e)
        else:
            assert math.isnan(v) or -1e-9 <= v <= 1 + 1e-9
        try:
            top1, kl = agreement(a, b)
        except RobustfeatError as e:
            assert str(e)
        else:
            assert 0 <= top1 <= 1 and (kl >= -1e-9 or math.isnan(kl))


@FUZZ
@given(errors=st.dictionaries(st.sampled_from(["fog", "snow", "zoom_blur"]),
                              st.dictionaries(st.integers(0, 6), st.one_of(st.floats(-0.5, 1.5), st.just(float("nan"))), max_size=5),
                              max_size=3),
       clean=st.one_of(st.floats(-0.1, 1.1), st.just(float("nan"))))
def test_corruption_error_metrics_never_crash(errors, clean):
    from robustfeat.metrics import corruption_errors, mean_corruption_error

    names = tuple(errors) or ("fog",)
    for call in (lambda: mean_corruption_error(errors, names),
                 lambda: corruption_errors(errors, clean, reference=errors, reference_clean_error=clean,
                                           reference_name="ref", corruptions=names)):
        try:
            call()
        except RobustfeatError as e:
            assert str(e)


def test_the_fuzzers_reach_the_valid_path():
    """Not every fuzzed input is refused: the strategies above also produce valid grids,
    configs and corrupted images (checked directly on a known-good example)."""
    from robustfeat.shifts.corruptions import corrupt
    from robustfeat.sweep import parse_grid

    assert len(parse_grid({"models": ["tiny-cnn"], "datasets": ["mnist-5k"], "methods": ["lora"],
                           "seeds": [0]}).trials) == 1
    assert corrupt(torch.rand(1, 3, 40, 40), "fog", 3).shape == (1, 3, 40, 40)
