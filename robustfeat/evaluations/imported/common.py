"""What every checkpoint made elsewhere shares: the options it is read with, its base (found
offline), the safetensors readers, and :class:`ImportedSubject`, the base of each kind."""

from __future__ import annotations

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



def _sha256(f: Path) -> str:
    from robustfeat.data.cache import sha256_file

    return sha256_file(f)
