"""Deterministic, seeded, stratified splits."""

from __future__ import annotations

import numpy as np

from robustfeat.data.table import Table


def _groups(table: Table, by: list[str]) -> dict[tuple, np.ndarray]:
    keys = [table[c] for c in by if c in table]
    if not keys:
        return {(): np.arange(len(table))}
    out: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(*keys)):
        out.setdefault(tuple(k.item() if hasattr(k, "item") else k for k in key), []).append(i)
    return {k: np.asarray(v) for k, v in sorted(out.items(), key=lambda kv: str(kv[0]))}


def stratified_split(table: Table, fractions: dict[str, float], seed: int, by: list[str]) -> dict[str, Table]:
    """Split ``table`` into named parts with the given fractions within every stratum
    (the columns in ``by`` that exist). The same seed gives the same split."""
    rng = np.random.default_rng(seed)
    names = list(fractions)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    total = sum(fractions.values())
    for _, idx in _groups(table, by).items():
        idx = idx[rng.permutation(len(idx))]
        bounds = np.round(np.cumsum([fractions[n] / total for n in names]) * len(idx)).astype(int)
        start = 0
        for name, end in zip(names, bounds):
            parts[name].append(idx[start:end])
            start = end
    return {n: table.select(np.sort(np.concatenate(p)) if p else np.array([], dtype=int)) for n, p in parts.items()}


def subsample(table: Table, n: int, seed: int, by: list[str]) -> Table:
    """At most ``n`` rows, stratified, deterministic."""
    if n >= len(table):
        return table
    # Each row's rank within its stratum, as a fraction: taking the n smallest keeps every
    # stratum's share (to within one row) and gives exactly n rows.
    rng = np.random.default_rng(seed)
    position = np.empty(len(table))
    for _, idx in _groups(table, by).items():
        position[idx[rng.permutation(len(idx))]] = (np.arange(len(idx)) + 0.5) / len(idx)
    keep = np.lexsort((rng.random(len(table)), position))[:n]
    return table.select(np.sort(keep))
