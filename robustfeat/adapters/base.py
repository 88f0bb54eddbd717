"""The shared base: what every fine-tuning method is, and the one wrapper layer class.

A method is a class registered in ``ADAPTERS``. It declares its name, a one-line
summary, its trainable-parameter formula and the config fields it reads, and knows how
to inject itself. Methods that wrap layers (lora, lorfa, vefa) subclass
:class:`AdapterLayer` and supply only their parameters, their init and their math:

* ``build(config)`` creates the parameters and ``reset_parameters(generator)`` inits them;
* ``adapted_forward(x, ...)`` is the forward pass with the adapter active;
* ``merged_weight(w_oik)`` (and ``merged_bias``) give the equivalent plain layer.

Merge, unmerge, enable/disable and unloading are written here once. Merging keeps a
copy of the original weight so that unmerging is exact (no division by learned
scales, no accumulated rounding).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from robustfeat.adapters.config import AdapterConfig
from robustfeat.adapters.layers import LayerInfo, LayerKind
from robustfeat.adapters.targeting import set_submodule
from robustfeat.errors import UnsupportedError

ALL_KINDS = frozenset({"linear", "conv1d-transposed", "conv2d"})


class LayerHandle(Protocol):
    """What the model-level operations need from an adapted layer."""

    merged: bool

    def merge(self) -> None: ...
    def unmerge(self) -> None: ...
    def set_enabled(self, enabled: bool) -> None: ...
    def unwrap(self) -> nn.Module: ...
    def adapter_parameters(self) -> dict[str, nn.Parameter]: ...


class AdapterMethod:
    """A fine-tuning method as the registry sees it (all class-level)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    formula: ClassVar[str] = ""
    #: AdapterConfig fields this method reads (others must stay at their defaults).
    options: ClassVar[frozenset[str]] = frozenset()
    layer_kinds: ClassVar[frozenset[str]] = ALL_KINDS
    default_targets: ClassVar[str] = "all-linear"
    #: learning rate ``robustfeat finetune`` uses when none is given (see the README)
    default_lr: ClassVar[float] = 2e-3
    uses_targets: ClassVar[bool] = True
    supports_disable: ClassVar[bool] = True
    #: Extra config variants the generated contract tests also run, e.g. [{"shift": True}].
    contract_variants: ClassVar[list[dict[str, Any]]] = []
    #: The value each adapter parameter takes where the adapter does nothing, by parameter name
    #: (PEFT's ``name.default`` included); :meth:`scale` moves each of them along the line from
    #: that value to the trained one. Parameters not named here (LoRA's A) are left as trained.
    scale_identity: ClassVar[dict[str, float]] = {}

    @classmethod
    def scalable(cls) -> bool:
        """Whether :meth:`scale` applies (the method has a fine-tuning update to scale)."""
        return bool(cls.scale_identity)

    @classmethod
    def scale(cls, model: nn.Module, alpha: float, base: nn.Module | None = None,
              keep: tuple[str, ...] = ()) -> None:
        """Scale the fine-tuning update of ``model`` by ``alpha`` in place (adapter-scale
        curves, WiSE-FT for adapters): 0 gives the base model, exactly, 1 leaves it as
        trained, exactly (``torch.lerp`` is exact at both ends). ``keep`` names modules left
        as trained (the task head); ``base`` is the model before fine-tuning (full only)."""
        if not cls.scale_identity:
            raise UnsupportedError(f"method '{cls.name}' has no fine-tuning update to scale")
        found = False
        with torch.no_grad():
            for name, p in model.named_parameters():
                if under_modules(name, keep):
                    continue
                parts = name.split(".")
                key = parts[-2] if parts[-1] == "default" and len(parts) > 1 else parts[-1]
                if key in cls.scale_identity:
                    p.copy_(torch.lerp(torch.full_like(p, cls.scale_identity[key]), p, float(alpha)))
                    found = True
        if not found:
            raise UnsupportedError(f"the model holds no {cls.name} adapter parameters to scale")

    @classmethod
    def validate_config(cls, config: AdapterConfig) -> None:
        """Method-specific checks beyond AdapterConfig's own."""

    @classmethod
    def check_target(cls, module: nn.Module, kind: LayerKind, path: str, config: AdapterConfig) -> None:
        """Raise for a target this method cannot adapt under this config."""

    @classmethod
    def layer_param_count(cls, info: LayerInfo, config: AdapterConfig) -> int:
        """Trainable parameters added per target layer (the documented formula)."""
        raise NotImplementedError

    @classmethod
    def inject(cls, model: nn.Module, config: AdapterConfig, targets: list[tuple[str, nn.Module, LayerKind]]) -> None:
        raise NotImplementedError

    @classmethod
    def handles(cls, model: nn.Module) -> list[tuple[str, LayerHandle]]:
        """The adapted layers of ``model`` (path, handle)."""
        return [(n, m) for n, m in model.named_modules() if isinstance(m, AdapterLayer)]

    @classmethod
    def trainable_by_default(cls) -> bool:
        """Whether injection leaves the whole base trainable (full fine-tuning)."""
        return False


