"""The feature-space claim, checked numerically: for a tall layer (d_out > d_in) the
merged update of vefa and lorfa lies in col(W0); lora's in general does not."""

from __future__ import annotations

import pytest
import torch

import robustfeat as rf
from tests.models import CASES, adapter_params, perturb

# (case, target, accessor of the [d_out, d_in] weight)
TALL = [
    ("mlp", "up", lambda w: w),  # Linear 6 -> 24
    ("tiny-gpt2", "transformer.h.0.mlp.c_fc", lambda w: w.t()),  # Conv1D 32 -> 128, stored [in, out]
]


def projection_residual(w0: torch.Tensor, dw: torch.Tensor) -> float:
    """||(I - U U^T) dW||_F / ||dW||_F with U an orthonormal basis of col(W0)."""
    w0, dw = w0.double(), dw.double()
    u, s, _ = torch.linalg.svd(w0, full_matrices=False)
    u = u[:, s > s.max() * 1e-10]
    return ((dw - u @ (u.T @ dw)).norm() / dw.norm()).item()


def merged_update(case_name: str, target: str, view, method: str, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    case = next(c for c in CASES if c.name == case_name)
    model = case.model(0)
    w0 = view(model.get_submodule(target).weight.detach().clone())
    rf.inject_adapters(model, rf.AdapterConfig(method=method, target_modules=[target], seed=0, **kw))
    perturb(adapter_params(model), scale=0.5)
    rf.merge_and_unload(model)
    return w0, view(model.get_submodule(target).weight.detach()) - w0


@pytest.mark.parametrize("case_name,target,view", TALL, ids=[t[0] for t in TALL])
@pytest.mark.parametrize("method", ["vefa", "lorfa"])
def test_feature_space_update_stays_in_column_space(case_name, target, view, method):
    w0, dw = merged_update(case_name, target, view, method)
    assert w0.shape[0] > w0.shape[1], "the test needs a tall layer"
    assert dw.norm() > 1e-3 * w0.norm()
    assert projection_residual(w0, dw) < 1e-5


@pytest.mark.parametrize("case_name,target,view", TALL, ids=[t[0] for t in TALL])
def test_lora_update_leaves_column_space(case_name, target, view):
    w0, dw = merged_update(case_name, target, view, "lora", rank=4)
    assert projection_residual(w0, dw) > 0.1


def test_residual_helper_is_not_vacuous():
    w0 = torch.randn(10, 3, dtype=torch.float64)
    assert projection_residual(w0, w0 @ torch.randn(3, 3, dtype=torch.float64)) < 1e-10
    assert projection_residual(w0, torch.randn(10, 3, dtype=torch.float64)) > 0.1
