"""Adapters: robustfeat's lora, lorfa and vefa, and the baselines they are compared with.

Importing this package registers every built-in method in ``robustfeat.registry.ADAPTERS``.
"""

from robustfeat.adapters import baselines, lora, lorfa, vefa  # noqa: F401  (registration)
# The public names are re-exported (lazily) by the top-level package.
from robustfeat.adapters.base import AdapterLayer, AdapterMethod  # noqa: F401
from robustfeat.adapters.checkpoint import (  # noqa: F401
    adapter_state_dict,
    checkpoint_info,
    fingerprint,
    load_adapters,
    save_adapters,
)
from robustfeat.adapters.config import AdapterConfig  # noqa: F401
from robustfeat.adapters.layers import LayerInfo  # noqa: F401
from robustfeat.adapters.model import (  # noqa: F401
    adapter_state,
    adapters_disabled,
    adapters_merged,
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
from robustfeat.registry import ADAPTERS  # noqa: F401
