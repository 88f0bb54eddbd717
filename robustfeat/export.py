"""Taking a finished run to the tools people already use: ``export_run(RUN, to="peft", out=DIR)``
writes the folder PEFT's own ``save_pretrained`` writes (PEFT writes it: the adapter is rebuilt
as a PEFT model over the run's base and saved by PEFT), so ``PeftModel.from_pretrained(base,
DIR)`` gives the run's outputs.

Each method says how it becomes a PEFT tuner (:data:`PEFT_FORMS`):

* ``lora`` -> PEFT LoRA, the same A, B and scaling;
* ``lorfa`` -> PEFT LoRA, exactly: W0 (I + s B A) = W0 + s (W0 B) A, so ``lora_A = A`` and
  ``lora_B = W0 B`` (d_out x r); only on layers whose weight is one matrix (linear, Conv1D);
* ``vefa`` (no shift) -> PEFT IA3 with every target in ``feedforward_modules`` (input
  scaling, W0 diag(lam)); a shift has no PEFT form and is refused;
* ``ia3``, ``vera`` -> their own PEFT configs (robustfeat runs them through PEFT already);
* ``full``, ``linear`` -> refused: there is no adapter to export.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustfeat.errors import RobustfeatError, UnsupportedError

#: the PEFT task type of each model family (None: PEFT's plain model)
TASK_TYPES = {"text-classifier": "SEQ_CLS", "causal-lm": "CAUSAL_LM", "image-classifier": None}


@dataclass(frozen=True)
class PeftForm:
    """How one method's trained layers become a PEFT tuner: ``config(adapter, targets,
    transposed)`` gives the PEFT config, ``tensors(layer)`` the PEFT layer's parameters by
    their PEFT names (adapter name ``default``)."""

    config: Callable[[dict[str, Any], list[str], bool], Any]
    tensors: Callable[[nn.Module], dict[str, torch.Tensor]]
    #: whether PEFT builds new layers beside each target (LoRA's factors), with the target's own class
    builds_layers: bool = False


#: the convolution classes PEFT's LoRA can rebuild (a subclass may take other arguments)
PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


PEFT_FORMS: dict[str, PeftForm] = {}


def peft_form(method: str) -> Callable[[PeftForm], PeftForm]:
    def add(form: PeftForm) -> PeftForm:
        PEFT_FORMS[method] = form
        return form
    return add


def _matrix_weight(layer: nn.Module, path: str) -> torch.Tensor:
    """The base layer's weight as the (d_out, d_in) matrix it applies; refused for a
    convolution, whose LoRFA has no exact PEFT LoRA form."""
    w = layer.kind.as_oik(layer.base_layer.weight.detach())  # (d_out, d_in, kernel elements)
    if w.shape[2] != 1:
        raise UnsupportedError(f"'{path}' is a {layer.kind.name} layer: its LoRFA mixes the input per kernel tap, which "
                               "PEFT's LoRA cannot express exactly; export it with --to merged")
    return w[:, :, 0]


def _lora_config(adapter: dict[str, Any], targets: list[str], transposed: bool) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=adapter["rank"], lora_alpha=adapter["alpha"], lora_dropout=adapter.get("dropout") or 0.0,
                      target_modules=targets, fan_in_fan_out=transposed)


peft_form("lora")(PeftForm(_lora_config, builds_layers=True, tensors=lambda layer: {
    "lora_A.default.weight": layer.lora_A.detach().flatten(1) if layer.lora_A.dim() > 2 else layer.lora_A.detach(),
    "lora_B.default.weight": layer.lora_B.detach()}))


def _lorfa_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    w0 = _matrix_weight(layer, getattr(layer, "_export_path", "a layer"))
    return {"lora_A.default.weight": layer.lorfa_A.detach(),
            "lora_B.default.weight": w0 @ layer.lorfa_B.detach().to(w0.dtype)}


peft_form("lorfa")(PeftForm(_lora_config, _lorfa_tensors, builds_layers=True))


def _vefa_config(adapter: dict[str, Any], targets: list[str], transposed: bool) -> Any:
    from peft import IA3Config

    if adapter.get("shift"):
        raise UnsupportedError("this vefa run learned a shift (x -> lam * x + t), which PEFT's IA3 has no place for; "
                               "export it with --to merged")
    return IA3Config(target_modules=targets, feedforward_modules=targets, fan_in_fan_out=transposed)


peft_form("vefa")(PeftForm(_vefa_config, lambda layer: {"ia3_l.default": layer.vefa_lam.detach()}))


def _bridge_tensors(layer: nn.Module) -> dict[str, torch.Tensor]:
    """A layer robustfeat runs through PEFT already: its own trained tensors."""
    return {n: p.detach() for n, p in layer.named_parameters() if ".default" in n and p.requires_grad}


def _bridge_config(method: str) -> Callable[[dict[str, Any], list[str], bool], Any]:
    def config(adapter: dict[str, Any], targets: list[str], transposed: bool) -> Any:
        from robustfeat.adapters.config import AdapterConfig
        from robustfeat.registry import ADAPTERS

        fields = {k: adapter[k] for k in ("rank", "dropout", "seed") if adapter.get(k) is not None}
        cfg = AdapterConfig(method=method, target_modules=targets, **fields)
        regex = "(?:" + "|".join(_escape(t) for t in targets) + ")"
        return ADAPTERS.get(method).peft_config(cfg, regex, transposed)
    return config


def _escape(path: str) -> str:
    import re

    return re.escape(path)


for _m in ("ia3", "vera"):
    peft_form(_m)(PeftForm(_bridge_config(_m), _bridge_tensors))


def _adapted_layers(model: nn.Module, method: str) -> dict[str, nn.Module]:
    from robustfeat.adapters.base import AdapterLayer

    if method in ("ia3", "vera"):
        from peft.tuners.tuners_utils import BaseTunerLayer

        return {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


#: the file, beside a backbone's export, with the weights of robustfeat's own head around it
HEAD_FILE = "robustfeat_head.safetensors"


def backbone(model: nn.Module) -> str:
    """What PEFT is to wrap inside ``model``: the attribute of its one transformers child when
    ``model`` is a robustfeat wrapper around one (MiniLM's mean-pooled classifier keeps its
    encoder at ``encoder`` and its own head beside it), else ``""``: the whole model (a
    transformers model, or a plain torch one, which PEFT wraps as it is)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return ""
    inner = [n for n, m in model.named_children() if isinstance(m, PreTrainedModel)]
    return inner[0] if len(inner) == 1 else ""


