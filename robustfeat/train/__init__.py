"""Fine-tuning: TrainConfig, the resumable loop, and reloading finished runs."""

from robustfeat.train.config import TrainConfig  # noqa: F401
from robustfeat.train.loop import RunResult, evaluate, finetune, load_run, read_run  # noqa: F401
