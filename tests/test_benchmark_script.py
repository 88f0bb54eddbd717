"""The benchmark script runs end to end (tiny shapes) and prints every configuration, so it
cannot rot unnoticed. Its numbers are not checked here: speed is measured, never asserted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_adapters  # noqa: E402


def test_benchmark_runs_and_reports_every_configuration(capsys, tmp_path):
    out_json = tmp_path / "timings.json"
    assert bench_adapters.main(["--model", "random-minilm", "--quick", "--batch", "2", "--seq", "8",
                                "--device", "cpu", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    for name in ("frozen base (head only)", "lora", "lorfa", "vefa", "peft lora"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        ratio = float(row.split("|")[4])
        assert ratio > 0
    for name in ("lora", "lorfa", "vefa"):
        assert re.search(rf"\| {name} merged\+unloaded \| [\d.]+ \| [\d.]+ \|", out)
    assert out_json.exists()
