"""Drift of the fine-tuned model from its base, per adapted layer.

* ``cka``: linear CKA between base and fine-tuned outputs of each adapted layer on probe
  inputs (the checkpoint's test split); outputs are pooled per input (mean over real
  tokens, or over space for convolutions).
* ``weights``: per adapted layer, the merged weight against W0: intruder dimensions (top
  k = 10 directions, thresholds swept), the energy of the intruders outside W0's top-2k
  span, ||dW||_F / ||W0||_F, and the effective rank of dW.

Methods without targets (``full``, ``linear``) are measured on the layers the model's
default targets name, so every method of a model is compared on the same layers.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import torch
from torch import nn

from robustfeat.metrics.drift import INTRUDER_THRESHOLDS, effective_rank, intruder_dimensions, linear_cka, relative_change
from robustfeat.models.handle import ModelHandle
from robustfeat.evaluations.base import (
    FRACTION,
    Cell,
    EvalContext,
    Evaluation,
    Headline,
    batched,
    metric_row,
    register_evaluation,
    subsample,
    summary_row,
)

DEFAULT_EPS = 0.5


def drift_layers(ctx: EvalContext) -> list[str]:
    """The checkpoint's adapted layers, or the model's default targets for methods that
    have none."""
    if "drift_layers" not in ctx.memo:
        targets = ctx.subject.targets
        if not targets:
            from robustfeat.adapters.config import AdapterConfig
            from robustfeat.adapters.targeting import find_targets
            from robustfeat.registry import ADAPTERS

            model = ctx.handle.model  # no adapters to skip: full/linear keep the base's structure
            cfg = AdapterConfig(method="lora", target_modules=ctx.handle.default_targets,
                                modules_to_save=list(ctx.handle.head))
            targets = [p for p, _, _ in find_targets(model, cfg, ADAPTERS.get("lora").layer_kinds, "all-linear")]
            targets = [p for p in targets if not p.startswith("pretrained_head")]
        ctx.memo["drift_layers"] = list(targets)
    return ctx.memo["drift_layers"]


def _unwrap(module: nn.Module) -> nn.Module:
    while hasattr(module, "base_layer") and isinstance(module.base_layer, nn.Module):
        module = module.base_layer
    return module


def weight_matrix(model: nn.Module, path: str) -> np.ndarray:
    """The layer's weight as a (d_out, d_in * k) float64 matrix."""
    from robustfeat.adapters.layers import layer_kind

    layer = _unwrap(model.get_submodule(path))
    kind = layer_kind(layer)
    w = layer.weight.detach()
    w = kind.as_oik(w) if kind is not None else w.reshape(w.shape[0], -1)
    return w.reshape(w.shape[0], -1).double().cpu().numpy()


@register_evaluation
class WeightDrift(Evaluation):
    needs_base = True
    name = "weights"
    summary = "per adapted layer: intruder dimensions (k=10, eps swept), energy outside W0's top-2k span, ||dW||/||W0||, effective rank of dW"
    order = 100
    explain = ("intruders: new high-ranking singular directions of the fine-tuned weight that match none of the "
               "base's (top 10, cosine below 0.5), totalled over adapted layers.")
    plots = ("drift",)
    headlines = (Headline("intruders", "intruders", "intruders", False,
                          "intruder dimensions at eps 0.5, total over adapted layers", "drift", shift="all",
                          bounds=(0.0, float("inf"))),)

    def cells(self, ctx: EvalContext) -> list[Cell]:
        return [Cell(self.name, p) for p in drift_layers(ctx)]

    def _merged(self, ctx: EvalContext) -> dict[str, np.ndarray]:
        if "merged_weights" not in ctx.memo:
            from robustfeat.adapters.model import adapters_merged

            model = ctx.handle.model  # merged already on the evaluation's fast path: then left merged
            with adapters_merged(model):
                ctx.memo["merged_weights"] = {p: weight_matrix(model, p) for p in drift_layers(ctx)}
        return ctx.memo["merged_weights"]

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        layers = drift_layers(ctx)
        w0 = ctx.base_cached("weights", layers, lambda h: {p: weight_matrix(h.model, p).astype(np.float32)
                                                              for p in layers})[cell.shift].astype(np.float64)
        w = self._merged(ctx)[cell.shift]
        k = self.params.get("k", 10)
        rep = intruder_dimensions(w, w0, k=k)
        dw = w - w0
        n = rep.k
        rows = [metric_row(f"intruders@{eps:g}", rep.count(eps), n) for eps in INTRUDER_THRESHOLDS]
        rows += [
            metric_row("intruders", rep.count(DEFAULT_EPS), n, note=f"k={rep.k}, eps={DEFAULT_EPS}"),
            metric_row("intruder_outside_top2k", rep.outside_share(DEFAULT_EPS), n,
                       note="mean share of each intruder's energy outside W0's top-2k left singular span"),
            metric_row("relative_change", relative_change(w, w0), n, note="||dW||_F / ||W0||_F"),
            metric_row("effective_rank_dw", effective_rank(dw) if np.abs(dw).max() > 0 else 0.0, n),
        ]
        return rows

    @classmethod
    def summarize(cls, rows: list[dict], reference_rows: list[dict] | None, reference: str) -> list[dict]:
        """Intruder counts totalled over the adapted layers; the other metrics averaged."""
        by_metric: dict[str, list[float]] = {}
        for r in rows:
            by_metric.setdefault(r["metric"], []).append(r["value"])
        out = []
        for metric in sorted(by_metric):
            vals = [v for v in by_metric[metric] if not np.isnan(v)]
            if metric.startswith("intruders"):
                out.append(summary_row(cls.name, "all", metric, float(np.sum(vals)), len(by_metric[metric]),
                                       "total over adapted layers"))
            elif vals:
                out.append(summary_row(cls.name, "all", metric, float(np.mean(vals)), len(vals),
                                       "mean over adapted layers"))
        return out


