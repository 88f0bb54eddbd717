"""One generic registry, with "did you mean" lookups.

Plug-ins register themselves by decorator in their own module; lookups by name happen
only at the edges (configs, the CLI, checkpoint loading).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from robustfeat.errors import RobustfeatError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table for one kind of plug-in.

    ``modules`` (and every module of ``packages``) are imported on first lookup so
    that every built-in entry has registered itself, without importing heavy code at
    package import time.
    """

    def __init__(self, kind: str, modules: tuple[str, ...] = (), packages: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._modules = modules
        self._packages = packages
        self._items: dict[str, T] = {}
        self._loaded = not (modules or packages)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)
            for package in self._packages:
                import pkgutil

                pkg = importlib.import_module(package)
                for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                    importlib.import_module(f"{package}.{info.name}")

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``."""

        def decorator(obj: T) -> T:
            if name in self._items:
                raise RobustfeatError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        self._load()
        if not isinstance(name, str):
            raise UnknownNameError(
                f"{self.kind} name must be a string, got {type(name).__name__} {name!r}"
            )
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name.lower(), names, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return f"unknown {self.kind} '{name}'.{hint} Available: {', '.join(names)}."

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        yield from sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __len__(self) -> int:
        self._load()
        return len(self._items)


#: Fine-tuning methods: robustfeat's adapters and the baselines they are compared with.
ADAPTERS: Registry = Registry("adapter method", modules=("robustfeat.adapters",))
#: Layer types an adapter can wrap (nn.Linear, nn.Conv2d, transformers' Conv1D).
LAYER_KINDS: Registry = Registry("layer kind", modules=("robustfeat.adapters.layers",))
#: Datasets: the built-in real datasets (``robustfeat ls datasets``).
DATASETS: Registry = Registry("dataset", modules=("robustfeat.data.builtin",))
#: Model families: handle class, tasks, default bank and probes (``robustfeat ls families``).
FAMILIES: Registry = Registry("model family", modules=("robustfeat.models.families",))
#: The model zoo: real pretrained entries, generic loaders and tiny test models.
MODELS: Registry = Registry("model", modules=("robustfeat.models.zoo",))
#: Image corruptions (ImageNet-C and its four held-out extras) as batched torch functions.
CORRUPTIONS: Registry = Registry("corruption", modules=("robustfeat.shifts.corruptions", "robustfeat.shifts.spatter"))
#: Evaluations (clean, corruptions, domains, ood, forgetting probes, drift): every module of
#: the ``robustfeat.evaluations`` package is imported, so a new evaluation is one new module
EVALUATIONS: Registry = Registry("evaluation", packages=("robustfeat.evaluations",))
#: Banks: named, versioned lists of evaluations chosen by model family (``robustfeat ls banks``).
BANKS: Registry = Registry("bank", modules=("robustfeat.evaluations.banks",))
#: Where sweep cells run (``robustfeat ls backends``): local, ray.
BACKENDS: Registry = Registry("backend", modules=("robustfeat.sweep.backends",))
