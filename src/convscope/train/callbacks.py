"""Hooks into :func:`convscope.train.fit`: :class:`Callback` and :class:`EarlyStopping`."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.train.history import History

__all__ = ["Callback", "EarlyStopping"]


class Callback:
    """Hooks into :func:`fit`; subclass and override what you need.

    Every hook gets the bare model (never the ``DistributedDataParallel`` wrapper),
    so a callback can run its own forward and backward passes on it; ``fit``
    zeroes the gradients before each training step, so that does not disturb
    training. Under torchrun every process runs the callbacks.

    Set ``self.stop_training = True`` in any hook to end training after the
    current epoch (under torchrun, one process asking is enough for all to stop).
    """

    stop_training: bool = False

    def on_train_start(self, model: nn.Module, history: History) -> None:
        """Before the first epoch (after a resume, ``history`` holds the earlier epochs)."""

    def on_epoch_start(self, model: nn.Module, epoch: int, history: History) -> None:
        """Before epoch ``epoch`` (0-based); the model is in train mode."""

    def on_batch_end(
        self, model: nn.Module, epoch: int, batch: int, loss: torch.Tensor, history: History
    ) -> None:
        """After each optimiser step; ``loss`` is this process's detached scalar batch loss."""

    def on_epoch_end(self, model: nn.Module, epoch: int, history: History) -> None:
        """After epoch ``epoch`` was evaluated and recorded; the model is in eval mode.

        Whatever is logged here (:meth:`History.log`) is in that epoch's ``metrics.json``.
        """

    def on_train_end(self, model: nn.Module, history: History) -> None:
        """After the last epoch, before ``fit`` returns."""

    def on_train_error(self, model: nn.Module, history: History, error: BaseException) -> None:
        """When training raises (Ctrl-C included) after ``on_train_start`` was called.

        Called instead of :meth:`on_train_end`, before the error propagates: close files,
        flush what was written. It may come before this callback's own ``on_train_start``
        ran (another callback's failed first). An error raised here becomes a warning.
        """

    def metrics_entries(self) -> dict[str, Any]:
        """Entries this callback adds to the top level of ``metrics.json`` (default none).

        E.g. where it wrote files. Read every time ``metrics.json`` is written; a key
        :func:`fit` already writes (or another callback adds) is refused.
        """
        return {}


class EarlyStopping(Callback):
    """Stop when a metric has not improved for ``patience`` epochs.

    Args:
        monitor: a :class:`History` list (``"test_loss"``, ``"test_acc"``,
            ``"train_loss"`` ...) or a key of ``History.extra``.
        patience: epochs without improvement before stopping.
        min_delta: smallest change that counts as an improvement.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for names containing ``acc``).
    """

    def __init__(
        self,
        monitor: str = "test_loss",
        patience: int = 3,
        min_delta: float = 0.0,
        mode: Literal["auto", "min", "max"] = "auto",
    ) -> None:
        if patience < 1:
            raise ConvscopeError(f"patience must be at least 1 (got {patience})")
        if mode not in ("auto", "min", "max"):
            raise ConvscopeError(f"mode must be auto, min or max (got {mode!r})")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1
        self.wait = 0
        self.stop_training = False

    def on_epoch_end(self, model: nn.Module, epoch: int, history: History) -> None:
        values = getattr(history, self.monitor, None)
        if not isinstance(values, list):
            values = history.extra.get(self.monitor)
        if not values:
            raise ConvscopeError(
                f"EarlyStopping monitors {self.monitor!r}, which this run does not record "
                "(test_loss and test_acc need a test set)"
            )
        value = values[-1]
        value = math.nan if value is None else float(value)
        better = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.best_epoch, self.wait = value, epoch, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stop_training = True
