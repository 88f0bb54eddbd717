"""The text and causal-LM banks on tiny models: OOD pairs (label mapping, the deduplicated
near-domain set), user-defined domain splits, forgetting probes, and the pairs file."""

from __future__ import annotations

import numpy as np
import pytest

from robustfeat.data.dedup import loose_matches
from robustfeat.data.api import load_dataset
from robustfeat.errors import ConfigError
from robustfeat.evaluations.ood import pairs_for, read_pairs
from robustfeat.evaluations.runner import evaluate
from robustfeat.train import TrainConfig, finetune

pytestmark = pytest.mark.real_data


def _run(root, name, **kw):
    cfg = dict(max_examples=96, max_eval_examples=48, batch_size=32, checkpoint_every=100)
    cfg.update(kw)
    finetune(TrainConfig(**cfg), root / name, progress=False)
    return root / name


def _v(frame, evaluation, shift, metric):
    sel = frame[(frame.evaluation == evaluation) & (frame["shift"] == shift) & (frame.metric == metric)]
    assert len(sel) == 1, (evaluation, shift, metric, len(sel))
    return sel.iloc[0]


def test_text_bank_ood_sets_and_probes(tmp_path, monkeypatch):
    from robustfeat.evaluations import probes

    seen = []  # every table the probes embed

    def spy(handle, table, *a, **kw):
        seen.append(list(table["text"]))
        return embed(handle, table, *a, **kw)

    embed = probes.embed
    monkeypatch.setattr(probes, "embed", spy)
    ckpt = _run(tmp_path, "bert", model="tiny-bert", data="rotten-tomatoes", method="lora")
    frame = evaluate([ckpt], tmp_path / "res", quick=True, progress=False,
                     shifts=["clean", "ood", "embedding-geometry", "linear-probe"])
    assert set(frame.evaluation) == {"clean", "ood", "embedding-geometry", "linear-probe"}
    ood = frame[(frame.evaluation == "ood") & (frame.metric == "accuracy")]
    assert set(ood["shift"]) == {"vader-amazon", "vader-nyt", "vader-tweets", "vader-movie", "mean-ood"}
    mean = _v(frame, "ood", "mean-ood", "accuracy").value
    far = ood[ood["shift"].isin(["vader-amazon", "vader-nyt", "vader-tweets"])].value
    assert mean == pytest.approx(far.mean())  # the near-domain movie set is not averaged in
    movie = _v(frame, "ood", "vader-movie", "accuracy")
    assert movie.kind == "near-domain" and "deduplicated against rotten-tomatoes" in movie.note
    assert set(ood[ood["shift"] != "mean-ood"].kind) == {"out-of-domain", "near-domain"}
    dropped = int(movie.note.split("dropped ")[1].split(" of")[0])
    # recount the duplicates by hand
    rt = load_dataset("rotten-tomatoes", progress=False)
    vader = load_dataset("vader-sentiment", progress=False)
    texts = np.concatenate([t["text"][t["domain"] == "movie"] for t in vader.splits.values()])
    ref = [t for s in rt.splits.values() for t in s["text"]]
    # the checkpoint's data is the full rotten-tomatoes (max_examples only trims train), so all splits count
    assert dropped == int(loose_matches(texts, ref).sum()) and dropped > 1000
    geo = _v(frame, "embedding-geometry", "news-text", "geometry_spearman").value
    assert 0.5 < geo <= 1.0 + 1e-9
    assert _v(frame, "embedding-geometry", "news-text", "forgetting").value == pytest.approx(1 - geo)
    probe = frame[frame.evaluation == "linear-probe"].set_index("metric").value
    assert probe["forgetting"] == pytest.approx(probe["base_accuracy"] - probe["accuracy"])
    assert probe["retention"] == pytest.approx(probe["accuracy"] / probe["base_accuracy"])
    # the probe (which VADER source a snippet is from) is held out: its movie snippets that copy
    # Rotten Tomatoes are dropped, counted here by hand over the probe's train and test splits
    note = _v(frame, "linear-probe", "vader-sentiment:domain", "accuracy").note
    probe_texts = np.concatenate([vader["train"]["text"], vader["test"]["text"]])
    assert f"dropped {int(loose_matches(probe_texts, ref).sum())} of {len(probe_texts)} probe texts" in note
    assert int(loose_matches(probe_texts, ref).sum()) > 1000
    # and none of the texts the probes saw copies the fine-tuning data
    assert len(seen) >= 4 and not any(loose_matches(texts, ref).any() for texts in seen)


def test_user_domain_column_and_worst_domain(tmp_path):
    rows = ["text,label,source"] + [f"{'great fun' if i % 2 else 'dull mess'} number {i},{i % 2},{'web' if i % 3 else 'print'}"
                                    for i in range(120)]
    data = tmp_path / "reviews.csv"
    data.write_text("\n".join(rows) + "\n")
    ckpt = _run(tmp_path, "bert", model="tiny-bert", data=str(data), method="vefa", epochs=2.0, lr=0.05)
    frame = evaluate([ckpt], tmp_path / "res", quick=True, progress=False, domain_column="source",
                     shifts=["domains"])
    acc = frame[(frame.evaluation == "domains") & (frame.metric == "accuracy")].set_index("shift").value
    assert {"web", "print", "worst"} <= set(acc.index)
    assert acc["worst"] == min(acc["web"], acc["print"])
    worst = _v(frame, "domains", "worst", "accuracy")
    assert worst.note == f"worst domain: {'web' if acc['web'] < acc['print'] else 'print'}" or acc["web"] == acc["print"]


