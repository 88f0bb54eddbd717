"""Export to PEFT, proven by round trip: a model with robustfeat's adapters, exported and
loaded back by PEFT's own ``PeftModel.from_pretrained`` over a fresh base, gives the same
outputs (max abs diff < 1e-5 in float32) for lora, lorfa (as an exact LoRA), vefa (as IA3 with
feed-forward input scaling), ia3 and vera, on a tiny BERT (Linear) and a tiny GPT-2
(transposed Conv1D); the head comes from the export, not from the base."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import robustfeat as rf
from robustfeat.adapters.model import remove_adapters
from robustfeat.errors import RobustfeatError, UnsupportedError
from robustfeat.export import export_run, to_peft_model
from tests.models import CASES, ModelCase, perturb

TOL = 1e-5


def tiny_llama():
    """A Llama (rotary attention, gated MLP, RMSNorm) built in code: SmolLM2's architecture, tiny."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                        initializer_range=0.2))


LLAMA = ModelCase("tiny-llama", tiny_llama, lambda g: {"input_ids": torch.randint(0, 64, (3, 10), generator=g)},
                  targets=["q_proj", "v_proj", "up_proj"], head="lm_head", kinds=frozenset({"linear"}),
                  output=lambda out: out.logits)
CASE = {c.name: c for c in [*CASES, LLAMA]}
FAMILY = {"tiny-bert": "text-classifier", "tiny-gpt2": "causal-lm", "tiny-llama": "causal-lm"}
TARGETS = {"tiny-bert": ["query", "value"], "tiny-gpt2": ["c_attn", "c_fc"], "tiny-llama": ["q_proj", "v_proj", "up_proj"]}
TRAINED = ("lora_B", "lorfa_B", "vefa_lam", "ia3_l", "vera_lambda_b", "vera_lambda_d")


