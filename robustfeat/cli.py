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


@listing("corruptions", ("corruption", "family", "random", "ImageNet-C set"))
def _corruption_rows() -> list[tuple[str, ...]]:
    from robustfeat.metrics.corruption_errors import COMMON
    from robustfeat.registry import CORRUPTIONS

    return [(n, c.family, "yes" if c.random else "no", "common 15" if n in COMMON else "extra 4")
            for n, c in CORRUPTIONS.items()]


@listing("banks", ("bank", "version", "family", "evaluations", "what it measures"))
def _bank_rows() -> list[tuple[str, ...]]:
    from robustfeat.registry import BANKS

    return [(n, str(b.version), b.family, ", ".join(e.evaluation for e in b.entries), b.summary)
            for n, b in BANKS.items()]


@listing("families", ("family", "handle", "tasks", "bank", "probe tasks", "what it is"))
def _family_rows() -> list[tuple[str, ...]]:
    from robustfeat.registry import FAMILIES

    return [(n, f.handle.split(":")[1], ", ".join(sorted(f.tasks)), f.bank or "-",
             ", ".join(f"{d}:{c}" for d, c in f.probes) or "-", f.summary) for n, f in FAMILIES.items()]


@listing("backends", ("backend", "what it does"))
def _backend_rows() -> list[tuple[str, ...]]:
    from robustfeat.registry import BACKENDS

    return [(n, b.summary) for n, b in BACKENDS.items()]


@listing("evaluations", ("evaluation", "families", "headlines", "what it measures"))
def _evaluation_rows() -> list[tuple[str, ...]]:
    from robustfeat.evaluations.base import evaluations_in_order

    return [(e.name, ", ".join(sorted(e.families)) if e.families is not None else "all", ", ".join(h.key for h in e.headlines) or "-", e.summary)
            for e in evaluations_in_order()]


@listing("options", ("option", "evaluation", "grid key", "what it sets"))
def _option_rows() -> list[tuple[str, ...]]:
    from robustfeat.evaluations.base import all_options

    return [(o.flag, ev, name, o.help) for name, (ev, o) in sorted(all_options().items())]


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
    from robustfeat.evaluations.imported import imported_info

    meta = imported_info(args.checkpoint)
    if meta is not None:  # made elsewhere: a PEFT adapter, a transformers folder, a weights file
        if args.json:
            print(json.dumps(meta, indent=2, sort_keys=True))
            return 0
        rows = [(k.replace("_", " "), ", ".join(map(str, v)) if isinstance(v, list) else
                 ", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else
                 f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)) for k, v in meta.items()
                if v is not None]
        print(format_table(("field", "value"), rows))
        return 0
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


def cmd_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from robustfeat.data.api import load_dataset, looks_like_path, prepare_dataset
    from robustfeat.errors import RobustfeatError
    from robustfeat.registry import DATASETS

    given = {f"--{k.replace('_', '-')}" for k, v in (("text_column", args.text_column), ("label_column",
             args.label_column), ("image_column", args.image_column)) if v not in (None, "label", "image")}
    if args.name in DATASETS and given:
        raise RobustfeatError(f"'{args.name}' is a registered dataset, which names its own columns; "
                              f"{', '.join(sorted(given))} {'is' if len(given) == 1 else 'are'} for files")
    if args.name not in DATASETS and (looks_like_path(args.name) or args.name.startswith("hf:")
                                      or Path(args.name).expanduser().exists()):
        bundle = load_dataset(args.name, progress=False, text_column=args.text_column, label_column=args.label_column,
                              image_column=args.image_column)  # checks the file: a bad one is refused in one line
        print(f"{args.name}: read where it is each time it is used (nothing to cache); it reads as "
              f"{bundle.task}" + (f" with labels {', '.join(map(str, bundle.label_names))}" if bundle.label_names else
                                  f" (no {args.label_column!r} column: unlabelled text, for causal LMs; "
                                  "--label-column names another)" if bundle.task == "text" else ""))
    else:
        folder = prepare_dataset(args.name, force=args.force, progress=not args.no_progress)
        bundle = load_dataset(args.name, progress=False)
        print(f"{args.name}: cached in {folder}")
    rows = [(split, f"{len(t):,}") for split, t in bundle.splits.items()]
    print(format_table(("split", "rows"), rows))
    return 0


