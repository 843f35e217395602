"""TensorBoard output for :func:`convscope.train.fit`: :class:`TensorBoardCallback`.

TensorBoard is an optional extra (``pip install 'convscope[interop]'`` or ``pip install
tensorboard``); without it the callback refuses with one line when it is made, before
any training. The figures are plain image tensors built here (no matplotlib), so this
module stays a lens: drawing with matplotlib lives in :mod:`convscope.report`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from convscope.errors import ConvscopeError
from convscope.train.callbacks import Callback
from convscope.train.common import _model_device, _model_dtype
from convscope.train.history import History

__all__ = ["TensorBoardCallback"]

_WHAT = "TensorBoardCallback (--tensorboard)"
_MIN_SIDE = 128  # figures are enlarged (whole pixels) until their longer side is this long
_DB_RANGE = 80.0  # the spectrum image spans the peak down to this many dB below it
_CHANNEL_KEY = re.compile(r"^(?P<name>.+)_c(?P<channel>\d+)$")

# History list -> TensorBoard tag
_CURVES = {
    "train_loss": "loss/train",
    "test_loss": "loss/validation",
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/validation",
    "lr": "learning_rate",
    "seconds": "epoch_seconds",
}


def _summary_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or one line saying what to install."""
    from convscope.interop import require

    require("tensorboard", _WHAT)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # e.g. a tensorboard too old for this torch
        raise ConvscopeError(f"{_WHAT} cannot use the installed tensorboard: {e}") from None
    return SummaryWriter


def _check_log_dir(log_dir: str | os.PathLike[str]) -> Path:
    """``log_dir`` as a path, refused when it exists but is not a folder."""
    path = Path(log_dir)
    if path.exists() and not path.is_dir():
        raise ConvscopeError(f"--tensorboard {path}: that is a file, not a folder")
    return path


