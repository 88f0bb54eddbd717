"""Forgetting probes on the pre-training task: how much of what the base model could do
survives fine-tuning. Base-model outputs are computed once per base and reused.

* ``imagenet-agreement`` (image models): top-1 agreement and KL between the base's and the
  fine-tuned model's retained pretrained (ImageNet) heads on probe images.
* ``linear-probe`` (image and text classifiers): a logistic-regression probe on the
  backbone's pooled features for a held-out task, base vs fine-tuned.
* ``embedding-geometry`` (text encoders): Spearman correlation of pairwise cosine
  similarities of probe sentences, base vs fine-tuned.
* ``perplexity`` (causal LMs): perplexity on generic text before and after.
"""

from __future__ import annotations

import numpy as np

from robustfeat.metrics import agreement, forgetting, geometry_retention
from robustfeat.evaluations.base import (
    FRACTION,
    Cell,
    EvalContext,
    Evaluation,
    Headline,
    embed,
    metric_row,
    predict_logits,
    register_evaluation,
    require,
    subsample,
)


def _probe_table(ctx: EvalContext, data: str, split: str, n: int | None):
    from robustfeat.data.api import load_dataset

    bundle = load_dataset(data, seed=ctx.options.seed, progress=False)
    table = subsample(bundle[split], n, ctx.options.seed)
    return bundle, table


def _pretrained_logits(handle, inputs):
    return handle.pretrained_logits(inputs)


class PretrainedHeadProbe(Evaluation):
    """Shared by the probes of the kept pretrained (ImageNet) head: whether the model has
    one, and the head's logits on a table for the base (cached once per base) and the
    fine-tuned model."""
    needs_base = True

    families = frozenset({"image-classifier"})
    plots = ("forgetting-tradeoff",)

    @staticmethod
    def has_head(ctx: EvalContext) -> bool:
        return hasattr(ctx.handle, "pretrained_logits")

    @staticmethod
    def head_logits(ctx: EvalContext, table, cache: str, key: list[str]) -> tuple[np.ndarray, np.ndarray]:
        bs = ctx.options.batch_size

        def logits(h):
            return {"logits": predict_logits(h, table, bs, _pretrained_logits)}

        return ctx.base_cached(cache, key, logits)["logits"], logits(ctx.handle)["logits"]


@register_evaluation
class ImagenetAgreement(PretrainedHeadProbe):
    name = "imagenet-agreement"
    summary = "agreement (top-1, KL) of the kept ImageNet head, base vs fine-tuned, on probe images"
    order = 60
    explain = "ImageNet agree: how often the kept ImageNet head predicts what the base's did (1 = nothing forgotten)."
    headlines = (Headline("imagenet_agreement", "ImageNet agree", "top1_agreement", True,
                          "top-1 agreement of the kept ImageNet head, base vs fine-tuned", "forgetting",
                          bounds=FRACTION),)

    def cells(self, ctx: EvalContext) -> list[Cell]:
        return [Cell(self.name, "test-images")] if self.has_head(ctx) else []

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        table = subsample(ctx.data["test"], self.params.get("examples"), ctx.options.seed)
        base, tuned = self.head_logits(ctx, table, "pretrained-logits", [ctx.data.fingerprint, table.fingerprint()])
        top1, kl = agreement(base, tuned)
        n = len(table)
        return [metric_row("top1_agreement", top1, n), metric_row("kl_base_to_tuned", kl, n, note="nats"),
                metric_row("forgetting", 1.0 - top1, n, note="1 - top-1 agreement")]


def held_out(own: str, own_labels: list[str] | None, data: str, column: str) -> str | None:
    """Why the probe task (``data``, ``column``) is not held out from fine-tuning on ``own``
    (None when it is): it is the fine-tuning task, the task of one of its declared
    out-of-domain or near-domain sets, or a task with the same label set."""
    from robustfeat.registry import DATASETS
    from robustfeat.evaluations.ood import pairs_for

    if data == own:
        return f"'{data}' is the fine-tuning data"
    if column != "label":
        return None  # another column of the data (e.g. a snippet's source) is another task
    if data in {s.data for s in pairs_for(own, None)}:
        return f"'{data}' is a declared out-of-domain or near-domain set of '{own}'"
    theirs = DATASETS.get(data).label_names if data in DATASETS else None
    if theirs and own_labels and sorted(theirs) == sorted(own_labels):
        return f"'{data}' has the label set of '{own}'"
    return None


