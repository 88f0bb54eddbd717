"""Datasets: tables, splits, near-duplicates, the cache, user data, and bad input."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from robustfeat.data import DataError, Table, load_dataset, prepare_dataset
from robustfeat.data.dedup import first_occurrences, loose_key, loose_matches
from robustfeat.data.sources import HubDataset, PythonPackage, SystemFiles
from robustfeat.data.splits import stratified_split, subsample
from robustfeat.errors import UnknownNameError
from tests.models import write_image_folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTFEAT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_table_round_trip_without_pickle(tmp_path):
    t = Table({"text": ["a", "bé", ""], "label": [0, 1, 1], "image": np.zeros((3, 4, 4), np.uint8)})
    t.save(tmp_path / "t.npz")
    back = Table.load(tmp_path / "t.npz")  # Table.load uses allow_pickle=False
    assert back.fingerprint() == t.fingerprint() and list(back["text"]) == ["a", "bé", ""]
    assert t.select([0, 2]).fingerprint() != t.fingerprint()
    with pytest.raises(Exception, match="differ in length"):
        Table({"a": [1, 2], "b": [1]})


def test_stratified_split_is_deterministic_and_proportional():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    t = Table({"label": labels, "i": np.arange(100)})
    a = stratified_split(t, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3, by=["label"])
    b = stratified_split(t, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3, by=["label"])
    c = stratified_split(t, {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=4, by=["label"])
    assert all(np.array_equal(a[k]["i"], b[k]["i"]) for k in a)
    assert not np.array_equal(a["train"]["i"], c["train"]["i"])
    assert sorted(np.concatenate([a[k]["i"] for k in a]).tolist()) == list(range(100))  # a partition
    assert np.bincount(a["test"]["label"]).tolist() == [5, 3, 2]


def test_subsample_is_exact_and_stratified():
    t = Table({"label": np.repeat(np.arange(4), 25), "i": np.arange(100)})
    s = subsample(t, 10, seed=0, by=["label"])
    assert len(s) == 10 and set(np.bincount(s["label"]).tolist()) <= {2, 3}
    assert np.array_equal(s["i"], subsample(t, 10, seed=0, by=["label"])["i"])


def test_loose_matching_by_hand():
    assert loose_key("It's a -- GREAT... film!") == loose_key("its a great film") == "itsagreatfilm"
    assert loose_matches(["A (fine) film.", "Other"], ["a fine film"]).tolist() == [True, False]
    assert first_occurrences(["Good.", "good", "Bad", "...", "bad!"]).tolist() == [True, False, True, False, False]


def test_prepare_caches_with_checksums_and_detects_damage(cache):
    folder = prepare_dataset("digits", progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"] == {"all": 1797} and len(manifest["files"]["all"]) == 64
    assert prepare_dataset("digits", progress=False) == folder  # cached: no refetch
    (folder / "all.npz").write_bytes(b"damaged")
    with pytest.raises(DataError, match="damaged.*--force"):
        load_dataset("digits", progress=False)
    prepare_dataset("digits", force=True, progress=False)
    assert len(load_dataset("digits", progress=False)["train"]) > 0


def test_out_of_disk_is_one_clear_error(cache, monkeypatch):
    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Table, "save", full)
    with pytest.raises(DataError, match="out of disk space.*ROBUSTFEAT_CACHE"):
        prepare_dataset("digits", progress=False)
    assert not (cache / "datasets" / "digits" / "v1").exists()


def test_sources_say_how_to_fix(tmp_path, monkeypatch):
    assert "apt-get install x" in SystemFiles(str(tmp_path), ("f.gz",), "apt-get install x").unavailable()
    assert "pip install nopkg" in PythonPackage("no_such_module_xyz", "nopkg").unavailable()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert "offline" in HubDataset("some/dataset").unavailable()
    (tmp_path / "f.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="checksum"):
        SystemFiles(str(tmp_path), ("f.gz",), "apt-get install x", {"f.gz": "0" * 64}).fetch(tmp_path)


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'fashion-mnist'"):
        load_dataset("fashion-mnst")


# --- user data ---------------------------------------------------------------------------------
def test_csv_with_string_labels(tmp_path):
    rows = ["text,label,domain"] + [f"review {i},{'pos' if i % 2 else 'neg'},{'a' if i < 10 else 'b'}" for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    b = load_dataset(str(tmp_path / "d.csv"), seed=1)
    assert b.label_names == ["neg", "pos"] and b.domain_column == "domain"
    assert sum(len(t) for t in b.splits.values()) == 40


def test_jsonl_and_text_column(tmp_path):
    lines = [json.dumps({"sentence": f"s{i}", "label": i % 2}) for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    b = load_dataset(str(tmp_path / "d.jsonl"))
    assert b.input_column == "text" and b.label_names == ["0", "1"]


@pytest.mark.parametrize(
    "content,kw,match",
    [
        ("body,label\nhello,1\n", {}, "no text column.*columns: body, label"),
        ("body,label\nhello,1\n", {"text_column": "txt"}, "no text column 'txt'"),
        ("text,label\n", {}, "is empty"),
        ("text,label\na,1\n", {}, "too small"),
    ],
)
def test_bad_user_csv(tmp_path, content, kw, match):
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "d.csv"), **kw)


def test_image_folder(tmp_path):
    b = load_dataset(str(write_image_folder(tmp_path / "imgs", ("cat", "dog"), 12, (20, 20, 3))))
    assert b.task == "image-classification" and b.label_names == ["cat", "dog"]
    assert b["train"]["image"].shape[1:] == (20, 20, 3)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(str(tmp_path / "empty"))


def test_save_to_disk_folder(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}).save_to_disk(
        str(tmp_path / "ds"))
    b = load_dataset(str(tmp_path / "ds"))
    assert sum(len(t) for t in b.splits.values()) == 20


# --- the real datasets (they install from the package registries) -------------------------------------
REAL_ROWS = {  # rows over train+validation+test, as prepared here
    "fashion-mnist": 70_000,
    "mnist-5k": 5_000,
    "digits": 1_797,
}


@pytest.mark.real_data
@pytest.mark.parametrize("name,rows", REAL_ROWS.items())
def test_real_image_datasets(name, rows):
    b = load_dataset(name, progress=False, max_eval_examples=None)
    assert sum(len(t) for t in b.splits.values()) == rows
    assert b.num_labels == 10 and b["train"]["image"].dtype == np.uint8


@pytest.mark.real_data
def test_real_text_datasets_and_their_leakage():
    rt = load_dataset("rotten-tomatoes", progress=False, max_eval_examples=None)
    vader = load_dataset("vader-sentiment", progress=False, max_eval_examples=None)
    news = load_dataset("news-text", progress=False, max_eval_examples=None)
    rt_rows = sum(len(t) for t in rt.splits.values())
    assert 12_700 <= rt_rows <= 12_808  # 12,808 snippets, loose duplicates kept once
    assert set(np.unique(vader["train"]["domain"])) == {"movie", "amazon", "nyt", "tweets"}
    assert (np.abs(vader["train"]["score"]) >= 0.5).all()  # the labelling rule
    assert np.array_equal(vader["train"]["label"], (vader["train"]["score"] > 0).astype(int))
    assert sum(len(t) for t in news.splits.values()) > 4_000
    # no evaluation example of any set has a loose match in its own training split
    for b in (rt, vader, news):
        for split in ("validation", "test"):
            assert not loose_matches(b[split]["text"], b["train"]["text"]).any()
    # VADER's movie domain is a near-copy of Rotten Tomatoes; the other domains are not
    rt_text = np.concatenate([t["text"] for t in rt.splits.values()])
    for domain, expect_overlap in (("movie", True), ("amazon", False), ("nyt", False), ("tweets", False)):
        texts = np.concatenate([t["text"][t["domain"] == domain] for t in vader.splits.values()])
        share = loose_matches(texts, rt_text).mean()
        assert (share > 0.9) if expect_overlap else (share == 0.0), (domain, share)


def test_small_strata_still_reach_every_split(tmp_path):
    rows = ["text,label"] + [f"t{i},{i % 8}" for i in range(40)]  # 8 labels, 5 rows each
    (tmp_path / "d.csv").write_text("\n".join(rows))
    b = load_dataset(str(tmp_path / "d.csv"))
    assert [len(b[s]) for s in ("train", "validation", "test")] == [32, 4, 4]


@pytest.mark.parametrize(
    "labels,names,mapped",
    [
        (["-1", "1"], ["-1", "1"], [0, 1]),
        (["1", "5"], ["1", "5"], [0, 1]),  # sparse integers: two classes, not six
        (["0", "1"], ["0", "1"], [0, 1]),
        (["neg", "pos"], ["neg", "pos"], [0, 1]),
    ],
)
def test_label_mapping(tmp_path, labels, names, mapped):
    rows = ["text,label"] + [f"t{i},{labels[i % 2]}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    b = load_dataset(str(tmp_path / "d.csv"))
    assert b.label_names == names and set(np.unique(b["train"]["label"]).tolist()) == set(mapped)


def test_missing_label_is_named(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\na,1\nb,\nc,0\n")
    with pytest.raises(DataError, match="row 2 has no 'label'"):  # a single file: no split named
        load_dataset(str(tmp_path / "d.csv"))
    (tmp_path / "d.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": null}\n')
    with pytest.raises(DataError, match="has no 'label'"):
        load_dataset(str(tmp_path / "d.jsonl"))


def test_unlabelled_text_and_spreadsheet_bom(tmp_path):
    (tmp_path / "d.csv").write_bytes("\ufefftext\n".encode() + "".join(f"line {i}\n" for i in range(20)).encode())
    b = load_dataset(str(tmp_path / "d.csv"))
    assert b.task == "text" and b.label_names is None


def test_image_folder_uses_the_common_size(tmp_path):
    from PIL import Image

    write_image_folder(tmp_path / "imgs", ("a", "b"), 10, (30, 40, 3))
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "imgs" / "a" / "000_thumb.png")  # sorts first
    b = load_dataset(str(tmp_path / "imgs"))
    assert b["train"]["image"].shape[1:] == (30, 40, 3)


def test_concurrent_prepares_take_turns(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "ROBUSTFEAT_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "robustfeat", "data", "prepare", "digits", "--no-progress"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    results = [p.wait() for p in procs]
    assert results == [0, 0, 0], [p.stderr.read() for p in procs]


def test_eval_cap_must_be_positive():
    with pytest.raises(DataError, match="max_eval_examples"):
        load_dataset("digits", max_eval_examples=0)
