"""The comparison baselines: full fine-tuning, head-only (linear probe), and PEFT's
IA3 and VeRA through thin bridges (PEFT's own layers, no copied code)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from torch import nn

from robustfeat.adapters.base import AdapterMethod, under_modules
from robustfeat.adapters.config import AdapterConfig
from robustfeat.adapters.layers import LayerInfo, LayerKind
from robustfeat.errors import ConfigError, UnsupportedError
from robustfeat.registry import ADAPTERS


class _NoLayers(AdapterMethod):
    """Methods that train existing weights in place: nothing to merge or disable."""

    uses_targets = False
    supports_disable = False

    @classmethod
    def validate_config(cls, config: AdapterConfig) -> None:
        if config.target_modules is not None or config.exclude_modules:
            raise ConfigError(
                f"method '{cls.name}' adapts no layers, so target_modules/exclude_modules "
                "do not apply; remove them"
            )

    @classmethod
    def inject(cls, model: nn.Module, config: AdapterConfig, targets: list) -> None:
        pass

    @classmethod
    def handles(cls, model: nn.Module) -> list:
        return []


@ADAPTERS.register("full")
class FullFineTuning(_NoLayers):
    name = "full"
    summary = "full fine-tuning: every weight of the model is trained"
    default_lr = 5e-5
    formula = "all parameters of the model"

    @classmethod
    def trainable_by_default(cls) -> bool:
        return True

    @classmethod
    def scalable(cls) -> bool:
        return True

    @classmethod
    def scale(cls, model: nn.Module, alpha: float, base: nn.Module | None = None,
              keep: tuple[str, ...] = ()) -> None:
        """theta0 + alpha (theta - theta0) for every weight the base has (WiSE-FT); the task
        head (``keep``) stays as trained."""
        import torch

        if base is None:
            raise UnsupportedError("scaling a full fine-tune needs the base model's weights (base=...)")
        theta0 = dict(base.named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if under_modules(name, keep):
                    continue
                p0 = theta0.get(name)
                if p0 is None or p0.shape != p.shape:
                    raise UnsupportedError(f"the base model has no weight '{name}' of shape {tuple(p.shape)} "
                                           "to scale the full fine-tune towards")
                p.copy_(torch.lerp(p0.to(p), p, float(alpha)))


@ADAPTERS.register("linear")
class LinearProbe(_NoLayers):
    name = "linear"
    summary = "head only (linear probe): the base is frozen, modules_to_save are trained"
    formula = "parameters of modules_to_save only"
    default_lr = 1e-2

    @classmethod
    def validate_config(cls, config: AdapterConfig) -> None:
        super().validate_config(config)
        if not config.modules_to_save:
            raise ConfigError(
                "method 'linear' trains only the head: name it in modules_to_save "
                "(for example modules_to_save=['classifier'])"
            )


#: where a merged PEFT layer keeps its base layer's own tensors from before the merge
_SAVED = "_robustfeat_unmerged"


class _PeftLayerHandle:
    """Presents a PEFT tuner layer through robustfeat's LayerHandle interface. Merging keeps
    a copy of the base layer's weight and bias, so unmerging is exact (PEFT's own unmerge
    divides IA3's scales back out and subtracts VeRA's update, which rounds)."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer

    @property
    def merged(self) -> bool:
        return bool(self.layer.merged)

    @property
    def enabled(self) -> bool:
        return not self.layer.disable_adapters

    def merge(self) -> None:
        if not self.layer.merged:
            base = self.layer.get_base_layer()
            saved = {n: p.detach().clone() for n, p in base.named_parameters(recurse=False)}
            self.layer.merge()
            self.layer.__dict__[_SAVED] = saved

    def unmerge(self) -> None:
        if self.layer.merged:
            import warnings

            import torch

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "unmerge result can be inaccurate": the copy below makes it exact
                self.layer.unmerge()
            saved = self.layer.__dict__.pop(_SAVED, None)
            if saved is not None:
                base = self.layer.get_base_layer()
                with torch.no_grad():
                    for n, p in base.named_parameters(recurse=False):
                        if n in saved:
                            p.copy_(saved[n])

    def set_enabled(self, enabled: bool) -> None:
        if not enabled:
            self.unmerge()
        self.layer.enable_adapters(enabled)

    def unwrap(self) -> nn.Module:
        self.layer.__dict__.pop(_SAVED, None)
        return self.layer.get_base_layer()

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.layer.named_parameters() if not n.startswith("base_layer.")}


