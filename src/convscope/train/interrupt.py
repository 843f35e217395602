"""Ctrl-C during :func:`convscope.train.fit`: :class:`TrainingInterrupted`, saying what was kept.

``fit`` writes every file atomically (a temporary name, then a rename), so an
interrupt never leaves half a file; it writes ``checkpoint.pt`` before the final
``metrics.json`` that marks the run finished, so a folder whose metrics say
``"finished"`` always holds that run's final weights. When Ctrl-C arrives, ``fit``
re-raises it as :class:`TrainingInterrupted`, whose message is one line naming what
this run left in the output folder, each file checked on disk when Ctrl-C comes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["TrainingInterrupted"]

# the files fit writes into out_dir, in the order the message names them
_FILES = ("checkpoint.pt", "metrics.json", "last.pt")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) during :func:`convscope.train.fit`.

    ``str(e)`` is one line saying where training stopped and which files it kept, e.g.
    ``"interrupted in epoch 3 of 10: kept metrics.json (epochs 1-2) and last.pt (resume
    with --resume) in runs/x"``. Being a ``KeyboardInterrupt``, it passes every
    ``except Exception`` and ends the program unless caught; command lines print the
    message and exit with status 130.

    Attributes:
        epoch: the 1-based epoch that was running (``None``: before the first one, or
            after the last one).
        epochs: the epochs the run was configured for.
        kept: names of the files this run left in ``out_dir`` (may be empty).
        out_dir: the output folder (``None`` when ``fit`` had none).
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int | None = None,
        epochs: int = 0,
        kept: tuple[str, ...] = (),
        out_dir: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.epochs = epochs
        self.kept = kept
        self.out_dir = out_dir

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "interrupted"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _epochs(n: int) -> str:
    return "epoch 1" if n == 1 else f"epochs 1-{n}"


@dataclass
class _RunFiles:
    """What one ``fit`` call has done so far, to describe it when Ctrl-C arrives.

    ``fit`` updates it as it goes; :meth:`interrupted` checks each file on disk.
    Only the main process writes files; the others only report where they were.
    """

    out: Path | None
    epochs: int
    rank: int = 0
    world_size: int = 1
    phase: Literal["setup", "epoch", "final", "done"] = "setup"
    epoch: int = 0  # 1-based epoch running (phase "epoch"), or the last one done (later)
    metrics: bool = False  # metrics.json belongs to this run (written or resumed from)
    last_epochs: int | None = None  # epochs held by this run's last.pt
    checkpoint: bool = False  # this run wrote checkpoint.pt

    def resumed(self, epochs_done: int) -> None:
        """``fit`` continued from ``last.pt`` after ``epochs_done`` epochs."""
        self.last_epochs = epochs_done
        self.metrics = self.out is not None and (self.out / "metrics.json").is_file()

    def _where(self) -> str:
        if self.phase == "setup":
            return f"interrupted before epoch {self.epoch + 1} of {self.epochs}"
        if self.phase == "epoch":
            return f"interrupted in epoch {self.epoch} of {self.epochs}"
        if self.phase == "final":
            return (
                f"interrupted after the last epoch ({self.epoch} of {self.epochs}), "
                "while writing the final files"
            )
        return "interrupted after training finished"

    @staticmethod
    def _read_metrics(path: Path) -> tuple[int, bool] | None:
        """``(epochs_completed, finished)`` of a metrics.json, ``None`` if unreadable."""
        try:
            m: Any = json.loads(path.read_text())
            return int(m["epochs_completed"]), bool(m.get("finished"))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def interrupted(self) -> TrainingInterrupted:
        """The exception to raise, its message read from what is on disk now."""
        where = self._where()
        epoch = self.epoch if self.phase == "epoch" else None
        if self.out is None:
            return TrainingInterrupted(
                f"{where}: nothing written (no out_dir)", epoch=epoch, epochs=self.epochs
            )
        if self.rank != 0:
            return TrainingInterrupted(
                f"{where} (rank {self.rank} of {self.world_size}; rank 0 writes the files)",
                epoch=epoch,
                epochs=self.epochs,
                out_dir=self.out,
            )
        ours = {
            "checkpoint.pt": self.checkpoint,
            "metrics.json": self.metrics,
            "last.pt": self.last_epochs is not None,
        }
        kept: list[str] = []
        notes: list[str] = []
        earlier: list[str] = []
        metrics_done: int | None = None
        for name in _FILES:
            path = self.out / name
            if not path.is_file():
                continue
            if not ours[name]:
                earlier.append(name)
                continue
            kept.append(name)
            if name == "checkpoint.pt":
                notes.append("checkpoint.pt (final weights)")
            elif name == "metrics.json":
                state = self._read_metrics(path)
                metrics_done = state[0] if state is not None else None
                if state is None or state[0] == 0:
                    notes.append("metrics.json")
                else:
                    done = _epochs(state[0]) + (", finished" if state[1] else "")
                    notes.append(f"metrics.json ({done})")
            else:
                last = self.last_epochs or 0
                if last in (0, metrics_done):
                    notes.append("last.pt (resume with --resume)")
                else:
                    notes.append(f"last.pt ({_epochs(last)}; resume with --resume)")
        what = f"kept {_join(notes)} in {self.out}" if notes else "nothing written yet"
        if earlier:
            verb = "is" if len(earlier) == 1 else "are"
            there = "there" if notes else f"in {self.out}"
            what += f" ({_join(earlier)} {there} {verb} from an earlier run)"
        return TrainingInterrupted(
            f"{where}: {what}",
            epoch=epoch,
            epochs=self.epochs,
            kept=tuple(kept),
            out_dir=self.out,
        )
