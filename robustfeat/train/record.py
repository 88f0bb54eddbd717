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

    # --- where its data is -------------------------------------------------------------------
    @property
    def data_path(self) -> str | None:
        """The absolute path of the run's data when it is a user file or folder (None for a
        registered dataset)."""
        return (self.raw["data"].get("provenance") or {}).get("path")

    def data_source(self, data: str | None = None) -> str:
        """Where the run's data is now: ``data`` when given (the same data in a new place), a
        registered name as it is, else the recorded absolute path, else the path as given at
        fine-tuning (from the working directory). The fingerprint decides whether it is the
        same data (:meth:`check_data`)."""
        from robustfeat.registry import DATASETS

        if data:
            return data
        spec = self.data
        if spec in DATASETS or spec.startswith("hf:"):
            return spec
        for place in (self.data_path, spec):
            if place and Path(place).expanduser().exists():
                return place
        raise TrainingError(f"file not found: {self.data_path or spec} (the data '{self.path}' was fine-tuned on); "
                            "if it moved, pass --data with its new place")

    def check_data(self, data, source: str) -> None:
        """Refuse ``data`` (a loaded bundle, from ``source``) unless it is the data the run was
        fine-tuned on, by fingerprint; the fix the message gives works as printed."""
        if data.fingerprint == self.data_fingerprint:
            return
        from robustfeat.registry import DATASETS

        if source in DATASETS and source != self.data:
            raise TrainingError(f"'{source}' is not the data '{self.path}' was fine-tuned on ({self.data}); leave "
                                f"out --data, or give --data with where {self.data} is now")
        if source in DATASETS:
            raise TrainingError(f"the data of '{self.path}' changed since training (fingerprint differs); run "
                                f"`robustfeat data prepare {source} --force` to fetch it again, or fine-tune again")
        raise TrainingError(f"'{source}' is not the data '{self.path}' was fine-tuned on (its fingerprint differs); "
                            "pass --data with the file it was fine-tuned on, or fine-tune again on this one")

    def config_for(self, data: str | None = None):
        """The run's training configuration reading its data from where it is now."""
        import dataclasses

        source = self.data_source(data)
        config = self.config
        return config if source == config.data else dataclasses.replace(config, data=source)

    # --- rebuild ----------------------------------------------------------------------------
    def rebuild(self, device: str | None = None, progress: bool = False, data: str | None = None):
        """The fine-tuned model (the base with the trained adapters loaded) and its data
        (``data``: where the run's data is now, when it moved); refuses data other than the
        data it was fine-tuned on."""
        from robustfeat.adapters import load_adapters, remove_adapters
        from robustfeat.environment import pick_device
        from robustfeat.train.loop import build

        config = self.config_for(data)
        handle, bundle, _ = build(config, pick_device(device), progress)
        remove_adapters(handle.model)  # build() injected fresh ones; load the trained ones instead
        load_adapters(handle.model, self.path)
        self.check_data(bundle, config.data)
        return handle, bundle
