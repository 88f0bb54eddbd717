"""Metrics: pure functions, each tested against hand-computed values."""

from robustfeat.metrics.classification import accuracy, bootstrap_ci, error, expected_calibration_error  # noqa: F401
from robustfeat.metrics.corruption import (  # noqa: F401
    ALEXNET_MEAN_ERROR,
    COMMON,
    EXTRA,
    CorruptionSummary,
    corruption_errors,
    mean_corruption_error,
)
from robustfeat.metrics.robustness import (  # noqa: F401
    effective_robustness,
    fit_robustness_line,
    forgetting,
    worst_domain,
)
