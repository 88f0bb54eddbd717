"""The checkpoint format: a folder with ``adapter_config.json`` and
``adapter_model.safetensors``. No pickle is ever read.

``adapter_config.json`` records the method and its config, the resolved targets, the
library versions, and the base model's identifier and fingerprint (a SHA-256 over the
names, shapes, dtypes and bytes of the base weights). Loading refuses a base model whose
fingerprint differs.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustfeat.adapters.config import AdapterConfig
from robustfeat.adapters.identity import fingerprint, structure, under
from robustfeat.adapters.model import (
    adapter_state,
    has_adapters,
    inject_adapters,
    remove_adapters,
)
from robustfeat.environment import library_versions
from robustfeat.errors import BaseModelMismatchError, CheckpointError, RobustfeatError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "robustfeat.adapter"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".tar"}


# --- what a checkpoint stores ---------------------------------------------------------
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a checkpoint stores: adapter parameters, ``modules_to_save``, all
    weights for full fine-tuning, and the persistent buffers (BatchNorm statistics move
    during training even when the weights are frozen)."""
    state = adapter_state(model)
    tensors: dict[str, torch.Tensor] = {}
    if state.method.trainable_by_default():
        tensors.update(dict(model.named_parameters()))
    for path, handle in state.method.handles(model):
        for name, p in handle.adapter_parameters().items():
            tensors[f"{path}.{name}"] = p
    for path in state.modules_to_save:
        for name, p in model.get_submodule(path).named_parameters():
            tensors[f"{path}.{name}"] = p
    persistent = set(model.state_dict(keep_vars=True))
    for name, b in model.named_buffers():
        if name in persistent and b is not None and b.numel():
            tensors[name] = b
    return tensors


def _base_id(model: nn.Module, base_id: str | None) -> str:
    if base_id:
        return base_id
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "_name_or_path", "") or getattr(cfg, "name_or_path", "")
    return name or type(model).__name__


# --- save -----------------------------------------------------------------------------
def save_adapters(model: nn.Module, path: str | os.PathLike, *, base_id: str | None = None, overwrite: bool = False) -> Path:
    """Write the model's adapters to the folder ``path``.

    The folder is written next to its final place and swapped in at the end, so a
    crash never leaves a half-written checkpoint. An existing checkpoint is replaced
    only with ``overwrite=True``; a non-empty folder that is not a checkpoint never is.
    """
    from safetensors.torch import save_file

    state = adapter_state(model)
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"'{path}' exists and is not a folder; choose another path")
        if any(path.iterdir()):
            if not (path / CONFIG_NAME).exists():
                raise CheckpointError(
                    f"'{path}' is a non-empty folder that is not a robustfeat checkpoint; "
                    "refusing to write into it. Choose an empty or new folder."
                )
            if not overwrite:
                raise CheckpointError(
                    f"'{path}' already holds a checkpoint; pass overwrite=True to replace it"
                )
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in adapter_state_dict(model).items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"refusing to save non-finite values (NaN or inf) in {', '.join(bad[:5])}; "
            "the training diverged, lower the learning rate"
        )
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": state.config.method,
        "adapter": state.config.to_dict(),
        "targets": state.targets,
        "modules_to_save": state.modules_to_save,
        "base_model": {
            "id": _base_id(model, base_id),
            "class": type(model).__name__,
            "fingerprint": state.base_fingerprint,
            "num_parameters": state.base_num_parameters,
            **state.base_structure,
        },
        "tensors": sorted(tensors),
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint is shared like any folder
    try:
        # one metadata key only: safetensors writes metadata in hash-map order, which varies
        # between processes, and checkpoints must be byte-identical for the same seed
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# --- load -----------------------------------------------------------------------------
def refuse_pickle(path: Path) -> None:
    """Raise for anything that looks like a pickle-based checkpoint, without opening it
    as one (only its first bytes are read)."""
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()] if path.is_dir() else []
    for f in files:
        if f.suffix.lower() in {".safetensors", ".json"}:
            continue
        with f.open("rb") as fh:
            head = fh.read(4)
        # Pickle protocol 2+ starts with 0x80; torch.save's zip container with 'PK'.
        pickled = f.suffix.lower() in PICKLE_SUFFIXES or head[:1] == b"\x80" or head == b"PK\x03\x04"
        if pickled and (path.is_file() or not (path / WEIGHTS_NAME).exists()):
            raise CheckpointError(
                f"'{f}' is a pickle-based checkpoint; robustfeat never unpickles files because "
                "unpickling can run arbitrary code. Re-save the weights as safetensors "
                "(save_adapters writes a safe folder) and pass that folder."
            )


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Validate and read a checkpoint folder: (metadata, tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    refuse_pickle(path)
    if not path.is_dir():
        raise CheckpointError(
            f"'{path}' is a file; a checkpoint is a folder holding {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, weights):
        if not f.is_file():
            raise CheckpointError(f"'{path}' is not a robustfeat checkpoint: {f.name} is missing")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{cfg_file}' is not valid JSON ({e}); the file is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"'{cfg_file}' is not a robustfeat adapter config (no format '{FORMAT}')")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' uses checkpoint format version {version!r}; this robustfeat reads "
            f"version {FORMAT_VERSION} and older. Upgrade robustfeat."
        )
    expected_types = {"method": str, "adapter": dict, "targets": list, "base_model": dict, "tensors": list,
                      "modules_to_save": list}
    for key, typ in expected_types.items():
        if not isinstance(meta.get(key), typ):
            raise CheckpointError(
                f"'{cfg_file}': entry '{key}' is missing or not a {typ.__name__}; the file is damaged"
            )
    base = meta["base_model"]
    if not isinstance(base.get("fingerprint"), str) or not isinstance(base.get("num_parameters"), int):
        raise CheckpointError(f"'{cfg_file}': base_model lacks its fingerprint or parameter count; the file is damaged")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"'{weights}' is truncated or corrupt ({e}); save the checkpoint again"
        ) from None
    if sorted(tensors) != sorted(meta["tensors"]):
        raise CheckpointError(
            f"'{weights}' does not hold the tensors {CONFIG_NAME} lists; the two files "
            "come from different saves"
        )
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"'{weights}' holds NaN or inf values in {', '.join(bad[:5])}; refusing to load")
    return meta, tensors


