"""Checkpoints made elsewhere: a PEFT adapter folder is evaluated by robustfeat as PEFT itself
computes it. Each adapter is made with PEFT's own API on a tiny BERT (or GPT-2) saved as a local
transformers folder, trained a few steps so that its outputs differ from the base's, saved
with PEFT's ``save_pretrained``, then evaluated with ``robustfeat evaluate --data``; the clean
accuracy (perplexity) and the logits must equal what ``PeftModel.from_pretrained`` gives on the
same test split."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustfeat.evaluations.imported import ImportOptions, PeftSubject
from robustfeat.evaluations.runner import evaluate, read_subject
from tests.models import plain_perplexity

TOL = 1e-5


@pytest.fixture(scope="module")
def text_case(tmp_path_factory):
    """A tiny BERT sequence classifier saved as a transformers folder, and a 2-class CSV it can learn."""
    from transformers import BertConfig, BertForSequenceClassification

    from robustfeat.models.tiny import char_tokenizer

    root = tmp_path_factory.mktemp("peft-text")
    tok = char_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=130, num_labels=2)
    BertForSequenceClassification(cfg).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    rng = random.Random(0)
    words = {0: ["bad", "awful", "poor", "dull"], 1: ["good", "great", "fine", "nice"]}
    rows = ["text,sentiment"] + [f"{' '.join(rng.choice(words[i % 2]) for _ in range(3))} {rng.randint(0, 99)},{i % 2}"
                                 for i in range(240)]
    (root / "reviews.csv").write_text("\n".join(rows) + "\n")
    return root


def _peft_configs():
    from peft import IA3Config, LoHaConfig, LoraConfig, VeraConfig

    t = ["query", "value"]
    return {
        "lora": lambda: LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=t),
        "dora": lambda: LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=t, use_dora=True),
        "ia3": lambda: IA3Config(task_type="SEQ_CLS", target_modules=t, feedforward_modules=[]),
        "vera": lambda: VeraConfig(task_type="SEQ_CLS", r=4, target_modules=t),
        "loha": lambda: LoHaConfig(task_type="SEQ_CLS", r=4, target_modules=t),
    }


def _train_peft(root: Path, name: str, steps: int = 80):
    """A PEFT adapter of kind ``name`` trained with PEFT's API on the CSV, saved with PEFT; returns its folder."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = root / f"peft-{name}"
    if out.exists():
        return out
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(root / "base")
    tok = AutoTokenizer.from_pretrained(root / "base")
    pm = get_peft_model(model, _peft_configs()[name]())
    lines = (root / "reviews.csv").read_text().splitlines()[1:]
    texts, labels = [l.rsplit(",", 1)[0] for l in lines], torch.tensor([int(l.rsplit(",", 1)[1]) for l in lines])
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=3e-2)
    pm.train()
    for step in range(steps):
        idx = torch.randint(len(texts), (16,), generator=torch.Generator().manual_seed(step))
        enc = tok([texts[i] for i in idx], padding=True, return_tensors="pt")
        loss = torch.nn.functional.cross_entropy(pm(**enc).logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.save_pretrained(out)
    return out


def _peft_own(root: Path, adapter: Path, table):
    """The logits PEFT's own model gives on ``table``'s texts."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(root / "base"), adapter).eval()
    enc = AutoTokenizer.from_pretrained(root / "base")([str(t) for t in table["text"]], padding=True, truncation=True,
                                                      max_length=128, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def _options(root: Path, **kw) -> ImportOptions:
    return ImportOptions(data=str(root / "reviews.csv"), label_column="sentiment", **kw)


@pytest.mark.parametrize("kind", ["lora", "dora", "ia3", "vera", "loha"])
def test_a_peft_adapter_is_evaluated_as_peft_computes_it(text_case, kind, tmp_path):
    adapter = _train_peft(text_case, kind)
    subject = read_subject(adapter, _options(text_case))
    assert isinstance(subject, PeftSubject)
    assert subject.method == {"lora": "peft-lora", "dora": "peft-dora", "ia3": "peft-ia3", "vera": "peft-vera",
                              "loha": "peft-loha"}[kind]
    handle, data = subject.load(None)
    test = data["test"]
    theirs = _peft_own(text_case, adapter, test)
    ours = handle.logits(handle.preprocess(test))
    assert (ours - theirs).abs().max().item() < TOL
    base = subject.load_base(None)
    assert (base.logits(base.preprocess(test))[:, :2] - theirs).abs().max().item() > 1e-3

    frame = evaluate([adapter], tmp_path / "res", shifts=["clean", "weights"], progress=False,
                     data=str(text_case / "reviews.csv"), label_column="sentiment")
    acc = frame.query("evaluation == 'clean' and metric == 'accuracy'")["value"].item()
    peft_acc = float((theirs.argmax(-1).numpy() == np.asarray(test["label"])).mean())
    assert acc == pytest.approx(peft_acc, abs=1e-12)
    if kind in ("lora", "dora", "loha"):  # these learn the task in the steps given (ia3, vera stay near chance)
        assert acc > 0.9  # so equal accuracies are not two chance levels
    # drift on the merged weight of every adapted layer, whatever method made the change
    layers = frame.query("evaluation == 'weights' and metric == 'relative_change' and shift != 'all'")
    assert sorted(layers["shift"]) == sorted(f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1)
                                             for m in ("query", "value"))
    assert (layers["value"] > 0).all()
    prov = json.loads((tmp_path / "res" / "results.json").read_text())["checkpoints"][subject.id]
    assert prov["kind"] == "peft" and prov["method"] == subject.method
    assert prov["base"]["resolved"] == str(text_case / "base")
    from robustfeat.data.cache import sha256_file

    assert prov["files_sha256"]["adapter_model.safetensors"] == sha256_file(adapter / "adapter_model.safetensors")


def test_a_head_whose_labels_name_the_datas_is_put_in_the_datas_order(text_case, tmp_path):
    """A transformers head with id2label {0: '1', 1: '0'} reads output 0 as label '1': robustfeat
    reorders it, so accuracy is PEFT's with the outputs swapped; by index it would be 1 - that."""
    from transformers import AutoConfig

    adapter = _train_peft(text_case, "lora")
    swapped = tmp_path / "base-swapped"
    import shutil

    shutil.copytree(text_case / "base", swapped)
    cfg = AutoConfig.from_pretrained(swapped)
    cfg.id2label, cfg.label2id = {0: "1", 1: "0"}, {"1": 0, "0": 1}
    cfg.save_pretrained(swapped)
    subject = read_subject(adapter, _options(text_case, base=str(swapped)))
    handle, data = subject.load(None)
    test = data["test"]
    theirs = _peft_own(text_case, adapter, test)
    ours = handle.logits(handle.preprocess(test))
    assert torch.allclose(ours, theirs.flip(-1), atol=TOL)
    assert any("label order" in n for n in subject.notes)
    plain = read_subject(adapter, _options(text_case))
    assert any("by index" in n for n in plain.notes)


def test_a_peft_causal_lm_adapter_gives_peft_s_perplexity(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from robustfeat.models.tiny import char_tokenizer

    tok = char_tokenizer(with_specials=False)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                        LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["c_attn"], fan_in_fan_out=True,
                                   init_lora_weights=False))
    pm.save_pretrained(tmp_path / "adapter")
    rows = [json.dumps({"text": f"the cat sat on mat {i}"}) for i in range(60)]
    (tmp_path / "lines.jsonl").write_text("\n".join(rows) + "\n")
    frame = evaluate([tmp_path / "adapter"], tmp_path / "res", shifts=["clean"], progress=False,
                     data=str(tmp_path / "lines.jsonl"), max_length=32)
    ppl = frame.query("evaluation == 'clean' and metric == 'perplexity'")["value"].item()
    subject = read_subject(tmp_path / "adapter", ImportOptions(data=str(tmp_path / "lines.jsonl"), max_length=32))
    test = subject.bundle["test"]
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    tok.padding_side = "right"
    assert ppl == pytest.approx(plain_perplexity(theirs, tok, test["text"], 32), rel=1e-5)


