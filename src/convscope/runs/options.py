"""The options every analysis takes, defined once, and the checks every run starts with.

The command line has one option group per line of :class:`Options` (``--weights``,
``--state-dict``, ``--device``, ``--channels``, ``--invert``, ``--size``,
``--overwrite``, ``--format``, ``--progress``); from Python they are keyword arguments
of every run. :func:`start` does what every analysis run does first, in an order that
puts every check before any work: parse the options, find the images, claim the output
files, then load the model (with its untrained warning).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch

from convscope.errors import ConvscopeError
from convscope.runs.inputs import ImageSource, expand_images, load_input, parse_size
from convscope.runs.result import OutputPlan, plan_outputs
from convscope.runs.sources import LoadedModel, ModelLike, resolve_model, warn_untrained

__all__ = ["DEFAULTS", "NO_IMAGE", "Options", "Started", "complete", "start"]

NO_IMAGE = ImageSource("no image")
"""The one "image" of a run without ``--image`` (e.g. a spectrum at the impulse image)."""


class Options(TypedDict, total=False):
    """Keyword options shared by every analysis run.

    Keys:
        weights: Pretrained weights of a torchvision/timm name (``"DEFAULT"`` or a
            weights name), through their own download cache.
        state_dict: A weights file for the model the spec builds (read weights-only).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        channels: Convert the image to 1 or 3 channels first.
        invert: ``1 - x`` (dark digits on light paper).
        size: Resize the image to ``"H,W"`` / ``(H, W)``.
        overwrite: Replace results an earlier run left in ``out``.
        formats: Figure formats (``("png", "svg")``).
        progress: Progress bars on stderr.
    """

    weights: str | bool | None
    state_dict: str | os.PathLike[str] | None
    device: str | None
    channels: int | None
    invert: bool
    size: str | tuple[int, int] | None
    overwrite: bool
    formats: Sequence[str]
    progress: bool


DEFAULTS: Options = {
    "weights": None,
    "state_dict": None,
    "device": "cpu",
    "channels": None,
    "invert": False,
    "size": None,
    "overwrite": False,
    "formats": ("png",),
    "progress": False,
}


def _complete(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    merged: dict[str, Any] = {**DEFAULTS, **options}
    if isinstance(merged["formats"], str):
        merged["formats"] = tuple(merged["formats"].split(","))
    return merged


def complete(options: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`Options` with the defaults filled in (unknown keys are a ``TypeError``)."""
    return _complete(options)


@dataclass
class Started:
    """A run after its checks: the model, its images and its claimed folders.

    Attributes:
        model: The model, on the run's device.
        plan: The output folders (one per image when there are several).
        options: Every option, defaults filled in.
        size: ``--size`` parsed.
    """

    model: LoadedModel
    plan: OutputPlan
    options: dict[str, Any]
    size: tuple[int, int] | None

    @property
    def images(self) -> list[ImageSource]:
        return self.plan.images

    @property
    def progress(self) -> bool:
        return bool(self.options["progress"])

    def read(
        self, src: ImageSource, *, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One image as the model takes it, on the model's device, and what was done to it."""
        info = self.model.info
        x, notes = load_input(
            src,
            in_channels=info.get("in_channels"),
            input_size=info.get("input_size"),
            preprocess=info.get("preprocess"),
            channels=self.options["channels"],
            invert=self.options["invert"],
            size=self.size,
        )
        return x.to(device=self.model.device, dtype=dtype), notes

    def head(self, notes: Mapping[str, Any]) -> dict[str, Any]:
        """The block every JSON output starts with: the model and the image."""
        return {"model": self.model.metadata(), "input": dict(notes)}


def start(
    command: str,
    model: ModelLike,
    image: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    owned: Sequence[str],
    options: Mapping[str, Any],
    *,
    dtype: torch.dtype | None = None,
    check: Callable[[Started], object] | None = None,
) -> Started:
    """Check everything a run needs, load the model and read the first image; no computation.

    Args:
        command: The run's short name (names the index page of several images).
        model: A spec, a module or a loaded model.
        image: ``--image``: a file, ``sample:NAME``, a folder or a glob; ``None`` for
            runs that need no image (one :data:`NO_IMAGE` entry then).
        out: ``--out``.
        owned: The files the run writes into each image's folder.
        options: :class:`Options`.
        dtype: Cast the model (the linear runs work in float64).
        check: The run's own checks on the loaded model (raise ConvscopeError), made
            before the untrained warning so a refused run prints one line only.

    Raises:
        ConvscopeError: A bad option, image, ``--out``, existing results without
            ``overwrite``, or a bad model spec.
    """
    opts = _complete(options)
    size = parse_size(opts["size"])
    if opts["channels"] not in (None, 1, 3):
        raise ConvscopeError(f"--channels must be 1 or 3; got {opts['channels']}")
    images = expand_images(image) if image is not None else [NO_IMAGE]
    plan = plan_outputs(command, images, out, owned, overwrite=bool(opts["overwrite"]),
                        formats=opts["formats"])  # fmt: skip
    loaded = resolve_model(model, weights=opts["weights"], state_dict=opts["state_dict"],
                           device=opts["device"], dtype=dtype, warn=False)  # fmt: skip
    started = Started(loaded, plan, opts, size)
    if images[0] is not NO_IMAGE:
        started.read(images[0])  # an image the model cannot take is refused before any work
    if check is not None:
        check(started)
    warn_untrained(loaded)
    return started
