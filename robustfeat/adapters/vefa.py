"""VeFA: vector-based feature-space adaptation, h = W0 (lam * x [+ t]) + b.

One scale per input feature (init 1), optionally a shift t (init 0). The merged weight
W0 diag(lam) stays in the column space of W0; the shift folds into the bias, b + W0 t.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustfeat.adapters.base import AdapterLayer
from robustfeat.adapters.config import AdapterConfig
from robustfeat.adapters.layers import LayerInfo, LayerKind
from robustfeat.errors import UnsupportedError
from robustfeat.registry import ADAPTERS


@ADAPTERS.register("vefa")
class VeFALayer(AdapterLayer):
    name = "vefa"
    summary = "feature-space element-wise scale of the input: W0 @ diag(lam) (lam init 1), optional shift"
    formula = "d_in per layer (2*d_in with shift)"
    scale_identity = {"vefa_lam": 1.0, "vefa_shift": 0.0}  # lam -> 1 + alpha (lam - 1), t -> alpha t
    options = frozenset({"shift"})
    default_lr = 2e-2  # vector methods need a 10-100x higher rate than LoRA
    contract_variants = [{"shift": True}]

    @classmethod
    def layer_param_count(cls, info: LayerInfo, config: AdapterConfig) -> int:
        return info.d_in * (2 if config.shift else 1)

    @classmethod
    def check_target(cls, module: nn.Module, kind: LayerKind, path: str, config: AdapterConfig) -> None:
        if config.shift and not kind.shift_is_exact(module):
            raise UnsupportedError(
                f"vefa with shift=True cannot adapt '{path}': its padding would make the "
                "merged model differ at the borders (only unpadded 1x1 convolutions fold a "
                "shift exactly). Use shift=False or leave this layer out of target_modules."
            )

    def build(self, config: AdapterConfig, dtype: torch.dtype, device: torch.device) -> None:
        d = self.info.d_in
        self.vefa_lam = nn.Parameter(torch.empty(d, dtype=dtype, device=device))
        self.vefa_shift = nn.Parameter(torch.empty(d, dtype=dtype, device=device)) if config.shift else None

    def reset_parameters(self, generator: torch.Generator | None) -> None:
        nn.init.ones_(self.vefa_lam)
        if self.vefa_shift is not None:
            nn.init.zeros_(self.vefa_shift)

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = x * self.kind.broadcast(self.vefa_lam)
        if self.vefa_shift is not None:
            x = x + self.kind.broadcast(self.vefa_shift)
        return self.base_layer(x, *args, **kwargs)

    def merged_weight(self, w_oik: torch.Tensor) -> torch.Tensor:
        return w_oik * self.vefa_lam.to(w_oik.dtype)[None, :, None]

    def merged_bias(self, w_oik: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
        if self.vefa_shift is None:
            return bias
        folded = w_oik.sum(-1) @ self.vefa_shift.to(w_oik.dtype)  # W0 t, kernel taps summed
        return folded if bias is None else bias + folded
