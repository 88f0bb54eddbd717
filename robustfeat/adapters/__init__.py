"""Adapters: robustfeat's lora, lorfa and vefa, and the baselines they are compared with.

Importing this package registers every built-in method in ``robustfeat.registry.ADAPTERS``.
"""

from robustfeat.adapters import baselines, lora, lorfa, vefa  # noqa: F401  (registration)
from robustfeat.adapters.base import AdapterLayer, AdapterMethod
from robustfeat.adapters.checkpoint import (
    adapter_state_dict,
    checkpoint_info,
    fingerprint,
    load_adapters,
    save_adapters,
)
from robustfeat.adapters.config import AdapterConfig
from robustfeat.adapters.layers import LayerInfo
from robustfeat.adapters.model import (
    adapter_state,
    adapters_disabled,
    count_trainable,
    disable_adapters,
    enable_adapters,
    expected_trainable,
    inject_adapters,
    merge_adapters,
    merge_and_unload,
    remove_adapters,
    set_adapters_enabled,
    unmerge_adapters,
)
from robustfeat.registry import ADAPTERS

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLayer",
    "AdapterMethod",
    "LayerInfo",
    "adapter_state",
    "adapter_state_dict",
    "adapters_disabled",
    "checkpoint_info",
    "count_trainable",
    "disable_adapters",
    "enable_adapters",
    "expected_trainable",
    "fingerprint",
    "inject_adapters",
    "load_adapters",
    "merge_adapters",
    "merge_and_unload",
    "remove_adapters",
    "save_adapters",
    "set_adapters_enabled",
    "unmerge_adapters",
]