@pytest.mark.parametrize("to", ["peft", "merged"])
def test_an_exported_robustfeat_run_evaluates_as_the_run(tmp_path, to):
    """robustfeat lora -> export (a PEFT adapter, or a transformers folder with the update merged)
    -> evaluate the export: the same clean results and weight drift as evaluating the run."""
    from transformers import AutoModelForSequenceClassification

    from robustfeat.export import export_run
    from robustfeat.train.config import TrainConfig
    from robustfeat.train.loop import finetune

    rows = ["text,label"] + [f"{'good' if i % 2 else 'bad'} item {i},{i % 2}" for i in range(160)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    cfg = TrainConfig(model="tiny-bert", data=str(tmp_path / "d.csv"), method="lora", max_examples=64,
                      batch_size=16, lr=5e-3, seed=0, max_length=32)
    finetune(cfg, tmp_path / "run", progress=False)
    export_run(tmp_path / "run", to=to, out=tmp_path / "export")
    if to == "merged":
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")  # transformers' own model
    a = evaluate([tmp_path / "run"], tmp_path / "res-run", shifts=["clean", "weights"], progress=False)
    b = evaluate([tmp_path / "export"], tmp_path / "res-export", shifts=["clean", "weights"], progress=False,
                 base="tiny-bert", data=str(tmp_path / "d.csv"), max_length=32)
    key = ["evaluation", "shift", "metric"]
    ours, theirs = a.set_index(key)["value"].sort_index(), b.set_index(key)["value"].sort_index()
    assert list(ours.index) == list(theirs.index)
    assert np.allclose(ours.to_numpy(), theirs.to_numpy(), atol=1e-5, equal_nan=True)
    assert (ours.xs("relative_change", level="metric") > 0).all()


# --- bad input: one line, exit 2, nothing written ------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustfeat", *args], capture_output=True, text=True)


def _refused(text_case, folder: Path, out: Path, *extra: str) -> str:
    r = _cli("evaluate", str(folder), "--out", str(out), "--shifts", "clean", "--no-progress",
             "--data", str(text_case / "reviews.csv"), "--label-column", "sentiment", *extra)
    assert r.returncode == 2, r.stderr
    assert not out.exists()
    lines = [l for l in r.stderr.splitlines() if l.startswith("robustfeat: error")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_bad_peft_folders_are_refused_in_one_line_and_nothing_is_written(text_case, tmp_path):
    import shutil

    adapter = _train_peft(text_case, "lora")

    def variant(name: str, edit=None) -> Path:
        d = tmp_path / name
        shutil.copytree(adapter, d)
        if edit:
            edit(d)
        return d

    def config_edit(**kw):
        def edit(d: Path) -> None:
            cfg = json.loads((d / "adapter_config.json").read_text())
            cfg.update(kw)
            (d / "adapter_config.json").write_text(json.dumps(cfg))
        return edit

    msg = _refused(text_case, variant("nobase", config_edit(base_model_name_or_path="org/not-here")), tmp_path / "o1")
    assert "org/not-here" in msg and "--base" in msg
    msg = _refused(text_case, variant("unknown", config_edit(peft_type="NOT_A_TUNER")), tmp_path / "o2")
    assert "NOT_A_TUNER" in msg
    # a base of other shapes (hidden size 48 instead of 32)
    from transformers import AutoConfig, BertForSequenceClassification

    cfg = AutoConfig.from_pretrained(text_case / "base")
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "wide")
    shutil.copy(text_case / "base" / "tokenizer.json", tmp_path / "wide")
    for f in (text_case / "base").glob("*token*"):
        shutil.copy(f, tmp_path / "wide")
    msg = _refused(text_case, adapter, tmp_path / "o3", "--base", str(tmp_path / "wide"))
    assert "does not fit the base" in msg
    # data with three labels for a two-output head
    three = tmp_path / "three.csv"
    three.write_text("text,sentiment\n" + "".join(f"t {i},{i % 3}\n" for i in range(90)))
    r = _cli("evaluate", str(adapter), "--out", str(tmp_path / "o4"), "--data", str(three), "--label-column",
             "sentiment", "--no-progress")
    assert r.returncode == 2 and "3 labels" in r.stderr and "2 outputs" in r.stderr
    assert not (tmp_path / "o4").exists()
    # a legacy pickle adapter
    legacy = variant("legacy")
    (legacy / "adapter_model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, legacy / "adapter_model.bin")
    msg = _refused(text_case, legacy, tmp_path / "o5")
    assert "pickle" in msg.lower() and "safetensors" in msg
    # no data
    r = _cli("evaluate", str(adapter), "--out", str(tmp_path / "o6"), "--no-progress")
    assert r.returncode == 2 and "--data" in r.stderr and not (tmp_path / "o6").exists()


def test_info_reads_a_peft_folder(text_case):
    adapter = _train_peft(text_case, "dora")
    r = _cli("info", str(adapter), "--json")
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["peft_type"] == "LORA" and meta["use_dora"] is True and meta["task_type"] == "SEQ_CLS"
    assert meta["target_modules"] == ["query", "value"]
    assert meta["base_model_name_or_path"] == str(text_case / "base")


def _full_finetune(root: Path) -> Path:
    """The base fully fine-tuned with plain torch, saved as transformers' Trainer saves it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = root / "full"
    if out.exists():
        return out
    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_pretrained(root / "base")
    tok = AutoTokenizer.from_pretrained(root / "base")
    lines = (root / "reviews.csv").read_text().splitlines()[1:]
    texts, labels = [l.rsplit(",", 1)[0] for l in lines], torch.tensor([int(l.rsplit(",", 1)[1]) for l in lines])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(40):
        idx = torch.randint(len(texts), (16,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(model(**tok([texts[i] for i in idx], padding=True,
                                                             return_tensors="pt")).logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_a_transformers_folder_is_evaluated_with_and_without_its_base(text_case, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from robustfeat.evaluations.imported import PretrainedSubject

    full = _full_finetune(text_case)
    data = dict(data=str(text_case / "reviews.csv"), label_column="sentiment")
    frame = evaluate([full], tmp_path / "with", progress=False, base=str(text_case / "base"), **data)
    subject = read_subject(full, _options(text_case, base=str(text_case / "base")))
    assert isinstance(subject, PretrainedSubject) and subject.has_base
    test = subject.bundle["test"]
    model = AutoModelForSequenceClassification.from_pretrained(full).eval()
    enc = AutoTokenizer.from_pretrained(full)([str(t) for t in test["text"]], padding=True, truncation=True,
                                              max_length=128, return_tensors="pt")
    with torch.no_grad():
        own = float((model(**enc).logits.argmax(-1).numpy() == np.asarray(test["label"])).mean())
    assert frame.query("evaluation == 'clean' and metric == 'accuracy'")["value"].item() == pytest.approx(own)
    drift = frame.query("evaluation == 'weights' and metric == 'relative_change' and shift != 'all'")
    assert len(drift) > 0 and (drift["value"] > 0).all()
    assert "cka" in set(frame["evaluation"])

    bare = evaluate([full], tmp_path / "without", progress=False, **data)
    from robustfeat.registry import EVALUATIONS

    needs = {e for e in set(frame["evaluation"]) if EVALUATIONS.get(e).needs_base}
    assert needs >= {"weights", "cka", "linear-probe"}
    assert set(bare["evaluation"]) == set(frame["evaluation"]) - needs
    prov = json.loads((tmp_path / "without" / "results.json").read_text())["checkpoints"]
    (entry,) = prov.values()
    assert set(entry["skipped"]) == needs and entry["base"] is None
    r = _cli("evaluate", str(full), "--out", str(tmp_path / "o"), "--shifts", "cka", "--data",
             str(text_case / "reviews.csv"), "--label-column", "sentiment", "--no-progress")
    assert r.returncode == 2 and "--base" in r.stderr and not (tmp_path / "o").exists()


def test_a_transformers_folder_with_pickle_weights_is_refused(text_case, tmp_path):
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(_full_finetune(text_case), folder)
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    msg = _refused(text_case, folder, tmp_path / "o")
    assert "pickle" in msg and "safetensors" in msg


def test_a_torchvision_weights_file_is_evaluated_on_its_architecture(tmp_path):
    """A torchvision model fine-tuned elsewhere (its classifier resized for the task), saved as a
    safetensors state_dict, evaluated with --base torchvision:NAME: clean accuracy equals the
    model's own, drift is measured against the base, and a wrong architecture is refused."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)  # the base robustfeat builds for torchvision:...?weights=none at seed 0
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None)
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.classifier[3] = torch.nn.Linear(net.classifier[3].in_features, 10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "ft.safetensors"))
    base = "torchvision:mobilenet_v3_small?weights=none"
    frame = evaluate([tmp_path / "ft.safetensors"], tmp_path / "res", shifts=["clean", "weights"], progress=False,
                     base=base, data="digits", image_size=32, max_eval_examples=64)
    subject = read_subject(tmp_path / "ft.safetensors", ImportOptions(base=base, data="digits", image_size=32,
                                                                      max_eval_examples=64))
    handle, data = subject.load(None)
    test = data["test"]
    net.eval()
    with torch.no_grad():
        own = net(handle.preprocess(test)["pixel_values"]).argmax(-1).numpy()
    assert frame.query("evaluation == 'clean' and metric == 'accuracy'")["value"].item() == pytest.approx(
        float((own == np.asarray(test["label"])).mean()))
    # the base is torchvision's random init at seed 0 (no weights offline); the change is the 0.01 noise
    drift = frame.query("evaluation == 'weights' and metric == 'relative_change' and shift != 'all'")
    assert len(drift) > 0
    for path, value in zip(drift["shift"], drift["value"]):
        key = path.removeprefix("net.") + ".weight"
        w0, w = base_state[key].double(), net.state_dict()[key].double()
        assert value == pytest.approx(float((w - w0).norm() / w0.norm()), rel=1e-4)
    r = _cli("evaluate", str(tmp_path / "ft.safetensors"), "--out", str(tmp_path / "o"), "--data", "digits",
             "--base", "torchvision:resnet18?weights=none", "--no-progress")
    assert r.returncode == 2 and "do not fit" in r.stderr and not (tmp_path / "o").exists()


