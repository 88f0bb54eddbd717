"""Full fine-tunes made elsewhere: a transformers ``save_pretrained`` folder
(:class:`PretrainedSubject`) and a timm/torchvision ``state_dict`` in safetensors
(:class:`WeightsSubject`)."""

from __future__ import annotations

import copy
import hashlib
import os
from functools import cached_property
from pathlib import Path

import torch

from robustfeat.evaluations.imported.adapter_folders import ADAPTER_CONFIG
from robustfeat.evaluations.imported.common import (ImportedCheckpointError, ImportedSubject, ImportOptions, _sha256,
                                                   changed_layers, check_base_family, head_size, read_safetensors,
                                                   resolve_base)


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
