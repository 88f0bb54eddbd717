"""The real MiniLM, both directions: a LoRA trained and saved with PEFT's own API is evaluated by
robustfeat with the clean accuracy PEFT computes on the same test split, next to robustfeat's own
runs in one results folder; a robustfeat VeFA run exported to PEFT is loaded by PEFT with the
run's outputs, and evaluating the export gives the run's results. And a PEFT LoRA on the real
SmolLM2, named by its hub id, evaluated with PEFT's own perplexity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustfeat.evaluations.runner import evaluate, read_subject
from tests.models import plain_perplexity
from robustfeat.evaluations.imported import ImportOptions

pytestmark = [pytest.mark.real_model, pytest.mark.real_data]

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
SIZES = dict(max_examples=256, max_eval_examples=128, batch_size=32, max_length=48)


def _peft_lora(out, steps: int = 32):
    """What a user does with PEFT alone: AutoModelForSequenceClassification + LoRA, trained, saved."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from robustfeat.data.api import load_dataset
    from robustfeat.models.zoo import zoo_entry

    folder = zoo_entry(HUB_ID).folder()  # the hub id's files, installed offline
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    tok = AutoTokenizer.from_pretrained(folder)
    pm = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"]))
    pm.peft_config["default"].base_model_name_or_path = HUB_ID  # as from_pretrained(HUB_ID) records it
    train = load_dataset("rotten-tomatoes", seed=0, max_examples=256, progress=False)["train"]
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=4e-3)
    pm.train()
    for step in range(steps):
        idx = np.random.default_rng(step).choice(len(train), 16, replace=False)
        enc = tok([str(train["text"][i]) for i in idx], padding=True, truncation=True, max_length=48,
                  return_tensors="pt")
        loss = torch.nn.functional.cross_entropy(pm(**enc).logits, torch.as_tensor(train["label"][idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    pm.save_pretrained(out)
    return folder, tok


def test_minilm_both_ways(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForSequenceClassification

    from robustfeat.export import HEAD_FILE, export_run
    from robustfeat.models.text import mean_pool
    from robustfeat.train import TrainConfig, finetune

    folder, tok = _peft_lora(tmp_path / "peft-lora")
    for method in ("lora", "vefa"):
        finetune(TrainConfig(model="minilm-l6", data="rotten-tomatoes", method=method, **SIZES), tmp_path / method,
                 progress=False)
    frame = evaluate([tmp_path / "lora", tmp_path / "vefa", tmp_path / "peft-lora"], tmp_path / "res",
                     shifts=["clean", "cka"], progress=False, data="rotten-tomatoes",
                     max_eval_examples=SIZES["max_eval_examples"], max_length=48)
    assert set(frame["method"]) == {"lora", "vefa", "peft-lora"}
    # the PEFT adapter: robustfeat's clean accuracy is PEFT's own on the same test examples
    subject = read_subject(tmp_path / "peft-lora", ImportOptions(data="rotten-tomatoes", max_length=48,
                                                                 max_eval_examples=SIZES["max_eval_examples"]))
    assert subject.base.model == "minilm-l6"  # the hub id resolved to the zoo entry that declares it
    test = subject.bundle["test"]
    theirs = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2),
                                       tmp_path / "peft-lora").eval()
    enc = tok([str(t) for t in test["text"]], padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        peft_acc = float((theirs(**enc).logits.argmax(-1).numpy() == np.asarray(test["label"])).mean())
    acc = frame.query("method == 'peft-lora' and evaluation == 'clean' and metric == 'accuracy'")["value"].item()
    assert acc == pytest.approx(peft_acc, abs=1e-12)
    assert acc > 0.6  # it learned sentiment: equal accuracies are not two chance levels
    run_test = frame.query("method == 'lora' and evaluation == 'clean' and metric == 'accuracy'")["n"].item()
    assert run_test == len(test)  # one test set for the PEFT adapter and robustfeat's runs
    assert len(frame.query("method == 'peft-lora' and evaluation == 'cka' and shift != 'all'")) == 12

    # the VeFA run, exported: PEFT loads it (backbone adapter, robustfeat's head beside it) with its outputs
    export_run(tmp_path / "vefa", to="peft", out=tmp_path / "vefa-peft")
    run = read_subject(tmp_path / "vefa")
    handle, data = run.load(None)
    part = data["test"].select(np.arange(16))
    inputs = handle.preprocess(part)
    ours = handle.logits(inputs)
    enc_model = PeftModel.from_pretrained(AutoModel.from_pretrained(folder), tmp_path / "vefa-peft").eval()
    head = load_file(str(tmp_path / "vefa-peft" / HEAD_FILE))
    with torch.no_grad():
        pooled = mean_pool(enc_model(**inputs).last_hidden_state, inputs["attention_mask"])
        peft_logits = pooled @ head["classifier.weight"].T + head["classifier.bias"]
    assert (ours - peft_logits).abs().max().item() < 1e-5
    # and robustfeat evaluates the export as it evaluates the run
    again = evaluate([tmp_path / "vefa-peft"], tmp_path / "res-export", shifts=["clean"], progress=False,
                     data="rotten-tomatoes", max_eval_examples=SIZES["max_eval_examples"], max_length=48)
    key = ["evaluation", "shift", "metric"]
    a = frame.query("method == 'vefa' and evaluation == 'clean'").set_index(key)["value"].sort_index()
    b = again.set_index(key)["value"].sort_index()
    assert list(a.index) == list(b.index) and np.allclose(a.to_numpy(), b.to_numpy(), atol=1e-6, equal_nan=True)
    # merged into the encoder's weights (a BertModel folder, the head beside it): the same again
    export_run(tmp_path / "vefa", to="merged", out=tmp_path / "vefa-merged")
    AutoModel.from_pretrained(tmp_path / "vefa-merged")  # transformers' own encoder
    merged = evaluate([tmp_path / "vefa-merged"], tmp_path / "res-merged", shifts=["clean"], progress=False,
                      data="rotten-tomatoes", max_eval_examples=SIZES["max_eval_examples"], max_length=48)
    c = merged.set_index(key)["value"].sort_index()
    assert list(a.index) == list(c.index) and np.allclose(a.to_numpy(), c.to_numpy(), atol=1e-5, equal_nan=True)


def test_a_peft_lora_on_the_real_smollm2_gives_peft_s_perplexity(tmp_path):
    """A LoRA made with PEFT on SmolLM2-135M-Instruct, as shared (``base_model_name_or_path`` the
    hub id): robustfeat resolves the base to its zoo entry and its clean perplexity is the one PEFT's
    own model computes on the same test texts."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from robustfeat.models.zoo import zoo_entry

    hub = "HuggingFaceTB/SmolLM2-135M-Instruct"
    folder = zoo_entry(hub).folder()
    torch.manual_seed(0)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                        LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"],
                                   init_lora_weights=False))
    pm.peft_config["default"].base_model_name_or_path = hub
    pm.save_pretrained(tmp_path / "adapter")
    opts = dict(data="rotten-tomatoes", max_eval_examples=24, max_length=32)
    frame = evaluate([tmp_path / "adapter"], tmp_path / "res", shifts=["clean"], progress=False, **opts)
    ppl = frame.query("evaluation == 'clean' and metric == 'perplexity'")["value"].item()
    subject = read_subject(tmp_path / "adapter", ImportOptions(**opts))
    assert subject.base.model == "smollm2-135m" and subject.family == "causal-lm"
    test = subject.bundle["test"]
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), tmp_path / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)

    assert ppl == pytest.approx(plain_perplexity(theirs, tok, test["text"], 32), rel=1e-4)
    assert abs(ppl / plain_perplexity(base, tok, test["text"], 32) - 1) > 1e-3  # the adapter changed the model: not two base perplexities
