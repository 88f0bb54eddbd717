"""LoRA (Hu et al. 2021): h = W0 x + s B A x, a low-rank update of the weight."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustfeat.adapters.base import AdapterLayer
from robustfeat.adapters.config import AdapterConfig
from robustfeat.adapters.layers import LayerInfo
from robustfeat.registry import ADAPTERS


@ADAPTERS.register("lora")
class LoRALayer(AdapterLayer):
    name = "lora"
    summary = "weight-space low-rank update: W0 + s*B@A (B zero-init)"
    formula = "r*(d_in*k + d_out) per layer (k = kernel elements, 1 for linear)"
    scale_identity = {"lora_B": 0.0}  # the update B A is linear in B
    options = frozenset({"rank", "alpha", "dropout"})

    @classmethod
    def layer_param_count(cls, info: LayerInfo, config: AdapterConfig) -> int:
        return config.rank * (info.d_in * info.k + info.d_out)

    def build(self, config: AdapterConfig, dtype: torch.dtype, device: torch.device) -> None:
        r, i = config.rank, self.info
        # A acts like the base layer (same kernel, stride, padding) down to r channels:
        # (r, d_in, *kernel), ready for the base op. B is a 1x1 map up to d_out: (d_out, r).
        self.lora_A = nn.Parameter(torch.empty(r, i.d_in, *i.kernel, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.empty(i.d_out, r, dtype=dtype, device=device))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B)

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        h = self.kind.base_op(self.base_layer, self.dropout(x), self.lora_A)  # (..., r)
        return y + self.kind.feature_linear(h, self.lora_B) * self.scaling

    def merged_weight(self, w_oik: torch.Tensor) -> torch.Tensor:
        delta = (self.lora_B.to(w_oik.dtype) @ self.lora_A.flatten(1).to(w_oik.dtype)).view_as(w_oik)
        return w_oik + self.scaling * delta