def head_state(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """The weights of ``model`` outside its transformers part at ``prefix`` (robustfeat's own
    head), by their names in ``model``; empty when ``model`` is a transformers model."""
    if not prefix:
        return {}
    return {n: t.detach().contiguous() for n, t in model.state_dict().items() if not n.startswith(prefix + ".")}


def to_peft_model(model: nn.Module, adapter: dict[str, Any], family: str, base_name: str | None = None):
    """A PEFT model over a copy of ``model``'s transformers base (see :func:`backbone`),
    holding ``model``'s trained adapter and, for a transformers model, its head as PEFT's
    ``modules_to_save``; ``model`` itself is not changed."""
    from peft import get_peft_model

    from robustfeat.adapters.model import remove_adapters

    method = adapter["method"]
    if method in ("full", "linear"):
        raise UnsupportedError(f"a {method} run has no adapter to export to PEFT (it changes the model's own weights); "
                               "export it with --to merged")
    form = PEFT_FORMS.get(method)
    if form is None:
        raise UnsupportedError(f"method '{method}' has no PEFT form; the methods with one: {', '.join(sorted(PEFT_FORMS))}")
    prefix = backbone(model)
    layers = _adapted_layers(model, method)
    if not layers:
        raise RobustfeatError(f"the model holds no {method} layer to export")
    if prefix:
        outside = sorted(p for p in layers if not p.startswith(prefix + "."))
        if outside:
            raise UnsupportedError(f"adapted layers outside the transformers model at '{prefix}': {', '.join(outside)}")
        layers = {p[len(prefix) + 1:]: m for p, m in layers.items()}
    from robustfeat.adapters.layers import layer_kind

    kinds = set()
    for path, layer in layers.items():
        base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer.base_layer
        kinds.add(layer_kind(base).name)
        layer._export_path = path  # named in a refusal
    tensors = {path: form.tensors(layer) for path, layer in layers.items()}  # refuses what has no exact form
    for path, layer in layers.items():
        base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer.base_layer
        if form.builds_layers and isinstance(base, nn.modules.conv._ConvNd) and type(base) not in PLAIN_CONVS:
            raise UnsupportedError(
                f"'{path}' is a {type(base).__name__} (a {type(base).__mro__[1].__name__} of its own): PEFT's LoRA builds "
                "its factors with the layer's own class and nn.Conv2d's arguments, which this class does not take; "
                "export the run with --to merged")
    cfg = form.config(adapter, sorted(layers), kinds == {"conv1d-transposed"})
    cfg.task_type = None if prefix else TASK_TYPES.get(family)  # a bare backbone has no task head
    head = list(adapter.get("modules_to_save") or [])
    if head and not prefix:
        cfg.modules_to_save = head
    base = remove_adapters(copy.deepcopy(model))  # the trained head stays: PEFT copies it into modules_to_save
    peft_model = get_peft_model(base.get_submodule(prefix) if prefix else base, cfg)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for path, named in tensors.items():
            target = dict(inner.get_submodule(path).named_parameters())
            for name, value in named.items():
                if name not in target:
                    raise RobustfeatError(f"PEFT's {cfg.peft_type} layer at '{path}' has no tensor '{name}'")
                target[name].copy_(value.reshape(target[name].shape).to(target[name].dtype))
    if base_name:
        peft_model.peft_config["default"].base_model_name_or_path = base_name
    return peft_model


def _write_peft(handle, raw: dict[str, Any], tmp: Path) -> None:
    model = handle.model
    peft_model = to_peft_model(model, raw["adapter"], raw["model"]["family"], peft_base_name(raw["model"]["name"]))
    peft_model.save_pretrained(tmp, save_embedding_layers=False)  # no embedding is adapted: no hub lookup
    _write_head(model, tmp)


def _write_head(model: nn.Module, tmp: Path) -> None:
    head = head_state(model, backbone(model))
    if head:
        from safetensors.torch import save_file

        save_file(head, str(tmp / HEAD_FILE), metadata={"backbone": backbone(model), "model_class": type(model).__name__})


def _write_merged(handle, raw: dict[str, Any], tmp: Path) -> None:
    """The fine-tuned model with its update merged into its own weights: a transformers
    ``save_pretrained`` folder (with its tokenizer) for transformers-backed models, whose
    robustfeat head, if any, lies beside it; else its ``state_dict`` in ``model.safetensors``."""
    from transformers import PreTrainedModel

    from robustfeat.adapters.model import has_adapters, merge_and_unload

    from robustfeat.models.vision import ImageTaskModel

    model = handle.model
    if has_adapters(model):
        merge_and_unload(model)
    slot = (next((n for n, m in model.net.named_children() if isinstance(m, nn.Identity)), None)
            if isinstance(model, ImageTaskModel) and isinstance(model.net, PreTrainedModel) else None)
    if slot is not None:
        # a transformers image classifier: the task head goes back into its classifier's place
        net = model.net
        setattr(net, slot, model.head)
        names = list(raw.get("data", {}).get("label_names") or range(model.head.out_features))
        net.config.num_labels = model.head.out_features
        net.config.id2label = {i: str(n) for i, n in enumerate(names)}
        net.config.label2id = {str(n): i for i, n in enumerate(names)}
        net.save_pretrained(tmp)
        return
    prefix = backbone(model)
    inner = model.get_submodule(prefix) if prefix else model
    if isinstance(inner, PreTrainedModel):
        inner.save_pretrained(tmp)
        tok = getattr(handle, "tokenizer", None)
        if tok is not None:
            tok.save_pretrained(tmp)
        _write_head(model, tmp)
        return
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"model": raw["model"]["name"],
                                                              "model_class": type(model).__name__})