@register_evaluation
class LinearProbe(Evaluation):
    needs_base = True
    name = "linear-probe"
    summary = ("logistic-regression probe on backbone features for a held-out task (never the fine-tuning task, its "
               "OOD pairs or its label set; texts deduplicated against the fine-tuning data), base vs fine-tuned")
    families = frozenset({"image-classifier", "text-classifier"})
    order = 40
    plots = ("forgetting-tradeoff",)
    headlines = (Headline("probe_forgetting", "probe forgetting", "forgetting", False,
                          "linear-probe accuracy lost on a held-out task (base - fine-tuned)", "forgetting",
                          bounds=(-1.0, 1.0)),)

    def probe(self, ctx: EvalContext) -> tuple[str, str] | None:
        own, labels = ctx.subject.data_name, ctx.subject.label_names
        if self.params.get("data"):
            data, column = self.params["data"], self.params.get("label", "label")
            why = held_out(own, labels, data, column)
            require(why is None, f"linear-probe data '{data}' is not held out: {why}")
            return data, column
        from robustfeat.registry import FAMILIES

        candidates = FAMILIES.get(ctx.family).probes  # the family's held-out tasks, in order of preference
        return next(((d, c) for d, c in candidates if held_out(own, labels, d, c) is None), None)

    def cells(self, ctx: EvalContext) -> list[Cell]:
        p = self.probe(ctx)
        return [Cell(self.name, f"{p[0]}:{p[1]}")] if p else []

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        from robustfeat.data.api import load_dataset

        data, column = self.probe(ctx)
        n_train, n_test = self.params.get("train_examples", 2000), self.params.get("test_examples", 1000)
        bundle = load_dataset(data, seed=ctx.options.seed, progress=False)
        splits = {"train": bundle["train"], "test": bundle["test"]}
        dedup = ""
        if "text" in splits["train"] and ctx.data.input_column == "text":
            from robustfeat.data.dedup import loose_keys, loose_matches

            full = ctx.subject.full_data(ctx.options.seed)
            ref = loose_keys(t for n in full.splits for t in full[n]["text"])
            dropped = total = 0
            for k, t in splits.items():
                dup = loose_matches(t["text"], ref)
                dropped, total = dropped + int(dup.sum()), total + len(t)
                splits[k] = t.where(~dup)
            dedup = f"; deduplicated against {ctx.data.name}: dropped {dropped} of {total} probe texts"
        train = subsample(splits["train"], n_train, ctx.options.seed)
        test = subsample(splits["test"], n_test, ctx.options.seed)
        require(column in train, f"probe data '{data}' has no column '{column}'")
        classes, y = np.unique(np.concatenate([train[column], test[column]]).astype(str), return_inverse=True)
        require(len(classes) >= 2, f"probe data '{data}' has a single class in '{column}'")
        y_train, y_test = y[:len(train)], y[len(train):]
        bs = ctx.options.batch_size

        def features(h):
            return {"train": embed(h, train, bs)["embedding"], "test": embed(h, test, bs)["embedding"]}

        key = [data, column, train.fingerprint(), test.fingerprint()]

        def base_probe(_h):  # the base's features and probe, each once per base
            f = ctx.base_cached("probe-features", key, features)
            return {"accuracy": np.array(_probe_accuracy(f["train"], y_train, f["test"], y_test))}

        with ctx.steps("linear probe", ("base probe", "fine-tuned features", "fine-tuned probe")) as step:
            acc_base = float(ctx.base_cached("probe-accuracy", [*key, PROBE_SOLVER], base_probe)["accuracy"])
            step()
            tuned = features(ctx.handle)
            step()
            acc_tuned = _probe_accuracy(tuned["train"], y_train, tuned["test"], y_test)
            step()
        n = len(test)
        note = f"{len(classes)} classes, {len(train)} train / {n} test{dedup}"
        return [metric_row("base_accuracy", acc_base, n, note=note), metric_row("accuracy", acc_tuned, n, note=note),
                metric_row("retention", acc_tuned / acc_base if acc_base > 0 else float("nan"), n),
                metric_row("forgetting", forgetting(acc_base, acc_tuned), n)]