@torch.no_grad()
def layer_outputs(handle: ModelHandle, table, layers: list[str], batch_size: int) -> dict[str, np.ndarray]:
    """Each layer's output, pooled per input: {layer: (N, D)} float32."""
    outs: dict[str, list[np.ndarray]] = {p: [] for p in layers}
    for part in batched(table, batch_size):
        inputs = handle.preprocess(part)
        mask = inputs.get("attention_mask")
        got: dict[str, torch.Tensor] = {}
        with ExitStack() as stack:
            for p in layers:
                def hook(_m, _i, out, p=p):
                    got[p] = out[0] if isinstance(out, tuple) else out

                h = handle.model.get_submodule(p).register_forward_hook(hook)
                stack.callback(h.remove)
            handle.logits(inputs)
        for p in layers:
            outs[p].append(_pool(got[p], mask).float().cpu().numpy())
    return {p: np.concatenate(v) for p, v in outs.items()}


def _pool(out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if out.ndim == 4:
        return out.mean(dim=(2, 3))
    if out.ndim == 3:
        if mask is not None and mask.shape == out.shape[:2]:
            m = mask.unsqueeze(-1).to(out.dtype)
            return (out * m).sum(1) / m.sum(1).clamp(min=1.0)
        return out.mean(1)
    return out.reshape(out.shape[0], -1)


@register_evaluation
class RepresentationDrift(Evaluation):
    needs_base = True
    name = "cka"
    summary = "linear CKA between base and fine-tuned outputs of each adapted layer on probe inputs"
    order = 90
    explain = ("mean CKA: linear CKA between the base's and the fine-tuned model's outputs of each adapted layer "
               "(1 = the same representation), averaged over layers.")
    plots = ("drift",)
    headlines = (Headline("cka", "mean CKA", "cka", True, "linear CKA to the base, mean over adapted layers", "drift",
                          shift="all", bounds=FRACTION),)

    def _probe(self, ctx: EvalContext):
        return subsample(ctx.data["test"], self.params.get("examples", 256), ctx.options.seed)

    def cells(self, ctx: EvalContext) -> list[Cell]:
        return [Cell(self.name, p) for p in drift_layers(ctx)]

    def _tuned(self, ctx: EvalContext) -> dict[str, np.ndarray]:
        if "tuned_outputs" not in ctx.memo:
            ctx.memo["tuned_outputs"] = layer_outputs(ctx.handle, self._probe(ctx), drift_layers(ctx),
                                                      ctx.options.batch_size)
        return ctx.memo["tuned_outputs"]

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        layers = drift_layers(ctx)
        table = self._probe(ctx)
        base = ctx.base_cached("layer-outputs", [ctx.data.fingerprint, table.fingerprint(), layers],
                               lambda h: layer_outputs(h, table, layers, ctx.options.batch_size))[cell.shift]
        tuned = self._tuned(ctx)[cell.shift]
        return [metric_row("cka", linear_cka(base, tuned), len(table))]

    @classmethod
    def summarize(cls, rows: list[dict], reference_rows: list[dict] | None, reference: str) -> list[dict]:
        cka = [r["value"] for r in rows if r["metric"] == "cka" and not np.isnan(r["value"])]
        if not cka:
            return []
        return [summary_row(cls.name, "all", "cka", float(np.mean(cka)), len(cka), "mean over adapted layers")]
