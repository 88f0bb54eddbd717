"""``zero-shot``: a causal LM's zero-shot accuracy on a labelled task it was not fine-tuned on,
base vs fine-tuned (a forgetting probe of what instruction tuning taught the base).

Each example becomes a prompt (the tokenizer's chat template when it has one: the
instruction and the text as the user's turn, the assistant's answer begun with
``Sentiment:``; otherwise the same words as plain text), and each label an answer word
(`` positive`` / `` negative``). The model's answer is the label whose answer tokens have
the highest summed log-probability after the prompt (:func:`continuation_logprobs`): no
text is generated. When every answer is one token, one forward pass per prompt scores them
all (the prompt's last position); otherwise one pass per prompt and answer. The tokens every
prompt begins with (the template's system turn and the instruction) are run once per batch
and their key/value cache shared.

Forgetting is base accuracy - fine-tuned accuracy on the same examples. Intervals (95%):
Wilson for each accuracy; a paired bootstrap over examples for the difference (the
examples are resampled once for both models, so what they share cancels).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from robustfeat.evaluations.base import (
    Cell,
    EvalContext,
    Evaluation,
    EvaluationError,
    Headline,
    Option,
    cell_seed,
    metric_row,
    register_evaluation,
    require,
)

#: what the answer begins with: the label word follows it after a space
ANSWER_PREFIX = "Sentiment:"
#: prompts longer than this (in tokens) have their text cut, whatever the model could read
MAX_PROMPT_TOKENS = 512
PROMPTS = ("auto", "chat", "plain")


@dataclass(frozen=True)
class ZeroShotTask:
    """A labelled task posed zero-shot: the rows of ``data`` (``where`` filters), what one
    text is called in the prompt, and the answer word of each of the data's label ids."""

    name: str
    data: str
    where: tuple[tuple[str, str], ...]
    noun: str
    answers: tuple[str, ...]
    summary: str

    @property
    def instruction(self) -> str:
        return f"Classify the sentiment of this {self.noun} as positive or negative."


TASKS = {t.name: t for t in (
    ZeroShotTask("vader-tweets", "vader-sentiment", (("domain", "tweets"),), "tweet", ("negative", "positive"),
                 "VADER tweets, positive vs negative (|mean human score| >= 0.5)"),
    ZeroShotTask("vader-amazon", "vader-sentiment", (("domain", "amazon"),), "product review",
                 ("negative", "positive"), "VADER Amazon review snippets, positive vs negative"),
    ZeroShotTask("vader-nyt", "vader-sentiment", (("domain", "nyt"),), "newspaper editorial excerpt",
                 ("negative", "positive"), "VADER NYT editorial snippets, positive vs negative"),
    ZeroShotTask("rotten-tomatoes", "rotten-tomatoes", (), "movie review", ("negative", "positive"),
                 "Rotten Tomatoes snippets, fresh (positive) vs rotten (negative)"),
)}
#: the task used when none is named: the first whose data is not the fine-tuning data
DEFAULT_TASKS = ("vader-tweets", "rotten-tomatoes")


def _check_task(name: str) -> None:
    if name not in TASKS:
        raise EvaluationError(f"unknown zero-shot task '{name}'; choose one of {', '.join(TASKS)}")


def _check_examples(n: int) -> None:
    if n < 2:
        raise EvaluationError(f"--zero-shot-examples must be at least 2, got {n}")


def _check_prompt(p: str) -> None:
    if p not in PROMPTS:
        raise EvaluationError(f"--zero-shot-prompt must be one of {', '.join(PROMPTS)}, got '{p}'")


