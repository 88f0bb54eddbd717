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

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch

from robustfeat.errors import RobustfeatError
from robustfeat.evaluations.subject import Subject


class ImportedCheckpointError(RobustfeatError):
    """A checkpoint made elsewhere that cannot be evaluated as given."""


@dataclass(frozen=True)
class ImportOptions:
    """What a checkpoint made elsewhere does not record: its base (when it names none, or
    another is wanted), its evaluation data and how to read them."""

    base: str | None = None
    data: str | None = None
    data_seed: int = 0  # the seed of the data's splits and subsample (a robustfeat run's seed, to share its test set)
    max_eval_examples: int | None = 1000  # as robustfeat's runs keep, so both are evaluated on one test set
    label_column: str = "label"
    text_column: str | None = None
    image_column: str = "image"
    image_size: int | None = None
    max_length: int = 128

    #: the options a robustfeat run records, by its training config's name for them
    RUN_FIELDS: ClassVar[dict[str, str]] = {"data_seed": "seed", "max_eval_examples": "max_eval_examples",
                                            "label_column": "label_column", "text_column": "text_column",
                                            "image_column": "image_column", "image_size": "image_size",
                                            "max_length": "max_length"}

    def against_a_run(self, config) -> list[str]:
        """The options given (not at their defaults) that contradict what a robustfeat run
        records in ``config`` (its TrainConfig); ``base`` always does (a run records its base)."""
        defaults = ImportOptions()
        wrong = ["base"] if self.base else []
        return wrong + [f for f, field in self.RUN_FIELDS.items()
                        if getattr(self, f) != getattr(defaults, f) and getattr(self, f) != getattr(config, field)]


@dataclass(frozen=True)
class Base:
    """A checkpoint's base model, found offline: ``model`` is what :func:`load_model` takes (a
    zoo name or a local folder), ``folder`` its transformers folder when it has one."""

    spec: str
    model: str
    folder: Path | None


BASE_FORMS = "a zoo name (robustfeat ls models), a hub id a zoo entry declares, or a local transformers folder"


def resolve_base(spec: str | None, what: str) -> Base:
    """The base named ``spec`` (by the checkpoint or ``--base``), found offline, or one clear
    error naming it and ``--base``."""
    from robustfeat.models.zoo import ModelUnavailableError, zoo_entry

    if not spec:
        raise ImportedCheckpointError(f"{what} names no base model; pass --base MODEL ({BASE_FORMS})")
    entry = zoo_entry(spec)
    if entry is not None:
        if entry.missing():
            raise ModelUnavailableError(f"the base '{spec}' of {what} is zoo model '{entry.name}', which needs "
                                        f"{', '.join(entry.missing())}; install it with `{entry.install}`")
        return Base(spec, entry.name, Path(entry.folder()) if entry.folder else None)
    if spec.startswith(("timm:", "torchvision:")):
        return Base(spec, spec, None)
    local = Path(spec).expanduser()
    if (local / "config.json").is_file():
        from robustfeat.models.zoo import zoo_entry_for_folder

        owner = zoo_entry_for_folder(local)  # a zoo model's own folder: the zoo builds it (its head, its name)
        if owner is not None:
            return Base(spec, owner.name, local.absolute())
        return Base(spec, str(local.absolute()), local.absolute())
    raise ImportedCheckpointError(f"the base model '{spec}' of {what} cannot be found offline (it is not {BASE_FORMS}); "
                                  "pass --base MODEL to name where it is")


def read_safetensors(f: Path, metadata: bool = False):
    """The tensors of the safetensors file ``f`` (and its metadata), or one clear error for a
    truncated or corrupt one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), "pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            return (tensors, fh.metadata() or {}) if metadata else tensors
    except (SafetensorError, OSError, ValueError) as e:
        raise ImportedCheckpointError(f"'{f}' is not a readable safetensors file, truncated or corrupt ({e}); "
                                      "save it again") from None


def folder_family(folder: Path) -> str:
    """The model family of the transformers folder ``folder``, from its config (a plain
    encoder counts as a text model)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ImportedCheckpointError(f"'{folder / 'config.json'}' cannot be read by transformers ({e})") from None
    archs = set(getattr(config, "architectures", None) or [])
    if archs & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return "causal-lm"
    if any(a.endswith("ForImageClassification") for a in archs) or hasattr(config, "num_channels"):
        return "image-classifier"
    return "text-classifier"


