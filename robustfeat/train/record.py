"""The run record: ``robustfeat.json`` beside a finished checkpoint, typed. Read and
validate it (:meth:`RunRecord.read`), ask what it says (method, model, data, seed, ...),
whether it was made from a given configuration (:meth:`RunRecord.matches`), and rebuild the
fine-tuned model and its data from it (:meth:`RunRecord.rebuild`). Nothing else walks the
record's dictionary."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustfeat.errors import TrainingError

RUN_FILE = "robustfeat.json"
RUN_FORMAT = "robustfeat.run"


_REQUIRED = object()


class _Field:
    """A value the record holds as it is: ``raw[section][key]`` (``raw[key]`` for section
    None); with a default, a missing key reads as the default."""

    def __init__(self, section: str | None, key: str, default: Any = _REQUIRED, doc: str = "") -> None:
        self.section, self.key, self.default = section, key, default
        self.__doc__ = doc or f"the run record's {section + '.' if section else ''}{key}"

    def __get__(self, record: RunRecord | None, owner: type) -> Any:
        if record is None:
            return self
        where = record.raw if self.section is None else record.raw[self.section]
        return where[self.key] if self.default is _REQUIRED else where.get(self.key, self.default)


@dataclass(frozen=True)
class RunRecord:
    path: Path
    raw: dict[str, Any]

    # --- read and validate -------------------------------------------------------------------
    @classmethod
    def read(cls, path: str | os.PathLike) -> RunRecord:
        """The record of the finished run in ``path``; one clear error when there is none."""
        p = Path(path)
        if not p.is_dir():
            raise TrainingError(f"'{path}' is not a run folder (it {'is a file' if p.exists() else 'does not exist'}); "
                                "pass a folder written by robustfeat finetune")
        try:
            raw = json.loads((p / RUN_FILE).read_text())
        except FileNotFoundError:
            raise TrainingError(f"'{path}' has no {RUN_FILE}; it is not a finished robustfeat run") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TrainingError(f"'{p / RUN_FILE}' is damaged ({e})") from None
        if not isinstance(raw, dict) or raw.get("format") != RUN_FORMAT:
            raise TrainingError(f"'{p / RUN_FILE}' is not a robustfeat run record")
        for key in ("config", "model", "data"):
            if not isinstance(raw.get(key), dict):
                raise TrainingError(f"'{p / RUN_FILE}' lacks its '{key}' section; fine-tune again")
        return cls(p, raw)

    @classmethod
    def finished(cls, path: str | os.PathLike, config) -> bool:
        """Whether ``path`` holds a finished run made from exactly ``config`` (a TrainConfig)."""
        try:
            return cls.read(path).matches(config)
        except TrainingError:
            return False

    def matches(self, config) -> bool:
        return self.config_dict == json.loads(json.dumps(config.to_dict()))

    # --- what it says --------------------------------------------------------------------
    @property
    def config_dict(self) -> dict[str, Any]:
        return self.raw["config"]

    @property
    def config(self):
        from robustfeat.train.config import TrainConfig

        return TrainConfig.from_dict(self.config_dict)

    method = _Field("config", "method")
    model = _Field("config", "model", doc="The model as fine-tuning was asked for it (a zoo name, a folder, ``hf:ID``).")
    family = _Field("model", "family")
    data = _Field("config", "data", doc="The data as fine-tuning was asked for it (a dataset name or a file).")
    data_name = _Field("data", "name")
    data_fingerprint = _Field("data", "fingerprint")
    config_digest = _Field(None, "config_digest", "")
    max_length = _Field("config", "max_length", None)
    max_eval_examples = _Field("config", "max_eval_examples", None)
    git_revision = _Field(None, "git_revision", None)

    @property
    def label_names(self) -> list[str]:
        return list(self.raw["data"].get("label_names") or [])

    @property
    def seed(self) -> int:
        return int(self.raw.get("seed", self.config_dict.get("seed", 0)))

    @property
    def image_size(self) -> int | None:
        """The image side the model was built for (the native size when none was asked)."""
        return self.raw["model"].get("image_size") or self.config_dict.get("image_size")

    @property
    def validation(self) -> dict[str, Any]:
        return dict(self.raw.get("validation") or {})

    @property
    def steps(self) -> int:
        return int(self.raw.get("steps", 0))

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.raw.get("versions") or {})

    # --- rebuild ----------------------------------------------------------------------------
    def rebuild(self, device: str | None = None, progress: bool = False):
        """The fine-tuned model (the base with the trained adapters loaded) and its data;
        refuses data that changed since training."""
        from robustfeat.adapters import load_adapters, remove_adapters
        from robustfeat.environment import pick_device
        from robustfeat.train.loop import build

        handle, data, _ = build(self.config, pick_device(device), progress)
        remove_adapters(handle.model)  # build() injected fresh ones; load the trained ones instead
        load_adapters(handle.model, self.path)
        if data.fingerprint != self.data_fingerprint:
            raise TrainingError(f"the data of '{self.path}' changed since training (fingerprint differs); "
                                f"run `robustfeat data prepare {self.data} --force` or retrain")
        return handle, data
