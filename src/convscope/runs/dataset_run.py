"""One analysis over a whole ``--data`` set: streamed, resumable, split across processes.

:func:`run_over` drives any :class:`DatasetAnalysis` (an analysis says how to turn a batch
of images into one row per image, and how to summarise the finished table):

* the images stream through a ``DataLoader`` (``--batch-size``, ``--workers``), so memory
  stays flat however large the dataset;
* each batch's rows are written as a Parquet shard as soon as they are computed
  (:class:`~convscope.runs.shards.ShardStore`): a run killed at any moment loses at most
  the batch in flight, and the same command on the same ``--out`` resumes where it
  stopped (``run.json`` records the command; a different one is refused);
* the images are cut into batches on a fixed grid (positions ``0..B-1``, ``B..2B-1``
  ...), and under ``torchrun --nproc_per_node=N -m convscope ...`` process ``r`` takes
  the batches ``r, r + N, r + 2N ...`` (no image twice, none padded in as
  ``DistributedSampler`` would), writes its own shards, and rank 0 merges them into
  ``per_image.parquet``, then writes ``summary.json``, the figures and ``report.html``
  from the merged table. Every image is computed in the same batch whatever the number
  of processes, so the results equal a one-process run's bit for bit, even for
  analyses whose float32 arithmetic depends on the batch (those record the batch size
  in ``run.json``, so a resume cannot change it), as long as each process runs as many
  threads as the one-process run did (float32 products round by the thread count);
* the process group is torch.distributed's (gloo on the CPU, NCCL on GPUs, one GPU per
  process), joined as training joins it (:mod:`convscope.train.distributed`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convscope.errors import ConvscopeError
from convscope.runs.data import StreamData
from convscope.runs.outputs import Outputs, RunInterrupted, check_out, open_out
from convscope.runs.shards import MERGED, SHARDS, ShardStore
from convscope.train.distributed import Process, setup_distributed

__all__ = [
    "MANIFEST",
    "DatasetAnalysis",
    "DatasetResult",
    "Prepared",
    "Process",
    "join",
    "prepare",
    "run_over",
]

MANIFEST = "run.json"
SUMMARY = "summary.json"


@dataclass
class DatasetAnalysis:
    """What a dataset run computes, as the engine needs it.

    Attributes:
        command: The command's name (``"linear contributions"``).
        config: Everything that decides the rows (model, data, split, limit, mode ...):
            a rerun into the same ``--out`` must have the same, or it is refused.
        rows: ``(indices, images (B, C, H, W), labels (B,))`` -> one dict per image.
        summarise: The merged table (``pyarrow.Table``, sorted by index) -> the summary.
        report: Write the figures and ``report.html`` from the summary into the outputs.
        owned: The files the summary step writes (besides the summary).
        summary_name: The JSON file the summary goes to.
        batch_dependent: The rows depend on which images share a batch (float32 batched
            passes): the batch size then belongs to the run's configuration.
    """

    command: str
    config: dict[str, Any]
    rows: Callable[[list[int], torch.Tensor, torch.Tensor], list[dict[str, Any]]]
    summarise: Callable[[Any], dict[str, Any]]
    report: Callable[[Outputs, dict[str, Any]], None]
    owned: tuple[str, ...] = ()
    batch_dependent: bool = False
    summary_name: str = SUMMARY


@dataclass
class DatasetResult:
    """What a dataset run did.

    Attributes:
        out: The folder.
        summary: ``summary.json``'s content (rank 0; ``{}`` on the other ranks).
        table: The merged per-image table (rank 0; ``None`` elsewhere).
        computed: Images this process computed in this run.
        resumed: Images already on disk when the run started (all processes).
        rank, world_size: This process's place.
        written: The files rank 0 finished.
        result: The analysis's own result object, where it has one (evaluate: the
            :class:`~convscope.evaluate.Evaluation`).
    """

    out: Path
    summary: dict[str, Any]
    table: Any
    computed: int
    resumed: int
    rank: int = 0
    world_size: int = 1
    written: list[Path] = field(default_factory=list)
    result: Any = None


def join(device: str | None) -> Process:
    """Join the torchrun process group when launched by torchrun; one process otherwise."""
    return setup_distributed(device or "auto")


@dataclass
class Prepared:
    """What every dataset run starts from, checked before any work.

    Attributes:
        process: This process (rank, world size, device).
        model: The model, on the process's device.
        data: The stream (its first image checked against the model).
        options: The shared options, defaults filled in.
        config: The part of ``run.json`` every dataset run shares (model, data, split,
            limit, image conversions).
    """

    process: Process
    model: Any
    data: StreamData
    options: dict[str, Any]
    config: dict[str, Any]

    @property
    def class_names(self) -> list[str] | None:
        """The model's class names where it has one per class of the data (ImageNet's
        words rather than an ImageFolder's WordNet ids), else the data's."""
        own, theirs = self.model.class_names, self.data.class_names
        if own and (theirs is None or len(own) == len(theirs)):
            return list(own)
        return theirs


def prepare(
    model: Any,
    data: str,
    *,
    split: str,
    limit: int | None,
    options: dict[str, Any],
    dtype: torch.dtype | None = None,
    check: Callable[[Any], object] | None = None,
) -> Prepared:
    """Parse the options, join the process group, load the model, open the data.

    ``check`` (a run's own test of the loaded model) runs before the data is opened and
    the untrained warning printed. On any error the process group is left again.
    """
    from convscope.runs.data import open_data
    from convscope.runs.inputs import parse_size
    from convscope.runs.options import complete
    from convscope.runs.sources import resolve_model, warn_untrained

    opts = complete(options)
    if opts["channels"] not in (None, 1, 3):
        raise ConvscopeError(f"--channels must be 1 or 3; got {opts['channels']}")
    size = parse_size(opts["size"])
    process = join(opts["device"])
    try:
        loaded = resolve_model(model, weights=opts["weights"], state_dict=opts["state_dict"],
                               device=process.device, dtype=dtype, warn=False)  # fmt: skip
        if check is not None:
            check(loaded)
        stream = open_data(data, split=split, limit=limit, info=loaded.info,
                           channels=opts["channels"], invert=opts["invert"],
                           size=size)  # fmt: skip
        if process.is_main:
            warn_untrained(loaded)
    except BaseException:
        process.leave()
        raise
    config = {
        "model": loaded.name, "weights": opts["weights"],
        "state_dict": None if opts["state_dict"] is None else str(opts["state_dict"]),
        "data": data, "split": split, "limit": limit,
        "channels": opts["channels"], "invert": opts["invert"], "size": size,
    }  # fmt: skip
    return Prepared(process, loaded, stream, opts, config)


def _claim(
    folder: Path, a: DatasetAnalysis, overwrite: bool, formats: Sequence[str], p: Process
) -> tuple[Outputs, bool]:
    """Check ``--out`` against the run (same command resumes, another is refused)."""
    outputs = open_out(folder, (a.summary_name, *a.owned), overwrite=True, formats=formats)
    store = ShardStore(folder)
    manifest = {"command": a.command, "config": a.config}
    manifest = json.loads(json.dumps(manifest, default=str))
    path = folder / MANIFEST
    resume = False
    if path.exists() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ConvscopeError(f"{path}: unreadable; remove it or pass --overwrite") from None
        if old != manifest:
            diff = _difference(old, manifest)
            raise ConvscopeError(
                f"--out {folder} holds another run ({diff}); give another --out, or "
                "--overwrite to replace it"
            )
        resume = True
    elif not overwrite:
        left = [n for n in (MERGED, SHARDS, *outputs.owned) if (folder / n).exists()]
        if left:
            raise ConvscopeError(
                f"--out {folder} already holds {', '.join(left[:3])} from an earlier run; pass "
                "--overwrite to replace, or choose another --out"
            )
    p.barrier()  # every process has checked before rank 0 changes anything
    if p.is_main and not resume:
        from convscope.io import write_json

        store.clear()
        write_json(path, manifest)
    p.barrier()
    return outputs, resume


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    if old.get("command") != new["command"]:
        return f"of {old.get('command')!r}, not {new['command']!r}"
    a, b = old.get("config", {}), new["config"]
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"its {k} is {a.get(k)!r}, this run's {b.get(k)!r}"
    return "a different run"  # pragma: no cover


def run_over(
    a: DatasetAnalysis,
    data: StreamData,
    out: str | os.PathLike[str],
    process: Process,
    *,
    batch_size: int = 64,
    workers: int = 0,
    overwrite: bool = False,
    formats: Sequence[str] = ("png",),
    progress: bool = False,
) -> DatasetResult:
    """Run ``a`` over ``data`` into ``out`` (see the module docstring).

    Raises:
        ConvscopeError: a bad ``--batch-size`` / ``--workers``, an ``--out`` holding another
            run, or rows missing after every process finished.
        RunInterrupted: Ctrl-C; the message says how much was kept and how to resume.
    """
    if batch_size < 1:
        raise ConvscopeError(f"--batch-size must be at least 1; got {batch_size}")
    if workers < 0:
        raise ConvscopeError(f"--workers must be 0 or more; got {workers}")
    folder = check_out(out)
    if a.batch_dependent:
        a.config = {**a.config, "batch_size": batch_size}
    outputs, _ = _claim(folder, a, overwrite, formats, process)
    store = ShardStore(folder)
    done = store.done()
    grid = range(process.rank * batch_size, len(data), process.world_size * batch_size)
    todo = [b for b in ([j for j in range(s, min(s + batch_size, len(data)))
                         if data.indices[j] not in done] for s in grid) if b]  # fmt: skip
    resumed = sum(1 for i in data.indices if i in done)
    try:
        computed = _compute(a, data, store, todo, process, batch_size, workers, progress)
    except ConvscopeError as e:
        if process.world_size == 1:
            raise
        # an image only this process reads: say which process, and say it from every rank
        # (torchrun stops the others, rank 0 may never get to speak)
        err = ConvscopeError(f"process {process.rank} of {process.world_size}: {e}")
        err.every_rank = True  # type: ignore[attr-defined]
        raise err from None
    except KeyboardInterrupt:
        kept = store.done()
        raise RunInterrupted(
            f"interrupted: {sum(1 for i in data.indices if i in kept)} of {len(data)} images "
            f"are kept in "
            f"{folder / SHARDS}; run the same command again to finish the rest"
        ) from None
    process.barrier()
    if not process.is_main:
        return DatasetResult(folder, {}, None, computed, resumed, process.rank,
                             process.world_size)  # fmt: skip
    table = store.merge(data.indices)
    summary = a.summarise(table)
    outputs.json(a.summary_name, summary)
    a.report(outputs, summary)
    written = [folder / MERGED, *outputs.written]
    return DatasetResult(folder, summary, table, computed, resumed, process.rank,
                         process.world_size, written)  # fmt: skip


def _compute(
    a: DatasetAnalysis,
    data: StreamData,
    store: ShardStore,
    todo: list[list[int]],
    process: Process,
    batch_size: int,
    workers: int,
    progress: bool,
) -> int:
    from torch.utils.data import DataLoader

    if not todo:
        return 0
    loader = DataLoader(data, batch_sampler=todo, num_workers=workers)
    bar = None
    if progress and process.is_main:
        from tqdm import tqdm

        who = f" (process 1 of {process.world_size})" if process.world_size > 1 else ""
        bar = tqdm(total=sum(map(len, todo)), desc=f"{a.command}{who}", unit="image",
                   leave=False)  # fmt: skip
    n = 0
    try:
        for idx, x, labels in loader:
            indices = [int(i) for i in idx]
            rows = a.rows(indices, x, labels)
            if len(rows) != len(indices):  # an analysis's bug, named for its author
                raise ConvscopeError(f"internal: {a.command} gave {len(rows)} rows for "
                                     f"{len(indices)} images")  # fmt: skip
            keyed = []
            for i, t, r in zip(indices, labels.tolist(), rows, strict=True):
                head: dict[str, Any] = {"index": i, "label": int(t)}
                path = data.path(i)
                if path is not None:
                    head["path"] = path
                keyed.append({**head, **r})
            store.write(keyed)
            n += len(rows)
            if bar is not None:
                bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
    return n