# --- scoring ------------------------------------------------------------------------------------
@torch.no_grad()
def continuation_logprobs(handle, contexts: list[list[int]], continuations: list[list[list[int]]],
                          batch_size: int = 64, share_prefix: bool = True) -> np.ndarray:
    """(N, K) summed log-probabilities, float64: entry (i, k) is log p(continuations[i][k] |
    contexts[i]) under the causal LM of ``handle``, the sum over the continuation's tokens of
    each token's log-probability given the context and the continuation's earlier tokens.

    Sequences are right-padded (a real token never attends to a pad) and sorted by length so
    that batches pad little. When every continuation is one token, a row is the context
    alone and its last position scores all K; otherwise a row is context + continuation.
    With ``share_prefix`` (a transformers model), the tokens every context begins with (a
    chat template's system turn and the instruction) are run once per batch and their
    key/value cache is reused by every row."""
    n = len(contexts)
    if n == 0:
        return np.zeros((0, 0))
    k_count = len(continuations[0])
    if len(continuations) != n or any(len(c) != k_count for c in continuations) or k_count == 0:
        raise EvaluationError("every context needs the same, non-zero number of continuations")
    if any(len(c) == 0 for c in contexts) or any(len(t) == 0 for cs in continuations for t in cs):
        raise EvaluationError("contexts and continuations must not be empty")
    single = all(len(t) == 1 for cs in continuations for t in cs)
    # the shared prefix, leaving each context at least the token that predicts its continuation
    shared = _common_prefix(contexts) if share_prefix and _caches(handle) else 0
    shared = min(shared, min(map(len, contexts)) - 1)
    prefix = [int(t) for t in contexts[0][:shared]]
    rows: list[tuple[list[int], list[tuple[int, int, list[int]]]]] = []  # (ids, [(dest, start, tokens)])
    for i, (ctx_ids, conts) in enumerate(zip(contexts, continuations)):
        ctx_ids = [int(t) for t in ctx_ids[shared:]]  # positions below count from the prefix's end
        if single:
            rows.append((ctx_ids, [(i * k_count + k, len(ctx_ids), list(c)) for k, c in enumerate(conts)]))
        else:
            rows.extend((ctx_ids + [int(t) for t in c], [(i * k_count + k, len(ctx_ids), list(c))])
                        for k, c in enumerate(conts))
    out = np.zeros(n * k_count)
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))
    pad = handle.tokenizer.pad_token_id
    device = handle.device
    for start in range(0, len(order), batch_size):
        batch = [rows[r] for r in order[start:start + batch_size]]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        b_idx, p_idx, tok, dest = [], [], [], []
        for b, (seq, targets) in enumerate(batch):
            ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[b, :len(seq)] = 1
            for d, s, tokens in targets:
                for j, t in enumerate(tokens):  # token j of the continuation is predicted at position s - 1 + j
                    b_idx.append(b)
                    p_idx.append(s - 1 + j)
                    tok.append(int(t))
                    dest.append(d)
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if shared:
            inputs.update(_prefix_cache(handle, prefix, len(batch)))
            inputs["attention_mask"] = torch.cat([torch.ones((len(batch), shared), dtype=torch.long, device=device),
                                                  inputs["attention_mask"]], 1)
        logits = handle.logits(inputs)
        picked = logits[torch.tensor(b_idx, device=logits.device), torch.tensor(p_idx, device=logits.device)]
        logp = torch.log_softmax(picked.double(), -1)[torch.arange(len(tok), device=logits.device),
                                                       torch.tensor(tok, device=logits.device)]
        np.add.at(out, np.asarray(dest), logp.cpu().numpy())
    return out.reshape(n, k_count)


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(map(len, seqs))
    for s in seqs[1:]:
        n = next((j for j in range(n) if s[j] != first[j]), n)
    return n