def check_base_family(base: Base, family: str, what: str) -> None:
    """Refuse a local base folder of another family than the checkpoint's, before loading it."""
    if base.folder is not None and base.model == str(base.folder):
        theirs = folder_family(base.folder)
        if theirs != family:
            raise ImportedCheckpointError(f"the base '{base.spec}' is of the {theirs} family, but {what} is of the "
                                          f"{family} family; pass the --base it was fine-tuned from")


def changed_layers(handle, base) -> list[str]:
    """The paths of the linear and convolution layers of ``handle``'s model (its heads left
    out) whose weight differs from the same layer's in ``base``: where a full fine-tune made
    elsewhere changed the model, so where its drift is measured."""
    from robustfeat.adapters.layers import layer_kind

    skip = tuple(handle.head) + ("pretrained_head",)
    theirs = dict(base.model.named_modules())
    out = []
    for path, module in handle.model.named_modules():
        if not path or path.split(".")[0] in skip or layer_kind(module) is None:
            continue
        other = theirs.get(path)
        w, w0 = getattr(module, "weight", None), getattr(other, "weight", None)
        if w is not None and w0 is not None and w.shape == w0.shape and not torch.equal(w, w0):
            out.append(path)
    return out


def head_size(state: dict[str, torch.Tensor], head: str) -> int | None:
    """The number of outputs of the trained head ``head`` in ``state`` (its last matrix's
    rows), None when ``state`` holds none of it."""
    mats = [t for k, t in state.items() if (k.startswith(head + ".") or f".{head}." in k) and k.endswith("weight")
            and t.dim() == 2]
    return int(mats[-1].shape[0]) if mats else None


