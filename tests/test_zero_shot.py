"""The zero-shot task probe of causal LMs: label-word log-likelihoods checked against a plain
torch computation, planted answers whose accuracy is known exactly, the base against itself
(no forgetting), the intervals, and its refusals."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from robustfeat.data.api import load_dataset
from robustfeat.evaluations import zero_shot
from robustfeat.evaluations.base import BasePool, Cell, EvalContext, EvalOptions, EvaluationError
from robustfeat.evaluations.subject import Subject
from robustfeat.evaluations.zero_shot import (
    ZeroShot,
    ZeroShotTask,
    balanced_subsample,
    build_prompts,
    continuation_logprobs,
    prompt_text,
    zero_shot_rows,
)
from robustfeat.metrics import wilson_interval
from robustfeat.models.handle import ModelInfo
from robustfeat.models.text import CausalLM
from robustfeat.models.tiny import char_tokenizer
from robustfeat.models.zoo import load_model


class StubSubject(Subject):
    """A checkpoint made of two handles in memory: the fine-tuned model and its base."""

    def __init__(self, tuned, base, data: str = "news-text", family: str = "causal-lm") -> None:
        self.tuned, self.base, self.family, self.data = tuned, base, family, data
        self.data_name = Path(data).stem if "/" in data else data  # a file's bundle is named by its stem
        self.path = Path("<stub>")

    @property
    def base_key(self) -> str:
        return f"stub-{id(self.base)}"

    def load(self, device):
        return self.tuned, load_dataset(self.data, progress=False)

    def load_base(self, device):
        return self.base


def _ctx(tmp_path, subject, **options) -> EvalContext:
    return EvalContext(subject=subject, options=EvalOptions(progress=False, **options), base_dir=tmp_path / "base",
                       pool=BasePool())


def _rows(rows) -> dict[str, dict]:
    return {r["metric"]: r for r in rows}


# --- the label-word log-likelihoods, by hand ----------------------------------------------------
@torch.no_grad()
def _by_hand(model, context: list[int], continuation: list[int]) -> float:
    """log p(continuation | context): one unpadded forward of context + continuation."""
    ids = torch.tensor([context + continuation])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[len(context) - 1 + j, t] for j, t in enumerate(continuation)))


@pytest.mark.parametrize("shared", [0, 6], ids=["own-prefixes", "shared-prefix"])
@pytest.mark.parametrize("single", [False, True], ids=["multi-token", "one-token"])
def test_label_log_likelihoods_match_a_plain_torch_computation(single, shared):
    handle = load_model("tiny-gpt2", max_length=64)
    g = torch.Generator().manual_seed(3)
    vocab = len(handle.tokenizer)
    head = torch.randint(4, vocab, (shared,), generator=g).tolist()  # what every context begins with
    contexts = [head + torch.randint(4, vocab, (n,), generator=g).tolist() for n in (5, 12, 1, 9, 7)]
    if single:  # one token per label: scored from one forward of the context alone
        continuations = [[[7], [11], [30]] for _ in contexts]
    else:  # labels of different lengths, and per-example tokens
        continuations = [[torch.randint(4, vocab, (m,), generator=g).tolist() for m in (1, 3, 2)] for _ in contexts]
    got = continuation_logprobs(handle, contexts, continuations, batch_size=2)  # padded batches of mixed lengths
    want = np.array([[_by_hand(handle.model, c, t) for t in conts] for c, conts in zip(contexts, continuations)])
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the prefix's cache is reused (or not) without changing a number
    np.testing.assert_allclose(continuation_logprobs(handle, contexts, continuations, 3, share_prefix=False), want,
                               rtol=0, atol=1e-5)
    if shared:
        from robustfeat.evaluations.zero_shot import _common_prefix

        assert _common_prefix(contexts) >= shared
    # the first label token alone, or a target shifted by one, gives other numbers
    first_only = np.array([[_by_hand(handle.model, c, t[:1]) for t in conts] for c, conts in zip(contexts, continuations)])
    assert single or np.abs(got - first_only).max() > 1e-3


def test_prompts_fit_the_model_and_end_where_the_answer_starts():
    handle = load_model("tiny-gpt2", max_length=128)  # 128 positions, one character per token
    task = zero_shot.TASKS["vader-tweets"]
    texts = ["good", "x" * 200]
    contexts, continuations, how = build_prompts(handle, task, texts, "auto")
    assert how == {"chat": False, "truncated": 1}  # the char tokenizer has no chat template
    tok = handle.tokenizer
    prompt = prompt_text(tok, task, "good", chat=False)
    assert prompt == "Classify the sentiment of this tweet as positive or negative.\n\nTweet: good\nSentiment:"
    assert contexts[0] == tok(prompt, add_special_tokens=False).input_ids
    assert [tok.convert_ids_to_tokens(c) for c in continuations[0]] == [list(" negative"), list(" positive")]
    assert all(len(c) + max(map(len, cs)) <= 128 for c, cs in zip(contexts, continuations))
    assert len(contexts[1]) + 9 == 128  # the long text was cut to fill the positions exactly
    with pytest.raises(EvaluationError, match="no chat template"):
        build_prompts(handle, task, texts, "chat")
    # with a chat template (auto): the instruction is the user's turn, the answer begun in the assistant's
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    chat_contexts, _, how = build_prompts(handle, task, ["good"], "auto")
    assert how["chat"] and prompt_text(tok, task, "good", chat=True) == (
        "<user>Classify the sentiment of this tweet as positive or negative.\n\nTweet: good<assistant>Sentiment:")
    assert chat_contexts[0] == tok(prompt_text(tok, task, "good", chat=True), add_special_tokens=False).input_ids
    assert not build_prompts(handle, task, ["good"], "plain")[2]["chat"]
    with pytest.raises(EvaluationError, match="the prompt alone does not fit the model's 64 positions"):
        build_prompts(load_model("tiny-gpt2", max_length=64), task, texts, "plain")


# --- planted answers --------------------------------------------------------------------------
class MarkerLM(nn.Module):
    """Predicts 'p' after any prefix holding '#', else 'n' (all other tokens equally unlikely):
    " positive" holds one 'p' and no 'n', " negative" one 'n' and no 'p', so the answer is
    positive exactly for the texts with '#' (``flip`` reverses it)."""

    def __init__(self, tok, flip: bool = False) -> None:
        super().__init__()
        self.marker, self.p, self.n = (tok.convert_tokens_to_ids(c) for c in "#pn")
        self.vocab = len(tok)
        self.flip = flip
        self.dummy = nn.Parameter(torch.zeros(1))  # a handle reads its device from a parameter

    def forward(self, input_ids, attention_mask=None, **_):
        seen = (input_ids == self.marker).cumsum(1) > 0
        if self.flip:
            seen = ~seen
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.dummy
        logits[..., self.p] = torch.where(seen, 8.0, 0.0)
        logits[..., self.n] = torch.where(seen, 0.0, 8.0)
        return SimpleNamespace(logits=logits)


def _marker_handle(flip: bool = False) -> CausalLM:
    tok = char_tokenizer(with_specials=False)
    return CausalLM(MarkerLM(tok, flip), tok, ModelInfo("marker", "causal-lm", "built in the test"), max_length=64)


def test_planted_answers_give_exactly_known_accuracies(tmp_path, monkeypatch):
    # 20 positive texts (15 with '#') and 20 negative (5 with '#'): the marker model is right on
    # 15 + 15 = 30 of 40, the flipped one on 5 + 5 = 10
    rows = ["text,label"]
    for i in range(20):
        rows.append(f"{'#' if i < 15 else ''}lovely day {i},1")
        rows.append(f"{'#' if i < 5 else ''}awful day {i},0")
    data = tmp_path / "planted.csv"
    task = ZeroShotTask("planted", str(data), (), "note", ("negative", "positive"), "planted answers")
    monkeypatch.setitem(zero_shot.TASKS, "planted", task)
    own = tmp_path / "own.csv"  # the fine-tuning data: one text copies a planted one, and is dropped
    own.write_text("text\n#Lovely  evening... 7!\n" + "".join(f"something else {i}\n" for i in range(30)))
    rows.append("#lovely evening 7,1")
    data.write_text("\n".join(rows) + "\n")
    ctx = _ctx(tmp_path, StubSubject(_marker_handle(), _marker_handle(flip=True), data=str(own)))
    ev = ZeroShot(task="planted", examples=40)
    assert ev.cells(ctx) == [Cell("zero-shot", "planted")]
    got = _rows(ev.run(ctx, Cell("zero-shot", "planted")))
    assert got["accuracy"]["value"] == 0.75 and got["base_accuracy"]["value"] == 0.25
    assert got["forgetting"]["value"] == -0.5 and got["agreement"]["value"] == 0.0
    assert (got["accuracy"]["ci_low"], got["accuracy"]["ci_high"]) == pytest.approx(wilson_interval(30, 40))
    lo, hi = got["forgetting"]["ci_low"], got["forgetting"]["ci_high"]
    assert -1 <= lo < -0.5 < hi <= 0  # paired bootstrap around the difference
    assert "planted: 40 examples (20 negative / 20 positive)" in got["accuracy"]["note"]
    assert "deduplicated against own: dropped 1 of 41" in got["accuracy"]["note"]
    assert "plain prompt" in got["accuracy"]["note"] and got["accuracy"]["n"] == 40
    # the base's scores were cached under the results folder, and are reused
    assert len(list((tmp_path / "base").rglob("zero-shot-scores-*.npz"))) == 1
    assert _rows(ev.run(ctx, Cell("zero-shot", "planted")))["base_accuracy"]["value"] == 0.25


@pytest.mark.real_data
def test_base_against_itself_forgets_nothing(tmp_path):
    tuned, base = load_model("tiny-gpt2", seed=1), load_model("tiny-gpt2", seed=1)  # the same weights, twice
    ctx = _ctx(tmp_path, StubSubject(tuned, base, data="rotten-tomatoes"))
    ev = ZeroShot(examples=24)
    (cell,) = ev.cells(ctx)
    assert cell.shift == "vader-tweets"
    got = _rows(ev.run(ctx, cell))
    assert got["forgetting"]["value"] == 0.0 and (got["forgetting"]["ci_low"], got["forgetting"]["ci_high"]) == (0, 0)
    assert got["accuracy"]["value"] == got["base_accuracy"]["value"] and got["agreement"]["value"] == 1.0
    assert got["label_mass"]["value"] == got["base_label_mass"]["value"]
    assert "24 examples (12 negative / 12 positive)" in got["accuracy"]["note"]
    assert "deduplicated against rotten-tomatoes: dropped 0 of" in got["accuracy"]["note"]


def test_rows_from_scores_by_hand():
    labels = np.array([0, 1, 1, 0])
    base = np.log(np.array([[0.6, 0.1], [0.2, 0.7], [0.3, 0.4], [0.4, 0.5]]))  # right, right, right, wrong
    tuned = np.log(np.array([[0.1, 0.6], [0.2, 0.7], [0.3, 0.4], [0.5, 0.4]]))  # wrong, right, right, right
    got = _rows(zero_shot_rows(base, tuned, labels, seed=0))
    assert got["base_accuracy"]["value"] == 0.75 and got["accuracy"]["value"] == 0.75
    assert got["forgetting"]["value"] == 0.0 and got["agreement"]["value"] == 0.5
    assert got["base_label_mass"]["value"] == pytest.approx(np.mean([0.7, 0.9, 0.7, 0.9]))
    assert got["forgetting"]["ci_low"] < 0 < got["forgetting"]["ci_high"]  # the two models differ on two examples


def test_balanced_subsample():
    labels = np.array([0] * 10 + [1] * 3)
    idx = balanced_subsample(labels, 8, 2, seed=0)
    assert list(idx) == sorted(idx) and np.bincount(labels[idx]).tolist() == [4, 3]  # all 3 of the rare class
    assert balanced_subsample(labels, None, 2, 0).tolist() == list(range(13))


# --- refusals ---------------------------------------------------------------------------------
def test_refuses_a_model_that_is_not_a_causal_lm(tmp_path):
    bert = load_model("tiny-bert")
    ctx = _ctx(tmp_path, StubSubject(bert, bert, data="rotten-tomatoes", family="text-classifier"))
    with pytest.raises(EvaluationError, match="a causal LM's answers; this checkpoint is a text-classifier model") as e:
        ZeroShot().cells(ctx)
    assert "\n" not in str(e.value)
    with pytest.raises(EvaluationError, match="causal LM"):
        ZeroShot().run(ctx, Cell("zero-shot", "vader-tweets"))


def test_refuses_missing_data_and_a_task_that_is_not_held_out(tmp_path, monkeypatch):
    lm = load_model("tiny-gpt2")
    missing = ZeroShotTask("gone", str(tmp_path / "nowhere.csv"), (), "text", ("negative", "positive"), "missing")
    monkeypatch.setitem(zero_shot.TASKS, "gone", missing)
    ctx = _ctx(tmp_path, StubSubject(lm, lm))
    with pytest.raises(EvaluationError, match="zero-shot task 'gone' needs dataset .*cannot be loaded here") as e:
        ZeroShot(task="gone").cells(ctx)
    assert "\n" not in str(e.value)
    # fine-tuned on VADER: its tweets are not held out, and the default moves to Rotten Tomatoes
    vader = _ctx(tmp_path, StubSubject(lm, lm, data="vader-sentiment"))
    with pytest.raises(EvaluationError, match="'vader-tweets' is not held out: 'vader-sentiment' is the fine-tuning"):
        ZeroShot(task="vader-tweets").cells(vader)
    assert ZeroShot(examples=8).task(vader).name == "rotten-tomatoes"
    for bad, match in (({"zero_shot_task": "sst2"}, "unknown zero-shot task 'sst2'"),
                       ({"zero_shot_examples": 1}, "at least 2"), ({"zero_shot_prompt": "fancy"}, "auto, chat, plain")):
        from robustfeat.evaluations.base import option_overrides

        with pytest.raises(EvaluationError, match=match):
            option_overrides(bad)
