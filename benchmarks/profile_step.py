"""Where a training step's time goes, per method: kernel launches and the top operators
(torch.profiler), on the MiniLM architecture. A diagnostic companion of bench_adapters.py.

    python benchmarks/profile_step.py --model random-minilm --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adapters import build_variants, load_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=["minilm", "random-minilm"], default="minilm")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    device = torch.device(args.device)
    models = build_variants(load_model(args.model, device), rank=8)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1000, 29000, (args.batch, args.seq), generator=g).to(device)}
    labels = torch.randint(0, 2, (args.batch,), generator=g).to(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, m in models.items():
        m.train()
        opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            m(**batch, labels=labels).loss.backward()
            opt.step()

        for _ in range(3):
            step()
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        events = prof.key_averages()
        kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
        cpu_ops = sum(e.count for e in events if e.device_type.name == "CPU")
        print(f"\n=== {name}: {kernels / args.steps:.0f} CUDA kernels and {cpu_ops / args.steps:.0f} "
              f"CPU-side op records per step")
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(events.table(sort_by=sort, row_limit=args.top, max_name_column_width=50))
    return 0


if __name__ == "__main__":
    sys.exit(main())