def train_config(args: argparse.Namespace):
    """The TrainConfig that ``finetune``'s flags describe (unset flags: the config's defaults)."""
    from dataclasses import fields

    from robustfeat.train import TrainConfig

    given = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig) if f.name != "targets"}
    kw = {k: v for k, v in given.items() if v is not None and v is not False}
    if args.targets:
        kw["targets"] = args.targets[0] if len(args.targets) == 1 and args.targets[0].startswith("all-") else args.targets
    return TrainConfig(**kw)


def cmd_finetune(args: argparse.Namespace) -> int:
    from robustfeat.train import finetune

    config = train_config(args)
    result = finetune(config, args.out, device=args.device, overwrite=args.overwrite, progress=not args.no_progress)
    rec = result.record
    if result.already_finished:
        resumed = " (already finished by the same command: nothing trained; --overwrite trains it again)"
    else:
        resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
    print(f"checkpoint: {result.out}{resumed}")
    print(format_table(("field", "value"), [
        ("method", f"{config.method} on {rec['model']['name']} ({rec['model']['trainable_parameters']:,} trainable)"),
        ("data", f"{rec['data']['name']} ({rec['data']['provenance']['rows']['train']:,} training examples)"),
        ("steps", f"{result.steps} at lr {rec['learning_rate']:g}"),
        (f"validation {result.metric}", f"{result.value:.4f} on {rec['validation']['examples']:,} examples"),
        ("train time", f"{rec['train_time_s']:.1f} s, peak memory {rec['peak_rss_mb']:.0f} MB"),
    ]))
    return 0


def headline_rows(table, id_columns: Sequence[str]) -> tuple[list[str], list[tuple[str, ...]]]:
    """Headers and rows of a headline table for the terminal: the id columns, then every
    headline metric present (as the evaluations declare them), ``-`` where a value is missing."""
    from robustfeat.report.summary import format_value, headlines

    keys = [(h.key, h.label) for h in headlines() if h.key in table and table[h.key].notna().any()]
    headers = [*id_columns, *(label for _, label in keys)]
    rows = [tuple(format_value(r[c]) for c in id_columns) + tuple(format_value(r[k]) for k, _ in keys)
            for _, r in table.iterrows()]
    return headers, rows