def test_a_save_adapters_folder_is_a_checkpoint_like_any_other(text_case, tmp_path):
    """The README's own ``rf.save_adapters(model, DIR)``: evaluated with --data (its base from
    the folder's base id, or --base); the wrong base is refused by its fingerprint."""
    import robustfeat as rf
    from robustfeat.evaluations.imported import AdaptersSubject
    from robustfeat.models.zoo import load_model

    handle = load_model("tiny-bert", num_labels=2, seed=0)
    rf.inject_adapters(handle.model, rf.AdapterConfig(method="vefa", target_modules=["query", "value"],
                                                      modules_to_save=["classifier"]))
    with torch.no_grad():
        for n, p in handle.model.named_parameters():
            if "vefa" in n or "classifier" in n:
                p.add_(0.3 * torch.randn_like(p))
    rf.save_adapters(handle.model, tmp_path / "saved", base_id="tiny-bert")
    opts = dict(data=str(text_case / "reviews.csv"), label_column="sentiment")
    frame = evaluate([tmp_path / "saved"], tmp_path / "res", shifts=["clean", "cka"], progress=False, **opts)
    subject = read_subject(tmp_path / "saved", ImportOptions(**opts))
    assert isinstance(subject, AdaptersSubject) and subject.method == "vefa"
    test = subject.bundle["test"]
    own = handle.logits(handle.preprocess(test)).argmax(-1).numpy()
    acc = frame.query("evaluation == 'clean' and metric == 'accuracy'")["value"].item()
    assert acc == pytest.approx(float((own == np.asarray(test["label"])).mean()))
    assert sorted(frame.query("evaluation == 'cka' and shift != 'all'")["shift"]) == sorted(subject.targets)
    from transformers import AutoConfig, BertForSequenceClassification

    torch.manual_seed(3)  # the same architecture, other weights
    BertForSequenceClassification(AutoConfig.from_pretrained(text_case / "base")).save_pretrained(tmp_path / "other")
    for f in (text_case / "base").glob("*token*"):
        (tmp_path / "other" / f.name).write_bytes(f.read_bytes())
    r = _cli("evaluate", str(tmp_path / "saved"), "--out", str(tmp_path / "o"), "--data", str(text_case / "reviews.csv"),
             "--label-column", "sentiment", "--base", str(tmp_path / "other"), "--no-progress")
    assert r.returncode == 2 and "trained on base" in r.stderr and not (tmp_path / "o").exists()