#: what ``export_run(..., to=NAME)`` writes: NAME -> writer(handle, run record, folder)
EXPORTS: dict[str, Callable[[Any, dict[str, Any], Path], None]] = {"peft": _write_peft, "merged": _write_merged}


def peft_base_name(model: str) -> str:
    """The base's name as PEFT can resolve it: the hub id a zoo entry declares, else as given."""
    from robustfeat.models.zoo import zoo_entry

    entry = zoo_entry(model)
    return entry.hub_ids[0] if entry is not None and entry.hub_ids else model


def _check_destination(dest: Path, run: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot be written whole, or whose replacement would delete
    the run itself (or the directory the command runs in), before anything is built."""
    if dest.exists() and not overwrite:
        raise RobustfeatError(f"'{dest}' already exists; give another --out or --overwrite to replace it")
    if dest.exists() and not dest.is_dir():
        raise RobustfeatError(f"'{dest}' is a file, not a folder; give --out a folder to write the export into")
    parent = next((p for p in dest.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise RobustfeatError(f"'{parent}' is a file, so '{dest}' cannot be made; give --out a folder path")
    target, source, here = dest.resolve(), run.resolve(), Path.cwd().resolve()
    if target == source or target in source.parents:
        raise RobustfeatError(f"--out '{dest}' is the run '{run}' or holds it; exporting there would replace "
                              "the run itself: give a new folder")
    if dest.exists() and (target == here or target in here.parents):
        raise RobustfeatError(f"--out '{dest}' holds the current directory; give a new folder")


def export_run(path: str | os.PathLike, to: str = "peft", out: str | os.PathLike | None = None,
               overwrite: bool = False, data: str | None = None) -> Path:
    """Write the finished run at ``path`` as ``to`` (:data:`EXPORTS`: ``peft``, ``merged``)
    into ``out`` (a new folder; ``overwrite`` replaces one; ``data``: where the run's data is
    now, when it moved). The folder appears whole or not at all, and a refusal leaves no
    folder behind."""
    if to not in EXPORTS:
        raise RobustfeatError(f"unknown export format '{to}'; give --to {' or --to '.join(EXPORTS)}")
    if out is None or not str(out).strip():
        raise RobustfeatError("give --out DIR, the folder to write the export into")
    dest = Path(out)
    _check_destination(dest, Path(path), overwrite)
    from robustfeat.adapters.checkpoint import refuse_pickle
    from robustfeat.errors import UnknownNameError
    from robustfeat.models.zoo import ModelUnavailableError
    from robustfeat.train.record import RunRecord

    refuse_pickle(path)  # before the record is read and the base model built
    record = RunRecord.read(path)  # a clear refusal for a folder that is not a finished run
    if to == "peft" and record.raw["adapter"]["method"] in ("full", "linear"):
        method = record.raw["adapter"]["method"]
        raise UnsupportedError(f"a {method} run has no adapter to export to PEFT (it changes the model's own "
                               "weights); export it with --to merged")
    try:
        handle, _ = record.rebuild(data=data)
    except (UnknownNameError, ModelUnavailableError) as e:
        raise RobustfeatError(f"cannot export '{path}': its base model '{record.model}' is not available here "
                              f"({e})") from None
    made = next((p for p in reversed([dest.absolute(), *dest.absolute().parents]) if not p.exists()), None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        EXPORTS[to](handle, record.raw, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        if made is not None and made != dest.absolute() and made.exists():
            shutil.rmtree(made, ignore_errors=True)  # the parents this call made hold only its temporary folder
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
