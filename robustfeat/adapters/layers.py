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
        try:
            from transformers.pytorch_utils import Conv1D
        except ImportError:  # transformers is optional for this kind
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

    def as_oik(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.flatten(2)  # (out, in, kh, kw) -> (out, in, kh*kw)

    def from_oik(self, w_oik: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return w_oik.reshape(like.shape)

    def feature_linear(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, m[:, :, None, None])  # a 1x1 convolution mixes channels

    def broadcast(self, v: torch.Tensor) -> torch.Tensor:
        return v[:, None, None]  # (C,) -> (C, 1, 1) against (N, C, H, W)

    def base_op(self, layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if type(layer).forward is nn.Conv2d.forward:
            return layer._conv_forward(x, weight, None)
        # A subclass with its own forward (e.g. static 'same' padding): run that forward
        # with the weight swapped, so its padding logic is reused, not re-implemented.
        from torch.func import functional_call

        return functional_call(layer, {"weight": weight, "bias": None}, (x,))

    def shift_is_exact(self, layer: nn.Module) -> bool:
        # Zero padding is applied after the input shift, so border outputs would miss
        # the shift's contribution; only unpadded pointwise convolutions are exact.
        return tuple(layer.kernel_size) == (1, 1) and tuple(layer.padding) == (0, 0)


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