# --- portable runs and user data ----------------------------------------------------------------
def test_a_run_on_a_user_file_is_found_from_anywhere_and_moved_data_by_fingerprint(tmp_path, monkeypatch):
    """finetune --data data/sent.csv (relative) records the file's absolute path: evaluating
    from / finds it; after the file moves, --data NEW points at it (the fingerprint decides), and
    another file is refused with a fix that works as printed."""
    import os
    import shutil

    (tmp_path / "proj" / "data").mkdir(parents=True)
    rows = ["review,sentiment"] + [f"{'good' if i % 2 else 'bad'} film {i},{'pos' if i % 2 else 'neg'}" for i in range(120)]
    (tmp_path / "proj" / "data" / "sent.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path / "proj")
    r = _cli("finetune", "--model", "tiny-bert", "--data", "data/sent.csv", "--label-column", "sentiment",
             "--method", "lora", "--max-examples", "32", "--max-length", "32", "--out", str(tmp_path / "run"),
             "--no-progress")
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "run" / "robustfeat.json").read_text())
    assert record["data"]["provenance"]["path"] == str(tmp_path / "proj" / "data" / "sent.csv")
    assert record["data"]["label_names"] == ["neg", "pos"]
    monkeypatch.chdir("/")
    # the linear probe reads the fine-tuning data in full (to drop its texts from the probe's)
    shifts = ["--shifts", "clean,linear-probe", "--quick"]
    r = _cli("evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "res1"), *shifts, "--no-progress")
    assert r.returncode == 0, r.stderr
    first = (tmp_path / "res1" / "results.csv").read_text()
    assert "linear-probe" in first
    # the file moves: its old place is named, with the flag that fixes it
    shutil.move(tmp_path / "proj" / "data", tmp_path / "elsewhere")
    for command in (["evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "res2"), *shifts],
                    ["export", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]):
        r = _cli(*command, "--no-progress") if command[0] == "evaluate" else _cli(*command)
        assert r.returncode == 2 and f"file not found: {tmp_path / 'proj' / 'data' / 'sent.csv'}" in r.stderr
        assert "--data" in r.stderr and not Path(command[command.index("--out") + 1]).exists()
        r = (_cli(*command, "--no-progress", "--data", str(tmp_path / "elsewhere" / "sent.csv"))
             if command[0] == "evaluate" else _cli(*command, "--data", str(tmp_path / "elsewhere" / "sent.csv")))
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "res2" / "results.csv").read_text() == first
    assert (tmp_path / "exported" / "adapter_config.json").is_file()
    # other data under the same name is refused before anything is written
    (tmp_path / "other.csv").write_text("\n".join(rows[:1] + rows[1:][::-1]) + "\n")
    r = _cli("evaluate", str(tmp_path / "run"), "--out", str(tmp_path / "res3"), "--no-progress",
             "--data", str(tmp_path / "other.csv"))
    assert r.returncode == 2 and "fingerprint differs" in r.stderr and not (tmp_path / "res3").exists()
    assert os.getcwd() == "/"


def test_a_missing_file_is_file_not_found_and_a_name_is_an_unknown_dataset(tmp_path):
    from robustfeat.data.api import load_dataset
    from robustfeat.errors import RobustfeatError

    with pytest.raises(RobustfeatError, match=f"^file not found: {tmp_path / 'nope.csv'}$"):
        load_dataset(str(tmp_path / "nope.csv"))
    with pytest.raises(RobustfeatError, match="unknown dataset 'rotten-tomatos'.*rotten-tomatoes"):
        load_dataset("rotten-tomatos")


def test_data_prepare_on_a_file_checks_how_it_reads_and_caches_nothing(tmp_path, capsys, monkeypatch):
    from robustfeat.cli import main

    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "sent.csv"
    f.write_text("text,sentiment\n" + "".join(f"film {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40)))
    assert main(["data", "prepare", str(f), "--label-column", "sentiment"]) == 0
    out = capsys.readouterr().out
    assert "nothing to cache" in out and "labels neg, pos" in out
    rows = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[3:]}
    assert sum(rows.values()) == 40 and set(rows) == {"train", "validation", "test"}
    assert not (tmp_path / "cache").exists()
    assert main(["data", "prepare", str(f)]) == 0  # no label column named 'label': plain text
    assert "reads as text" in capsys.readouterr().out


def test_the_fix_a_changed_registered_dataset_suggests_runs_as_printed(tmp_path):
    """`robustfeat data prepare NAME --force`, as the refusal prints it, runs (exit 0)."""
    import re
    from types import SimpleNamespace

    from robustfeat.train.record import RunRecord

    record = RunRecord(tmp_path, {"data": {"fingerprint": "a"}, "config": {"data": "digits"}, "model": {}})
    with pytest.raises(Exception) as e:
        record.check_data(SimpleNamespace(fingerprint="b"), "digits")
    (command,) = re.findall(r"`([^`]+)`", str(e.value))
    args = command.split()
    assert args[:2] == ["robustfeat", "data"]
    r = _cli(*args[1:], "--no-progress")
    assert r.returncode == 0, r.stderr
    # another registered dataset given with --data is not "changed": re-fetching it would fix nothing
    with pytest.raises(Exception, match="'mnist-5k' is not the data .* was fine-tuned on \\(digits\\)") as e:
        record.check_data(SimpleNamespace(fingerprint="b"), "mnist-5k")
    assert "data prepare" not in str(e.value)


@pytest.mark.parametrize("method,to", [("vefa", "peft"), ("lora", "merged")])
def test_an_exported_image_run_evaluates_as_the_run(tmp_path, method, to):
    """An image model's run exported and evaluated gives the run's clean results and drift: vefa
    as PEFT IA3 on its convolutions (no task type: PEFT wraps the plain model, the head in
    modules_to_save); lora merged into the weights (model.safetensors), because PEFT's LoRA cannot
    rebuild the model's own padded convolution class, which the PEFT export says."""
    from robustfeat.errors import UnsupportedError
    from robustfeat.export import export_run
    from robustfeat.train.config import TrainConfig
    from robustfeat.train.loop import finetune

    cfg = TrainConfig(model="tiny-cnn", data="mnist-5k", method=method, image_size=32, max_examples=64,
                      max_eval_examples=64, lr=5e-2 if method == "vefa" else 5e-3)
    finetune(cfg, tmp_path / "run", progress=False)
    if method == "lora":
        with pytest.raises(UnsupportedError, match="StaticSamePadConv2d.*--to merged"):
            export_run(tmp_path / "run", to="peft", out=tmp_path / "export")
        assert not (tmp_path / "export").exists()
    export_run(tmp_path / "run", to=to, out=tmp_path / "export")
    if to == "peft":
        config = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
        assert config["task_type"] is None and config["modules_to_save"] == ["head"]
        checkpoint = tmp_path / "export"
    else:
        checkpoint = tmp_path / "export"  # the folder, as export wrote it
    a = evaluate([tmp_path / "run"], tmp_path / "res-run", shifts=["clean", "weights"], progress=False)
    b = evaluate([checkpoint], tmp_path / "res-export", shifts=["clean", "weights"], progress=False,
                 data="mnist-5k", image_size=32, max_eval_examples=64, base="tiny-cnn")
    key = ["evaluation", "shift", "metric"]
    ours, theirs = a.set_index(key)["value"].sort_index(), b.set_index(key)["value"].sort_index()
    assert list(ours.index) == list(theirs.index)
    assert np.allclose(ours.to_numpy(), theirs.to_numpy(), atol=1e-5, equal_nan=True)
    assert (ours.xs("relative_change", level="metric") > 0).all()


def test_a_peft_adapter_on_a_plain_torchvision_classifier(tmp_path):
    """LoRA made with PEFT on a torchvision model (its own layer names, its classifier resized and
    in modules_to_save), evaluated with --base torchvision:NAME: robustfeat's clean accuracy is
    the PEFT model's own, and drift is read on the adapted layers."""
    import torchvision
    from peft import LoraConfig, PeftModel, get_peft_model

    def net():
        torch.manual_seed(0)  # the base robustfeat builds for torchvision:...?weights=none at seed 0
        n = torchvision.models.get_model("mobilenet_v3_small", weights=None)
        n.classifier[3] = torch.nn.Linear(n.classifier[3].in_features, 10)
        return n

    targets = ["classifier.0", "features.1.block.2.0", "features.2.block.0.0"]
    pm = get_peft_model(net(), LoraConfig(r=4, target_modules=targets, modules_to_save=["classifier.3"],
                                          init_lora_weights=False))
    with torch.no_grad():
        pm.base_model.model.classifier[3].modules_to_save["default"].weight.add_(0.5)
    pm.save_pretrained(tmp_path / "adapter")
    base = "torchvision:mobilenet_v3_small?weights=none"
    opts = dict(base=base, data="digits", image_size=32, max_eval_examples=64)
    frame = evaluate([tmp_path / "adapter"], tmp_path / "res", shifts=["clean", "weights"], progress=False, **opts)
    subject = read_subject(tmp_path / "adapter", ImportOptions(**opts))
    handle, data = subject.load(None)
    theirs = PeftModel.from_pretrained(net(), tmp_path / "adapter").eval()
    x = handle.preprocess(data["test"])["pixel_values"]
    with torch.no_grad():
        own = theirs(x)
    assert (handle.logits({"pixel_values": x}) - own).abs().max().item() < 1e-4
    acc = frame.query("evaluation == 'clean' and metric == 'accuracy'")["value"].item()
    assert acc == pytest.approx(float((own.argmax(-1).numpy() == np.asarray(data["test"]["label"])).mean()))
    drift = frame.query("evaluation == 'weights' and metric == 'relative_change' and shift != 'all'")
    assert sorted(drift["shift"]) == sorted(f"net.{t}" for t in targets) and (drift["value"] > 0).all()


def test_every_listing_a_message_suggests_runs_as_printed(capsys):
    """Each `robustfeat ls KIND` that an error or help text in the package names exits 0."""
    import re

    from robustfeat.cli import main
    from robustfeat.sweep.grid import package_root

    kinds = set()
    for f in package_root().rglob("*.py"):
        kinds |= set(re.findall(r"robustfeat ls ([a-z]+)", f.read_text()))
    assert {"models", "banks", "adapters", "options"} <= kinds
    for kind in sorted(kinds):
        assert main(["ls", kind]) == 0, kind
        assert capsys.readouterr().out.strip()


def test_a_timm_weights_file_is_evaluated_on_its_architecture(tmp_path):
    """The same for timm: a state_dict saved with safetensors, its classifier reset for the task,
    evaluated with --base timm:NAME?weights=none; the accuracy is the timm model's own."""
    import timm  # a dev dependency (pyproject), so make test always has it
    from safetensors.torch import save_file

    torch.manual_seed(0)  # the base robustfeat builds for timm:...?weights=none at seed 0
    net = timm.create_model("mobilenetv3_small_050", pretrained=False)
    net.reset_classifier(10)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "ft.safetensors"))
    opts = dict(base="timm:mobilenetv3_small_050?weights=none", data="digits", image_size=32, max_eval_examples=64)
    frame = evaluate([tmp_path / "ft.safetensors"], tmp_path / "res", shifts=["clean"], progress=False, **opts)
    handle, data = read_subject(tmp_path / "ft.safetensors", ImportOptions(**opts)).load(None)
    net.eval()
    x = handle.preprocess(data["test"])["pixel_values"]
    with torch.no_grad():
        own = net(x)
    assert (handle.logits({"pixel_values": x}) - own).abs().max().item() < 1e-4
    assert frame.query("evaluation == 'clean' and metric == 'accuracy'")["value"].item() == pytest.approx(
        float((own.argmax(-1).numpy() == np.asarray(data["test"]["label"])).mean()))


