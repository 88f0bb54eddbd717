"""The checkpoint format: a folder with ``adapter_config.json`` and
``adapter_model.safetensors``. No pickle is ever read.

``adapter_config.json`` records the method and its config, the resolved targets, the
library versions, and the base model's identifier and fingerprint (a SHA-256 over the
names, shapes, dtypes and bytes of the base weights). Loading refuses a base model whose
fingerprint differs.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import pickletools
import shutil
import tarfile
import tempfile
import zipfile
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
from robustfeat.errors import BaseModelMismatchError, CheckpointError, PickleCheckpointError, RobustfeatError

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
    if name:  # a zoo model's folder (somewhere in site-packages or the cache) is recorded as its zoo name
        from robustfeat.models.zoo import zoo_entry_for_folder

        entry = zoo_entry_for_folder(name)
        if entry is not None:
            return entry.name
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


# --- pickle refusal ---------------------------------------------------------------------
#: How much of a file the sniffing reads: a protocol 0/1 pickle is parsed this far at most.
SNIFF_BYTES = 1 << 18
#: safetensors' own limit on its JSON header
SAFETENSORS_MAX_HEADER = 100_000_000
#: torch.save's legacy (pre-zip) format opens with a protocol 2 pickle of this number
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
#: the members of torch.save's oldest format, a tar archive of pickles
_TORCH_TAR_MEMBERS = {"sys_info", "pickle", "storages", "tensors"}


def _safetensors_header(fh, size: int) -> bool:
    """Whether the open file starts like a safetensors file: an 8-byte little-endian header
    length that fits the file, then that many bytes of one JSON object."""
    fh.seek(0)
    n = int.from_bytes(fh.read(8).ljust(8, b"\0"), "little")
    if not 2 <= n <= min(size - 8, SAFETENSORS_MAX_HEADER):
        return False
    header = fh.read(n)
    if header[:1] != b"{":
        return False
    try:
        return isinstance(json.loads(header), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _pickle_program(data: bytes, capped: bool) -> bool:
    """Whether ``data`` is a well-formed pickle program: its opcodes decode up to STOP with a
    consistent stack and memo (pickletools only decodes them; nothing is built or imported),
    or, in a file longer than ``data``, all the way to the end of what was read."""
    stream = io.BytesIO(data)
    try:
        pickletools.dis(stream, out=io.StringIO())
    except Exception:  # noqa: BLE001 - any decoding failure means: not a pickle program
        return capped and stream.tell() == len(data)
    return True


def _zip_pickles(fh, head: bytes) -> bool:
    """Whether a zip archive holds a pickle (torch.save's ``data.pkl``): the first member's
    name (torch.save writes ``data.pkl`` first) or any name in the central directory."""
    name_len = int.from_bytes(head[26:28], "little")
    if head[30:30 + name_len].decode("utf-8", "replace").endswith(".pkl"):
        return True
    try:
        with zipfile.ZipFile(fh) as z:
            return any(n.endswith(".pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _tar_pickles(fh, head: bytes) -> bool:
    """Whether a tar archive is torch.save's oldest format (members ``storages``,
    ``pickle``, ...: pickles) or holds a ``.pkl``."""
    names = {head[:100].split(b"\0", 1)[0].decode("utf-8", "replace")}
    try:
        fh.seek(0)
        with tarfile.open(fileobj=fh, mode="r:") as t:
            names.update(t.getnames())
    except (tarfile.TarError, OSError, ValueError):
        pass
    return bool(names & _TORCH_TAR_MEMBERS) or any(n.endswith(".pkl") for n in names)


def pickle_kind(f: str | os.PathLike) -> str | None:
    """What kind of pickle-based file ``f`` is, judged from its bytes alone (its name plays
    no part, and nothing is ever unpickled), or None when it is not one.

    A file that starts like a safetensors file never is. Otherwise, in order: torch.save's
    legacy format (a protocol 2 pickle of its magic number), a pickle of protocol 2 to 5
    (the PROTO opcode: 0x80 and the protocol), torch.save's zip container (``PK\\x03\\x04``
    holding a ``data.pkl``), its oldest tar format, and a pickle of protocol 0 or 1 (no
    header: recognised by decoding its opcodes, see :func:`_pickle_program`).
    """
    f = Path(f)
    with f.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if _safetensors_header(fh, size):
            return None
        fh.seek(0)
        head = fh.read(SNIFF_BYTES)
        if head.startswith(_TORCH_LEGACY_MAGIC):
            return "a legacy torch.save file, a sequence of pickles"
        if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
            return f"a pickle, protocol {head[1]}"
        if head[:4] == b"PK\x03\x04":
            return "a torch.save zip archive, whose data.pkl is a pickle" if _zip_pickles(fh, head) else None
        if head[257:262] == b"ustar":
            return "a torch.save tar archive of pickles, its oldest format" if _tar_pickles(fh, head) else None
    if _pickle_program(head, capped=size > len(head)):
        return "a pickle, protocol 0 or 1"
    return None


def _pickle_error(f: Path, kind: str) -> PickleCheckpointError:
    return PickleCheckpointError(
        f"'{f}' is a pickle-based checkpoint ({kind}); robustfeat never unpickles files because "
        "unpickling can run arbitrary code. Convert it to safetensors: load it where you trust its "
        "source and write its tensors with safetensors.torch.save_file, or re-save the model with "
        "save_adapters (it writes a safe folder), and pass that folder."
    )


def refuse_pickle(path: str | os.PathLike) -> None:
    """Raise :class:`PickleCheckpointError` for a pickle-based checkpoint: ``path`` itself
    when it is a file; in a folder, the files robustfeat reads (weights, adapter config, run
    record) and, when the folder has no safetensors weights, every file in it. The bytes
    decide (:func:`pickle_kind`), whatever the name; a pickle suffix (``.bin``, ``.pt``,
    ...) on a file that is not safetensors counts too. Nothing is ever unpickled.

    Every place that accepts a checkpoint calls this before reading anything else."""
    from robustfeat.train.record import RUN_FILE

    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        read = [path / name for name in (WEIGHTS_NAME, CONFIG_NAME, RUN_FILE)]
        files = [f for f in read if f.is_file()]
        if not (path / WEIGHTS_NAME).is_file():
            files += sorted(f for f in path.iterdir() if f.is_file() and f not in read)
    else:
        return
    for f in files:
        kind = pickle_kind(f)
        if kind is None and f.suffix.lower() in PICKLE_SUFFIXES and not _is_safetensors(f):
            kind = f"a {f.suffix.lower()} file, a pickle format"
        if kind is not None:
            raise _pickle_error(f, kind)


def _is_safetensors(f: Path) -> bool:
    with f.open("rb") as fh:
        return _safetensors_header(fh, os.fstat(fh.fileno()).st_size)


# --- load -----------------------------------------------------------------------------
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