class ImportedSubject(Subject):
    """What every checkpoint made elsewhere shares: its options, data and identity. Kinds
    fill in :meth:`_build` (the fine-tuned handle and its adapted layers) and the family."""

    kind: ClassVar[str] = ""

    def __init__(self, path: str | os.PathLike, options: ImportOptions | None = None) -> None:
        self.path = Path(path).expanduser().absolute()
        self.options = options or ImportOptions()
        if not self.options.data:
            raise ImportedCheckpointError(f"'{path}' is a {self.kind} checkpoint, which does not record its data; pass "
                                          "--data DATASET (a dataset name, a CSV/JSON file or an image folder)")
        self._built: tuple | None = None
        self._base_fingerprint = "unknown"

    # --- data ---------------------------------------------------------------------------------
    @cached_property
    def bundle(self):
        from robustfeat.data.api import load_dataset

        o = self.options
        return load_dataset(o.data, seed=o.data_seed, max_eval_examples=o.max_eval_examples,
                            text_column=o.text_column, label_column=o.label_column, image_column=o.image_column,
                            progress=False)

    def full_data(self, seed: int):
        from robustfeat.data.api import load_dataset

        o = self.options
        return load_dataset(o.data, seed=seed, text_column=o.text_column, label_column=o.label_column,
                            image_column=o.image_column, progress=False)

    data = property(lambda self: self.options.data)  # type: ignore[assignment]
    data_name = property(lambda self: self.bundle.name)  # type: ignore[assignment]
    data_fingerprint = property(lambda self: self.bundle.fingerprint)  # type: ignore[assignment]
    label_names = property(lambda self: list(self.bundle.label_names or []))  # type: ignore[assignment]
    seed = property(lambda self: self.options.data_seed)  # type: ignore[assignment]

    def _check_data(self, family: str, outputs: int | None) -> None:
        from robustfeat.registry import FAMILIES

        b = self.bundle
        if b.task not in FAMILIES.get(family).tasks:
            raise ImportedCheckpointError(f"--data '{self.options.data}' ({b.task}) does not fit '{self.path}', a {family} "
                                          f"checkpoint; give data of task {', '.join(sorted(FAMILIES.get(family).tasks))}")
        if outputs is not None and family != "causal-lm" and b.num_labels != outputs:
            raise ImportedCheckpointError(f"--data '{self.options.data}' has {b.num_labels} labels but the head of '{self.path}' "
                                          f"has {outputs} outputs; give the data it was trained on")

    # --- identity -------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        from robustfeat.results import safe_name

        from dataclasses import asdict

        # the resolved base and the data's fingerprint, not how they were named (a relative or absolute path)
        read = {k: v for k, v in asdict(self.options).items() if k not in ("base", "data")}
        h = hashlib.sha256(json.dumps([self.kind, self.model, self.data_fingerprint, read, self.weights_sha256],
                                      sort_keys=True, default=str).encode())
        return f"{safe_name(self.path.name)}-{h.hexdigest()[:8]}"

    #: the base model, found offline (None: not known, so drift and forgetting are skipped)
    base: Base | None = None

    @property
    def has_base(self) -> bool:  # type: ignore[override]
        return self.base is not None

    @property
    def model(self) -> str:  # type: ignore[override]
        return self.base.model if self.base is not None else str(self.path)

    @property
    def base_fingerprint(self) -> str:  # type: ignore[override]
        """The base's weights' fingerprint (its head left out), as robustfeat's checkpoints record
        it; taken when the checkpoint is first read (every kind builds itself then, to check it)."""
        return self._base_fingerprint

    @property
    def base_key(self) -> str:
        parts = [self.kind, self.model, str(self.options.image_size), str(self.options.max_length)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def reference_facts(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data_name, "data fingerprint": self.data_fingerprint,
                "image size": self.options.image_size, "test examples kept (max_eval_examples)": self.options.max_eval_examples}

    def provenance(self) -> dict[str, Any]:
        b = self.base
        return {"path": str(self.path), "kind": self.kind, "method": self.method, "model": self.model,
                "base": {"named": b.spec, "resolved": b.model, "folder": str(b.folder) if b.folder else None}
                if b is not None else None,
                "data": self.data_name, "data_fingerprint": self.data_fingerprint, "seed": self.seed,
                "files_sha256": self.files_sha256, "weights_sha256": self.weights_sha256,
                "base_fingerprint": self.base_fingerprint, "notes": self.notes or None}

    @cached_property
    def files_sha256(self) -> dict[str, str]:
        from robustfeat.data.cache import sha256_file

        files = sorted(p for p in self.path.iterdir() if p.is_file()) if self.path.is_dir() else [self.path]
        return {p.name: sha256_file(p) for p in files}

    @property
    def notes(self) -> list[str]:
        """What the results should say about how it was read (labels by index, ...)."""
        return list(getattr(self, "_notes", []))

    def _match_labels(self, handle) -> list[str]:
        """Labels by index unless the model's ``id2label`` names the data's labels, which then
        decide the order (the head's outputs are put in the data's order)."""
        names = self.label_names
        if self.family == "causal-lm" or not names:
            return []
        cfg = getattr(handle.model, "config", None) or getattr(getattr(handle.model, "net", None), "config", None)
        id2label = {int(k): str(v) for k, v in (getattr(cfg, "id2label", None) or {}).items()}
        own = [id2label[i] for i in sorted(id2label)]
        if sorted(own) == sorted(names):
            if own != names and _reorder_head(handle, [own.index(n) for n in names]):
                return [f"the head's outputs {own} were put in the data's label order {names}"]
            return []
        return [f"labels read by index: output i is the data's label i ({', '.join(names[:10])}"
                f"{' ...' if len(names) > 10 else ''})"]

    # --- models -----------------------------------------------------------------------------------
    def _build(self, device: str | None) -> tuple:
        """(the fine-tuned handle, its adapted layers' paths); kinds implement."""
        raise NotImplementedError

    def _prepared(self) -> tuple:
        if self._built is None:
            self._built = self._build(None)
        return self._built

    @cached_property
    def targets(self) -> list[str]:  # type: ignore[override]
        return list(self._prepared()[1])

    def load(self, device: str | None) -> tuple:
        from robustfeat.environment import pick_device

        handle = self._prepared()[0] if self._built is not None else self._build(device)[0]
        self._built = None  # the checked build serves the first load only; a later one builds afresh
        handle.to(pick_device(device))
        handle.model.eval()
        return handle, self.bundle

    def load_base(self, device: str | None):
        from robustfeat.environment import pick_device

        return self._base_handle(pick_device(device))

    def _base_handle(self, device=None):
        raise NotImplementedError


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


def transformers_handle(folder: Path, name: str, family: str, num_labels: int, options: ImportOptions,
                        tokenizer: Path | None = None, pooling: str = "cls"):
    """A handle over the transformers model in ``folder``: transformers' own sequence
    classifier (its head as saved; ``pooling="mean"``: a plain encoder under robustfeat's
    mean-pooled head), image classifier or causal LM. Weights transformers cannot read are
    one clear error."""
    from safetensors import SafetensorError

    from robustfeat.models.zoo import hf_causal_lm, hf_image_classifier, hf_text_classifier

    tok = str(tokenizer) if tokenizer is not None else None
    try:
        if family == "image-classifier":
            return hf_image_classifier(str(folder), name, num_labels, 0, options.image_size)
        if family == "causal-lm":
            return hf_causal_lm(str(folder), name, options.max_length, source=name, tokenizer=tok)
        return hf_text_classifier(str(folder), name, num_labels, 0, options.max_length, source=name, tokenizer=tok,
                                  pooling=pooling)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ImportedCheckpointError(f"transformers cannot load the model in '{folder}' ({first})") from None


TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


class PretrainedSubject(ImportedSubject):
    """A transformers ``save_pretrained`` folder of a fully fine-tuned model (``config.json``
    + ``model.safetensors``, as transformers' Trainer writes it): a sequence classifier, an
    image classifier or a causal LM (or an encoder with robustfeat's head beside it, as
    ``export --to merged`` writes MiniLM). ``base`` names the model it was fine-tuned from;
    without one, the evaluations that compare with the base (drift, forgetting) are skipped
    and the results say so. Drift is measured on every linear and convolution layer whose
    weight differs from the base's."""

    kind = "transformers"
    method = "transformers"  # type: ignore[assignment]

    @staticmethod
    def detect(path: Path) -> bool:
        return path.is_dir() and (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file()

    def __init__(self, path: str | os.PathLike, options: ImportOptions | None = None) -> None:
        from robustfeat.adapters.checkpoint import refuse_pickle

        p = Path(path).expanduser().absolute()
        refuse_pickle(p)  # pytorch_model.bin and friends are named as pickles, with how to convert them
        if not any((p / f).is_file() for f in TRANSFORMERS_WEIGHTS):
            raise ImportedCheckpointError(f"'{path}' has a config.json but no model.safetensors; save the model "
                                          "with save_pretrained (safetensors, its default)")
        super().__init__(p, options)
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        try:
            self.config = AutoConfig.from_pretrained(str(p))
        except (OSError, ValueError) as e:
            raise ImportedCheckpointError(f"'{p / 'config.json'}' cannot be read by transformers ({e})") from None
        archs = set(getattr(self.config, "architectures", None) or [])
        if archs & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
            self._family = "causal-lm"
        elif any(a.endswith("ForSequenceClassification") for a in archs):
            self._family = "text-classifier"
        elif any(a.endswith("ForImageClassification") for a in archs):
            self._family = "image-classifier"
        elif self._head is not None and self._head[1].get("model_class") == "MeanPoolClassifier":
            self._family, self._pooling = "text-classifier", "mean"  # an encoder, robustfeat's head beside it
        else:
            raise ImportedCheckpointError(f"'{path}' holds a {', '.join(sorted(archs)) or 'model of no architecture'}; "
                                          "robustfeat evaluates transformers sequence classifiers, image classifiers "
                                          "and causal LMs saved this way (timm and torchvision weights: a .safetensors file)")
        self.base = resolve_base(self.options.base, f"the transformers folder '{path}'") if self.options.base else None
        self._built = self._build(None)
        _ = self.targets

    family = property(lambda self: self._family)  # type: ignore[assignment]
    _pooling = "cls"

    @cached_property
    def _head(self) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """robustfeat's own head beside the encoder (``robustfeat export --to merged`` of MiniLM)."""
        from robustfeat.export import HEAD_FILE

        f = self.path / HEAD_FILE
        return read_safetensors(f, metadata=True) if f.is_file() else None

    @property
    def _outputs(self) -> int | None:
        if self._family == "causal-lm":
            return None
        if self._pooling == "mean":
            return head_size(self._head[0], "classifier")
        return int(getattr(self.config, "num_labels", 2))

    @cached_property
    def weights_sha256(self) -> str:  # type: ignore[override]
        """Over every weight file (each shard of a sharded checkpoint) and the head beside them."""
        from robustfeat.export import HEAD_FILE

        files = sorted(self.path.glob("model*.safetensors")) + [self.path / HEAD_FILE]
        h = hashlib.sha256()
        for f in files:
            if f.is_file():
                h.update(f"{f.name}:{_sha256(f)};".encode())
        return h.hexdigest()

    def _tokenizer(self) -> Path | None:
        """Its own tokenizer, else its base's (an image classifier has none)."""
        if self._family == "image-classifier":
            return None
        own = any((self.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
        if own:
            return None
        if self.base is not None and self.base.folder is not None:
            return self.base.folder
        raise ImportedCheckpointError(f"'{self.path}' has no tokenizer files; save the tokenizer beside the model "
                                      "(tokenizer.save_pretrained) or pass --base MODEL to use the base's")

    def _build(self, device: str | None) -> tuple:
        from robustfeat.adapters.identity import fingerprint

        outputs = self._outputs
        self._check_data(self._family, outputs)
        handle = transformers_handle(self.path, str(self.path), self._family, outputs or 2, self.options,
                                     self._tokenizer(), pooling=self._pooling)
        if self._family == "image-classifier":  # its own classifier is the task's head
            handle.model.head = handle.model.pretrained_head
        if self._pooling == "mean":
            head = self._head[0]
            own = {k for k in handle.model.state_dict() if not k.startswith("encoder.")}
            if set(head) != own:
                raise ImportedCheckpointError(f"'{self.path}': its head file holds {sorted(head)}, the model's head "
                                              f"{sorted(own)}")
            handle.model.load_state_dict(head, strict=False)
        if self.base is not None:
            base = self._base_handle()
            self._base_fingerprint = fingerprint(base.model, exclude=tuple(base.head))
            if self._family == "image-classifier":  # the base's pretrained head, for the agreement with it
                handle.model.pretrained_head = copy.deepcopy(base.model.pretrained_head)
            ours = {k: tuple(v.shape) for k, v in handle.model.state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in base.model.state_dict().items()}
            head = tuple(f"{h}." for h in handle.head)
            wrong = sorted(k for k in ours if not k.startswith(head) and theirs.get(k) != ours[k])
            if wrong:
                raise ImportedCheckpointError(
                                              f"the base '{self.base.spec}' does not fit '{self.path}': {len(wrong)} weights differ in name or "
                    f"shape (first: {wrong[0]} {ours[wrong[0]]} vs {theirs.get(wrong[0])}); pass the --base it was "
                    "fine-tuned from")
        changed = changed_layers(handle, base) if self.base is not None else []
        self._notes = self._match_labels(handle)
        return handle, changed

    def _base_handle(self, device=None):
        from robustfeat.models.zoo import load_model

        if self.base is None:
            raise ImportedCheckpointError(f"'{self.path}' was given no --base")
        check_base_family(self.base, self._family, f"the transformers folder '{self.path}'")
        outputs = self._outputs or 2
        if self.base.folder is not None:
            handle = transformers_handle(self.base.folder, self.base.model, self._family, outputs, self.options,
                                         pooling=self._pooling)
        else:
            handle = load_model(self.base.model, num_labels=outputs, family=self._family,
                                max_length=self.options.max_length, image_size=self.options.image_size)
        if device is not None:
            handle.to(device)
        handle.model.eval()
        return handle


class WeightsSubject(ImportedSubject):
    """A timm or torchvision image classifier's fine-tuned weights in one ``.safetensors`` file
    (its ``state_dict``, the classifier sized for the task), with ``base`` naming its
    architecture and pretrained weights (``timm:NAME``, ``torchvision:NAME``). The classifier
    becomes the task head; the base's own head stays beside it for the forgetting probes, as
    for robustfeat's runs. Drift is measured on every linear and convolution layer whose weight
    differs from the base's."""

    kind = "weights"
    method = "weights"  # type: ignore[assignment]
    family = "image-classifier"  # type: ignore[assignment]

    @staticmethod
    def detect(path: Path) -> bool:
        """A ``.safetensors`` file, or a folder holding only a ``model.safetensors`` of that kind
        (what ``robustfeat export --to merged`` writes for a model transformers does not build)."""
        if path.is_dir():
            return (path / "model.safetensors").is_file() and not (path / "config.json").exists() \
                and not (path / ADAPTER_CONFIG).exists()
        return path.is_file() and path.suffix == ".safetensors"

    def __init__(self, path: str | os.PathLike, options: ImportOptions | None = None) -> None:
        from robustfeat.adapters.checkpoint import refuse_pickle

        p = Path(path).expanduser().absolute()
        refuse_pickle(p)
        if p.is_dir():
            p = p / "model.safetensors"
        super().__init__(p, options)
        spec = self.options.base
        from robustfeat.models.zoo import zoo_entry

        entry = zoo_entry(spec) if spec else None
        if not spec or not (spec.startswith(("timm:", "torchvision:")) or (entry and entry.family == self.family)):
            raise ImportedCheckpointError(f"'{path}' is a weights file; name its architecture with --base "
                                          "timm:NAME, --base torchvision:NAME or a zoo image model (the model it was "
                                          "fine-tuned from)")
        self.base = resolve_base(spec, f"the weights file '{path}'")
        self._built = self._build(None)
        _ = self.targets

    @cached_property
    def weights_sha256(self) -> str:  # type: ignore[override]
        return _sha256(self.path)

    @cached_property
    def _state(self) -> dict[str, torch.Tensor]:
        return read_safetensors(self.path)

    def _split(self, handle) -> tuple[str, dict[str, torch.Tensor]]:
        """The classifier's path in the base and the state under the handle's names (a file
        ``robustfeat export --to merged`` wrote holds those names already)."""
        if set(self._state) == set(handle.model.state_dict()):
            return "head", dict(self._state)
        net = handle.model.net
        own = net.state_dict()
        heads = {n for n, m in net.named_modules() if isinstance(m, torch.nn.Identity) and n}
        extra = sorted(k for k in self._state if k not in own)
        where = {k.rpartition(".")[0] for k in extra}
        if len(where) != 1 or not where <= heads:
            raise ImportedCheckpointError(
                f"the weights in '{self.path}' do not fit the base '{self.base.spec}': "
                + (f"{len(extra)} tensors it does not have (first: {extra[0]})" if extra else "no classifier found")
                + "; pass the --base it was fine-tuned from")
        (head,) = where
        state = {f"net.{k}": v for k, v in self._state.items() if k not in extra}
        state |= {f"head.{k.rpartition('.')[2]}": v for k, v in self._state.items() if k in extra}
        return head, state

    def _build(self, device: str | None) -> tuple:
        from robustfeat.adapters.identity import fingerprint

        handle = self._base_handle()
        self._base_fingerprint = fingerprint(handle.model, exclude=tuple(handle.head))
        base = copy.deepcopy(handle)  # the weights are loaded into ``handle``; drift is read against this
        _, state = self._split(handle)
        self._outputs = int(state["head.weight"].shape[0])
        self._check_data(self.family, self._outputs)
        handle.model.head = torch.nn.Linear(handle.model.head.in_features, self._outputs)
        missing = [k for k in handle.model.state_dict() if k not in state and not k.startswith("pretrained_head.")]
        if missing:
            raise ImportedCheckpointError(f"'{self.path}' lacks {len(missing)} of the base's weights (first: "
                                          f"{missing[0]}); save the whole state_dict")
        try:
            handle.model.load_state_dict(state, strict=False)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()[:300]
            raise ImportedCheckpointError(f"the weights in '{self.path}' do not fit the base '{self.base.spec}' "
                                          f"({first}); pass the --base it was fine-tuned from") from None
        self._notes = self._match_labels(handle)
        return handle, changed_layers(handle, base)

    def _base_handle(self, device=None):
        from robustfeat.models.zoo import load_model

        handle = load_model(self.base.model, num_labels=getattr(self, "_outputs", 2), image_size=self.options.image_size)
        if device is not None:
            handle.to(device)
        handle.model.eval()
        return handle


def _reorder_head(handle, order: list[int]) -> bool:
    """Permute the rows of the head's last linear layer so output j is old output ``order[j]``."""
    last = None
    for n in handle.head:
        for _, m in handle.model.get_submodule(n).named_modules():
            if isinstance(m, torch.nn.Linear):
                last = m
    if last is None or last.out_features != len(order):
        return False
    idx = torch.as_tensor(order)
    with torch.no_grad():
        last.weight.copy_(last.weight[idx])
        if last.bias is not None:
            last.bias.copy_(last.bias[idx])
    return True


def _shapes(f: Path) -> dict[str, tuple[int, ...]]:
    """The tensors' shapes in the safetensors file ``f``, read from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(f), "pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ImportedCheckpointError(f"'{f}' is not a readable safetensors file, truncated or corrupt ({e}); "
                                      "save it again") from None


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


def _sha256(f: Path) -> str:
    from robustfeat.data.cache import sha256_file

    return sha256_file(f)


#: the kinds of checkpoint made elsewhere that ``evaluate`` reads, tried in order
IMPORTED_KINDS: tuple[type[ImportedSubject], ...] = (PeftSubject, AdaptersSubject, PretrainedSubject, WeightsSubject)