def test_causal_lm_bank(tmp_path):
    ckpt = _run(tmp_path, "gpt", model="tiny-gpt2", data="news-text", method="lora", lr=0.01)
    frame = evaluate([ckpt], tmp_path / "res", quick=True, progress=False)
    # news-text declares no OOD sets: no ood-perplexity cells
    assert set(frame.evaluation) == {"clean", "perplexity", "zero-shot", "cka", "weights"}
    shot = frame[frame.evaluation == "zero-shot"].set_index("metric")
    assert set(shot["shift"]) == {"vader-tweets"} and shot.loc["accuracy", "n"] == 64
    assert shot.loc["forgetting", "value"] == pytest.approx(shot.loc["base_accuracy", "value"] - shot.loc["accuracy", "value"])
    base = _v(frame, "perplexity", "news-text", "base_perplexity").value
    tuned = _v(frame, "perplexity", "news-text", "perplexity").value
    assert _v(frame, "perplexity", "news-text", "forgetting").value == pytest.approx(tuned - base)
    assert base > 1 and tuned > 1
    assert _v(frame, "weights", "all", "relative_change").value > 0


def test_pairs_file_validation_and_user_pairs(tmp_path):
    shipped = pairs_for("rotten-tomatoes", None)
    assert {s.name for s in shipped} == {"vader-amazon", "vader-nyt", "vader-tweets", "vader-movie"}
    assert [s.dedup for s in shipped if s.name == "vader-movie"] == [True]
    user = tmp_path / "mine.yaml"
    user.write_text("sst2:\n  out_of_domain:\n    imdb: {data: 'hf:imdb', split: test}\n")
    assert [s.name for s in pairs_for("sst2", str(user))] == ["imdb"]
    assert pairs_for("rotten-tomatoes", str(user)) == shipped  # the shipped pairs stay
    bad = {
        "a: [1, 2]\n": "expected the keys",
        "a:\n  out_of_domain:\n    x: {where: {d: 1}}\n": "needs at least 'data",
        "a:\n  out_of_domain:\n    x: {data: b, colour: red}\n": "unknown key(s) colour",
        "a:\n  out_of_domain:\n    x: {data: b, split: train}\n": "split must be",
        "a:\n  near_domain:\n    x: {data: b, dedup: maybe}\n": "dedup must be",
        "a: {out_of_domain: {x: {data: b}}\n": "not valid YAML",
        "- 1\n": "must map dataset names",
    }
    for text, match in bad.items():
        user.write_text(text)
        with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
            read_pairs(user)


def test_causal_lm_ood_perplexity_on_rotten_tomatoes(tmp_path, monkeypatch):
    from robustfeat.evaluations import ood
    from robustfeat.train import validation_score

    seen = []  # every table whose perplexity is taken

    def spy(handle, table, *a, **kw):
        seen.append(list(table["text"]))
        return text_nll(handle, table, *a, **kw)

    text_nll = ood.text_nll
    monkeypatch.setattr(ood, "text_nll", spy)
    ckpt = _run(tmp_path, "gpt", model="tiny-gpt2", data="rotten-tomatoes", method="lora", lr=0.01)
    frame = evaluate([ckpt], tmp_path / "res", quick=True, progress=False, shifts=["ood-perplexity"])
    rows = frame[frame.evaluation == "ood-perplexity"]
    ppl = rows[rows.metric == "perplexity"].set_index("shift")
    assert set(ppl.index) == {"vader-amazon", "vader-nyt", "vader-tweets", "vader-movie", "mean-ood"}
    far = ["vader-amazon", "vader-nyt", "vader-tweets"]
    assert set(ppl.loc[far].kind) == {"out-of-domain"} and ppl.loc["vader-movie"].kind == "near-domain"
    # the headline: the geometric mean over the out-of-domain sets only
    assert ppl.loc["mean-ood"].value == pytest.approx(np.exp(np.log(ppl.loc[far].value).mean()))
    base = rows[rows.metric == "base_perplexity"].set_index("shift").value
    inc = rows[rows.metric == "ppl_increase"].set_index("shift")
    for s in [*far, "vader-movie"]:
        assert inc.loc[s].value == pytest.approx(ppl.loc[s].value - base[s])
        assert ppl.loc[s].ci_low <= ppl.loc[s].value <= ppl.loc[s].ci_high and ppl.loc[s].n == 64
        assert inc.loc[s].ci_low <= inc.loc[s].value <= inc.loc[s].ci_high
    ratio = _v(frame, "ood-perplexity", "mean-ood", "ppl_ratio").value
    assert ratio == pytest.approx(ppl.loc["mean-ood"].value / _v(frame, "ood-perplexity", "mean-ood", "base_perplexity").value)
    # every set deduplicated against all of Rotten Tomatoes; the movie set loses most of itself
    rt = load_dataset("rotten-tomatoes", progress=False)
    ref = [t for s in rt.splits.values() for t in s["text"]]
    assert all("deduplicated against rotten-tomatoes: dropped" in n for n in ppl.loc[[*far, "vader-movie"]].note)
    assert int(ppl.loc["vader-movie"].note.split("dropped ")[1].split(" of")[0]) > 1000
    assert len(seen) == 8 and not any(loose_matches(texts, ref).any() for texts in seen)  # base + tuned per set
    # a set's perplexity is the fine-tuned model's validation perplexity on its texts (the tuned
    # model scores each set right after the base, so every second table seen is the tuned one's)
    from robustfeat.data.table import Table
    from robustfeat.train import load_run

    handle = load_run(ckpt)[0]
    tuned = sorted(validation_score(handle, Table({"text": np.array(t)}))[1] for t in seen[1::2])
    assert tuned == pytest.approx(sorted(ppl.loc[[*far, "vader-movie"]].value), rel=1e-6)
