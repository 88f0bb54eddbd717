"""``ood``: declared out-of-domain and near-domain sets for a fine-tuning dataset, read from
the shipped ``ood_pairs.yaml`` and the user's ``--pairs`` file; mean OOD accuracy over the
out-of-domain ones (a row's ``kind`` says which it is)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robustfeat.errors import ConfigError
from robustfeat.evaluations.base import (
    FRACTION,
    Cell,
    EvalContext,
    Evaluation,
    Headline,
    Option,
    cell_seed,
    metric_row,
    register_evaluation,
    require,
    subsample,
    summary_row,
)
from robustfeat.evaluations.clean import classification_rows
from robustfeat.evaluations.domains import CLASSIFIERS

SHIPPED_PAIRS = Path(__file__).with_name("ood_pairs.yaml")
KINDS = ("out_of_domain", "near_domain")
SET_KEYS = {"data", "where", "split", "dedup", "labels"}


@dataclass(frozen=True)
class ShiftSet:
    name: str
    kind: str  # out_of_domain | near_domain
    data: str
    where: tuple[tuple[str, str], ...] = ()
    split: str | None = None
    dedup: bool = False
    #: the set's label names -> the in-domain data's label names (when they are named differently)
    labels: tuple[tuple[str, str], ...] = ()


def read_pairs(path: str | Path) -> dict[str, list[ShiftSet]]:
    """Parse and validate a pairs file: {in-domain dataset: [ShiftSet, ...]}."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"pairs file '{path}' does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"pairs file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"pairs file '{path}' must map dataset names to their shift sets")
    out: dict[str, list[ShiftSet]] = {}
    for dataset, kinds in raw.items():
        if str(dataset).startswith("."):
            continue  # holders of YAML anchors (shared snippets), not datasets
        where = f"'{path}', dataset '{dataset}'"
        if not isinstance(kinds, dict) or not kinds or set(kinds) - set(KINDS):
            raise ConfigError(f"{where}: expected the keys {' and/or '.join(KINDS)}, got {kinds!r}")
        sets = []
        for kind, entries in kinds.items():
            if not isinstance(entries, dict):
                raise ConfigError(f"{where}: '{kind}' must map set names to {{data: ...}}")
            for name, e in entries.items():
                sets.append(_shift_set(str(name), kind, e, f"{where}, set '{name}'"))
        out[str(dataset)] = sets
    return out


def _shift_set(name: str, kind: str, e: Any, where: str) -> ShiftSet:
    if not isinstance(e, dict) or "data" not in e:
        raise ConfigError(f"{where}: needs at least 'data: DATASET'")
    unknown = set(e) - SET_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(SET_KEYS))}")
    filt = e.get("where") or {}
    if not isinstance(filt, dict):
        raise ConfigError(f"{where}: 'where' must map a column to a value")
    split = e.get("split")
    if split not in (None, "all", "test"):
        raise ConfigError(f"{where}: split must be 'all' or 'test', got {split!r}")
    if not isinstance(e.get("dedup", False), bool):
        raise ConfigError(f"{where}: dedup must be true or false")
    labels = e.get("labels") or {}
    if not isinstance(labels, dict):
        raise ConfigError(f"{where}: 'labels' must map this set's label names to the in-domain label names")
    return ShiftSet(name, kind, str(e["data"]), tuple(sorted((str(k), str(v)) for k, v in filt.items())),
                    split, bool(e.get("dedup", False)), tuple((str(k), str(v)) for k, v in labels.items()))


def pairs_for(dataset: str, user_file: str | None) -> list[ShiftSet]:
    """The shift sets of ``dataset``: the shipped ones, with the user's file adding sets or
    replacing a dataset's entry."""
    pairs = read_pairs(SHIPPED_PAIRS)
    if user_file:
        pairs.update(read_pairs(user_file))
    return pairs.get(dataset, [])


class _DeclaredSets(Evaluation):
    """An evaluation with one cell per declared set of the fine-tuning data (ood_pairs.yaml and
    the user's file in the ``pairs`` parameter)."""

    def sets(self, ctx: EvalContext) -> dict[str, ShiftSet]:
        return {s.name: s for s in pairs_for(ctx.subject.data_name, self.params.get("pairs"))}

    def cells(self, ctx: EvalContext) -> list[Cell]:
        return [Cell(self.name, name) for name in self.sets(ctx)]


