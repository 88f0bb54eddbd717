"""TrainConfig: everything that determines a fine-tuning run (and so its checkpoint)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, field, fields, make_dataclass
from typing import Any

from robustfeat.errors import ConfigError


def _number(v: Any) -> bool:
    """A finite real number (not a bool, a string or None)."""
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


#: The run's own fields; the adapter hyperparameters (rank, alpha, ...) come from AdapterConfig's
#: declarations (robustfeat.adapters.config.hyperparameters), each "unset" (None, or False for a
#: switch) unless given, which means AdapterConfig's default.
_HEAD = [
    ("model", str, field(metadata={"help": "zoo name, local transformers folder, hf:ID or torchvision:NAME"})),
    ("data", str, field(metadata={"help": "registered dataset name or a path (CSV/JSON, image folder)"})),
    ("method", str, field(metadata={"help": "adapter method (robustfeat ls adapters)"})),
    ("targets", list[str] | str | None, field(default=None, metadata={"help": "target_modules; default: the model's"})),
]
_TAIL = [
    ("epochs", float, field(default=1.0, metadata={"help": "passes over the training data"})),
    ("lr", float | None, field(default=None, metadata={"help": "learning rate; default: the method's (ls adapters)"})),
    ("batch_size", int, field(default=32, metadata={"help": "examples per step"})),
    ("max_examples", int | None, field(default=None, metadata={"help": "cap on training examples"})),
    ("max_eval_examples", int | None, field(default=1000, metadata={"help": "cap on validation/test examples"})),
    ("weight_decay", float, field(default=0.0, metadata={"help": "AdamW weight decay"})),
    ("warmup_ratio", float, field(default=0.06, metadata={"help": "share of the steps of linear warm-up"})),
    ("seed", int, field(default=0, metadata={"help": "seed for data order, splits and init"})),
    ("image_size", int | None, field(default=None, metadata={"help": "image side in px; default: the model's native"})),
    ("max_length", int, field(default=128, metadata={"help": "max tokens per text"})),
    ("text_column", str | None, field(default=None, metadata={"help": "text column of a CSV/JSON dataset"})),
    ("label_column", str, field(default="label", metadata={"help": "label column of a CSV/JSON dataset"})),
    ("image_column", str, field(default="image", metadata={"help": "image column of a saved datasets folder"})),
    ("checkpoint_every", int, field(default=50, metadata={"help": "save resumable state every N steps"})),
]


#: fields added after runs were first recorded, with the default that leaves them out of to_dict
LATER_FIELDS = {"label_column": "label", "image_column": "image"}


def _hyperparameter_fields() -> list[tuple[str, Any, Any]]:
    from robustfeat.adapters.config import hyperparameters

    out = []
    for f in hyperparameters():
        kind = f.metadata["type"]
        unset = False if kind is bool else None
        out.append((f.name, kind if kind is bool else kind | None,
                    field(default=unset, metadata={"help": f.metadata["help"], "hyperparameter": True})))
    return out


class _TrainConfigMethods:
    """Validation and (de)serialisation of :data:`TrainConfig`."""

    def __post_init__(self) -> None:
        from robustfeat.adapters.config import check_hyperparameter, hyperparameters

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
        for f in hyperparameters():  # validated as AdapterConfig validates them
            v = getattr(self, f.name)
            if v is not None:
                check_hyperparameter(f.name, v)
        if self.text_column is not None and (not isinstance(self.text_column, str) or not self.text_column):
            raise ConfigError(f"text_column must be a column name or unset, got {self.text_column!r}")
        for name in ("label_column", "image_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a column name, got {getattr(self, name)!r}")
        t = self.targets
        if t is not None and not (isinstance(t, str) and t) and not (
                isinstance(t, list) and t and all(isinstance(x, str) and x for x in t)):
            raise ConfigError(f"targets must be a name, a list of names or unset, got {t!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        # one spelling per value: epochs=2 from Python and --epochs 2 (2.0) are the same run
        floats = {"epochs", "lr", "weight_decay", "warmup_ratio"} | {
            f.name for f in hyperparameters() if f.metadata["type"] is float}
        for name in floats:
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                setattr(self, name, float(v))

    def adapter_kwargs(self) -> dict[str, Any]:
        """The hyperparameters given (the others stay at AdapterConfig's defaults)."""
        from robustfeat.adapters.config import hyperparameters

        return {f.name: getattr(self, f.name) for f in hyperparameters()
                if getattr(self, f.name) is not None and getattr(self, f.name) is not False}

    def to_dict(self) -> dict[str, Any]:
        """Every field; the fields added after runs were first recorded are left out at their
        defaults, so a run's digest (and a resume) does not change with them."""
        d = asdict(self)
        for name, default in LATER_FIELDS.items():
            if d.get(name) == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training config field(s) {', '.join(unknown)}")
        return cls(**data)

    def digest(self) -> str:
        """Identifies the run: a resume must have the same digest."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


#: Everything that determines a fine-tuning run (and so its checkpoint).
TrainConfig = make_dataclass("TrainConfig", [*_HEAD, *_hyperparameter_fields(), *_TAIL], bases=(_TrainConfigMethods,),
                             kw_only=True)
TrainConfig.__module__ = __name__
TrainConfig.__qualname__ = "TrainConfig"
TrainConfig.__doc__ = ("Everything that determines a fine-tuning run (and so its checkpoint): the model, data and "
                       "method, the adapter hyperparameters (declared in AdapterConfig), and the training fields.")