def _cache_argument(handle) -> str | None:
    """The keyword a transformers model takes its key/value cache by (``cache`` since
    transformers 5.2x, ``past_key_values`` before), None for other models."""
    import inspect

    from transformers import PreTrainedModel

    if not isinstance(handle.model, PreTrainedModel) or not getattr(handle.model.config, "use_cache", False):
        return None
    params = inspect.signature(handle.model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _caches(handle) -> bool:
    return _cache_argument(handle) is not None


def _prefix_cache(handle, prefix: list[int], rows: int) -> dict:
    """{keyword: the key/value cache of ``prefix``, repeated for ``rows`` rows}: a fresh one
    per batch, since the rows' forward pass appends to it."""
    name = _cache_argument(handle)
    with handle.inference():
        out = handle.model(input_ids=torch.tensor([prefix], device=handle.device), use_cache=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    cache.batch_repeat_interleave(rows)
    return {name: cache}


def zero_shot_rows(base_scores: np.ndarray, tuned_scores: np.ndarray, labels: np.ndarray, seed: int,
                   note: str = "") -> list[dict]:
    """The cell's rows from the (N, K) answer scores of both models and the true labels."""
    from robustfeat.metrics import bootstrap_ci, forgetting, wilson_interval

    labels = np.asarray(labels)
    n = len(labels)
    base_pred, tuned_pred = base_scores.argmax(1), tuned_scores.argmax(1)
    base_ok, tuned_ok = base_pred == labels, tuned_pred == labels
    diff = base_ok.astype(np.float64) - tuned_ok.astype(np.float64)  # paired: one value per example
    lo, hi = bootstrap_ci(diff, seed=seed)

    def mass(scores: np.ndarray) -> float:  # probability of answering with one of the label words
        return float(np.exp(np.logaddexp.reduce(scores, axis=1)).mean())

    acc_base, acc_tuned = float(base_ok.mean()), float(tuned_ok.mean())
    return [metric_row("base_accuracy", acc_base, n, wilson_interval(int(base_ok.sum()), n), note),
            metric_row("accuracy", acc_tuned, n, wilson_interval(int(tuned_ok.sum()), n), note),
            metric_row("forgetting", forgetting(acc_base, acc_tuned), n, (lo, hi),
                       "base - fine-tuned accuracy; paired bootstrap CI"),
            metric_row("agreement", float((base_pred == tuned_pred).mean()), n,
                       note="share of examples both models answer alike"),
            metric_row("base_label_mass", mass(base_scores), n, note="mean probability of the label words"),
            metric_row("label_mass", mass(tuned_scores), n, note="mean probability of the label words")]


# --- prompts ------------------------------------------------------------------------------------
def _special_prefix(tok) -> list[int]:
    """The tokens the tokenizer puts before a text (a BOS), which a plain prompt starts with."""
    with_, without = tok("a").input_ids, tok("a", add_special_tokens=False).input_ids
    for s in range(len(with_) - len(without) + 1):
        if with_[s:s + len(without)] == without:
            return list(with_[:s])
    return []


def use_chat(tok, prompt: str) -> bool:
    has = bool(getattr(tok, "chat_template", None))
    if prompt == "chat" and not has:
        raise EvaluationError("--zero-shot-prompt chat: this model's tokenizer has no chat template; use auto or plain")
    return has if prompt == "auto" else prompt == "chat"


def prompt_text(tok, task: ZeroShotTask, text: str, chat: bool) -> str:
    user = f"{task.instruction}\n\n{task.noun[0].upper() + task.noun[1:]}: {text}"
    if chat:
        return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                       add_generation_prompt=True) + ANSWER_PREFIX
    return f"{user}\n{ANSWER_PREFIX}"


def _encode(tok, prompt: str, answers: tuple[str, ...], prefix: list[int], chat: bool) -> tuple[list[int], list[list[int]]]:
    """The prompt's token ids and each answer's: the answer's tokens are those the prompt
    followed by `` ANSWER`` has after the prompt's own (so a tokenizer that merges across
    the boundary is scored on what it would read), else the answer encoded alone."""
    ids = (prefix if not chat else []) + tok(prompt, add_special_tokens=False).input_ids
    conts = []
    for a in answers:
        joint = (prefix if not chat else []) + tok(prompt + " " + a, add_special_tokens=False).input_ids
        if joint[:len(ids)] == ids and len(joint) > len(ids):
            conts.append(joint[len(ids):])
        else:
            conts.append(tok(" " + a, add_special_tokens=False).input_ids)
    return ids, conts


def build_prompts(handle, task: ZeroShotTask, texts, prompt: str = "auto") -> tuple[list, list, dict]:
    """Token ids of every example's prompt and answers, texts cut (at a token boundary) so
    that prompt + answer fit the model's positions (at most MAX_PROMPT_TOKENS): (contexts,
    continuations, {"chat": bool, "truncated": int})."""
    tok = handle.tokenizer
    chat = use_chat(tok, prompt)
    prefix = _special_prefix(tok)
    config = getattr(handle.model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    budget = min(int(limit), MAX_PROMPT_TOKENS) if limit else MAX_PROMPT_TOKENS
    contexts, continuations, truncated = [], [], 0
    for text in map(str, texts):
        ids, conts = _encode(tok, prompt_text(tok, task, text, chat), task.answers, prefix, chat)
        need = len(ids) + max(map(len, conts))
        if need > budget:
            truncated += 1
            pieces = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            keep = len(pieces) - (need - budget)
            while True:
                require(keep > 0, f"zero-shot task '{task.name}': the prompt alone does not fit the model's "
                                  f"{budget} positions")
                ids, conts = _encode(tok, prompt_text(tok, task, text[:pieces[keep - 1][1]], chat), task.answers,
                                     prefix, chat)
                if len(ids) + max(map(len, conts)) <= budget:
                    break
                keep -= 1
        contexts.append(ids)
        continuations.append(conts)
    return contexts, continuations, {"chat": chat, "truncated": truncated}


def balanced_subsample(labels: np.ndarray, n: int | None, num_classes: int, seed: int) -> np.ndarray:
    """Row indices, in original order: ``n // num_classes`` of each class drawn at random (all
    of a class that has fewer), so that always answering one label scores 1 / num_classes;
    every row when ``n`` is None."""
    labels = np.asarray(labels)
    if n is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per = n // num_classes
    picked = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        picked.append(rows if len(rows) <= per else rng.choice(rows, size=per, replace=False))
    return np.sort(np.concatenate(picked))


# --- the evaluation -----------------------------------------------------------------------------
@register_evaluation
class ZeroShot(Evaluation):
    needs_base = True
    name = "zero-shot"
    summary = ("causal LMs: zero-shot accuracy on a held-out labelled task (default VADER tweet sentiment), answers "
               "scored by the log-likelihood of the label words after a prompt, base vs fine-tuned")
    families = frozenset({"causal-lm"})
    order = 85
    explain = ("zero-shot forgetting: the base's zero-shot accuracy on a labelled task the model was not fine-tuned "
               "on (VADER tweets, positive vs negative, balanced: chance is 0.5) minus the fine-tuned model's, on the "
               "same examples (positive means forgotten; 95% paired bootstrap interval).")
    options = (
        Option("zero_shot_task", f"labelled task of the zero-shot probe: {', '.join(TASKS)} (default: vader-tweets, "
                                 "or rotten-tomatoes for a model fine-tuned on vader-sentiment)",
               metavar="TASK", param="task", check=_check_task),
        Option("zero_shot_examples", "examples of the zero-shot probe, balanced over the labels (bank default: 500, "
                                     "quick 64)", type=int, metavar="N", param="examples", check=_check_examples),
        Option("zero_shot_prompt", "auto (the tokenizer's chat template when it has one), chat or plain",
               metavar="FORMAT", param="prompt", check=_check_prompt),
    )
    headlines = (Headline("zero_shot_forgetting", "zero-shot forgetting", "forgetting", False,
                          "zero-shot accuracy lost on a held-out labelled task (base - fine-tuned)", "forgetting",
                          bounds=(-1.0, 1.0)),)

    def task(self, ctx: EvalContext) -> ZeroShotTask:
        own = ctx.subject.data_name
        named = self.params.get("task")
        if named:
            _check_task(named)
            require(TASKS[named].data != own,
                    f"zero-shot task '{named}' is not held out: '{own}' is the fine-tuning data; pick another "
                    f"with --zero-shot-task ({', '.join(t for t in TASKS if TASKS[t].data != own)})")
            return TASKS[named]
        return next(TASKS[t] for t in DEFAULT_TASKS if TASKS[t].data != own)

    def examples(self, ctx: EvalContext):
        """The task's examples (memoised per checkpoint): (texts, labels, note)."""
        if ctx.family != "causal-lm":
            raise EvaluationError(f"zero-shot scores a causal LM's answers; this checkpoint is a {ctx.family} model")
        task = self.task(ctx)
        key = ("zero-shot", task.name, self.params.get("examples", 500), ctx.options.seed)
        if key not in ctx.memo:
            ctx.memo[key] = self._examples(ctx, task)
        return ctx.memo[key]

    def _examples(self, ctx: EvalContext, task: ZeroShotTask):
        from robustfeat.data.api import load_dataset
        from robustfeat.data.dedup import loose_matches
        from robustfeat.errors import RobustfeatError
        from robustfeat.evaluations.ood import _concat, finetune_text_keys

        try:
            bundle = load_dataset(task.data, seed=ctx.options.seed, progress=False)
        except RobustfeatError as e:
            raise EvaluationError(f"zero-shot task '{task.name}' needs dataset '{task.data}', which cannot be "
                                  f"loaded here: {e}") from None
        table = _concat(list(bundle.splits.values()))
        require("text" in table and "label" in table, f"zero-shot task '{task.name}': '{task.data}' has no text "
                                                      "and label columns")
        for col, value in task.where:
            require(col in table, f"zero-shot task '{task.name}': '{task.data}' has no column '{col}'")
            table = table.where(np.asarray(table[col]).astype(str) == value)
        total = len(table)
        dup = loose_matches(table["text"], finetune_text_keys(ctx))
        table = table.where(~dup)
        labels = np.asarray(table["label"]).astype(np.int64)
        k = len(task.answers)
        present = sorted(set(labels.tolist()))
        require(len(table) > 0 and len(present) == k and present == list(range(k)),
                f"zero-shot task '{task.name}' has {len(table)} examples left after dropping the {int(dup.sum())} "
                f"that copy the fine-tuning data '{ctx.subject.data_name}', not every one of its {k} labels")
        idx = balanced_subsample(labels, self.params.get("examples", 500), k, ctx.options.seed)
        counts = np.bincount(labels[idx], minlength=k)
        note = (f"{task.name}: {len(idx)} examples ("
                + " / ".join(f"{c} {a}" for c, a in zip(counts, task.answers))
                + f"); deduplicated against {ctx.subject.data_name}: dropped {int(dup.sum())} of {total}")
        return [str(t) for t in np.asarray(table["text"])[idx]], labels[idx], note

    def cells(self, ctx: EvalContext) -> list[Cell]:
        self.examples(ctx)  # refuses a wrong family, a task that is not held out, data that is missing
        return [Cell(self.name, self.task(ctx).name)]

    def run(self, ctx: EvalContext, cell: Cell) -> list[dict]:
        texts, labels, note = self.examples(ctx)
        task = self.task(ctx)
        contexts, conts, how = build_prompts(ctx.handle, task, texts, self.params.get("prompt", "auto"))
        digest = hashlib.sha256(json.dumps([contexts, conts]).encode()).hexdigest()
        bs = ctx.options.batch_size

        def scores(h):
            return {"scores": continuation_logprobs(h, contexts, conts, bs)}

        base = ctx.base_cached("zero-shot-scores", [task.name, digest], scores)["scores"]
        tuned = scores(ctx.handle)["scores"]
        note = f"{note}; {'chat' if how['chat'] else 'plain'} prompt" + (
            f"; {how['truncated']} texts cut to fit" if how["truncated"] else "")
        return zero_shot_rows(base, tuned, labels, cell_seed(ctx.options.seed, cell), note)