def _is_rank0() -> bool:
    """Whether this process writes: always alone, rank 0 under torchrun."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _extra_tag(key: str) -> str:
    """The TensorBoard tag of a ``History.extra`` key: ``NAME_c{i}`` -> ``NAME/channel_{i}``."""
    m = _CHANNEL_KEY.match(key)
    return f"{m['name']}/channel_{m['channel']}" if m else key


def _as_number(value: Any) -> float | None:
    """A logged value as a float (``None``, JSON's NaN, becomes NaN); non-numbers: ``None``."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# -- figures as image tensors -----------------------------------------------------------


def _enlarge(img: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` repeated by whole pixels until the longer side is at least 128."""
    k = max(1, math.ceil(_MIN_SIDE / max(img.shape[-2:])))
    return img.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def _spectrum_image(spec_db: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` dB as a ``(1, H', W')`` grey image in [0, 1]: peak white, 80 dB below black."""
    s = spec_db.detach().double().cpu()
    low = float(s.max()) - _DB_RANGE
    return _enlarge(((s - low) / _DB_RANGE).clamp(0.0, 1.0).float()[None])


def _signed_image(values: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` signed values as ``(3, H', W')`` in [0, 1]: red positive, blue negative.

    White is zero and full colour the largest absolute value.
    """
    v = values.detach().double().cpu()
    scale = float(v.abs().max())
    v = v / scale if scale > 0 else torch.zeros_like(v)
    pos, neg = v.clamp(0.0, 1.0), (-v).clamp(0.0, 1.0)
    rgb = torch.stack([1.0 - neg, 1.0 - pos - neg, 1.0 - pos])
    return _enlarge(rgb.clamp(0.0, 1.0).float())


def _input_image(x: torch.Tensor) -> torch.Tensor:
    """A ``(C, H, W)`` model input stretched to [0, 1] (grey for other than 1 or 3 channels)."""
    v = x.detach().double().cpu()
    if v.shape[0] not in (1, 3):
        v = v[:1]
    low, high = float(v.min()), float(v.max())
    v = (v - low) / (high - low) if high > low else torch.zeros_like(v)
    return _enlarge(v.float())


def _has_kernel_bank(model: nn.Module) -> bool:
    """Whether ``model`` holds a fixed-kernel layer, so filter scores apply."""
    from convscope.models.gfnn import find_kernel_bank

    try:
        find_kernel_bank(model)
    except ConvscopeError:
        return False
    return True


# -- the callback -------------------------------------------------------------------------


class TensorBoardCallback(Callback):
    """Write the training curves, and optionally figures, to TensorBoard event files.

    Scalars, after every epoch (step: the 0-based epoch): ``loss/train``,
    ``loss/validation``, ``accuracy/train``, ``accuracy/validation`` (the validation
    ones when :func:`~convscope.train.fit` has a test set), ``learning_rate`` and
    ``epoch_seconds``; and every number other callbacks log with :meth:`History.log`,
    under its own name, a per-channel ``NAME_c{i}`` as ``NAME/channel_{i}``. So a
    :class:`~convscope.train.MaxGainCallback` appears as ``max_gain`` (the channels'
    mean) and ``max_gain/channel_{i}``, whatever order the two callbacks come in.

    With ``figures=True``, after every ``every`` epochs and after the last one, images:

    * ``spectrum/channel_{i}``: the transfer function at the impulse image (as
      :func:`convscope.spectral.maximum_gain` measures it), grey, the peak white and
      80 dB below it black;
    * ``filter_scores/pixel_map``: the filter-score pixel map
      (:func:`convscope.attribution.filter_scores`, for the predicted class) of
      ``image``, red positive and blue negative, and ``filter_scores/image``, that
      image, once. Only for models with a kernel bank (GFNN, GF-ResNet): other models
      skip these silently, and so does a run without ``image``.

    Figures are enlarged by whole pixels until their longer side is at least 128.
    The writer opens when training starts and is closed (what was written flushed) when
    it ends, also on an error or Ctrl-C. Under torchrun only rank 0 writes; the
    others do nothing. ``metrics.json`` records the folder under ``"tensorboard"``.

    Args:
        log_dir: the folder for the event files (made when missing); view them with
            ``tensorboard --logdir LOG_DIR``.
        figures: also write the images above.
        every: write figures after every ``every`` epochs (scalars: every epoch).
        image: a fixed ``(C, H, W)`` validation image for the filter-score map.
        shape: ``(C, H, W)`` of the impulse image (default: ``image``'s, else what the
            model says, as for :class:`~convscope.train.MaxGainCallback`).

    Raises:
        ConvscopeError: tensorboard is not installed, ``log_dir`` is a file, ``every``
            is below 1 or ``image`` is not one image.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        figures: bool = False,
        every: int = 1,
        image: torch.Tensor | None = None,
        shape: Sequence[int] | None = None,
    ) -> None:
        self._writer_class = _summary_writer_class()
        self.log_dir = _check_log_dir(log_dir)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConvscopeError(f"every must be a whole number of epochs >= 1 (got {every!r})")
        if image is not None and (image.ndim == 4 and image.shape[0] == 1):
            image = image[0]
        if image is not None and image.ndim != 3:
            raise ConvscopeError(f"image must be one (C, H, W) image, got {tuple(image.shape)}")
        self.figures = figures
        self.every = every
        self.image = image
        self.shape = tuple(shape) if shape is not None else None
        self._writer: Any = None
        self._written: dict[str, int] = {}  # History.extra key -> values already written
        self._figure_epoch = -1  # the last epoch whose figures were written
        self._has_bank = False

    # -- hooks ----------------------------------------------------------------------------

    def on_train_start(self, model: nn.Module, history: History) -> None:
        self.close()  # a callback reused from an earlier fit
        if not _is_rank0():
            return
        self._writer = self._writer_class(str(self.log_dir))
        # a resumed run's earlier epochs were written by the run before
        self._written = {key: len(values) for key, values in history.extra.items()}
        self._figure_epoch = -1
        if self.figures:
            self._start_figures(model, history.epochs)

    def on_epoch_end(self, model: nn.Module, epoch: int, history: History) -> None:
        if self._writer is None:
            return
        self._write_curves(history, epoch)
        self._write_extras(history)
        if self.figures and (epoch + 1) % self.every == 0:
            self._write_figures(model, epoch)
        self._writer.flush()

    def on_train_end(self, model: nn.Module, history: History) -> None:
        if self._writer is not None:
            self._write_extras(history)  # values logged after this callback's on_epoch_end
            last = history.epochs - 1
            if self.figures and last >= 0 and self._figure_epoch != last:
                self._write_figures(model, last)
        self.close()

    def on_train_error(self, model: nn.Module, history: History, error: BaseException) -> None:
        if self._writer is not None:
            self._write_extras(history)
        self.close()

    def metrics_entries(self) -> dict[str, Any]:
        return {
            "tensorboard": {
                "log_dir": str(self.log_dir.resolve()),
                "figures": self.figures,
                "every": self.every,
            }
        }

    def close(self) -> None:
        """Flush and close the event file (nothing when none is open)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    # -- scalars --------------------------------------------------------------------------

    def _write_curves(self, history: History, epoch: int) -> None:
        for key, tag in _CURVES.items():
            series: list[float] = getattr(history, key)
            if series:
                self._writer.add_scalar(tag, float(series[-1]), epoch)

    def _pending_extras(self, history: History) -> Iterator[tuple[str, float, int]]:
        """``(tag, value, epoch)`` of every number logged since the last write."""
        for key, values in history.extra.items():
            done = self._written.get(key, 0)
            for epoch in range(done, len(values)):
                number = _as_number(values[epoch])
                if number is not None:
                    yield _extra_tag(key), number, epoch
            self._written[key] = len(values)

    def _write_extras(self, history: History) -> None:
        for tag, value, epoch in self._pending_extras(history):
            self._writer.add_scalar(tag, value, epoch)

    # -- figures --------------------------------------------------------------------------

    def _start_figures(self, model: nn.Module, step: int) -> None:
        """Settle the impulse shape and whether to map filter scores; write the image once."""
        from convscope.train.max_gain import _find_input_shape

        if self.shape is None:
            self.shape = tuple(self.image.shape) if self.image is not None else None
        if self.shape is None:
            self.shape = _find_input_shape(model)
        self._has_bank = self.image is not None and _has_kernel_bank(model)
        if self._has_bank and self.image is not None:
            self._writer.add_image("filter_scores/image", _input_image(self.image), step)

    def _write_figures(self, model: nn.Module, epoch: int) -> None:
        from convscope.spectral import data_derivative, impulse_image, spectrum_db

        device, dtype = _model_device(model), _model_dtype(model)
        assert self.shape is not None  # settled in _start_figures
        impulse = impulse_image(self.shape, dtype=dtype, device=device)
        spec = spectrum_db(data_derivative(model, impulse)[0])  # (C, H, W)
        for c in range(spec.shape[0]):
            self._writer.add_image(f"spectrum/channel_{c}", _spectrum_image(spec[c]), epoch)
        if self._has_bank and self.image is not None:
            from convscope.attribution import filter_scores

            x = self.image.to(device=device, dtype=dtype)[None]
            pixel_map = filter_scores(model, x).pixel_map[0]
            self._writer.add_image("filter_scores/pixel_map", _signed_image(pixel_map), epoch)
        self._figure_epoch = epoch
