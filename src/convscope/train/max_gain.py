"""The Maximum Gain as a training diagnostic: callbacks for convscope's loop and Lightning.

The measurement itself is :func:`convscope.spectral.maximum_gain` (analysis only;
:mod:`convscope.spectral` imports nothing from training). This module hands it to
training loops: :func:`log_max_gain` for any loop, :class:`MaxGainCallback` for
:func:`convscope.train.fit` and :func:`lightning_callback` for PyTorch Lightning.
Read the logged curve with :func:`convscope.spectral.diagnose`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.spectral import maximum_gain, model_input_shape
from convscope.train.callbacks import Callback

__all__ = ["MaxGainCallback", "lightning_callback", "log_max_gain"]


def _measure(model: nn.Module, shape: Sequence[int] | None, x: torch.Tensor | None) -> list[float]:
    """Maximum Gain in dB per input channel, measured in eval mode; the mode is put back."""
    was_training = model.training
    model.eval()
    try:
        return maximum_gain(model, x, shape=shape)
    finally:
        model.train(was_training)


def _log_gains(log: Callable[[str, float], None], gains: Sequence[float], name: str) -> float:
    """Hand the channels' mean to ``log(name, ...)`` and, with several, each as ``name_c{i}``."""
    value = sum(gains) / len(gains)
    log(name, value)
    if len(gains) > 1:
        for i, g in enumerate(gains):
            log(f"{name}_c{i}", g)
    return value


def log_max_gain(
    model: nn.Module,
    log: Callable[[str, float], None],
    *,
    shape: Sequence[int] | None = None,
    x: torch.Tensor | None = None,
    name: str = "max_gain",
) -> float:
    """Measure the impulse-image Maximum Gain and hand it to ``log(name, value)``.

    Usable from any training loop (``log`` can append to a dict of lists, write to
    TensorBoard ...). The model is measured in eval mode and put back as it was. With
    several input channels the channels' mean is logged under ``name`` and each channel
    under ``name_c{i}``.

    Returns:
        The logged (mean) Maximum Gain in dB.
    """
    return _log_gains(log, _measure(model, shape, x), name)


class MaxGainCallback(Callback):
    """Log the impulse-image Maximum Gain after every epoch of :func:`convscope.train.fit`.

    The value lands in ``history.extra["max_gain"]`` (with several input channels, their
    mean there and each channel in ``max_gain_c{i}``) and so in ``metrics.json``, next to
    the losses. ``gains`` keeps each epoch's dB per channel. For TensorBoard add a
    :class:`convscope.train.TensorBoardCallback`: it writes whatever callbacks log to
    the history, these values included (tags ``max_gain``, ``max_gain/channel_{i}``).
    """

    def __init__(self, shape: Sequence[int] | None = None, x: torch.Tensor | None = None) -> None:
        self.shape = shape
        self.x = x
        self.seconds = 0.0
        self.times: list[float] = []  # seconds spent in each on_epoch_end
        self.gains: list[list[float]] = []  # dB per input channel, one list per epoch

    def on_epoch_end(self, model: nn.Module, epoch: int, history: Any) -> None:
        t0 = time.perf_counter()
        gains = _measure(model, self.shape, self.x)
        _log_gains(history.log, gains, "max_gain")
        self.gains.append(gains)
        self.times.append(time.perf_counter() - t0)
        self.seconds += self.times[-1]


def _find_input_shape(module: nn.Module) -> tuple[int, int, int]:
    """:func:`model_input_shape` of ``module`` or of the first submodule that tells it."""
    for m in module.modules():
        try:
            return model_input_shape(m)
        except ConvscopeError:
            continue
    return model_input_shape(module)  # raises the helpful error


def lightning_callback(
    shape: Sequence[int] | None = None,
    x: torch.Tensor | None = None,
    name: str = "max_gain",
) -> Any:
    """A PyTorch Lightning callback that logs the impulse-image Maximum Gain each epoch.

    At the end of every validation epoch (the sanity check excepted), or of every training
    epoch when the run has no validation, it measures :func:`log_max_gain` on the
    ``LightningModule`` and logs it with ``pl_module.log(name, value)``, so it lands next to
    the losses in Lightning's loggers (CSV, TensorBoard ...). The module is measured in
    eval mode, with gradients on, and put back as it was.

    Args:
        shape: ``(C, H, W)`` of the impulse image; default: read from the module or the
            first submodule with ``input_shape`` or ``in_channels``/``input_size``.
        x: an operating point to use instead of the impulse image.

    Returns:
        An instance of a ``lightning.pytorch.Callback`` subclass; its ``times`` holds the
        seconds spent per measurement.
    """
    try:
        from lightning.pytorch import Callback as PLCallback
    except ImportError as e:
        raise ConvscopeError(
            "lightning_callback needs PyTorch Lightning: pip install 'convscope[interop]'"
        ) from e

    class MaxGainLightningCallback(PLCallback):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.shape = shape
            self.x = x
            self.name = name
            self.times: list[float] = []
            self._epoch_done = -1

        def _measure(self, trainer: Any, pl_module: Any) -> None:
            t0 = time.perf_counter()
            shp = self.shape
            if shp is None and self.x is None:
                shp = _find_input_shape(pl_module)
            point = None if self.x is None else self.x.detach().clone()
            # Lightning validates under inference mode; the derivative needs autograd
            with torch.inference_mode(False), torch.enable_grad():
                log_max_gain(
                    pl_module, lambda k, v: pl_module.log(k, v), shape=shp, x=point, name=self.name
                )
            self.times.append(time.perf_counter() - t0)
            self._epoch_done = trainer.current_epoch

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self._measure(trainer, pl_module)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if self._epoch_done != trainer.current_epoch:  # no validation this epoch
                self._measure(trainer, pl_module)

    return MaxGainLightningCallback()
