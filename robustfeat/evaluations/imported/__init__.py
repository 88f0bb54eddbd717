"""Checkpoints made by other tools, as subjects of evaluation. :class:`PeftSubject` is a PEFT
adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), whatever PEFT method
made it. The adapter is loaded onto its base by PEFT itself and merged into the base's own
weights, so every evaluation reads it as it reads a robustfeat run: the same model class,
the same layer names, the change in the merged weight of every adapted layer (drift),
whatever method made it.

A PEFT folder records its base (``base_model_name_or_path``, or ``base=`` / ``--base``) but
not its data: the evaluation data come from ``data=`` (``--data``). The base may be a zoo
name, a hub id that a zoo entry declares as its own (``robustfeat ls models``), or a local
transformers folder; nothing is downloaded."""


from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from robustfeat.evaluations.imported.adapter_folders import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_TASKS, AdaptersSubject,
                                                            PeftSubject)
from robustfeat.evaluations.imported.common import (BASE_FORMS, Base, ImportedCheckpointError, ImportedSubject, ImportOptions,
                                                   changed_layers, check_base_family, folder_family, head_size,
                                                   read_safetensors, resolve_base, _sha256, _shapes)
from robustfeat.evaluations.imported.full_models import (TRANSFORMERS_WEIGHTS, PretrainedSubject, WeightsSubject,
                                                        transformers_handle)

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "BASE_FORMS", "IMPORTED_KINDS", "PEFT_TASKS", "TRANSFORMERS_WEIGHTS",
           "AdaptersSubject", "Base", "ImportOptions", "ImportedCheckpointError", "ImportedSubject", "PeftSubject",
           "PretrainedSubject", "WeightsSubject", "changed_layers", "check_base_family", "folder_family", "head_size",
           "imported_info", "peft_info", "read_safetensors", "resolve_base", "transformers_handle"]


def peft_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a PEFT adapter folder holds (``robustfeat info``), read without its base or data."""
    from robustfeat.adapters.checkpoint import refuse_pickle

    p = Path(path).expanduser().absolute()
    refuse_pickle(p)
    config = PeftSubject._read_config(p)
    weights = p / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ImportedCheckpointError(f"'{path}' has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
    shapes = _shapes(weights)
    targets = config.get("target_modules")
    return {"kind": "peft", "peft_type": config["peft_type"], "task_type": config.get("task_type"),
            "use_dora": bool(config.get("use_dora")), "base_model_name_or_path": config.get("base_model_name_or_path"),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "modules_to_save": config.get("modules_to_save") or [], "rank": config.get("r"),
            "tensors": len(shapes), "num_tensor_elements": sum(int(torch.Size(s).numel()) for s in shapes.values()),
            "peft_version": config.get("peft_version"),
            "weights_sha256": _sha256(weights)}


def imported_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """What a checkpoint made elsewhere holds (``robustfeat info``), read without its base or
    data; None when ``path`` is none of those kinds (a robustfeat run or adapter folder)."""
    from robustfeat.adapters.checkpoint import refuse_pickle

    p = Path(path).expanduser().absolute()
    if PeftSubject.detect(p):
        return peft_info(p)
    if PretrainedSubject.detect(p) or WeightsSubject.detect(p):
        refuse_pickle(p)
        if p.is_file():
            files = [p]
            info: dict[str, Any] = {"kind": "weights"}
        else:
            files = sorted(p.glob("model*.safetensors"))
            if not files:
                raise ImportedCheckpointError(f"'{path}' has a config.json but no model.safetensors")
            try:
                config = json.loads((p / "config.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ImportedCheckpointError(f"'{p / 'config.json'}' is not valid JSON ({e})") from None
            info = {"kind": "transformers", "architectures": config.get("architectures") or [],
                    "model_type": config.get("model_type"), "num_labels": len(config.get("id2label") or {}) or None}
        shapes = [shape for f in files for shape in _shapes(f).values()]
        tensors, elements = len(shapes), sum(int(torch.Size(shape).numel()) for shape in shapes)
        return {**info, "tensors": tensors, "num_tensor_elements": elements,
                "weights_sha256": {f.name: _sha256(f) for f in files}}
    return None




#: the kinds of checkpoint made elsewhere that ``evaluate`` reads, tried in order
IMPORTED_KINDS: tuple[type[ImportedSubject], ...] = (PeftSubject, AdaptersSubject, PretrainedSubject, WeightsSubject)