#: what the probe fits (part of the key of the base's cached probe accuracy)
PROBE_SOLVER = "sklearn LogisticRegression(max_iter=2000) on StandardScaler features, float64"


def _probe_accuracy(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x_train.astype(np.float64), y_train)
    return float((clf.predict(x_test.astype(np.float64)) == y_test).mean())


class GenericTextProbe(Evaluation):
    """One cell on generic probe text (``data``, default ``news-text``; its test split): a
    per-model ``measure`` of the text, taken once for the base (cached) and once for the
    fine-tuned model, turned into rows by ``compare``."""
    needs_base = True

    cache_name = ""

    def cells(self, ctx: EvalContext) -> list[Cell]:
        return [Cell(self.name, self.params.get("data", "news-text"))]

    def measure(self, handle, table, batch_size: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def compare(self, base: dict[str, np.ndarray], tuned: dict[str, np.ndarray], n: int) -> list[dict]:
        raise NotImplementedError

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        table = _probe_table(ctx, cell.shift, "test", self.params.get("examples", 500))[1]
        bs = ctx.options.batch_size
        base = ctx.base_cached(self.cache_name, [cell.shift, table.fingerprint()], lambda h: self.measure(h, table, bs))
        return self.compare(base, self.measure(ctx.handle, table, bs), len(table))


@register_evaluation
class EmbeddingGeometry(GenericTextProbe):
    name = "embedding-geometry"
    summary = "Spearman of pairwise cosine similarities of probe sentences (news-text), base vs fine-tuned"
    families = frozenset({"text-classifier"})
    cache_name = "probe-embeddings"
    order = 50
    explain = ("geometry rho: Spearman correlation of the pairwise cosine similarities of probe sentences, base vs "
               "fine-tuned (1 = the embedding geometry is unchanged).")
    plots = ("forgetting-tradeoff",)
    headlines = (Headline("geometry", "geometry rho", "geometry_spearman", True,
                          "Spearman correlation of pairwise cosine similarities, base vs fine-tuned", "forgetting",
                          bounds=(-1.0, 1.0)),)

    def measure(self, handle, table, batch_size):
        return embed(handle, table, batch_size)

    def compare(self, base, tuned, n):
        rho = geometry_retention(base["embedding"], tuned["embedding"])
        return [metric_row("geometry_spearman", rho, n), metric_row("forgetting", 1.0 - rho, n, note="1 - Spearman")]


@register_evaluation
class Perplexity(GenericTextProbe):
    name = "perplexity"
    summary = "perplexity on generic text (news-text), base vs fine-tuned"
    families = frozenset({"causal-lm"})
    cache_name = "perplexity"
    order = 80
    explain = "ppl increase: perplexity on generic text after fine-tuning minus before (positive means forgotten)."
    plots = ("forgetting-tradeoff",)
    headlines = (Headline("ppl_increase", "ppl increase", "forgetting", False, "perplexity increase on generic text",
                          "forgetting"),)

    def measure(self, handle, table, batch_size):
        from robustfeat.train.loop import validation_score

        return {"ppl": np.array(validation_score(handle, table, batch_size)[1])}

    def compare(self, base, tuned, n):
        b, t = float(base["ppl"]), float(tuned["ppl"])
        return [metric_row("base_perplexity", b, n), metric_row("perplexity", t, n),
                metric_row("forgetting", forgetting(b, t, higher_is_better=False), n, note="perplexity increase")]
