"""A dataset run's per-image table on disk: Parquet shards written as images finish.

Each batch's rows go to one shard, ``per_image/part-<first>-<last>.parquet`` (the first
and last dataset index in it), written under a temporary name and renamed, so a process
killed at any moment leaves only whole shards behind and loses at most the batch it was
computing. :meth:`ShardStore.done` reads back which indices are finished (the resumed run
skips them); :meth:`ShardStore.merge` joins everything into ``per_image.parquet``, sorted
by index, and then removes the shards. Any number of processes can write into one store
at once: their indices are disjoint, so their shard names are too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convscope.errors import ConvscopeError
from convscope.io import atomic_path

__all__ = ["MERGED", "SHARDS", "ShardStore"]

MERGED = "per_image.parquet"
SHARDS = "per_image"


def _pq() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise ConvscopeError("dataset runs write Parquet: pip install pyarrow") from None
    return pq


class ShardStore:
    """The per-image table of one ``--out`` folder (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.shards = self.folder / SHARDS
        self.merged = self.folder / MERGED

    def shard_files(self) -> list[Path]:
        if not self.shards.is_dir():
            return []
        return sorted(p for p in self.shards.glob("part-*.parquet") if not p.name.startswith("."))

    def _files(self) -> list[Path]:
        return ([self.merged] if self.merged.exists() else []) + self.shard_files()

    def done(self) -> set[int]:
        """The dataset indices with a row on disk (merged table and shards)."""
        pq = _pq()
        out: set[int] = set()
        for f in self._files():
            try:
                col = pq.read_table(f, columns=["index"]).column("index")
            except Exception as e:  # a file someone else damaged: say which
                raise ConvscopeError(
                    f"{f}: not a readable Parquet shard ({e}); remove it"
                ) from None
            out.update(int(v) for v in col.to_numpy())
        return out

    def write(self, rows: Sequence[dict[str, Any]]) -> Path:
        """Write one batch's rows (each with an ``index``) as a shard; returns its path."""
        import pyarrow as pa

        if not rows:
            raise ValueError("a shard needs at least one row")
        idx = [int(r["index"]) for r in rows]
        path = self.shards / f"part-{min(idx):09d}-{max(idx):09d}.parquet"
        table = pa.Table.from_pylist(list(rows))
        with atomic_path(path) as tmp:
            _pq().write_table(table, tmp)
        return path

    def read(self) -> Any:
        """Every row on disk as one ``pyarrow.Table``, sorted by index, one row per index."""
        import pyarrow as pa

        pq = _pq()
        tables = [pq.read_table(f) for f in self._files()]
        if not tables:
            return pa.table({"index": pa.array([], pa.int64())})
        table = pa.concat_tables(tables, promote_options="default")
        index = table.column("index").to_numpy()
        # a merge interrupted before its shards were removed leaves each row twice
        _, first = np.unique(index, return_index=True)
        order = first[np.argsort(index[first], kind="stable")]
        return table.take(pa.array(order))

    def merge(self, expected: Sequence[int]) -> Any:
        """Join everything into ``per_image.parquet`` and remove the shards.

        Args:
            expected: Every dataset index the run covers.

        Returns:
            The merged table (sorted by index).

        Raises:
            ConvscopeError: Rows are missing (a process stopped early: rerun to finish).
        """
        table = self.read()
        have = set(int(v) for v in table.column("index").to_numpy())
        missing = sorted(set(expected) - have)
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise ConvscopeError(
                f"{len(missing)} of {len(expected)} images have no row yet ({shown}); "
                "run the same command again to finish them"
            )
        with atomic_path(self.merged) as tmp:
            _pq().write_table(table, tmp)
        for f in self.shard_files():
            f.unlink(missing_ok=True)
        for f in self.shards.glob(".*.tmp*") if self.shards.is_dir() else []:
            f.unlink(missing_ok=True)
        if self.shards.is_dir() and not any(self.shards.iterdir()):
            self.shards.rmdir()
        return table

    def clear(self) -> None:
        """Remove the table and every shard (``--overwrite``)."""
        for f in self._files():
            f.unlink(missing_ok=True)
        if self.shards.is_dir():
            for f in self.shards.glob(".*.tmp*"):
                f.unlink(missing_ok=True)
            if not any(self.shards.iterdir()):
                self.shards.rmdir()