def _numbers(text: str, flag: str) -> list[float]:
    from robustfeat.errors import RobustfeatError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RobustfeatError(f"{flag} takes comma-separated numbers (e.g. 0,0.5,1), got {text!r}") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from robustfeat.report.summary import per_checkpoint
    from robustfeat.evaluations.base import all_options
    from robustfeat.evaluations.runner import evaluate

    options = {name: getattr(args, name) for name in all_options()}
    frame = evaluate(args.checkpoints, args.out, bank=args.bank,
                     shifts=[s.strip() for s in args.shifts.split(",") if s.strip()] if args.shifts else None,
                     quick=args.quick, reference=args.reference, device=args.device, seed=args.seed,
                     batch_size=args.batch_size, progress=not args.no_progress,
                     scales=_numbers(args.scales, "--scales") if args.scales else None,
                     base=args.base, data=args.data, data_seed=args.data_seed, max_eval_examples=args.max_eval_examples,
                     label_column=args.label_column, text_column=args.text_column, image_column=args.image_column,
                     image_size=args.image_size,
                     max_length=args.max_length, **options)
    table = per_checkpoint(frame.assign(results_dir=str(args.out)))
    print(format_table(*headline_rows(table, ("checkpoint", "method"))))
    cells = frame.attrs.get("cells") or {}
    if cells.get("reused"):
        print(f"resumed: {cells['reused']} of {cells['total']} cells were already done (kept, not computed again)")
    print(f"{len(frame)} result rows in {args.out}/results.csv (provenance in {args.out}/results.json)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from robustfeat.report import build_report

    out = build_report(args.results, args.out, format=args.format, title=args.title)
    print(f"report: {out}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from robustfeat.report import headline_table, load_results
    from robustfeat.quickstart import QUICKSTART, run_study

    print("robustfeat quickstart: " + "; ".join(f"{s.model} on {s.data} with {', '.join(s.methods)}"
                                                for s in QUICKSTART))
    info = run_study(args.out, pdf=not args.no_pdf, progress=not args.no_progress)
    table = headline_table(load_results(info["results"]).frame)
    print(format_table(*headline_rows(table, ("model", "method"))))
    print(f"done in {info['wall_s'] / 60:.1f} min (peak memory {info['peak_rss_mb']:.0f} MB)")
    print(f"report: {info['report_html']}" + (f" and {info['report_pdf']}" if info["report_pdf"] else ""))
    print(f"results: {', '.join(map(str, info['results']))}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from robustfeat.report import headline_table, load_results
    from robustfeat.sweep import read_grid, sweep

    grid = read_grid(args.grid)
    def start(trials: int, todo: int) -> None:
        done = f", {trials - todo} already finished" if todo < trials else ""
        print(f"sweep {args.grid}: {trials} trials{done}, on the {args.backend} backend", flush=True)

    info = sweep(grid, args.out, backend=args.backend, address=args.address, report=not args.no_report,
                 progress=not args.no_progress, on_start=start)
    labels = {r["results"]: r["label"] for r in info["records"]}
    table = headline_table(load_results(list(labels), labels).frame)
    print(format_table(*headline_rows(table, ("model", "data", "method", "seeds"))))
    print(f"{info['ran']} trials run, {info['skipped']} already finished, in {info['wall_s']:.0f} s")
    if info["report"]:
        print(f"report: {info['report']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from robustfeat.export import export_run

    out = export_run(args.run, to=args.to, out=args.out, overwrite=args.overwrite, data=args.data)
    print(f"exported {args.run} as {args.to}: {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from robustfeat.study import read_study, run_study

    spec = read_study(args.study)
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    command = " ".join(["robustfeat study", str(args.study), "--out", str(args.out),
                        *(["--backend", args.backend] if args.backend != "local" else []),
                        *(["--families", args.families] if args.families else []),
                        *(["--publish", args.publish] if args.publish else [])])
    info = run_study(spec, args.out, backend=args.backend, address=args.address, families=families,
                     progress=not args.no_progress, outputs=False, log=lambda m: print(m, flush=True),
                     command=command)
    from robustfeat.study.outputs import write_outputs

    made = write_outputs(spec, info["out"], info["record"], command=command, pdf=not args.no_pdf)
    if args.publish and made:
        from pathlib import Path

        from robustfeat.study.outputs import publish

        copied = publish(info["out"], Path(args.publish), spec)
        print(f"published {len(copied)} files to {args.publish}")
    for name, fam in info["record"]["families"].items():
        times = "; ".join(f"{k} {v['machine_s'] / 60:.1f} min" for k, v in fam.get("stages", {}).items())
        print(f"{name}: chosen rates " + ", ".join(f"{a} {c['chosen']:g}" for a, c in fam["choices"].items())
              + f" (machine time: {times})")
    if made.get("readme"):
        print(f"verdicts: {info['out'] / 'verdicts.csv'}; summary: {info['out'] / 'summary.csv'}; "
              f"README: {made['readme']}; report: {made['report_html']}")
    return 0


def _column_flags(parser, defaults: bool = True) -> None:
    """How a CSV/JSON file or a saved datasets folder is read (finetune leaves the defaults to
    TrainConfig, so that a run records only what was given)."""
    parser.add_argument("--label-column", default="label" if defaults else None,
                        help="label column of a CSV/JSON file (default label)")
    parser.add_argument("--text-column", help="text column of a CSV/JSON file (default: text, sentence, review or content)")
    parser.add_argument("--image-column", default="image" if defaults else None,
                        help="image column of a saved datasets folder (default image)")


def _adapter_flags(parser: argparse.ArgumentParser) -> None:
    """``--rank``, ``--alpha``, ... generated from AdapterConfig's hyperparameter declarations
    (light: no torch import)."""
    from robustfeat.adapters.config import hyperparameters

    for f in hyperparameters():
        flag = "--" + f.name.replace("_", "-")
        kind = f.metadata["type"]
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=kind, help=f"{f.metadata['help']} (default {f.default:g})")


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as the one line every other error is."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"robustfeat: error: {message} (see: {self.prog} --help)\n")


def build_parser(for_command: str | None = None) -> argparse.ArgumentParser:
    """The parser. Flags generated from declarations (``finetune``'s adapter hyperparameters,
    ``evaluate``'s per-evaluation options) import torch, so they are added only for the
    command being run (``main`` passes it), and ``robustfeat --help`` stays instant."""
    from robustfeat import __version__

    p = Parser(
        prog="robustfeat",
        description="Fine-tune with LoRA, LoRFA and VeFA; measure drift and forgetting.",
    )
    p.add_argument("--version", action="version", version=f"robustfeat {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ls = sub.add_parser("ls", help="list what is registered: adapters, models, datasets, corruptions, banks, evaluations, backends")
    ls.add_argument("kind", choices=sorted(LISTABLE), help="what to list")
    ls.set_defaults(func=cmd_ls)

    info = sub.add_parser("info", help="show what a checkpoint folder holds (validates it)")
    info.add_argument("checkpoint", help="a checkpoint folder written by robustfeat, a PEFT adapter folder, a "
                                         "transformers folder or a .safetensors weights file")
    info.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    info.set_defaults(func=cmd_info)

    data = sub.add_parser("data", help="prepare datasets into the local cache")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = dsub.add_parser("prepare", help="fetch a registered dataset into the cache, with checksums "
                                           "(a file: check how it reads)")
    prep.add_argument("name", help="dataset name (robustfeat ls datasets), or a CSV/JSON file or image folder to check")
    prep.add_argument("--force", action="store_true", help="fetch again even if cached")
    _column_flags(prep)
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=cmd_data)

    ft = sub.add_parser("finetune", help="fine-tune a model with one method and write a checkpoint folder")
    ft.add_argument("--model", required=True, help="zoo name (ls models), local transformers folder, hf:ID, torchvision:NAME")
    ft.add_argument("--data", required=True, help="dataset name (ls datasets), CSV/JSON file or image folder")
    ft.add_argument("--method", required=True, help="adapter method (ls adapters)")
    ft.add_argument("--targets", nargs="+", help="target module names, a regex, or all-linear / all-conv")
    if for_command == "finetune":
        _adapter_flags(ft)
    ft.add_argument("--epochs", type=float, help="passes over the training data (default 1)")
    ft.add_argument("--lr", type=float, help="learning rate (default: the method's, see ls adapters)")
    ft.add_argument("--batch-size", type=int, help="examples per step (default 32)")
    ft.add_argument("--max-examples", type=int, help="use at most N training examples")
    ft.add_argument("--max-eval-examples", type=int, help="cap validation/test examples (default 1000)")
    ft.add_argument("--seed", type=int, help="seed for data order, splits and init (default 0)")
    ft.add_argument("--image-size", type=int, help="image side in px (default: the model's native size)")
    ft.add_argument("--max-length", type=int, help="max tokens per text (default 128)")
    _column_flags(ft, defaults=False)
    ft.add_argument("--checkpoint-every", type=int, help="save resumable state every N steps (default 50)")
    ft.add_argument("--device", help="cpu, cuda or cuda:N (default: a GPU when present)")
    ft.add_argument("--out", required=True, help="output folder for the checkpoint")
    ft.add_argument("--overwrite", action="store_true", help="replace a finished checkpoint in --out")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.set_defaults(func=cmd_finetune)

    ev = sub.add_parser("evaluate", help="run the shift bank on checkpoints; write tidy results (resumable)")
    ev.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                    help="robustfeat finetune runs, or checkpoints made elsewhere: PEFT adapter folders, save_adapters "
                         "folders, transformers save_pretrained folders, timm/torchvision .safetensors weights")
    ev.add_argument("--out", required=True, help="results folder (created; rerun the same command to resume)")
    ev.add_argument("--bank", help="bank name (ls banks); default: the one for the checkpoints' model family")
    ev.add_argument("--shifts", help="comma-separated shifts or evaluations to run (e.g. fog,vader-nyt,cka)")
    ev.add_argument("--quick", action="store_true", help="the smoke-size bank (fewer corruptions and examples)")
    ev.add_argument("--reference", help="checkpoint used as the CE/mCE reference (default: a 'linear' checkpoint "
                                        "of the same model and data among those evaluated)")
    if for_command == "evaluate":  # generated from the evaluations' declarations (robustfeat ls options)
        from robustfeat.evaluations.base import all_options

        for name, (evaluation, o) in all_options().items():
            ev.add_argument(o.flag, dest=name, type=o.type, metavar=o.metavar,
                            help=f"{o.help} [{evaluation}]")
    ev.add_argument("--scales", help="evaluate each checkpoint with its fine-tuning update scaled by each of these "
                                     "comma-separated factors (e.g. 0,0.5,1; 0 is the base, 1 as trained)")
    ev.add_argument("--seed", type=int, default=0, help="seed for subsets, corruptions and bootstrap CIs (default 0)")
    made = ev.add_argument_group("checkpoints made elsewhere (PEFT adapter folders; robustfeat runs record all this)")
    made.add_argument("--base", help="the base model: a zoo name, a hub id a zoo entry declares, or a local "
                                     "transformers folder (default: the adapter's base_model_name_or_path)")
    made.add_argument("--data", help="the evaluation data: a dataset name (ls datasets), CSV/JSON file or image folder")
    made.add_argument("--data-seed", type=int, default=0, help="seed of the data's splits and test subsample; a "
                                                                "robustfeat run's seed gives its test set (default 0)")
    made.add_argument("--max-eval-examples", type=int, default=1000,
                      help="cap on validation/test examples (default 1000, as robustfeat runs keep)")
    _column_flags(made)
    made.add_argument("--image-size", type=int, help="image side in px (default: the base's native size)")
    made.add_argument("--max-length", type=int, default=128, help="max tokens per text (default 128)")
    ev.add_argument("--batch-size", type=int, default=64, help="examples per forward pass (default 64)")
    ev.add_argument("--device", help="cpu, cuda or cuda:N (default: a GPU when present)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_evaluate)

    rp = sub.add_parser("report", help="HTML or PDF report comparing one or more results folders")
    rp.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="folders written by robustfeat evaluate --out")
    rp.add_argument("--out", required=True, help="report file (.html or .pdf)")
    rp.add_argument("--format", choices=["html", "pdf"], help="default: from the --out suffix, else html")
    rp.add_argument("--title", help="report title (default: the models and datasets compared)")
    rp.set_defaults(func=cmd_report)

    sw = sub.add_parser("sweep", help="fine-tune and evaluate every trial of a grid (resumable), then one report")
    sw.add_argument("grid", help="grid YAML file (models, datasets, methods, seeds, hyperparameters)")
    sw.add_argument("--out", required=True, help="sweep folder, on storage every node can reach for ray")
    sw.add_argument("--backend", default="local", help="local (default) or ray (robustfeat ls backends)")
    sw.add_argument("--address", help="Ray cluster address (ray backend); default: start a local Ray instance")
    sw.add_argument("--no-report", action="store_true", help="skip the report at the end")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    st = sub.add_parser("study", help="the study: tune, seeds, scale curves and verdicts per family (resumable)")
    st.add_argument("study", help="study YAML file (families with model, data, methods, tuning, seeds, bank, scale)")
    st.add_argument("--out", required=True, help="study folder (rerun the same command to resume)")
    st.add_argument("--backend", default="local", help="local (default) or ray (robustfeat ls backends)")
    st.add_argument("--address", help="Ray cluster address (ray backend); default: start a local Ray instance")
    st.add_argument("--families", help="comma-separated families of the study file to run now (default: all)")
    st.add_argument("--no-pdf", action="store_true", help="write study.html only")
    st.add_argument("--publish", metavar="DIR", help="copy the outputs (README, CSVs, figures, report, study file) "
                                                   "to DIR, e.g. reports/study")
    st.add_argument("--no-progress", action="store_true", help="no progress bars")
    st.set_defaults(func=cmd_study)

    ex = sub.add_parser("export", help="write a finished run in another tool's format (PEFT, or merged weights)")
    ex.add_argument("run", help="a finished run folder (robustfeat finetune)")
    ex.add_argument("--to", default="peft", choices=["peft", "merged"],
                    help="peft: an adapter folder for PeftModel.from_pretrained (default); merged: the update merged "
                         "into the weights, a transformers save_pretrained folder (safetensors for other models)")
    ex.add_argument("--out", required=True, help="the folder to write (new; --overwrite replaces one)")
    ex.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ex.add_argument("--data", help="where the run's data is now, when it moved (the fingerprint must match)")
    ex.set_defaults(func=cmd_export)

    qs = sub.add_parser("quickstart", help="the whole story on real models and data: fine-tune, evaluate, report")
    qs.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart; rerun to resume)")
    qs.add_argument("--no-pdf", action="store_true", help="write report.html only")
    qs.add_argument("--no-progress", action="store_true", help="no progress display")
    qs.set_defaults(func=cmd_quickstart)
    return p


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(for_command=_command(argv))
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
        print("robustfeat: interrupted (rerun the same command to resume; finished work is kept)", file=sys.stderr)
        return 130
    except OSError as e:
        import errno

        if e.errno != errno.ENOSPC or args.debug:
            raise
        print(f"robustfeat: error: out of disk space ({e.filename or 'while writing'}); free space and rerun "
              "(nothing finished was overwritten)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
