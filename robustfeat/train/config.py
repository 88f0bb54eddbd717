"""TrainConfig: everything that determines a fine-tuning run (and so its checkpoint)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from robustfeat.errors import ConfigError


def _number(v: Any) -> bool:
    """A finite real number (not a bool, a string or None)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass(kw_only=True)
class TrainConfig:
    model: str = field(metadata={"help": "zoo name, local transformers folder, hf:ID or torchvision:NAME"})
    data: str = field(metadata={"help": "registered dataset name or a path (CSV/JSON, image folder)"})
    method: str = field(metadata={"help": "adapter method (robustfeat ls adapters)"})
    targets: list[str] | str | None = field(default=None, metadata={"help": "target_modules; default: the model's"})
    # Adapter hyper-parameters: None means the AdapterConfig default; giving one that the
    # method does not read is an error (AdapterConfig says which fields it reads).
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    shift: bool = False
    epochs: float = 1.0
    lr: float | None = field(default=None, metadata={"help": "learning rate; default: the method's (ls adapters)"})
    batch_size: int = 32
    max_examples: int | None = field(default=None, metadata={"help": "cap on training examples"})
    max_eval_examples: int | None = field(default=1000, metadata={"help": "cap on validation/test examples"})
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    seed: int = 0
    image_size: int | None = field(default=None, metadata={"help": "image side in px; default: the model's native"})
    max_length: int = 128
    text_column: str | None = None
    checkpoint_every: int = field(default=50, metadata={"help": "save resumable state every N steps"})

    def __post_init__(self) -> None:
        for name in ("model", "data", "method"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        positive_int = ("batch_size", "max_length", "checkpoint_every")
        for name in positive_int:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("max_examples", "max_eval_examples", "image_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{name} must be a positive integer or unset, got {v!r}")
        if not _number(self.epochs) or self.epochs <= 0:
            raise ConfigError(f"epochs must be a positive number, got {self.epochs!r}")
        if self.lr is not None and (not _number(self.lr) or self.lr <= 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not _number(self.warmup_ratio) or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be a number in [0, 1), got {self.warmup_ratio!r}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0):
            raise ConfigError(f"rank must be a positive integer or unset, got {self.rank!r}")
        if self.alpha is not None and (not _number(self.alpha) or self.alpha <= 0):
            raise ConfigError(f"alpha must be a positive number or unset, got {self.alpha!r}")
        if self.dropout is not None and (not _number(self.dropout) or not 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"dropout must be a number in [0, 1) or unset, got {self.dropout!r}")
        if not isinstance(self.shift, bool):
            raise ConfigError(f"shift must be true or false, got {self.shift!r}")
        if self.text_column is not None and (not isinstance(self.text_column, str) or not self.text_column):
            raise ConfigError(f"text_column must be a column name or unset, got {self.text_column!r}")
        t = self.targets
        if t is not None and not (isinstance(t, str) and t) and not (
                isinstance(t, list) and t and all(isinstance(x, str) and x for x in t)):
            raise ConfigError(f"targets must be a name, a list of names or unset, got {t!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s) {', '.join(unknown)}")
        return cls(**data)

    def digest(self) -> str:
        """Identifies the run: a resume must have the same digest."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
