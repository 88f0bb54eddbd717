"""Model-level operations, written once for every method: inject, merge, unmerge,
enable/disable, merge-and-unload, remove, and counting trainable parameters."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from robustfeat.adapters.base import AdapterMethod, LayerHandle
from robustfeat.adapters.config import AdapterConfig
from robustfeat.adapters.identity import fingerprint, structure, under
from robustfeat.adapters.layers import LayerInfo
from robustfeat.adapters.targeting import find_targets, resolve_modules, set_submodule
from robustfeat.errors import RobustfeatError, UnsupportedError
from robustfeat.registry import ADAPTERS

log = logging.getLogger(__name__)

STATE_ATTR = "robustfeat_adapter"


@dataclass
class AdapterState:
    """What robustfeat remembers about the adapters it injected into a model."""

    config: AdapterConfig
    method: type[AdapterMethod]
    targets: list[str]
    target_info: dict[str, LayerInfo]
    modules_to_save: list[str]
    base_fingerprint: str
    base_num_parameters: int
    base_structure: dict = field(default_factory=dict)
    requires_grad_before: dict[str, bool] = field(repr=False, default_factory=dict)


def adapter_state(model: nn.Module) -> AdapterState:
    state = model.__dict__.get(STATE_ATTR)
    if state is None:
        raise RobustfeatError(
            f"this {type(model).__name__} has no robustfeat adapters; "
            "call inject_adapters(model, config) or load_adapters(model, path) first"
        )
    return state


def has_adapters(model: nn.Module) -> bool:
    return model.__dict__.get(STATE_ATTR) is not None


def inject_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze ``model`` and add the adapters ``config`` describes, in place.

    Returns the same model object. ``modules_to_save`` stay trainable. Nothing is
    changed if any check fails.
    """

    if not isinstance(config, AdapterConfig):
        raise RobustfeatError(f"config must be an AdapterConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise RobustfeatError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if has_adapters(model) or any(_is_adapter_layer(m) for m in model.modules()):
        raise RobustfeatError(
            "this model already has adapters (robustfeat's or PEFT's); call merge_and_unload(model) "
            "or remove_adapters(model) first, or start from a fresh model"
        )
    config = AdapterConfig.from_dict(config.to_dict())  # our own copy: later edits cannot corrupt it
    method = ADAPTERS.get(config.method)
    to_save = resolve_modules(model, config.modules_to_save, "modules_to_save")
    targets = find_targets(model, config, method.layer_kinds, method.default_targets) if method.uses_targets else []
    for path, module, kind in targets:
        method.check_target(module, kind, path, config)

    exclude = tuple(to_save)
    digest = fingerprint(model, exclude=exclude)
    struct = structure(model, exclude=exclude)  # before wrapping renames the weights
    n_base = sum(p.numel() for n, p in model.named_parameters() if not under(n, exclude))
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    train_all = method.trainable_by_default()
    for p in model.parameters():
        p.requires_grad_(train_all)
    info = {path: kind.info(module) for path, module, kind in targets}
    method.inject(model, config, targets)
    for path in to_save:
        for p in model.get_submodule(path).parameters():
            p.requires_grad_(True)
    model.__dict__[STATE_ATTR] = AdapterState(
        config=config,
        method=method,
        targets=[t[0] for t in targets],
        target_info=info,
        modules_to_save=to_save,
        base_fingerprint=digest,
        base_num_parameters=n_base,
        base_structure=struct,
        requires_grad_before=before,
    )
    log.info("injected %s into %d layers", config.method, len(targets))
    return model


def _is_adapter_layer(m: nn.Module) -> bool:
    from robustfeat.adapters.base import AdapterLayer

    return isinstance(m, AdapterLayer) or type(m).__module__.startswith("peft.tuners")




def _handles(model: nn.Module) -> list[tuple[str, LayerHandle]]:
    return adapter_state(model).method.handles(model)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight; the forward pass then costs the base's."""
    for _, h in _handles(model):
        h.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_adapters` exactly."""
    for _, h in _handles(model):
        h.unmerge()
    return model


@contextlib.contextmanager
def adapters_merged(model: nn.Module) -> Iterator[nn.Module]:
    """``with adapters_merged(model): out = model(x)``: every enabled adapter folded into its
    base weight for the block, so a forward costs the base's. On exit the layers this merged
    are unmerged exactly; layers that were merged already stay merged. A model without
    mergeable adapters (none, or ``full``/``linear``) is left as it is."""
    todo = [h for _, h in _handles(model) if not h.merged and getattr(h, "enabled", True)] \
        if has_adapters(model) else []
    done = []
    try:
        for h in todo:
            h.merge()
            done.append(h)
        yield model
    finally:
        for h in reversed(done):
            h.unmerge()


def set_adapters_enabled(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch the adapters off (the base model's outputs) or back on."""
    state = adapter_state(model)
    if not state.method.supports_disable:
        raise UnsupportedError(
            f"method '{state.config.method}' trains the model's own weights, so there is no "
            "separate adapter to disable; keep a copy of the base model to compare with"
        )
    for _, h in _handles(model):
        h.set_enabled(enabled)
    return model


def disable_adapters(model: nn.Module) -> nn.Module:
    return set_adapters_enabled(model, False)


def enable_adapters(model: nn.Module) -> nn.Module:
    return set_adapters_enabled(model, True)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """``with adapters_disabled(model): base_out = model(x)``; a merged model is merged
    again on exit."""
    merged = any(h.merged for _, h in _handles(model))
    disable_adapters(model)
    try:
        yield model
    finally:
        enable_adapters(model)
        if merged:
            merge_adapters(model)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then replace every wrapper by its plain base layer and forget the adapter.

    The result has the base model's module types and exactly its inference cost.
    """
    state = adapter_state(model)
    for path, h in _handles(model):
        h.merge()
        set_submodule(model, path, h.unwrap())
    _drop_state(model, state)
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Take the adapters out without merging: the model is the base model again."""
    state = adapter_state(model)
    for path, h in _handles(model):
        h.unmerge()
        set_submodule(model, path, h.unwrap())
    _drop_state(model, state)
    return model


def _drop_state(model: nn.Module, state: AdapterState) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(state.requires_grad_before.get(n, p.requires_grad))
    del model.__dict__[STATE_ATTR]
    model.__dict__.pop("peft_config", None)  # left by PEFT's tuners (ia3, vera)


def count_trainable(model: nn.Module) -> int:
    """Number of parameters that require grad (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_trainable(model: nn.Module) -> int:
    """The trainable count the method's documented formula predicts for this model."""
    state = adapter_state(model)
    if state.method.trainable_by_default():
        return sum(p.numel() for p in model.parameters())
    per_layer = sum(state.method.layer_param_count(i, state.config) for i in state.target_info.values())
    head = sum(p.numel() for path in state.modules_to_save for p in model.get_submodule(path).parameters())
    return per_layer + head