def test_a_transformers_image_classifier_folder_is_evaluated_with_and_without_its_base(tmp_path):
    """A ViT fine-tuned elsewhere (its classifier resized for the task) and saved with
    save_pretrained: its own classifier is the task head, clean accuracy is the model's own; with
    --base the ImageNet-head agreement uses the base's head and drift is measured against the
    base; without it those are skipped and the results say so."""
    from transformers import ViTConfig, ViTForImageClassification

    from robustfeat.evaluations.imported import PretrainedSubject
    from robustfeat.registry import EVALUATIONS

    torch.manual_seed(0)
    kw = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=48)
    base = ViTForImageClassification(ViTConfig(num_labels=7, **kw))  # a 7-class "pretrained" head
    base.save_pretrained(tmp_path / "base")
    ft = ViTForImageClassification(ViTConfig(num_labels=10, **kw))
    ft.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("classifier.")}, strict=False)
    with torch.no_grad():
        for p in ft.vit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ft.eval().save_pretrained(tmp_path / "ft")
    opts = dict(data="digits", max_eval_examples=64)
    shifts = ["clean", "weights", "imagenet-agreement"]
    frame = evaluate([tmp_path / "ft"], tmp_path / "with", shifts=shifts, progress=False,
                     base=str(tmp_path / "base"), **opts)
    subject = read_subject(tmp_path / "ft", ImportOptions(base=str(tmp_path / "base"), **opts))
    assert isinstance(subject, PretrainedSubject) and subject.family == "image-classifier"
    handle, data = subject.load(None)
    assert handle.image_size == 16 and handle.model.head.out_features == 10
    assert handle.model.pretrained_head.out_features == 7
    x = handle.preprocess(data["test"])["pixel_values"]
    with torch.no_grad():
        own = ft(pixel_values=x).logits
    _same_image_outputs(handle, data, frame, x, own)
    agree = frame.query("evaluation == 'imagenet-agreement'")
    assert len(agree) > 0 and agree["value"].between(0, 1).all()
    drift = frame.query("evaluation == 'weights' and metric == 'relative_change' and shift != 'all'")
    assert len(drift) > 0 and (drift["value"] > 0).all()

    bare = evaluate([tmp_path / "ft"], tmp_path / "without", shifts=["clean"], progress=False, **opts)
    assert set(bare["evaluation"]) == {"clean"}
    assert bare.query("metric == 'accuracy'")["value"].item() == pytest.approx(
        frame.query("evaluation == 'clean' and metric == 'accuracy'")["value"].item())
    assert all(EVALUATIONS.get(e).needs_base for e in ("weights", "imagenet-agreement"))
    r = _cli("evaluate", str(tmp_path / "ft"), "--out", str(tmp_path / "o"), "--shifts", "imagenet-agreement",
             "--data", "digits", "--no-progress")
    assert r.returncode == 2 and "--base" in r.stderr and not (tmp_path / "o").exists()


