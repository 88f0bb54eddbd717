"""robustfeat: fine-tune pretrained models with LoRA, LoRFA and VeFA, then measure how
far they drift and how much they forget.

The public API is imported lazily, so ``import robustfeat`` (and ``robustfeat --help``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    name: "robustfeat.adapters"
    for name in (
        "AdapterConfig",
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
    )
}
_API.update({"ADAPTERS": "robustfeat.registry", "RobustfeatError": "robustfeat.errors"})

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'robustfeat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
