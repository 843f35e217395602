"""Dataset summaries from a per-image table: statistics, histograms, per-class tables.

Every number is computed from the merged, index-sorted table, never from running sums,
so a summary depends only on the rows: a one-process run and a torchrun run over the same
images give the same ``summary.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["column", "histogram", "per_class", "stats"]


def column(table: Any, name: str) -> np.ndarray:
    """One column of a ``pyarrow.Table`` as float64 (nulls as NaN)."""
    col = table.column(name)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def _f(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def stats(values: np.ndarray) -> dict[str, Any]:
    """Mean, standard deviation (n - 1), median, quartiles, 5/95 % points, min, max and
    count of the finite values (``None`` where there are too few)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0}
    q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "std": _f(float(v.std(ddof=1))) if v.size > 1 else None,
        "median": float(q[2]),
        "q05": float(q[0]),
        "q25": float(q[1]),
        "q75": float(q[3]),
        "q95": float(q[4]),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def histogram(values: np.ndarray, bins: int = 30) -> dict[str, list[float] | list[int]]:
    """Counts of the finite values in ``bins`` equal bins from their min to their max."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"edges": [], "counts": []}
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def per_class(
    keys: np.ndarray,
    columns: dict[str, np.ndarray],
    names: Sequence[str] | None,
) -> dict[str, dict[str, Any]]:
    """For each class in ``keys`` (ascending): the image count and each column's mean and
    standard deviation over that class's images."""
    out: dict[str, dict[str, Any]] = {}
    k = np.asarray(keys, dtype=np.int64)
    for c in np.unique(k):
        sel = k == c
        name = names[c] if names is not None and 0 <= c < len(names) else str(int(c))
        row: dict[str, Any] = {"class": int(c), "images": int(sel.sum())}
        for col, values in columns.items():
            s = stats(values[sel])
            row[col] = {"mean": s.get("mean"), "std": s.get("std")}
        out[name] = row
    return out