def test_a_transformers_image_run_exported_merged_is_transformers_own_classifier(tmp_path):
    """A LoRA run on a transformers image classifier (a tiny ViT folder), exported --to merged: the
    task head is back in the classifier's place (transformers loads every weight, the labels named),
    and evaluating the export gives the run's clean results and drift."""
    from transformers import ViTConfig, ViTForImageClassification

    from robustfeat.export import export_run
    from robustfeat.train.config import TrainConfig
    from robustfeat.train.loop import finetune

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=48, num_labels=3)
                              ).save_pretrained(tmp_path / "vit")
    cfg = TrainConfig(model=str(tmp_path / "vit"), data="digits", method="lora", targets=["q_proj", "v_proj"],
                      max_examples=64, max_eval_examples=64, lr=5e-3)
    finetune(cfg, tmp_path / "run", progress=False)
    export_run(tmp_path / "run", to="merged", out=tmp_path / "export")
    model, info = ViTForImageClassification.from_pretrained(tmp_path / "export", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_labels == 10 and model.config.id2label[3] == "3"
    a = evaluate([tmp_path / "run"], tmp_path / "res-run", shifts=["clean", "weights"], progress=False)
    b = evaluate([tmp_path / "export"], tmp_path / "res-export", shifts=["clean", "weights"], progress=False,
                 base=str(tmp_path / "vit"), data="digits", max_eval_examples=64)
    key = ["evaluation", "shift", "metric"]
    ours, theirs = a.set_index(key)["value"].sort_index(), b.set_index(key)["value"].sort_index()
    # a transformers folder is measured on the layers whose weight changed: the run's q/v layers
    assert list(ours.index) == list(theirs.index)
    assert np.allclose(ours.to_numpy(), theirs.to_numpy(), atol=1e-5, equal_nan=True)
    layers = ours.xs("relative_change", level="metric").drop("all", level="shift")
    assert len(layers) == 4 and (layers > 0).all()  # q and v of two layers


def test_a_peft_adapter_on_a_transformers_image_classifier(tmp_path):
    """LoRA made with PEFT on a transformers ViT (its classifier resized for the task and in
    modules_to_save), as a user does it: robustfeat's logits and clean accuracy are the PEFT
    model's own, and drift is read on the adapted layers."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, intermediate_size=48, num_labels=7)
                              ).save_pretrained(tmp_path / "vit")

    def model():
        torch.manual_seed(1)
        return ViTForImageClassification.from_pretrained(tmp_path / "vit", num_labels=10, ignore_mismatched_sizes=True)

    get_peft_model(model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"],
                                       init_lora_weights=False)).save_pretrained(tmp_path / "adapter")
    opts = dict(data="digits", max_eval_examples=64)
    frame = evaluate([tmp_path / "adapter"], tmp_path / "res", shifts=["clean", "weights"], progress=False, **opts)
    subject = read_subject(tmp_path / "adapter", ImportOptions(**opts))
    assert subject.family == "image-classifier" and subject.base.model == str(tmp_path / "vit")
    handle, data = subject.load(None)
    x = handle.preprocess(data["test"])["pixel_values"]
    theirs = PeftModel.from_pretrained(model(), tmp_path / "adapter").eval()
    with torch.no_grad():
        own = theirs(pixel_values=x).logits
    _same_image_outputs(handle, data, frame, x, own)
    drift = frame.query("evaluation == 'weights' and metric == 'relative_change' and shift != 'all'")
    assert len(drift) == 4 and (drift["value"] > 0).all()  # q and v of two layers


def _same_image_outputs(handle, data, frame, x, own):
    """robustfeat's logits are ``own`` (the model's own, within 1e-5) and its clean accuracy theirs."""
    assert (handle.logits({"pixel_values": x}) - own).abs().max().item() < 1e-5
    assert frame.query("evaluation == 'clean' and metric == 'accuracy'")["value"].item() == pytest.approx(
        float((own.argmax(-1).numpy() == np.asarray(data["test"]["label"])).mean()))
