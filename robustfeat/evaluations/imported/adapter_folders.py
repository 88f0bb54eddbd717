"""Adapter folders made elsewhere: a PEFT folder (:class:`PeftSubject`, any PEFT method, merged
into its base by PEFT) and a ``save_adapters`` folder (:class:`AdaptersSubject`)."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from robustfeat.evaluations.imported.common import (ImportedCheckpointError, ImportedSubject, ImportOptions, _sha256,
                                                   check_base_family, head_size, read_safetensors, resolve_base)

#: PEFT task types and the family they make
PEFT_TASKS = {"SEQ_CLS": "text-classifier", "CAUSAL_LM": "causal-lm"}
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class PeftSubject(ImportedSubject):
    """A folder PEFT's ``save_pretrained`` wrote. ``task_type`` picks the model: ``SEQ_CLS``
    a transformers sequence classifier whose head (``modules_to_save``) the folder holds,
    ``CAUSAL_LM`` a causal LM, none a plain model of its base's family (an image classifier,
    or a backbone with robustfeat's head beside it, as ``robustfeat export`` writes)."""

    kind = "peft"

    @staticmethod
    def detect(path: Path) -> bool:
        """A folder whose adapter config is PEFT's (robustfeat's own names its format instead)."""
        try:
            return "peft_type" in json.loads((path / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError, TypeError):
            return False

    def __init__(self, path: str | os.PathLike, options: ImportOptions | None = None) -> None:
        from robustfeat.adapters.checkpoint import refuse_pickle

        p = Path(path).expanduser().absolute()
        refuse_pickle(p)
        self.config = self._read_config(p)
        weights = p / ADAPTER_WEIGHTS
        if not weights.is_file():
            legacy = p / "adapter_model.bin"
            if legacy.is_file():
                refuse_pickle(legacy)
            raise ImportedCheckpointError(f"'{path}' has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; save the adapter with "
                                          "PEFT's save_pretrained (safetensors, its default)")
        super().__init__(p, options)
        self.base = resolve_base(self.options.base or self.config.get("base_model_name_or_path"),
                                 f"the PEFT adapter '{path}'")
        self._built = self._build(None)  # every check, the base's shapes included, before any work
        _ = self.targets

    @staticmethod
    def _read_config(p: Path) -> dict[str, Any]:
        try:
            config = json.loads((p / ADAPTER_CONFIG).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ImportedCheckpointError(f"'{p / ADAPTER_CONFIG}' cannot be read ({e})") from None
        if not isinstance(config, dict) or "peft_type" not in config:
            raise ImportedCheckpointError(f"'{p / ADAPTER_CONFIG}' is not a PEFT adapter config (it has no peft_type)")
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        if config["peft_type"] not in PEFT_TYPE_TO_CONFIG_MAPPING:
            raise ImportedCheckpointError(f"'{p / ADAPTER_CONFIG}' has peft_type '{config['peft_type']}', which the installed PEFT "
                                          f"does not know ({', '.join(sorted(map(str, PEFT_TYPE_TO_CONFIG_MAPPING)))})")
        task = config.get("task_type")
        if task not in (None, *PEFT_TASKS, "FEATURE_EXTRACTION"):
            raise ImportedCheckpointError(f"'{p / ADAPTER_CONFIG}' has task_type '{task}'; robustfeat evaluates "
                                          f"{', '.join(PEFT_TASKS)} adapters and ones with no task type")
        return config

    @property
    def method(self) -> str:  # type: ignore[override]
        t = str(self.config["peft_type"]).lower()
        return "peft-dora" if t == "lora" and self.config.get("use_dora") else f"peft-{t}"

    @cached_property
    def weights_sha256(self) -> str:  # type: ignore[override]
        from robustfeat.data.cache import sha256_file

        return sha256_file(self.path / ADAPTER_WEIGHTS)

    @cached_property
    def _state(self) -> dict[str, torch.Tensor]:
        return read_safetensors(self.path / ADAPTER_WEIGHTS)

    @cached_property
    def _head_file(self) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """robustfeat's own head beside a backbone's adapter (``robustfeat export``)."""
        from robustfeat.export import HEAD_FILE

        f = self.path / HEAD_FILE
        return read_safetensors(f, metadata=True) if f.is_file() else None

    def _head_outputs(self) -> int | None:
        if self._head_file is not None:
            return head_size(self._head_file[0], "classifier")
        for head in self.config.get("modules_to_save") or []:
            n = head_size(self._state, head)
            if n is not None:
                return n
        return None

    @property
    def family(self) -> str:  # type: ignore[override]
        return self._family

    @cached_property
    def _family(self) -> str:
        task = self.config.get("task_type")
        if task in PEFT_TASKS:
            return PEFT_TASKS[task]
        from robustfeat.models.zoo import zoo_entry

        entry = zoo_entry(self.base.model)
        if entry is not None:
            return entry.family
        return "text-classifier" if self._head_file is not None else "image-classifier"

    def _base_handle(self, device=None):
        from robustfeat.models.zoo import hf_text_classifier, load_model

        o = self.options
        check_base_family(self.base, self._family, f"the PEFT adapter '{self.path}'")
        outputs = self._head_outputs() or max(self.bundle.num_labels, 2)
        if self.config.get("task_type") == "SEQ_CLS" and self.base.folder is not None:
            # PEFT's sequence classifier is transformers' own class, whatever head the zoo puts on the base
            handle = hf_text_classifier(str(self.base.folder), self.base.model, outputs, 0, o.max_length,
                                        source=self.base.spec)
        else:
            handle = load_model(self.base.model, num_labels=outputs, family=self._family, max_length=o.max_length,
                                image_size=o.image_size)
        if handle.info.family != self._family:
            raise ImportedCheckpointError(f"the base '{self.base.spec}' is a {handle.info.family} model, but the PEFT adapter "
                                          f"'{self.path}' is for a {self._family} one; pass the right --base")
        if device is not None:
            handle.to(device)
        handle.model.eval()
        return handle

    def _raw_image_net(self, handle) -> tuple | None:
        """For an adapter PEFT made on a plain timm/torchvision classifier (its paths are the
        network's own, its classifier in ``modules_to_save``): a copy of the base network with
        its classifier put back, sized as the adapter's, and the classifier's path. None when
        the adapter was made on robustfeat's image model (``robustfeat export``)."""
        from robustfeat.models.vision import ImageTaskModel

        if not isinstance(handle.model, ImageTaskModel):
            return None
        inner = [k.removeprefix("base_model.model.") for k in self._state]
        if any(k.startswith(("net.", "head.", "pretrained_head.")) for k in inner):
            return None
        import copy

        net = copy.deepcopy(handle.model.net)
        saved = list(self.config.get("modules_to_save") or [])
        gaps = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Identity) and n]
        head = next((p for p in gaps for m in saved if p == m or p.startswith(m + ".")), None)
        weight = self._state.get(f"base_model.model.{head}.weight") if head else None
        if weight is None:
            raise ImportedCheckpointError(
                f"the PEFT adapter '{self.path}' does not save the classifier of '{self.base.spec}' "
                f"({', '.join(gaps) or 'none found'}) in modules_to_save ({', '.join(saved) or 'none'}); it cannot be "
                "evaluated as a classifier of this base")
        bias = f"base_model.model.{head}.bias" in self._state
        _set_module(net, head, torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias))
        return net, head

    def _build(self, device: str | None) -> tuple:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer

        from robustfeat.adapters.identity import fingerprint

        self._check_data(self._family, self._head_outputs())
        handle = self._base_handle()
        self._base_fingerprint = fingerprint(handle.model, exclude=tuple(handle.head))
        prefix = ""
        if self._head_file is not None:
            prefix = self._head_file[1].get("backbone", "")
        raw = self._raw_image_net(handle)
        target = raw[0] if raw else handle.model.get_submodule(prefix) if prefix else handle.model
        import warnings

        try:
            with warnings.catch_warnings():  # PEFT reads a transformers attribute that is deprecated
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                peft_model = PeftModel.from_pretrained(target, str(self.path), is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0][:300]
            raise ImportedCheckpointError(f"the PEFT adapter '{self.path}' does not fit the base '{self.base.spec}' ({first}); "
                                          "pass the --base it was trained on") from None
        inner = peft_model.base_model.model
        adapted = [n for n, m in inner.named_modules() if isinstance(m, BaseTunerLayer)]
        if not adapted:
            raise ImportedCheckpointError(f"the PEFT adapter '{self.path}' adapts no layer of the base '{self.base.spec}'")
        merged = peft_model.merge_and_unload()
        if raw:  # the classifier moves to the task head, the rest is the backbone
            net, head_path = merged, raw[1]
            handle.model.head = net.get_submodule(head_path)
            _set_module(net, head_path, torch.nn.Identity())
            handle.model.net = net
            prefix = "net"
        elif prefix:
            setattr(handle.model, prefix, merged)
            missing = set(n for n in handle.model.state_dict() if not n.startswith(prefix + "."))
            head, _ = self._head_file
            if set(head) != missing:
                raise ImportedCheckpointError(f"'{self.path}': its head file holds {sorted(head)}, the model's head "
                                              f"{sorted(missing)}")
            handle.model.load_state_dict(head, strict=False)
        else:
            handle.model = merged
        self._notes = self._match_labels(handle)
        paths = [f"{prefix}.{n}" if prefix else n for n in adapted]
        return handle, paths


