"""Near-duplicate detection between text sets ("loose" matching).

Two snippets match loosely when their lowercased letters and digits are equal: this
catches copies that differ only in hyphens, ellipses, brackets, quotes or spacing.
Measured on the shipped data: VADER's movie domain holds a loose copy of most Rotten
Tomatoes snippets, so it must never serve as out-of-domain data for a model trained on
Rotten Tomatoes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def loose_key(text: str) -> str:
    return _NOT_ALNUM.sub("", text.lower())


def loose_keys(texts: Iterable[str]) -> set[str]:
    return {k for k in map(loose_key, texts) if k}


def loose_matches(texts: Iterable[str], reference: Iterable[str]) -> np.ndarray:
    """Boolean mask: which of ``texts`` has a loose match in ``reference``."""
    ref = reference if isinstance(reference, set) else loose_keys(reference)
    return np.array([loose_key(t) in ref for t in texts], dtype=bool)


def first_occurrences(texts: Iterable[str]) -> np.ndarray:
    """Boolean mask keeping the first of each group of loose duplicates."""
    seen: set[str] = set()
    keep = []
    for t in texts:
        k = loose_key(t)
        keep.append(bool(k) and k not in seen)
        seen.add(k)
    return np.array(keep, dtype=bool)
