"""Determinism: the same seed gives byte-identical results files (timestamps aside) for
fine-tuning, evaluation (CSV, Parquet, cells) and corrupted sets, each evaluation computing
its corrupted sets afresh in a cache of its own; another seed gives other results."""

from __future__ import annotations

import json

import numpy as np

from robustfeat.evaluations.runner import evaluate
from robustfeat.train import TrainConfig, finetune

TIME_FIELDS = {"train_time_s", "peak_rss_mb", "created", "date", "seconds"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIME_FIELDS and k != "path"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _config(seed=0):
    return TrainConfig(model="tiny-cnn", data="mnist-5k", method="vefa", image_size=32, max_examples=128,
                       max_eval_examples=64, seed=seed, checkpoint_every=100)


def _own_cache(monkeypatch, folder):
    """Corrupted sets are generated into ``folder`` (fresh), never read from another run's cache."""
    import robustfeat.shifts.cache as shift_cache

    monkeypatch.setattr(shift_cache, "cache_root", lambda: folder)


def _corrupted_sets(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*.npz"))}


def test_same_seed_same_bytes(tmp_path, monkeypatch):
    runs = [tmp_path / "a", tmp_path / "b"]
    for r in runs:
        finetune(_config(), r, progress=False)
    a, b = runs
    assert (a / "adapter_model.safetensors").read_bytes() == (b / "adapter_model.safetensors").read_bytes()
    # adapter_config.json holds its creation time (one-second resolution): everything else byte for byte
    ca, cb = (json.loads((r / "adapter_config.json").read_text()) for r in runs)
    assert ca.pop("created") and cb.pop("created") and ca == cb
    assert (a / "adapter_config.json").read_text().count("\n") == (b / "adapter_config.json").read_text().count("\n")
    assert _strip(json.loads((a / "robustfeat.json").read_text())) == _strip(json.loads((b / "robustfeat.json").read_text()))
    shifts = ["clean", "fog", "gaussian_noise", "imagenet-agreement", "cka", "weights"]
    ra, rb = tmp_path / "ra", tmp_path / "rb"
    for ckpt, res in ((a, ra), (b, rb)):
        _own_cache(monkeypatch, tmp_path / f"cache-{res.name}")
        evaluate([ckpt], res, quick=True, shifts=shifts, progress=False)
    sets_a, sets_b = _corrupted_sets(tmp_path / "cache-ra"), _corrupted_sets(tmp_path / "cache-rb")
    assert len(sets_a) >= 2 and sets_a == sets_b  # generated twice, the same bytes
    ma, mb = (json.loads((r / "results.json").read_text()) for r in (ra, rb))
    assert _strip(ma["provenance"]) == _strip(mb["provenance"])
    # the checkpoints sit in different folders: their ids differ only in the folder name
    csv_a = (ra / "results.csv").read_text().replace("a-", "X-")
    csv_b = (rb / "results.csv").read_text().replace("b-", "X-")
    assert csv_a == csv_b
    cells_a = sorted(p.relative_to(ra).as_posix().replace("/a-", "/X-") for p in ra.glob("cells/*/*/*.json"))
    cells_b = sorted(p.relative_to(rb).as_posix().replace("/b-", "/X-") for p in rb.glob("cells/*/*/*.json"))
    assert cells_a == cells_b and len(cells_a) > 5
    import pandas as pd

    pa, pb = pd.read_parquet(ra / "results.parquet"), pd.read_parquet(rb / "results.parquet")
    pa["checkpoint"] = pa.checkpoint.str.replace("a-", "X-")
    pb["checkpoint"] = pb.checkpoint.str.replace("b-", "X-")
    assert pa.equals(pb)


def test_same_folder_twice_is_byte_identical(tmp_path):
    """Evaluating the same checkpoint into two folders: the tables are the same bytes."""
    ck = tmp_path / "ck"
    finetune(_config(), ck, progress=False)
    for out in ("r1", "r2"):
        evaluate([ck], tmp_path / out, quick=True, shifts=["clean", "fog", "cka"], progress=False)
    assert (tmp_path / "r1" / "results.csv").read_bytes() == (tmp_path / "r2" / "results.csv").read_bytes()
    m1, m2 = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("r1", "r2"))
    assert _strip(m1) == _strip(m2)


def test_corrupted_sets_and_another_seed(tmp_path):
    from robustfeat.shifts.cache import corrupted_images

    ims = (np.random.default_rng(0).random((8, 40, 40, 3)) * 255).astype(np.uint8)
    one = corrupted_images(ims, "shot_noise", 3, key="k" * 24, use_cache=False)
    two = corrupted_images(ims, "shot_noise", 3, key="k" * 24, use_cache=False)
    other = corrupted_images(ims, "shot_noise", 3, key="k" * 24, seed=1, use_cache=False)
    assert one.tobytes() == two.tobytes() and one.tobytes() != other.tobytes()
    a, b = tmp_path / "s0", tmp_path / "s1"
    finetune(_config(0), a, progress=False)
    finetune(_config(1), b, progress=False)
    assert (a / "adapter_model.safetensors").read_bytes() != (b / "adapter_model.safetensors").read_bytes()


def test_another_evaluation_seed_gives_other_results(tmp_path, monkeypatch):
    """evaluate(seed=1) draws other corruptions and other bootstrap resamples: the corrupted
    rows change, while the clean accuracy (no randomness in it) stays."""
    import pandas as pd

    ck = tmp_path / "ck"
    # a model that has learned something, so that other corruption draws move its predictions
    finetune(TrainConfig(model="tiny-cnn", data="mnist-5k", method="lora", image_size=32, max_examples=512,
                         max_eval_examples=128, lr=0.05, epochs=2, checkpoint_every=1000), ck, progress=False)
    tables = {}
    for seed in (0, 1):
        _own_cache(monkeypatch, tmp_path / f"cache-{seed}")
        evaluate([ck], tmp_path / f"r{seed}", quick=True, shifts=["clean", "gaussian_noise"], seed=seed, progress=False)
        tables[seed] = pd.read_csv(tmp_path / f"r{seed}" / "results.csv")
    assert _corrupted_sets(tmp_path / "cache-0") != _corrupted_sets(tmp_path / "cache-1")
    key = ["evaluation", "shift", "severity", "metric"]
    t0, t1 = (t.set_index(key)["value"] for t in (tables[0], tables[1]))
    noisy = [k for k in t0.index if k[1] == "gaussian_noise" and k[3] in ("error", "accuracy")]
    assert noisy and any(t0[k] != t1[k] for k in noisy)
    clean = [k for k in t0.index if k[0] == "clean" and k[3] == "accuracy"]
    assert clean and all(t0[k] == t1[k] for k in clean)