def _set_module(model: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class AdaptersSubject(ImportedSubject):
    """A folder ``save_adapters`` wrote (robustfeat's adapter format, without a run record):
    its base from ``base`` or the folder's own base id, its data from ``data``. The base's
    fingerprint must match the one the folder records."""

    kind = "adapters"

    @staticmethod
    def detect(path: Path) -> bool:
        from robustfeat.adapters.checkpoint import FORMAT

        try:
            return json.loads((path / ADAPTER_CONFIG).read_text()).get("format") == FORMAT
        except (OSError, ValueError, TypeError, AttributeError):
            return False

    def __init__(self, path: str | os.PathLike, options: ImportOptions | None = None) -> None:
        from robustfeat.adapters.checkpoint import read_checkpoint

        p = Path(path).expanduser().absolute()
        self.meta, tensors = read_checkpoint(p)  # safe, complete and finite before anything else
        heads = [head_size(tensors, h) for h in self.meta.get("modules_to_save") or []]
        self._outputs = next((n for n in heads if n is not None), None)
        super().__init__(p, options)
        self.base = resolve_base(self.options.base or self.meta["base_model"].get("id"),
                                 f"the adapter folder '{path}'")
        self._built = self._build(None)
        _ = self.targets

    method = property(lambda self: self.meta["method"])  # type: ignore[assignment]

    @cached_property
    def weights_sha256(self) -> str:  # type: ignore[override]
        from robustfeat.adapters.checkpoint import WEIGHTS_NAME

        return _sha256(self.path / WEIGHTS_NAME)

    @property
    def family(self) -> str:  # type: ignore[override]
        return self._family

    def _base_handle(self, device=None):
        from robustfeat.models.zoo import load_model

        o = self.options
        handle = load_model(self.base.model, num_labels=self._outputs or max(self.bundle.num_labels, 2),
                            seed=o.data_seed, max_length=o.max_length, image_size=o.image_size)
        if device is not None:
            handle.to(device)
        handle.model.eval()
        return handle

    def _build(self, device: str | None) -> tuple:
        from robustfeat.adapters.checkpoint import load_adapters
        from robustfeat.adapters.identity import fingerprint
        from robustfeat.errors import RobustfeatError as _Err

        handle = self._base_handle()
        self._family = handle.info.family
        self._check_data(self._family, self._outputs)
        self._base_fingerprint = fingerprint(handle.model, exclude=tuple(self.meta.get("modules_to_save") or ()))
        try:
            load_adapters(handle.model, self.path)
        except _Err as e:
            raise ImportedCheckpointError(f"{e} (base: --base {self.base.spec})") from None
        self._notes = self._match_labels(handle)
        return handle, list(self.meta["targets"])
