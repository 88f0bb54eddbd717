"""Metrics: pure functions, each tested against hand-computed values."""

from robustfeat.metrics.classification import (  # noqa: F401
    accuracy,
    bootstrap_ci,
    bootstrap_perplexity,
    error,
    expected_calibration_error,
    wilson_interval,
)
from robustfeat.metrics.corruption_errors import (  # noqa: F401
    ALEXNET_MEAN_ERROR,
    COMMON,
    EXTRA,
    CorruptionSummary,
    corruption_errors,
    mean_corruption_error,
)
from robustfeat.metrics.drift import effective_rank, geometry_retention, intruder_dimensions, linear_cka, relative_change  # noqa: F401
from robustfeat.metrics.robustness import (  # noqa: F401
    agreement,
    effective_robustness,
    fit_robustness_line,
    forgetting,
    worst_domain,
)
