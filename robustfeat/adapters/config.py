"""AdapterConfig: the one configuration object shared by every fine-tuning method."""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from robustfeat.errors import ConfigError

#: Keywords accepted in place of a list of target module names.
TARGET_KEYWORDS = {
    "all-linear": "every nn.Linear and transformers Conv1D except output heads",
    "all-conv": "every nn.Conv2d with groups == 1 (grouped and depthwise convs are skipped)",
}


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")


def _positive_number(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a positive finite number, got {v!r}")


def _unit_interval(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {v!r}")


def _boolean(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {v!r}")


def _hyper(text: str, default: Any, check, type_: type) -> Any:
    """An adapter hyperparameter: declared here once; TrainConfig, the CLI's finetune flags
    and the grid's training fields are generated from these declarations."""
    return field(default=default, metadata={"help": text, "hyperparameter": True, "check": check, "type": type_})


@dataclass(kw_only=True)
class AdapterConfig:
    """How to fine-tune a model: which method, where, and with what hyper-parameters.

    Field names are shared across methods; a method reads only the fields listed in its
    ``options`` and a non-default value for a field it does not read is an error, so a
    config never silently means something else than it says.
    """

    method: str = _help("registered method name; `robustfeat ls adapters` lists them")
    target_modules: list[str] | str | None = _help(
        "module names (a name matches itself and any module path ending in '.name'), "
        "a regular expression matched against full module paths, or a keyword "
        f"({', '.join(TARGET_KEYWORDS)}); None means the method's default",
        default=None,
    )
    exclude_modules: list[str] = _help(
        "module names or paths never adapted, same matching rules", default_factory=list
    )
    modules_to_save: list[str] = _help(
        "modules trained in full next to the adapters and saved with them "
        "(typically a new classification head)",
        default_factory=list,
    )
    rank: int = _hyper("rank r of the low-rank factors (lora, lorfa, vera)", 8, _positive_int, int)
    alpha: float = _hyper("scale numerator: the update is multiplied by alpha / rank", 16.0, _positive_number, float)
    dropout: float = _hyper("dropout on the adapter branch's input, in [0, 1)", 0.0, _unit_interval, float)
    shift: bool = _hyper("vefa only: also learn a shift t, x -> lam * x + t", False, _boolean, bool)
    seed: int | None = _help(
        "seed for the adapters' random initialisation; None uses torch's global RNG",
        default=None,
    )

    def __post_init__(self) -> None:
        from robustfeat.registry import ADAPTERS  # lazy: the registry imports the methods

        if not isinstance(self.method, str) or not self.method:
            raise ConfigError(
                f"AdapterConfig.method must be a method name, got {self.method!r}; "
                f"choose one of {', '.join(ADAPTERS.names())}"
            )
        method = ADAPTERS.get(self.method)  # raises with a "did you mean"
        self._check_types()
        for f in hyperparameters():
            check_hyperparameter(f.name, getattr(self, f.name))
        self.alpha = float(self.alpha)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32
        ):
            raise ConfigError(f"seed must be an integer in [0, 2**32) or None, got {self.seed!r}")
        if isinstance(self.target_modules, str) and self.target_modules not in TARGET_KEYWORDS:
            try:
                re.compile(self.target_modules)
            except re.error as e:
                raise ConfigError(
                    f"target_modules {self.target_modules!r} is not a valid regular "
                    f"expression ({e}); pass a list of names or one of "
                    f"{', '.join(TARGET_KEYWORDS)}"
                ) from None
        # A field the method ignores must stay at its default: no silent no-ops.
        defaults = {f.name: _default(f) for f in fields(self)}
        for name in (f.name for f in hyperparameters()):
            if name not in method.options and getattr(self, name) != defaults[name]:
                raise ConfigError(
                    f"'{name}' has no effect on method '{self.method}' "
                    f"(it reads only {', '.join(sorted(method.options)) or 'no options'}); "
                    f"remove it or pick a method that uses it"
                )
        method.validate_config(self)

    def _check_types(self) -> None:
        tm = self.target_modules
        if tm is not None and not isinstance(tm, str):
            if not isinstance(tm, (list, tuple)) or not all(isinstance(t, str) for t in tm):
                raise ConfigError(
                    f"target_modules must be a list of names, a regex string or a keyword, got {tm!r}"
                )
            if len(tm) == 0:
                raise ConfigError("target_modules is an empty list; name at least one module")
            self.target_modules = list(tm)
        for name in ("exclude_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name} must be a list of module names, got {value!r}")
            setattr(self, name, list(value))

    @property
    def scaling(self) -> float:
        """s = alpha / rank."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"an adapter config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown adapter config field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(sorted(known))}"
            )
        if "method" not in data:
            raise ConfigError("adapter config has no 'method' field")
        return cls(**data)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def _default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def hyperparameters() -> list[Any]:
    """The adapter hyperparameters (dataclass fields of AdapterConfig), in declaration order."""
    return [f for f in fields(AdapterConfig) if f.metadata.get("hyperparameter")]


def check_hyperparameter(name: str, value: Any) -> None:
    """One hyperparameter's value, validated as AdapterConfig does (one clear error)."""
    f = next((f for f in hyperparameters() if f.name == name), None)
    if f is None:
        raise ConfigError(f"unknown adapter hyperparameter '{name}'; known: "
                          f"{', '.join(h.name for h in hyperparameters())}")
    f.metadata["check"](name, value)
