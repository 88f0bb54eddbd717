"""Find the modules an AdapterConfig targets, with errors that name the fix."""

from __future__ import annotations

import difflib
import re

from torch import nn

from robustfeat.adapters.config import TARGET_KEYWORDS, AdapterConfig
from robustfeat.adapters.layers import LayerKind, layer_kind, supported_layer_names
from robustfeat.errors import ConfigError, TargetError, UnsupportedError

#: Last path components treated as output heads, never adapted by 'all-linear'.
HEAD_NAMES = frozenset({"lm_head", "classifier", "score", "head", "fc", "_fc", "output_layer"})


def name_matches(path: str, name: str) -> bool:
    """PEFT's rule: 'query' matches 'query' and any path ending in '.query'."""
    return path == name or path.endswith("." + name)


def under_any(path: str, prefixes: list[str], modules: dict[str, nn.Module]) -> bool:
    """Whether ``path`` is, or lies inside, a module matched by one of ``prefixes``."""
    parts = path.split(".")
    for i in range(1, len(parts) + 1):
        ancestor = ".".join(parts[:i])
        if any(name_matches(ancestor, p) for p in prefixes):
            return True
    return False


def resolve_modules(model: nn.Module, names: list[str], field: str) -> list[str]:
    """Full paths of the modules matched by each name in ``names`` (each must match)."""
    paths = [n for n, _ in model.named_modules() if n]
    out: list[str] = []
    for name in names:
        hits = [p for p in paths if name_matches(p, name)]
        if not hits:
            raise TargetError(_no_match(field, name, paths))
        out.extend(h for h in hits if h not in out)
    return out


def _no_match(field: str, name: str, paths: list[str]) -> str:
    leaves = sorted({p.rsplit(".", 1)[-1] for p in paths})
    close = difflib.get_close_matches(name, leaves + paths, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    sample = ", ".join(leaves[:20]) + (" ..." if len(leaves) > 20 else "")
    return f"{field}: no module named '{name}' in this model.{hint} Module names here: {sample}"


def find_targets(
    model: nn.Module, config: AdapterConfig, layer_kinds: frozenset[str], default: str
) -> list[tuple[str, nn.Module, LayerKind]]:
    """Resolve ``config.target_modules`` to (path, module, kind) triples.

    Explicit names and regexes must only hit supported layers (a hit on anything else is
    an error naming the layer and its type); keywords skip what they cannot adapt.
    """
    spec = config.target_modules if config.target_modules is not None else default
    modules = dict(model.named_modules())
    modules.pop("", None)
    shared = _shared(model)
    protected = list(config.modules_to_save) + list(config.exclude_modules)
    heads = _output_heads(model)

    if isinstance(spec, str) and spec in TARGET_KEYWORDS:
        wanted = {"all-linear": {"linear", "conv1d-transposed"}, "all-conv": {"conv2d"}}[spec]
        if not wanted & layer_kinds:
            raise UnsupportedError(
                f"target_modules '{spec}' selects {', '.join(sorted(wanted))} layers, which this "
                f"method does not support (it supports: {', '.join(sorted(layer_kinds))})"
            )
        found = []
        for path, module in modules.items():
            kind = layer_kind(module)
            if kind is None or kind.name not in wanted or kind.name not in layer_kinds:
                continue
            if under_any(path, protected, modules) or path in heads:
                continue
            if path.rsplit(".", 1)[-1] in HEAD_NAMES or _why_not(model, path, module, shared):
                continue
            try:
                kind.check(module, path)
            except UnsupportedError:
                continue  # documented skip: keywords pass over grouped convs
            found.append((path, module, kind))
        if not found:
            raise TargetError(
                f"target_modules '{spec}' found no adaptable layer in "
                f"{type(model).__name__} ({TARGET_KEYWORDS[spec]})"
            )
        return found

    if isinstance(spec, str):
        pattern = re.compile(spec)
        paths = [p for p in modules if pattern.fullmatch(p)]
        if not paths:
            raise TargetError(
                f"target_modules regex {spec!r} matched no module path "
                f"(it must match a whole path such as '{next(iter(modules), '')}')"
            )
    else:
        paths = resolve_modules(model, list(spec), "target_modules")

    found = []
    for path in paths:
        if under_any(path, protected, modules):
            continue
        module = modules[path]
        kind = layer_kind(module)
        if kind is None:
            raise TargetError(
                f"target '{path}' is a {type(module).__module__}.{type(module).__name__}, "
                f"which adapters cannot wrap; supported layer types: "
                f"{', '.join(supported_layer_names())}. Name its Linear/Conv children instead."
            )
        why = _why_not(model, path, module, shared)
        if why:
            raise UnsupportedError(why)
        if kind.name not in layer_kinds:
            raise UnsupportedError(
                f"target '{path}' is a {kind.name} layer, which this method does not "
                f"support (it supports: {', '.join(sorted(layer_kinds))})"
            )
        kind.check(module, path)
        found.append((path, module, kind))
    if not found:
        raise ConfigError(
            "every target is also listed in modules_to_save or exclude_modules; nothing to adapt"
        )
    return found


def _shared(model: nn.Module) -> set[int]:
    """ids of modules and weights reachable under more than one name (tied weights)."""
    from collections import Counter

    counts = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    counts.update(id(m) for _, m in model.named_modules(remove_duplicate=False))
    return {k for k, n in counts.items() if n > 1}


def _why_not(model: nn.Module, path: str, module: nn.Module, shared: set[int]) -> str | None:
    """Why a layer of a supported type still cannot be adapted, or None."""
    if id(module) in shared or id(getattr(module, "weight", None)) in shared:
        return (f"'{path}' shares its weight with another module (tied weights); merging into it "
                "would change the other module too. Leave it out of target_modules.")
    parent_path = path.rpartition(".")[0]
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, nn.MultiheadAttention):
        return (f"'{path}' is the output projection inside nn.MultiheadAttention, whose forward "
                "reads its weight directly, so a wrapper would be bypassed. Leave it out.")
    return None


def _output_heads(model: nn.Module) -> set[str]:
    """Paths of the model's output embedding (language-model head), if it has one."""
    get = getattr(model, "get_output_embeddings", None)
    if get is None:
        return set()
    try:
        head = get()
    except Exception:  # some models raise NotImplementedError here
        return set()
    return {n for n, m in model.named_modules() if head is not None and m is head}


def set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)
