"""What every run returns, and one run over several images.

Each run returns a :class:`RunResult`: the folder, the files it wrote, the metrics its
JSON holds and the lens's own result object (a
:class:`~convscope.linear.Contributions`, :class:`~convscope.linear.PixelVotes`, an
:class:`~convscope.linear.SVDResult` ...), so no caller re-derives numbers from files.

When ``--image`` names several images (a folder, a glob), :func:`plan_outputs` claims
the folders and :meth:`OutputPlan.run` runs the
one-image run once per image into ``out/<image name>/`` and writes an index page
``out/<command>_index.html`` with one row and one link per image, and
``out/<command>.json`` with every image's metrics. Every
per-image folder is checked before the first image is computed, so a clash is found
before any work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convscope.runs.inputs import ImageSource
from convscope.runs.outputs import Outputs, open_out

__all__ = ["OutputPlan", "RunResult", "plan_outputs"]


@dataclass
class RunResult:
    """The outcome of a run.

    Attributes:
        out: The folder written into.
        files: The files written, in order.
        metrics: What the run's JSON file holds.
        result: The lens's result object (``None`` where the metrics are all).
        items: For several images: one result per image (then ``metrics`` is the index).
    """

    out: Path
    files: list[Path]
    metrics: dict[str, Any]
    result: Any = None
    items: list[RunResult] = field(default_factory=list)


OneImage = Callable[[ImageSource, Outputs], RunResult]


def _stems(images: Sequence[ImageSource]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for img in images:
        base = img.stem
        n = seen.get(base, 0) + 1
        seen[base] = n
        out.append(base if n == 1 else f"{base}_{n}")
    return out


@dataclass
class OutputPlan:
    """The folders of a run, claimed before any work (see :func:`plan_outputs`).

    Attributes:
        command: The command's short name (``"contributions"``): names the index page.
        images: The images, one folder each when there are several.
        folders: One :class:`Outputs` per image (``out`` itself for a single image).
        top: The index folder for several images, else ``None``.
    """

    command: str
    images: list[ImageSource]
    folders: list[Outputs]
    top: Outputs | None

    def run(
        self,
        run_one: OneImage,
        *,
        progress: bool = False,
        row: Callable[[RunResult], list[str]] | None = None,
        headers: Sequence[str] = (),
        title: str = "",
    ) -> RunResult:
        """Run ``run_one`` on every image (a progress bar when ``progress`` and several).

        Args:
            run_one: Computes and writes one image's result through the given outputs.
            progress: A progress bar over the images.
            row: The index table's cells for one image's result (after the image's name).
            headers: The index table's headers after ``"image"``.
            title: The index page's title.

        Returns:
            The one image's result, or a result whose ``items`` hold every image's and
            whose ``metrics`` is the index (``images``: per image its ``image``,
            ``folder`` and metrics).
        """
        if self.top is None:
            with self.folders[0].interruptible():
                return run_one(self.images[0], self.folders[0])
        from tqdm.auto import tqdm

        top = self.top
        items: list[RunResult] = []
        with top.interruptible():
            pairs = list(zip(self.images, self.folders, strict=True))
            for img, sub in tqdm(pairs, desc=self.command, unit="image", disable=not progress):
                try:
                    items.append(run_one(img, sub))
                except KeyboardInterrupt:
                    top.written.extend(sub.written)
                    raise
                top.written.extend(items[-1].files)
            stems = [f.folder.name for f in self.folders]
            metrics = {
                "command": self.command,
                "images": [
                    {"image": img.label, "folder": stem, "metrics": r.metrics}
                    for img, stem, r in zip(self.images, stems, items, strict=True)
                ],
            }
            top.json(f"{self.command}.json", metrics)
            _write_index(top, f"{self.command}_index", title or self.command, self.images,
                         stems, items, row, headers)  # fmt: skip
        return RunResult(top.folder, list(top.written), metrics, items=items)


def plan_outputs(
    command: str,
    images: Sequence[ImageSource],
    out: str | os.PathLike[str],
    owned: Sequence[str],
    *,
    overwrite: bool = False,
    formats: Sequence[str] = ("png",),
    raster: Sequence[str] = (),
) -> OutputPlan:
    """Check ``out`` and claim every file the run will write, before any work.

    One image writes ``owned`` into ``out``. Several write ``owned`` into
    ``out/<image name>/`` each, plus ``<command>_index.html`` (with its description
    ``<command>_index.json``) and ``<command>.json`` (every image's metrics) into ``out``.

    Raises:
        ConvscopeError: A bad ``out`` or a file already there without ``overwrite``
            (see :func:`convscope.runs.outputs.open_out`).
    """
    images = list(images)
    if len(images) == 1:
        one = open_out(out, owned, overwrite=overwrite, formats=formats, raster=raster)
        return OutputPlan(command, images, [one], None)
    index = [f"{command}_index.html", f"{command}_index.json", f"{command}.json"]
    top = open_out(out, index, overwrite=overwrite, formats=formats)
    folders = [
        open_out(top.folder / s, owned, overwrite=overwrite, formats=formats, raster=raster)
        for s in _stems(images)
    ]
    return OutputPlan(command, images, folders, top)


def _write_index(
    top: Outputs,
    name: str,
    title: str,
    images: Sequence[ImageSource],
    stems: Sequence[str],
    items: Sequence[RunResult],
    row: Callable[[RunResult], list[str]] | None,
    headers: Sequence[str],
) -> None:
    from convscope.report.html import Link, Section, Table, write_report

    def page(r: RunResult) -> str:
        html = [p for p in r.files if p.suffix == ".html"]
        return html[0].name if html else (r.files[0].name if r.files else "")

    rows = [[img.label, *(row(r) if row else [])] for img, r in zip(images, items, strict=True)]
    section = Section(
        f"{len(images)} images",
        tables=[Table(["image", *headers], rows)] if row else [],
        links=[
            Link(img.label, f"{stem}/{page(r)}")
            for img, stem, r in zip(images, stems, items, strict=True)
        ],
    )
    write_report(top.folder, title, [section], name=name)
    top.file(f"{name}.json")
    top.file(f"{name}.html")