def under_modules(name: str, keep: tuple[str, ...]) -> bool:
    return any(name == k or name.startswith(k + ".") or f".{k}." in f".{name}" for k in keep)


def _generator(config: AdapterConfig, path: str) -> torch.Generator | None:
    """A per-layer generator, so a seed gives the same init whatever the layer order."""
    if config.seed is None:
        return None
    import zlib

    g = torch.Generator()
    g.manual_seed(config.seed * 1_000_003 + zlib.crc32(path.encode()))
    return g


class AdapterLayer(nn.Module, AdapterMethod):
    """Wraps one frozen layer; subclasses are the registered adapter methods."""

    def __init__(self, base_layer: nn.Module, kind: LayerKind, config: AdapterConfig, path: str = "") -> None:
        super().__init__()
        self.base_layer = base_layer
        self.kind = kind
        self.info = kind.info(base_layer)
        self.scaling = config.scaling
        self.merged = False
        self.enabled = True
        self.register_buffer("_w0", None, persistent=False)  # original weight while merged
        self.register_buffer("_b0", None, persistent=False)
        self._had_bias = base_layer.bias is not None
        w = base_layer.weight
        # Initialise on the CPU, then move: a seed then gives the same adapter on any device.
        self.build(config, dtype=w.dtype, device=torch.device("cpu"))
        with torch.no_grad():
            self.reset_parameters(_generator(config, path))
        if w.device.type != "cpu":
            for p in self.adapter_parameters().values():
                p.data = p.data.to(w.device)
        self.train(base_layer.training)  # a wrapper injected into an eval() model stays in eval

    # --- what each method supplies -------------------------------------------------
    def build(self, config: AdapterConfig, dtype: torch.dtype, device: torch.device) -> None:
        raise NotImplementedError

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError

    def merged_weight(self, w_oik: torch.Tensor) -> torch.Tensor:
        """The merged weight, in the ``[d_out, d_in, k]`` view of the base weight."""
        raise NotImplementedError

    def merged_bias(self, w_oik: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        return bias

    # --- written once ---------------------------------------------------------------
    @classmethod
    def inject(cls, model: nn.Module, config: AdapterConfig, targets: list[tuple[str, nn.Module, LayerKind]]) -> None:
        for path, module, kind in targets:
            set_submodule(model, path, cls(module, kind, config, path))

    def __getattr__(self, name: str) -> Any:
        # Parents sometimes read their child's attributes (T5 reads ``wo.weight.dtype``,
        # others ``in_features``): fall through to the wrapped layer, as PEFT does.
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self._modules.get("base_layer")
            if base is None:
                raise
            return getattr(base, name)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.merged:
            if self.training and torch.is_grad_enabled():
                raise UnsupportedError(
                    "the adapters are merged, so training would not update them; call "
                    "unmerge_adapters(model) before training (or model.eval() to run inference)"
                )
            return self.base_layer(x, *args, **kwargs)
        if not self.enabled:
            return self.base_layer(x, *args, **kwargs)
        return self.adapted_forward(x, *args, **kwargs)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        if not self.enabled:
            raise UnsupportedError("cannot merge a disabled adapter; enable it first")
        layer = self.base_layer
        w = layer.weight
        self._w0 = w.detach().clone()
        self._b0 = None if layer.bias is None else layer.bias.detach().clone()
        # Compute in float32 at least, so half-precision bases merge without extra loss.
        work = torch.promote_types(w.dtype, torch.float32)
        w_oik = self.kind.as_oik(w.detach().to(work))
        new_w = self.kind.from_oik(self.merged_weight(w_oik), w)
        b = None if layer.bias is None else layer.bias.detach().to(work)
        new_b = self.merged_bias(w_oik, b)
        w.copy_(new_w.to(w.dtype))
        if new_b is not None:
            if layer.bias is None:
                layer.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=False)
            else:
                layer.bias.copy_(new_b.to(layer.bias.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        layer = self.base_layer
        layer.weight.copy_(self._w0)
        if self._had_bias:
            layer.bias.copy_(self._b0)
        else:
            layer.bias = None
        self._w0 = self._b0 = None
        self.merged = False

    def set_enabled(self, enabled: bool) -> None:
        if not enabled and self.merged:
            self.unmerge()
        self.enabled = enabled

    def unwrap(self) -> nn.Module:
        """The base layer, with the adapter folded in if merged."""
        self._w0 = self._b0 = None
        return self.base_layer

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if not n.startswith("base_layer.")}

    def extra_repr(self) -> str:
        i = self.info
        return f"d_in={i.d_in}, d_out={i.d_out}, k={i.k}, scaling={self.scaling:g}, merged={self.merged}"