@register_evaluation
class OutOfDomain(_DeclaredSets):
    name = "ood"
    summary = "declared out-of-domain and near-domain sets (ood_pairs.yaml, --pairs FILE); mean OOD accuracy"
    families = CLASSIFIERS
    order = 10
    explain = ("mean OOD acc: accuracy averaged over the declared out-of-domain sets (near-domain sets are "
               "reported but not averaged in).")
    plots = ("id-vs-ood",)
    options = (Option("pairs", "YAML file adding out-of-distribution sets (format: robustfeat/evaluations/ood_pairs.yaml)",
                      metavar="FILE", check=read_pairs),)
    headlines = (Headline("ood_acc", "mean OOD acc", "accuracy", True, "mean accuracy over the out-of-domain sets",
                          "robustness", shift="mean-ood", bounds=FRACTION),)

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        from robustfeat.data.table import Table

        s = self.sets(ctx)[cell.shift]
        own = ctx.data
        bundle = _set_bundle(ctx, s)
        require(bundle.task == own.task, f"OOD set '{s.name}' ({s.data}, {bundle.task}) does not fit a model "
                                         f"fine-tuned on '{own.name}' ({own.task})")
        remap = _label_map(s, bundle.label_names, own.label_names, own.name)
        if s.dedup:
            require(own.input_column == "text", f"OOD set '{s.name}': dedup applies to text data only")
        table, notes = _set_table(ctx, s, bundle, dedup=s.dedup)
        table = subsample(table, self.params.get("examples"), ctx.options.seed)
        labels = remap[np.asarray(table["label"])]
        return classification_rows(ctx, Table({own.input_column: table[own.input_column], "label": labels}), cell,
                                   note="; ".join(notes), kind=s.kind.replace("_", "-"))

    @classmethod
    def summarize(cls, rows: list[dict], reference_rows: list[dict] | None, reference: str) -> list[dict]:
        ood = [r["value"] for r in rows if r["metric"] == "accuracy" and r.get("kind") == "out-of-domain"]
        if not ood:
            return []
        return [summary_row(cls.name, "mean-ood", "accuracy", float(np.mean(ood)), len(ood),
                            "mean over the out-of-domain sets (near-domain sets excluded)")]


def _set_bundle(ctx: EvalContext, s: ShiftSet):
    from robustfeat.data.api import load_dataset

    if s.data == ctx.subject.data_name:
        return ctx.data
    return load_dataset(s.data, seed=ctx.options.seed, progress=False)


def finetune_text_keys(ctx: EvalContext) -> set[str]:
    """The loose keys (robustfeat.data.dedup) of every text of the checkpoint's fine-tuning
    data, all splits of the full dataset (not the trimmed copy it trained on); computed once
    per checkpoint."""
    if "finetune_text_keys" not in ctx.memo:
        from robustfeat.data.dedup import loose_keys

        full = ctx.subject.full_data(ctx.options.seed)
        ctx.memo["finetune_text_keys"] = loose_keys(t for n in full.splits if "text" in full[n]
                                                    for t in full[n]["text"])
    return ctx.memo["finetune_text_keys"]


def _set_table(ctx: EvalContext, s: ShiftSet, bundle, dedup: bool) -> tuple:
    """The rows of a shift set (its split, its ``where`` filters), without those whose text
    loosely matches the fine-tuning data when ``dedup``: (table, notes)."""
    from robustfeat.data.dedup import loose_matches

    split = s.split or ("test" if s.data == ctx.subject.data_name else "all")
    names = ["test"] if split == "test" else list(bundle.splits)
    table = _concat([bundle[n] for n in names])
    for col, value in s.where:
        require(col in table, f"OOD set '{s.name}': '{s.data}' has no column '{col}'")
        table = table.where(np.asarray(table[col]).astype(str) == value)
    notes = []
    if dedup:
        require("text" in table, f"OOD set '{s.name}': dedup applies to text data only")
        dup = loose_matches(table["text"], finetune_text_keys(ctx))
        notes.append(f"deduplicated against {ctx.subject.data_name}: dropped {int(dup.sum())} of {len(table)}")
        table = table.where(~dup)
    require(len(table) > 0, f"OOD set '{s.name}' is empty after filtering")
    if bundle.provenance.get("notes"):
        ctx.memo.setdefault("dataset_notes", {})[s.data] = bundle.provenance["notes"]
    return table, notes


def _label_map(s: ShiftSet, theirs: list[str] | None, ours: list[str] | None, own: str) -> np.ndarray:
    """Index map from the set's label ids to the fine-tuning data's label ids."""
    theirs, ours = list(theirs or []), list(ours or [])
    names = dict(s.labels)
    mapped = [names.get(n, n) for n in theirs]
    missing = [f"{n} -> {m}" if n != m else n for n, m in zip(theirs, mapped) if m not in ours]
    require(not missing and bool(theirs),
            f"OOD set '{s.name}' labels {theirs} do not match '{own}' labels {ours}; map them in the pairs file, "
            f"e.g. labels: {{{', '.join(f'{t}: {o}' for t, o in zip(theirs, ours))}}}")
    return np.array([ours.index(m) for m in mapped], dtype=np.int64)


