"""Table: a dataset split as named numpy columns, stored without pickle.

Columns used across robustfeat: ``text`` (str), ``image`` (uint8, [N, H, W] or
[N, H, W, C]), ``label`` (int64), ``domain`` (str), ``score`` (float). A table is
saved as one ``.npz`` (strings as numpy unicode arrays, so ``allow_pickle=False`` reads
it back).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from robustfeat.errors import RobustfeatError


class Table:
    """Equal-length named columns. Cheap to slice; immutable by convention."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        if not columns:
            raise RobustfeatError("a table needs at least one column")
        cols = {}
        for name, values in columns.items():
            arr = np.asarray(values)
            if arr.dtype == object:  # Python strings -> fixed-width unicode, no pickle
                arr = arr.astype(str)
            cols[name] = arr
        lengths = {name: len(a) for name, a in cols.items()}
        if len(set(lengths.values())) != 1:
            raise RobustfeatError(f"table columns differ in length: {lengths}")
        self.columns = cols

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise RobustfeatError(
                f"no column '{name}' in this table; columns: {', '.join(self.columns)}"
            ) from None

    def names(self) -> list[str]:
        return list(self.columns)

    def select(self, index: np.ndarray | list[int] | slice) -> Table:
        return Table({k: v[index] for k, v in self.columns.items()})

    def where(self, mask: np.ndarray) -> Table:
        return self.select(np.flatnonzero(mask))

    def with_column(self, name: str, values: np.ndarray) -> Table:
        return Table({**self.columns, name: values})

    def rows(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield {k: v[i] for k, v in self.columns.items()}

    def fingerprint(self) -> str:
        """SHA-256 over column names, dtypes, shapes and bytes."""
        h = hashlib.sha256()
        for name in sorted(self.columns):
            a = np.ascontiguousarray(self.columns[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **self.columns)  # unicode columns are mostly padding
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Table:
        with np.load(path, allow_pickle=False) as data:
            return cls({k: data[k] for k in data.files})

    def __repr__(self) -> str:
        cols = ", ".join(f"{k}: {v.dtype}{list(v.shape[1:]) or ''}" for k, v in self.columns.items())
        return f"Table({len(self)} rows; {cols})"
