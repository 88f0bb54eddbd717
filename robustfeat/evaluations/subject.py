"""What an evaluation evaluates: a :class:`Subject`, the fine-tuned model together with the
base it came from, its data, its identity and its fingerprints. Evaluations see only this
interface, never a folder layout, so new kinds of checkpoint (made by other tools) are new
subclasses here and no evaluation changes. :class:`RunSubject` is a folder written by
``robustfeat finetune``."""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from robustfeat.errors import RobustfeatError


class Subject:
    """One checkpoint under evaluation. Subclasses fill in the identity and the loaders."""

    #: where it lives (shown in provenance)
    path: Path

    # --- identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """Its name in results: stable for the same weights and configuration, distinct otherwise."""
        raise NotImplementedError

    method: str
    model: str  # the model as asked for (zoo name, folder, hf:ID)
    family: str
    data: str  # the data as asked for (dataset name or file)
    data_name: str
    data_fingerprint: str
    label_names: list[str]
    seed: int
    base_fingerprint: str
    weights_sha256: str
    #: adapted layer paths ([] for methods without targets: full, linear)
    targets: list[str]

    #: whether its base model is known (drift and forgetting need it)
    has_base: bool = True

    def reference_facts(self) -> dict[str, Any]:
        """What a CE reference must share with this subject to normalise its errors."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """Its entry in the results folder's ``results.json``."""
        raise NotImplementedError

    @property
    def base_key(self) -> str:
        """Identifies the base model and the load options that shape its inputs."""
        raise NotImplementedError

    # --- models --------------------------------------------------------------------------------
    def load(self, device: str | None) -> tuple:
        """(the fine-tuned model's handle, its data bundle)."""
        raise NotImplementedError

    def load_base(self, device: str | None):
        """The base model's handle: the same pretrained weights without fine-tuning."""
        raise NotImplementedError

    def full_data(self, seed: int):
        """Its fine-tuning data in full (every split, untrimmed), read from where it is now and
        as it was read for training (its columns): what the deduplication against it needs."""
        from robustfeat.data.api import load_dataset

        return load_dataset(self.data, seed=seed, progress=False)