def _concat(tables):
    from robustfeat.data.table import Table

    cols = set.intersection(*(set(t.names()) for t in tables))
    return Table({c: np.concatenate([t[c] for t in tables]) for c in sorted(cols)})


def text_nll(handle, table, batch_size: int) -> dict[str, np.ndarray]:
    """A causal LM's summed next-token NLL of each text and its scored tokens (texts cut at
    the model's max_length as in training): {"nll": (N,), "tokens": (N,)}, float64, in the
    table's order. Texts are batched longest first, so that batches pad little."""
    order = np.argsort([-len(str(t)) for t in table["text"]], kind="stable")
    nll, tokens = np.empty(len(table)), np.empty(len(table))
    for start in range(0, len(table), batch_size):
        rows = order[start:start + batch_size]
        a, b = handle.text_nll(handle.preprocess(table.select(rows)))
        nll[rows], tokens[rows] = a.double().cpu().numpy(), b.double().cpu().numpy()
    return {"nll": nll, "tokens": tokens}


@register_evaluation
class OutOfDomainPerplexity(_DeclaredSets):
    needs_base = True
    name = "ood-perplexity"
    summary = ("causal LMs: perplexity, base vs fine-tuned, on the fine-tuning data's declared out-of-domain and "
               "near-domain text (ood_pairs.yaml, --lm-pairs FILE), every text that loosely matches the fine-tuning "
               "data dropped; geometric mean over the out-of-domain sets")
    families = frozenset({"causal-lm"})
    order = 11
    explain = ("mean OOD ppl: perplexity of the fine-tuned model on the declared out-of-domain text (for Rotten "
               "Tomatoes: VADER's Amazon, NYT and tweet snippets), the geometric mean over the sets (near-domain "
               "sets are reported but not averaged in); the base's value and the ratio are in the rows.")
    options = (Option("lm_pairs", "YAML file adding out-of-distribution text sets for causal LMs (format: "
                      "robustfeat/evaluations/ood_pairs.yaml; labels are not needed)", metavar="FILE",
                      param="pairs", check=read_pairs),)
    headlines = (Headline("ood_ppl", "mean OOD ppl", "perplexity", False,
                          "perplexity on the out-of-domain text, geometric mean over the sets", "robustness",
                          shift="mean-ood", bounds=(1.0, float("inf"))),)

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        from robustfeat.metrics import bootstrap_perplexity

        s = self.sets(ctx)[cell.shift]
        # a language model memorises text: every set is deduplicated against the fine-tuning data
        table, notes = _set_table(ctx, s, _set_bundle(ctx, s), dedup=True)
        require("text" in table, f"OOD set '{s.name}' ({s.data}) has no 'text' column")
        table = subsample(table, self.params.get("examples"), ctx.options.seed)
        bs = ctx.options.batch_size
        base = ctx.base_cached("ood-text-nll", [s.name, s.data, table.fingerprint(), ctx.handle.max_length],
                               lambda h: text_nll(h, table, bs))
        tuned = text_nll(ctx.handle, table, bs)
        ci = bootstrap_perplexity(tuned["nll"], tuned["tokens"], base["nll"], seed=cell_seed(ctx.options.seed, cell))
        count = tuned["tokens"].sum()
        ppl, base_ppl = float(np.exp(tuned["nll"].sum() / count)), float(np.exp(base["nll"].sum() / count))
        n, kind, note = len(table), s.kind.replace("_", "-"), "; ".join([*notes, f"{int(count)} tokens"])
        return [metric_row("perplexity", ppl, n, ci["perplexity"], note, kind),
                metric_row("base_perplexity", base_ppl, n, ci["base_perplexity"], note, kind),
                metric_row("ppl_increase", ppl - base_ppl, n, ci["increase"], note, kind)]

    @classmethod
    def summarize(cls, rows: list[dict], reference_rows: list[dict] | None, reference: str) -> list[dict]:
        def geo(metric: str) -> list[float]:
            return [r["value"] for r in rows if r["metric"] == metric and r.get("kind") == "out-of-domain"]

        tuned, base = geo("perplexity"), geo("base_perplexity")
        if not tuned:
            return []
        note = "geometric mean over the out-of-domain sets (near-domain sets excluded)"
        t, b = float(np.exp(np.mean(np.log(tuned)))), float(np.exp(np.mean(np.log(base)))) if base else float("nan")
        return [summary_row(cls.name, "mean-ood", "perplexity", t, len(tuned), note),
                summary_row(cls.name, "mean-ood", "base_perplexity", b, len(base), note),
                summary_row(cls.name, "mean-ood", "ppl_ratio", t / b, len(tuned),
                            "fine-tuned / base mean OOD perplexity (above 1: the shifted text got less predictable)")]