def _adapted(name: str, method: str):
    case = CASE[name]
    model = case.model(0)
    kw = {"rank": 4, "alpha": 11.0} if method in ("lora", "lorfa") else {"rank": 4} if method == "vera" else {}
    head = ["classifier"] if name == "tiny-bert" else []
    cfg = rf.AdapterConfig(method=method, target_modules=TARGETS[name], modules_to_save=head, seed=0, **kw)
    rf.inject_adapters(model, cfg)
    perturb([p for n, p in model.named_parameters() if any(k in n for k in TRAINED)])
    if head:
        perturb(list(model.classifier.parameters()))
    adapter = {"method": method, "rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout, "shift": cfg.shift,
               "seed": cfg.seed, "modules_to_save": head}
    return case, model.eval(), adapter


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method", ["lora", "lorfa", "vefa", "ia3", "vera"])
def test_an_export_loaded_by_peft_gives_the_same_outputs(tmp_path, name, method):
    from peft import PeftModel

    case, model, adapter = _adapted(name, method)
    x = case.make_input(torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = case.run(model, x)
        bare = case.run(remove_adapters(copy.deepcopy(model)), x)
    assert (ours - bare).abs().max() > 1e-3  # the adapter changes the outputs: a no-op export would fail
    to_peft_model(model, adapter, FAMILY[name], "tiny").save_pretrained(tmp_path / "peft")
    base = case.model(0)  # a fresh base: untrained head, no adapter
    loaded = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    with torch.no_grad():
        theirs = case.run(loaded, x)
    assert (ours - theirs).abs().max().item() < TOL
    import json

    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == {"lora": "LORA", "lorfa": "LORA", "vefa": "IA3", "ia3": "IA3", "vera": "VERA"}[method]
    assert cfg["base_model_name_or_path"] == "tiny"
    assert cfg["task_type"] == {"text-classifier": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}[FAMILY[name]]
    if method == "vefa":  # input scaling: every target is a feed-forward module
        assert sorted(cfg["feedforward_modules"]) == sorted(cfg["target_modules"])


def test_lorfa_exports_w0_times_b_as_loras_b():
    """lora_B = W0 B, not B: with B alone the export would be a different model."""

    _, model, adapter = _adapted("tiny-bert", "lorfa")
    pm = to_peft_model(model, adapter, "text-classifier")
    path = "bert.encoder.layer.0.attention.self.query"
    ours, theirs = model.get_submodule(path), pm.base_model.model.get_submodule(path)
    w0 = ours.base_layer.weight.detach()
    assert torch.allclose(theirs.lora_B["default"].weight, w0 @ ours.lorfa_B.detach(), atol=1e-7)
    assert torch.equal(theirs.lora_A["default"].weight, ours.lorfa_A.detach())
    assert not torch.allclose(theirs.lora_B["default"].weight, ours.lorfa_B.detach()[: w0.shape[0]], atol=1e-3)


def test_what_has_no_peft_form_is_refused_with_the_reason():
    _, model, adapter = _adapted("tiny-bert", "vefa")
    with pytest.raises(UnsupportedError, match="shift"):
        to_peft_model(model, {**adapter, "shift": True}, "text-classifier")
    for method in ("full", "linear"):
        with pytest.raises(UnsupportedError, match="no adapter to export"):
            to_peft_model(model, {**adapter, "method": method}, "text-classifier")
    case = CASE["cnn"]
    conv = case.model(0)
    rf.inject_adapters(conv, rf.AdapterConfig(method="lorfa", target_modules="all-conv", modules_to_save=["head"]))
    with pytest.raises(UnsupportedError, match="kernel tap"):
        to_peft_model(conv, {"method": "lorfa", "rank": 8, "alpha": 16.0, "modules_to_save": ["head"]},
                      "image-classifier")


def test_export_run_writes_the_folder_whole_and_never_over_one(tmp_path):
    from peft import PeftModel

    from robustfeat.train.loop import load_run

    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "robustfeat", "finetune", "--model", "tiny-bert", "--data",
                        "rotten-tomatoes", "--method", "lorfa", "--lr", "0.05", "--max-examples", "64",
                        "--max-eval-examples", "16", "--out", str(run), "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = export_run(run, "peft", tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    handle, data, _ = load_run(run)
    base = remove_adapters(copy.deepcopy(handle.model))
    with torch.no_grad():
        base.classifier.weight.zero_()
    loaded = PeftModel.from_pretrained(base, out).eval()
    ids = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (handle.model.eval()(input_ids=ids).logits - loaded(input_ids=ids).logits).abs().max() < TOL
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RobustfeatError, match="already exists"):
        export_run(run, "peft", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the command: the same folder again, refused in one line with exit 2; --overwrite replaces it
    cli = [sys.executable, "-m", "robustfeat", "export", str(run), "--to", "peft", "--out", str(out)]
    r = subprocess.run(cli, capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = subprocess.run(cli + ["--overwrite"], capture_output=True, text=True)
    assert r.returncode == 0 and "adapter_config.json" in r.stdout, r.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == before["adapter_model.safetensors"]


@pytest.mark.parametrize("method", ["lorfa", "vefa"])
def test_a_wrapped_backbone_exports_its_adapter_and_the_head_beside_it(tmp_path, method):
    """MiniLM's form: a transformers encoder inside robustfeat's mean-pooled classifier. The
    adapter is written for the encoder, the head beside it; both loaded back give the logits."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    from robustfeat.export import HEAD_FILE, backbone, head_state
    from robustfeat.models.text import MeanPoolClassifier, mean_pool

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=32, initializer_range=0.2)

    def encoder():
        torch.manual_seed(0)
        return BertModel(cfg).eval()

    model = MeanPoolClassifier(encoder(), num_labels=2).eval()
    kw = {"rank": 4, "alpha": 11.0} if method == "lorfa" else {}
    rf.inject_adapters(model, rf.AdapterConfig(method=method, target_modules=["query", "value"],
                                               modules_to_save=["classifier"], seed=0, **kw))
    perturb([p for n, p in model.named_parameters() if any(k in n for k in TRAINED)] + list(model.classifier.parameters()))
    assert backbone(model) == "encoder"
    adapter = {"method": method, "rank": 4, "alpha": 11.0, "dropout": 0.0, "modules_to_save": ["classifier"]}
    to_peft_model(model, adapter, "text-classifier").save_pretrained(tmp_path / "peft")
    save_file(head_state(model, "encoder"), str(tmp_path / "peft" / HEAD_FILE))
    assert set(load_file(str(tmp_path / "peft" / HEAD_FILE))) == {"classifier.weight", "classifier.bias"}
    ids = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    enc = PeftModel.from_pretrained(encoder(), tmp_path / "peft").eval()
    head = load_file(str(tmp_path / "peft" / HEAD_FILE))
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        pooled = mean_pool(enc(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        theirs = pooled @ head["classifier.weight"].T + head["classifier.bias"]
    assert (ours - theirs).abs().max().item() < TOL