class RunSubject(Subject):
    """A finished run folder of ``robustfeat finetune`` (checkpoint + ``robustfeat.json``)."""

    def __init__(self, path: str | os.PathLike, data: str | None = None) -> None:
        from robustfeat.adapters.checkpoint import read_checkpoint, refuse_pickle
        from robustfeat.train.record import RunRecord

        p = Path(path).expanduser().absolute()
        refuse_pickle(p)  # a pickle file or folder is named as one, before anything reads it
        if not p.is_dir():
            raise RobustfeatError(f"'{path}' is not a checkpoint folder (it {'is a file' if p.exists() else 'does not exist'}); "
                                  "pass a folder written by `robustfeat finetune`")
        self.path = p
        self.record = RunRecord.read(p)
        read_checkpoint(p)  # weights present, safe (never a pickle), complete and finite, before any work
        self.data_override = data
        self._check_user_data()

    def _check_user_data(self) -> None:
        """A user file or folder is found (its recorded place, or ``data``) and is the data the
        run was fine-tuned on, by fingerprint, before anything is written; registered datasets
        are checked when loaded."""
        from robustfeat.data.api import load_dataset
        from robustfeat.registry import DATASETS

        config = self.record.config_for(self.data_override)
        if config.data in DATASETS and config.data != self.record.data:
            self.record.check_data(SimpleNamespace(fingerprint=None), config.data)  # another registered dataset
        if config.data in DATASETS or config.data.startswith("hf:"):
            return
        bundle = load_dataset(config.data, seed=config.seed, max_examples=config.max_examples,
                              max_eval_examples=config.max_eval_examples, text_column=config.text_column,
                              label_column=config.label_column, image_column=config.image_column, progress=False)
        self.record.check_data(bundle, config.data)

    def full_data(self, seed: int):
        from robustfeat.data.api import load_dataset

        config = self.record.config_for(self.data_override)
        return load_dataset(config.data, seed=seed, text_column=config.text_column, label_column=config.label_column,
                            image_column=config.image_column, progress=False)

    @cached_property
    def _adapter_config(self) -> dict[str, Any]:
        from robustfeat.adapters.checkpoint import CONFIG_NAME

        try:
            return json.loads((self.path / CONFIG_NAME).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    @cached_property
    def weights_sha256(self) -> str:  # type: ignore[override]
        from robustfeat.adapters.checkpoint import WEIGHTS_NAME
        from robustfeat.data.cache import sha256_file

        return sha256_file(self.path / WEIGHTS_NAME)

    @property
    def id(self) -> str:
        from robustfeat.results import safe_name

        h = hashlib.sha256(self.record.config_digest.encode())
        h.update(self.weights_sha256.encode())
        return f"{safe_name(self.path.name)}-{h.hexdigest()[:8]}"

    method = property(lambda self: self.record.method)  # type: ignore[assignment]
    model = property(lambda self: self.record.model)  # type: ignore[assignment]
    family = property(lambda self: self.record.family)  # type: ignore[assignment]
    data = property(lambda self: self.record.data)  # type: ignore[assignment]
    data_name = property(lambda self: self.record.data_name)  # type: ignore[assignment]
    data_fingerprint = property(lambda self: self.record.data_fingerprint)  # type: ignore[assignment]
    label_names = property(lambda self: self.record.label_names)  # type: ignore[assignment]
    seed = property(lambda self: self.record.seed)  # type: ignore[assignment]

    @property
    def base_fingerprint(self) -> str:  # type: ignore[override]
        return (self._adapter_config.get("base_model") or {}).get("fingerprint", "unknown")

    @property
    def targets(self) -> list[str]:  # type: ignore[override]
        return list(self._adapter_config.get("targets") or [])

    def reference_facts(self) -> dict[str, Any]:
        r = self.record
        return {"model": r.model, "data": r.data_name, "data fingerprint": r.data_fingerprint,
                "image size": r.image_size, "test examples kept (max_eval_examples)": r.max_eval_examples}

    def provenance(self) -> dict[str, Any]:
        r = self.record
        return {"path": str(self.path), "method": r.method, "model": r.model, "data": r.data_name, "seed": r.seed,
                "config_digest": r.config_digest or None, "weights_sha256": self.weights_sha256,
                "base_fingerprint": self.base_fingerprint, "data_fingerprint": r.data_fingerprint,
                "validation": r.validation or None,
                "trained_with": {"git_revision": r.git_revision, "versions": r.versions or None}}

    @property
    def base_key(self) -> str:
        r = self.record
        parts = [r.model, self.base_fingerprint, str(r.config_dict.get("image_size")), str(r.max_length), str(r.seed)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def load(self, device: str | None) -> tuple:
        return self.record.rebuild(device, progress=False, data=self.data_override)

    def load_base(self, device: str | None):
        from robustfeat.environment import pick_device
        from robustfeat.models.zoo import load_model

        r = self.record
        return load_model(r.model, num_labels=max(len(r.label_names), 2), seed=r.seed, max_length=r.max_length or 128,
                          image_size=r.config_dict.get("image_size"), device=pick_device(device))


class PlannedSubject(Subject):
    """A checkpoint that a training configuration *will* make, before it is trained: the base
    with fresh adapters. It lets a sweep check its evaluation settings (shift names, options
    that name columns) against the real model and data before any trial runs; it is never
    evaluated."""

    weights_sha256 = ""
    base_fingerprint = "planned"

    def __init__(self, config) -> None:
        self.config = config
        self.path = Path(f"<{config.model}/{config.data}/{config.method}>")
        self._built: tuple | None = None

    def _build(self, device: str | None = None) -> tuple:
        if self._built is None:
            from robustfeat.environment import pick_device
            from robustfeat.train.loop import build

            self._built = build(self.config, pick_device(device), progress=False)
        return self._built

    @property
    def id(self) -> str:
        return "planned"

    method = property(lambda self: self.config.method)  # type: ignore[assignment]
    model = property(lambda self: self.config.model)  # type: ignore[assignment]
    data = property(lambda self: self.config.data)  # type: ignore[assignment]
    seed = property(lambda self: self.config.seed)  # type: ignore[assignment]
    family = property(lambda self: self._build()[0].info.family)  # type: ignore[assignment]
    data_name = property(lambda self: self._build()[1].name)  # type: ignore[assignment]
    data_fingerprint = property(lambda self: self._build()[1].fingerprint)  # type: ignore[assignment]
    label_names = property(lambda self: list(self._build()[1].label_names or []))  # type: ignore[assignment]

    @property
    def targets(self) -> list[str]:  # type: ignore[override]
        from robustfeat.registry import ADAPTERS

        if not ADAPTERS.get(self.config.method).uses_targets:
            return []
        from robustfeat.adapters.checkpoint import adapter_state

        return list(adapter_state(self._build()[0].model).targets)

    def reference_facts(self) -> dict[str, Any]:
        return {}

    def provenance(self) -> dict[str, Any]:
        return {}

    @property
    def base_key(self) -> str:
        return "planned"

    def load(self, device: str | None) -> tuple:
        handle, data, _ = self._build(device)
        return handle, data

    def load_base(self, device: str | None):
        return self._build(device)[0]


class ScaledSubject(RunSubject):
    """A finished run with its fine-tuning update scaled by ``alpha`` (adapter-scale curves,
    WiSE-FT for adapters): 0 is the base model (with the run's trained head), 1 the run as
    trained, values above 1 extrapolate. Each method says how its update scales
    (:meth:`~robustfeat.adapters.base.AdapterMethod.scale`)."""

    def __init__(self, path: str | os.PathLike, alpha: float, data: str | None = None) -> None:
        from robustfeat.registry import ADAPTERS

        super().__init__(path, data=data)
        alpha = float(alpha)
        if not (alpha == alpha and abs(alpha) < 1e6):
            raise RobustfeatError(f"an adapter scale must be a finite number, got {alpha!r}")
        if not ADAPTERS.get(self.method).scalable():
            raise RobustfeatError(f"'{self.path}' was fine-tuned with {self.method}, which has no fine-tuning update "
                                  "to scale (scale curves are for the adapter methods and full fine-tuning)")
        self.alpha = alpha

    @property
    def id(self) -> str:
        return f"{super().id}-x{self.alpha:g}"

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "scale": self.alpha}

    def load(self, device: str | None) -> tuple:
        from robustfeat.registry import ADAPTERS

        handle, data = super().load(device)
        if self.alpha != 1.0:
            base = self.load_base(device).model if self.method == "full" else None
            ADAPTERS.get(self.method).scale(handle.model, self.alpha, base=base, keep=tuple(handle.head))
        return handle, data
