"""The command line: parse, call the library, print. Heavy imports stay inside commands
so that ``robustfeat --help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

LISTABLE: dict[str, Callable[[], list[tuple[str, ...]]]] = {}
HEADERS: dict[str, tuple[str, ...]] = {}


def listing(kind: str, headers: tuple[str, ...]) -> Callable:
    """Register what ``robustfeat ls KIND`` prints: a function returning table rows."""

    def deco(fn: Callable[[], list[tuple[str, ...]]]) -> Callable:
        LISTABLE[kind] = fn
        HEADERS[kind] = headers
        return fn

    return deco


@listing("adapters", ("method", "description", "trainable parameters", "default lr"))
def _adapter_rows() -> list[tuple[str, ...]]:
    from robustfeat.registry import ADAPTERS

    return [(name, m.summary, m.formula, f"{m.default_lr:g}") for name, m in ADAPTERS.items()]


@listing("models", ("model", "family", "parameters", "loads from", "status"))
def _model_rows() -> list[tuple[str, ...]]:
    from robustfeat.models.zoo import describe_models

    return describe_models()


@listing("datasets", ("dataset", "task", "cached", "description", "sources, in order"))
def _dataset_rows() -> list[tuple[str, ...]]:
    from robustfeat.data.api import describe_datasets

    return describe_datasets()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_ls(args: argparse.Namespace) -> int:
    rows = LISTABLE[args.kind]()
    print(format_table(HEADERS[args.kind], rows))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from robustfeat.adapters.checkpoint import checkpoint_info

    meta = checkpoint_info(args.checkpoint)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    base = meta["base_model"]
    rows = [
        ("method", meta["method"]),
        ("targets", f"{len(meta['targets'])} layers"),
        ("modules_to_save", ", ".join(meta.get("modules_to_save", [])) or "-"),
        ("stored values", f"{meta['num_tensor_elements']:,}"),
        ("base model", f"{base.get('id')} ({base.get('class')}, {base.get('num_parameters', 0):,} params)"),
        ("base fingerprint", str(base.get("fingerprint"))[:16]),
        ("created", meta.get("created", "?")),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(meta.get("versions", {}).items()))),
    ]
    print(format_table(("field", "value"), rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from robustfeat import __version__

    p = argparse.ArgumentParser(
        prog="robustfeat",
        description="Fine-tune with LoRA, LoRFA and VeFA; measure drift and forgetting.",
    )
    p.add_argument("--version", action="version", version=f"robustfeat {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = sub.add_parser("ls", help="list registered methods (and later models, datasets, shifts)")
    ls.add_argument("kind", choices=sorted(LISTABLE), help="what to list")
    ls.set_defaults(func=cmd_ls)

    info = sub.add_parser("info", help="show what a checkpoint folder holds (validates it)")
    info.add_argument("checkpoint", help="a checkpoint folder written by robustfeat")
    info.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    info.set_defaults(func=cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from robustfeat.errors import RobustfeatError

    try:
        return args.func(args)
    except RobustfeatError as e:
        if args.debug:
            raise
        print(f"robustfeat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustfeat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
