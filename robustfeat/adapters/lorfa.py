"""LoRFA: low-rank feature-space adaptation, h = W0 (x + s B A x).

The input features are transformed by I + s B A before the frozen layer, so the merged
weight W0 (I + s B A) stays in the column space of W0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustfeat.adapters.base import AdapterLayer
from robustfeat.adapters.config import AdapterConfig
from robustfeat.adapters.layers import LayerInfo
from robustfeat.registry import ADAPTERS


@ADAPTERS.register("lorfa")
class LoRFALayer(AdapterLayer):
    name = "lorfa"
    summary = "feature-space low-rank transform of the input: W0 @ (I + s*B@A) (B zero-init)"
    formula = "2*r*d_in per layer"
    scale_identity = {"lorfa_B": 0.0}  # the feature update B A x is linear in B
    options = frozenset({"rank", "alpha", "dropout"})

    @classmethod
    def layer_param_count(cls, info: LayerInfo, config: AdapterConfig) -> int:
        return 2 * config.rank * info.d_in

    def build(self, config: AdapterConfig, dtype: torch.dtype, device: torch.device) -> None:
        r, d = config.rank, self.info.d_in
        self.lorfa_A = nn.Parameter(torch.empty(r, d, dtype=dtype, device=device))  # (r, d_in)
        self.lorfa_B = nn.Parameter(torch.empty(d, r, dtype=dtype, device=device))  # (d_in, r)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        nn.init.kaiming_uniform_(self.lorfa_A, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lorfa_B)

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        h = self.kind.feature_linear(self.dropout(x), self.lorfa_A)  # (..., r)
        x = x + self.kind.feature_linear(h, self.lorfa_B) * self.scaling  # (..., d_in)
        return self.base_layer(x, *args, **kwargs)

    def merged_weight(self, w_oik: torch.Tensor) -> torch.Tensor:
        # W0 (I + s B A) on the input axis: (o, k, i) @ (i, r) @ (r, i) -> (o, k, i)
        a, b = self.lorfa_A.to(w_oik.dtype), self.lorfa_B.to(w_oik.dtype)
        delta = ((w_oik.transpose(1, 2) @ b) @ a).transpose(1, 2)
        return w_oik + self.scaling * delta
