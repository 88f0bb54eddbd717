"""Datasets: a registry of real datasets with cached, checksummed preparation, user data
(CSV/JSON, image folders, Hugging Face datasets), deterministic splits, and near-duplicate
checks."""

from robustfeat.data.api import DatasetBundle, load_dataset, prepare_dataset  # noqa: F401
from robustfeat.data.sources import DataError  # noqa: F401
from robustfeat.data.table import Table  # noqa: F401
