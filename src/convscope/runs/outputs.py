"""Where a run writes: the ``--out`` folder, checked before any work, never clobbered.

Every run names the files it owns (``contributions.json``, ``contributions.png`` ...)
and opens its folder with :func:`open_out` before it loads a model or reads an image.
That one call refuses, with one line each, an ``--out`` that is a file, lies inside a
file, cannot be created or written to, or already holds one of the run's files (unless
``overwrite``). Files are then written through :class:`Outputs`, which writes each one
atomically (temporary name, then rename; see :mod:`convscope.io`) and remembers what it
wrote, so that a Ctrl-C can say what was kept: :meth:`Outputs.interruptible` turns a
``KeyboardInterrupt`` into :class:`RunInterrupted`, whose message lists the finished
files (nothing is ever half-written).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convscope.errors import ConvscopeError

__all__ = ["FIGURE_FORMATS", "Outputs", "RunInterrupted", "check_out", "open_out"]

FIGURE_FORMATS = ("png", "svg", "pdf")
"""The file formats a run can write its figures in (``--format png,svg``)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says which finished files were kept."""


def _first_file_above(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


def check_out(out: str | os.PathLike[str]) -> Path:
    """Make sure ``out`` is (or can become) a folder this process can write into.

    The folder is created (with its parents) when missing, and a probe file is written
    and removed, because permission bits do not tell the whole story (root ignores
    them, read-only mounts do not show in them).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        ConvscopeError: ``out`` is a file, lies inside a file, or cannot be created or
            written to.
    """
    path = Path(out)
    blocker = _first_file_above(path)
    if blocker == path:
        raise ConvscopeError(f"--out {path} is a file; give a folder (it is created if missing)")
    if blocker is not None:
        raise ConvscopeError(f"--out {path} lies inside the file {blocker}; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".convscope-write-test-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConvscopeError(f"--out {path} cannot be written to ({reason.lower()})") from None
    return path


def open_out(
    out: str | os.PathLike[str],
    owned: Iterable[str],
    *,
    overwrite: bool = False,
    formats: Sequence[str] = ("png",),
    raster: Iterable[str] = (),
) -> Outputs:
    """Check ``out`` and claim the run's files in it, before any work is done.

    Args:
        out: The folder (created when missing).
        owned: The names the run writes. A name ending in ``.png`` is a figure, written
            in every one of ``formats`` (``votes.png`` -> ``votes.svg`` ...).
        overwrite: Replace files an earlier run left there; without it, any of them is
            an error.
        formats: Figure formats, from :data:`FIGURE_FORMATS`.
        raster: Owned ``.png`` names that are pictures rather than figures (written as
            PNG only, whatever ``formats`` says).

    Returns:
        The :class:`Outputs` to write through.

    Raises:
        ConvscopeError: A bad ``out`` (see :func:`check_out`), an unknown format, or a
            file of the run already there without ``overwrite``.
    """
    fmts = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in formats if f.strip()))
    bad = [f for f in fmts if f not in FIGURE_FORMATS]
    if bad or not fmts:
        raise ConvscopeError(
            f"--format takes {', '.join(FIGURE_FORMATS)} (comma-separated); "
            f"got {','.join(formats)!r}"
        )
    folder = check_out(out)
    names: list[str] = []
    pictures = set(raster)
    for name in [*owned, *pictures]:
        if name in names:
            continue
        if name.endswith(".png") and name not in pictures:
            names.extend(f"{name[:-4]}.{f}" for f in fmts)
        else:
            names.append(name)
    if not overwrite:
        existing = [n for n in names if (folder / n).exists()]
        if existing:
            shown = ", ".join(existing[:3]) + (" ..." if len(existing) > 3 else "")
            raise ConvscopeError(
                f"--out {folder} already holds {shown} from an earlier run; pass --overwrite "
                "to replace, or choose another --out"
            )
    return Outputs(folder, tuple(names), fmts)


@dataclass
class Outputs:
    """A checked ``--out`` folder and the files a run has finished in it.

    Attributes:
        folder: The folder.
        owned: The file names the run claimed (checked by :func:`open_out`).
        formats: Figure formats.
        written: Files finished so far, in order.
        started: When the folder was claimed (owned files newer than this count as
            written by this run, whoever wrote them).
    """

    folder: Path
    owned: tuple[str, ...]
    formats: tuple[str, ...] = ("png",)
    written: list[Path] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def path(self, name: str) -> Path:
        """The path of an owned file; refuses names the run did not claim."""
        if name not in self.owned:
            raise ConvscopeError(  # a programming error in a run, named for its author
                f"internal: the run writes {name!r} without claiming it in open_out"
            )
        return self.folder / name

    def json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON (atomically) and record it."""
        from convscope.io import write_json

        return self._record(write_json(self.path(name), obj))

    def figure(self, name: str, fig: Any) -> list[Path]:
        """Write a matplotlib figure in every format (atomically), close it, record it.

        Args:
            name: The PNG name the run claimed, e.g. ``"votes.png"``.
            fig: The figure.
        """
        from convscope.report.figures import save_figure

        stem = name[:-4] if name.endswith(".png") else name
        paths = []
        for i, f in enumerate(self.formats):
            keep_open = i < len(self.formats) - 1
            paths.append(
                self._record(save_figure(fig, self.path(f"{stem}.{f}"), close=not keep_open))
            )
        return paths

    def file(self, name: str) -> Path:
        """Record a file the run wrote itself (atomically) under an owned name."""
        return self._record(self.path(name))

    def _record(self, path: Path) -> Path:
        if path not in self.written:
            self.written.append(path)
        return path

    def finished(self) -> list[Path]:
        """The files this run finished: those recorded, then owned ones written since it began."""
        done = list(self.written)
        for name in self.owned:
            p = self.folder / name
            try:
                fresh = p.stat().st_mtime >= self.started - 1e-3
            except OSError:
                continue
            if fresh and p not in done:
                done.append(p)
        return done

    def summary(self) -> str:
        """What was kept: ``"kept a.json, b.png in DIR"`` or ``"nothing written"``."""
        done = self.finished()
        if not done:
            return f"nothing written to {self.folder}"
        names = [p.relative_to(self.folder).as_posix() for p in done]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        return f"kept {shown} in {self.folder} (each complete; nothing half-written)"

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[Outputs]:
        """Turn Ctrl-C inside into :class:`RunInterrupted` saying what was kept."""
        try:
            yield self
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted: {self.summary()}") from None
