"""Fine-tuning: TrainConfig, the resumable loop, and reloading finished runs."""

from robustfeat.train.config import TrainConfig  # noqa: F401
from robustfeat.train.loop import RunResult, finetune, load_run, read_run, validation_score  # noqa: F401
from robustfeat.train.record import RunRecord  # noqa: F401