def load_adapters(model: nn.Module, path: str | os.PathLike, *, check_base: bool = True) -> nn.Module:
    """Inject the checkpoint's adapters into ``model`` (its base) and load their weights.

    The model is left untouched if anything is wrong with the checkpoint or the base.
    """
    if not isinstance(model, nn.Module):
        raise RobustfeatError(
            f"load_adapters(model, path) takes the base model first, got {type(model).__name__}"
        )
    meta, tensors = read_checkpoint(path)
    if has_adapters(model):
        raise RobustfeatError("this model already has adapters; load into a fresh base model")
    config = AdapterConfig.from_dict(meta["adapter"])
    base = meta["base_model"]
    if check_base:
        to_save = tuple(meta.get("modules_to_save", []))
        found = fingerprint(model, exclude=to_save)
        if found != base["fingerprint"]:
            n = sum(p.numel() for n, p in model.named_parameters() if not under(n, to_save))
            got = structure(model, exclude=to_save)
            if got["shapes"] == base.get("shapes") and got["dtypes"] != base.get("dtypes"):
                why = (f"it has the same architecture but dtype {'/'.join(got['dtypes'])} instead of "
                       f"{'/'.join(base.get('dtypes', []))}; load the base in that dtype, then cast")
            elif got["shapes"] == base.get("shapes"):
                why = "it has the same architecture but other weights"
            else:
                why = "it is another architecture"
            raise BaseModelMismatchError(
                f"checkpoint '{path}' was trained on base '{base.get('id')}' "
                f"({base.get('class')}, {base['num_parameters']:,} parameters, fingerprint "
                f"{base['fingerprint'][:12]}), but the model given ({type(model).__name__}, {n:,} "
                f"parameters, fingerprint {found[:12]}) differs: {why}. Load the base model it was "
                "trained on (or pass check_base=False to force)."
            )
    inject_adapters(model, config)
    try:
        state = adapter_state(model)
        if state.targets != meta["targets"]:
            raise CheckpointError(
                f"the checkpoint's targets ({len(meta['targets'])} layers) do not match this "
                f"model's ({len(state.targets)} layers); it was made for another architecture"
            )
        expected = adapter_state_dict(model)
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint '{path}' does not fit this model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        for name, target in expected.items():
            if tuple(target.shape) != tuple(tensors[name].shape):
                raise CheckpointError(
                    f"'{name}' has shape {tuple(tensors[name].shape)} in the checkpoint but "
                    f"{tuple(target.shape)} in the model"
                )
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(tensors[name].to(target.dtype))
    except Exception:
        remove_adapters(model)
        raise
    return model


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a checkpoint folder (validated, tensors read and checked)."""
    meta, tensors = read_checkpoint(path)
    meta = dict(meta)
    meta["num_tensor_elements"] = sum(t.numel() for t in tensors.values())
    return meta
