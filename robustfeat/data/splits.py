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


def _positions(table: Table, by: list[str], rng: np.random.Generator) -> np.ndarray:
    """Each row's rank within its stratum as a fraction in (0, 1), strata shuffled."""
    position = np.empty(len(table))
    for _, idx in _groups(table, by).items():
        position[idx[rng.permutation(len(idx))]] = (np.arange(len(idx)) + 0.5) / len(idx)
    return position


def stratified_split(table: Table, fractions: dict[str, float], seed: int, by: list[str]) -> dict[str, Table]:
    """Split ``table`` into named parts with the given fractions, stratified by the columns
    in ``by`` that exist. Rows are ordered by their rank fraction within their stratum and
    cut by the overall sizes, so every part gets its share of every stratum to within a
    row, and even strata of a few rows reach the small parts. Same seed, same split."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(table)), _positions(table, by, rng)))
    total = sum(fractions.values())
    bounds = np.round(np.cumsum([f / total for f in fractions.values()]) * len(table)).astype(int)
    parts, start = {}, 0
    for name, end in zip(fractions, bounds):
        parts[name] = table.select(np.sort(order[start:end]))
        start = end
    return parts


def subsample(table: Table, n: int, seed: int, by: list[str]) -> Table:
    """At most ``n`` rows, stratified, deterministic."""
    if n >= len(table):
        return table
    return stratified_split(table, {"keep": n, "rest": len(table) - n}, seed, by)["keep"]
