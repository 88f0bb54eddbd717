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


def test_corruption_benchmark_runs_and_reports_every_corruption(capsys):
    import bench_corruptions

    from robustfeat.registry import CORRUPTIONS

    assert bench_corruptions.main(["--sizes", "32", "--images", "2", "--severity", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for name in CORRUPTIONS.names():
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        reference, ours, ratio = (float(v.strip().rstrip("x")) for v in row.split("|")[2:5])
        assert reference > 0 and ours > 0 and abs(ratio - ours / reference) < 0.05 * ratio + 0.05
    assert re.search(r"\| \*\*ImageNet-C 15\*\* \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", out)
    assert "slower than the reference:" in out


def test_evaluation_benchmark_runs_and_reports_both_paths(capsys, tmp_path):
    import json

    import bench_eval

    out_json = tmp_path / "eval.json"
    assert bench_eval.main(["--model", "tiny-cnn", "--quick", "--images", "8", "--probe-data", "digits",
                            "--probe-train", "40", "--probe-test", "20", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    for name in ("lora", "linear"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {name} |"))
        before, now, ratio, diff = (float(v.strip().rstrip("x")) for v in row.split("|")[2:6])
        assert before > 0 and now > 0 and abs(ratio - now / before) < 0.01 * ratio + 0.01 and diff < 1e-4
    assert re.search(r"\| \*\*cell\*\* \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", out)
    report = json.loads(out_json.read_text())
    assert set(report["forward"]) == {"lora", "linear"} and report["probe"]["cell"]["speedup"] > 0
