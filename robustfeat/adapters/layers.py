"""The layer types an adapter can wrap, and the few operations the methods need on them.

Every adapter method is written once against this small interface:

* ``as_oik(weight)`` views a stored weight as ``[d_out, d_in, k]`` (k = kernel elements,
  1 for linear layers) so that merges are one formula for every layer type, and
  ``from_oik`` writes it back in the stored layout;
* ``feature_linear(x, M)`` applies a matrix ``M [f_out, f_in]`` along the feature axis
  of an activation (the last axis for linear layers, the channel axis for convolutions);
* ``base_op(layer, x, W)`` runs the layer's own operation (stride, padding, dilation
  included) with another weight and no bias.

Adding a layer type means registering one more :class:`LayerKind`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustfeat.errors import UnsupportedError
from robustfeat.registry import LAYER_KINDS


@dataclass(frozen=True)
class LayerInfo:
    """Shape facts of one target layer, used by the trainable-parameter formulas."""

    d_in: int  # input features / channels
    d_out: int  # output features / channels
    k: int = 1  # kernel elements (kh * kw for Conv2d, 1 for linear layers)
    kernel: tuple[int, ...] = ()


class LayerKind:
    """Interface for one wrappable layer type. Subclasses set ``name`` and implement."""

    name: str = ""
    feature_axis: int = -1

    def module_type(self) -> type | None:  # None when the defining library is absent
        raise NotImplementedError

    def info(self, layer: nn.Module) -> LayerInfo:
        raise NotImplementedError

    def check(self, layer: nn.Module, name: str) -> None:
        """Raise UnsupportedError when this particular layer cannot be adapted."""
        from torch.nn.utils import parametrize

        if parametrize.is_parametrized(layer) or not isinstance(getattr(layer, "weight", None), nn.Parameter):
            raise UnsupportedError(
                f"'{name}' has a parametrized or computed weight (e.g. weight norm); merging into it "
                "would be lost. Remove the parametrization or leave the layer out of target_modules."
            )
        if layer._forward_pre_hooks:
            raise UnsupportedError(
                f"'{name}' has forward pre-hooks (old-style weight norm or similar) that may rewrite its "
                "weight; adapters cannot be merged into it. Leave it out of target_modules."
            )
        if self.custom_forward(layer) and not self._probe(layer):
            raise UnsupportedError(
                f"'{name}' is a {type(layer).__name__} whose own forward is not a plain "
                f"{self.name} operation of its weight (e.g. weight standardisation), so adapters "
                "could not be merged exactly. Leave it out of target_modules."
            )

    def custom_forward(self, layer: nn.Module) -> bool:
        """Whether ``layer`` is a subclass that overrides its parent's forward."""
        base = self.module_type()
        return base is not None and type(layer).forward is not base.forward

    def probe_input(self, layer: nn.Module, g: torch.Generator) -> torch.Tensor:
        return torch.randn(2, self.info(layer).d_in, generator=g)

    @torch.no_grad()
    def _probe(self, layer: nn.Module) -> bool:
        """A custom forward is accepted when it is linear in the weight and commutes with a
        mixing of input features, the two facts every merge relies on."""
        w = layer.weight.detach()
        if w.device.type != "cpu" or w.dtype != torch.float32:
            return True  # the probe needs a float32 CPU layer; trust the registered kind otherwise
        g = torch.Generator().manual_seed(0)
        x = self.probe_input(layer, g)
        w2 = torch.randn(w.shape, generator=g)
        d_in = self.info(layer).d_in
        m = torch.randn(d_in, d_in, generator=g) / d_in**0.5

        def f(inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            return self.base_op(layer, inp, weight)

        tol = dict(rtol=1e-4, atol=1e-4)
        linear = torch.allclose(f(x, w + w2), f(x, w) + f(x, w2), **tol)
        w_mixed = self.from_oik(torch.einsum("oik,ij->ojk", self.as_oik(w), m), w)  # W M
        commutes = torch.allclose(f(self.feature_linear(x, m), w), f(x, w_mixed), **tol)
        return linear and commutes

    def as_oik(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_oik(self, w_oik: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feature_linear(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return F.linear(x, m)

    def broadcast(self, v: torch.Tensor) -> torch.Tensor:
        """Shape a per-feature vector so it broadcasts against activations."""
        return v

    def base_op(self, layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's own operation with ``weight`` and no bias."""
        if self.custom_forward(layer):
            # A subclass with its own forward (e.g. static 'same' padding): run that forward
            # with the weight swapped, so its logic is reused, not re-implemented.
            from torch.func import functional_call

            return functional_call(layer, {"weight": weight, "bias": None}, (x,))
        return self.plain_op(layer, x, weight)

    def plain_op(self, layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight)

    def shift_is_exact(self, layer: nn.Module) -> bool:
        """Whether a constant input shift folds exactly into the bias of this layer."""
        return True


@LAYER_KINDS.register("linear")
class LinearKind(LayerKind):
    name = "linear"

    def module_type(self) -> type:
        return nn.Linear

    def info(self, layer: nn.Module) -> LayerInfo:
        return LayerInfo(d_in=layer.in_features, d_out=layer.out_features)

    def as_oik(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.unsqueeze(-1)  # (out, in) -> (out, in, 1)

    def from_oik(self, w_oik: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return w_oik.squeeze(-1)


@LAYER_KINDS.register("conv1d-transposed")
class TransposedConv1DKind(LayerKind):
    """transformers' ``Conv1D`` (GPT-2 and relatives): a linear layer whose weight is
    stored transposed, ``[d_in, d_out]``, computing ``x @ W + b``."""

    name = "conv1d-transposed"

    def module_type(self) -> type | None:
        import sys

        if "transformers" not in sys.modules:  # no Conv1D can exist without it: skip the import
            return None
        try:
            from transformers.pytorch_utils import Conv1D
        except ImportError:
            return None
        return Conv1D

    def info(self, layer: nn.Module) -> LayerInfo:
        d_in, d_out = layer.weight.shape
        return LayerInfo(d_in=d_in, d_out=d_out)

    def as_oik(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.t().unsqueeze(-1)  # (in, out) -> (out, in, 1)

    def from_oik(self, w_oik: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return w_oik.squeeze(-1).t().contiguous()


@LAYER_KINDS.register("conv2d")
class Conv2dKind(LayerKind):
    """``nn.Conv2d`` and its subclasses (for example 'same'-padding variants that pad in
    their own ``forward``), with ``groups == 1``."""

    name = "conv2d"
    feature_axis = 1

    def module_type(self) -> type:
        return nn.Conv2d

    def info(self, layer: nn.Module) -> LayerInfo:
        kh, kw = layer.kernel_size
        return LayerInfo(
            d_in=layer.in_channels, d_out=layer.out_channels, k=kh * kw, kernel=(kh, kw)
        )

    def check(self, layer: nn.Module, name: str) -> None:
        if layer.groups != 1:
            raise UnsupportedError(
                f"'{name}' is a grouped or depthwise Conv2d (groups={layer.groups}); "
                "adapters need groups == 1. Leave it out of target_modules "
                "(the keyword 'all-conv' skips such layers)."
            )
        super().check(layer, name)

    def as_oik(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.flatten(2)  # (out, in, kh, kw) -> (out, in, kh*kw)

    def from_oik(self, w_oik: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return w_oik.reshape(like.shape)

    def feature_linear(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, m[:, :, None, None])  # a 1x1 convolution mixes channels

    def broadcast(self, v: torch.Tensor) -> torch.Tensor:
        return v[:, None, None]  # (C,) -> (C, 1, 1) against (N, C, H, W)

    def plain_op(self, layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return layer._conv_forward(x, weight, None)

    def probe_input(self, layer: nn.Module, g: torch.Generator) -> torch.Tensor:
        side = 2 * max(layer.kernel_size) * max(layer.dilation) + 3
        return torch.randn(1, layer.in_channels, side, side, generator=g)

    def shift_is_exact(self, layer: nn.Module) -> bool:
        # Zero padding is applied after the input shift, so border outputs would miss the
        # shift's contribution. Unpadded layers, and padding that copies values
        # (reflect, replicate, circular), fold the shift exactly.
        if self.custom_forward(layer):
            return tuple(layer.kernel_size) == (1, 1) and tuple(layer.padding) == (0, 0)
        unpadded = layer.padding == "valid" or all(p == 0 for p in layer.padding) or (
            layer.padding == "same" and tuple(layer.kernel_size) == (1, 1))
        return unpadded or layer.padding_mode != "zeros"


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The registered kind of ``module`` (subclasses included), or None."""
    for cls in type(module).__mro__:
        for _, kind_cls in LAYER_KINDS.items():
            kind = _instance(kind_cls)
            if kind.module_type() is cls:
                return kind
    return None


_INSTANCES: dict[type, LayerKind] = {}


def _instance(kind_cls: type[LayerKind]) -> LayerKind:
    if kind_cls not in _INSTANCES:
        _INSTANCES[kind_cls] = kind_cls()
    return _INSTANCES[kind_cls]


def supported_layer_names() -> list[str]:
    names = []
    for _, kind_cls in LAYER_KINDS.items():
        t = _instance(kind_cls).module_type()
        if t is not None:
            names.append(f"{t.__module__}.{t.__qualname__}")
    return names