class _PeftBridge(AdapterMethod):
    """Injects a PEFT tuner in place (the model object stays the caller's)."""

    peft_type: ClassVar[str] = ""

    @classmethod
    def peft_config(cls, config: AdapterConfig, target_regex: str, fan_in_fan_out: bool) -> Any:
        raise NotImplementedError

    @classmethod
    def inject(cls, model: nn.Module, config: AdapterConfig, targets: list[tuple[str, nn.Module, LayerKind]]) -> None:
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

        regex = "|".join(re.escape(path) for path, _, _ in targets)
        # transformers' Conv1D stores its weight transposed; PEFT must be told so.
        transposed = bool(targets) and all(k.name == "conv1d-transposed" for _, _, k in targets)
        peft_config = cls.peft_config(config, f"(?:{regex})", transposed)
        tuner = PEFT_TYPE_TO_TUNER_MAPPING[cls.peft_type]
        tuner(model, peft_config, adapter_name="default")  # mutates ``model`` in place

    @classmethod
    def handles(cls, model: nn.Module) -> list:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [(n, _PeftLayerHandle(m)) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


@ADAPTERS.register("ia3")
class IA3Bridge(_PeftBridge):
    name = "ia3"
    summary = "PEFT IA3: learned output scaling diag(l) @ W0 (the row-space twin of vefa)"
    formula = "d_out per layer"
    default_lr = 2e-2
    peft_type = "IA3"
    scale_identity = {"ia3_l": 1.0}

    @classmethod
    def layer_param_count(cls, info: LayerInfo, config: AdapterConfig) -> int:
        return info.d_out

    @classmethod
    def peft_config(cls, config: AdapterConfig, target_regex: str, fan_in_fan_out: bool) -> Any:
        from peft import IA3Config

        return IA3Config(
            target_modules=target_regex,
            feedforward_modules=[],
            init_ia3_weights=True,
            fan_in_fan_out=fan_in_fan_out,
        )


@ADAPTERS.register("vera")
class VeRABridge(_PeftBridge):
    name = "vera"
    summary = "PEFT VeRA: frozen shared random A, B with trained vectors, diag(b) B diag(d) A"
    formula = "r + d_out per layer (A, B frozen and shared)"
    default_lr = 2e-2
    options = frozenset({"rank", "dropout"})
    layer_kinds = frozenset({"linear", "conv1d-transposed"})
    peft_type = "VERA"
    scale_identity = {"vera_lambda_b": 0.0}  # the update diag(b) B diag(d) A is linear in b

    @classmethod
    def layer_param_count(cls, info: LayerInfo, config: AdapterConfig) -> int:
        return config.rank + info.d_out

    @classmethod
    def peft_config(cls, config: AdapterConfig, target_regex: str, fan_in_fan_out: bool) -> Any:
        from peft import VeraConfig

        return VeraConfig(
            fan_in_fan_out=fan_in_fan_out,
            r=config.rank,
            target_modules=target_regex,
            vera_dropout=config.dropout,
            projection_prng_key=config.seed or 0,
            save_projection=True,
        )

    @classmethod
    def check_target(cls, module: nn.Module, kind: LayerKind, path: str, config: AdapterConfig) -> None:
        if kind.name not in cls.layer_kinds:
            raise UnsupportedError(f"vera supports only linear layers; '{path}' is {kind.name}")
