"""What every ``convscope linear`` run starts from: the model frozen at one image.

The runs work in float64 (exactness is their point): the model is cast once when it is
loaded (:func:`convscope.runs.options.start` with ``dtype=torch.float64``) and each image
is frozen with :class:`convscope.linear.LinearInterpreter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter
from convscope.runs.inputs import ImageSource
from convscope.runs.options import Started

__all__ = ["MODES", "Frozen", "Output", "flat_target", "freeze", "picture"]

MODES = ("freeze", "taylor")


@dataclass
class Frozen:
    """One image's interpreter and what the JSON output starts with.

    Attributes:
        li: The interpreter at ``x0`` (float64).
        x0: The image, ``(1, C, H, W)`` float64 in [0, 1].
        metrics: ``model``, ``input`` and ``linear`` (mode, shapes, number of bias sources).
    """

    li: LinearInterpreter
    x0: torch.Tensor
    metrics: dict[str, Any]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConvscopeError(f"--mode must be freeze or taylor; got {mode!r}")
    return mode


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


Output = str | int | Callable[[Any], torch.Tensor] | None
"""``--output``: which tensor of a dict, tuple or dataclass output is the model's output
(``"out"`` for torchvision's segmentation models), or a callable picking it."""


def freeze(s: Started, src: ImageSource, mode: str, output: Output = None) -> Frozen:
    """Read ``src`` for the model and freeze the model there.

    Raises:
        ConvscopeError: An image the model cannot take (with a hint to try ``--size``).
    """
    x0, notes = s.read(src, dtype=torch.float64)
    kwargs: dict[str, Any] = {} if output is None else {"output": output}
    try:
        li = LinearInterpreter(s.model.module, x0, mode=mode, **kwargs)  # type: ignore[arg-type]
    except RuntimeError as e:
        raise ConvscopeError(
            f"{s.model.name} cannot run on {src.label} of shape {tuple(x0.shape)}: "
            f"{_first_line(e)} (try --size)"
        ) from None
    metrics = s.head(notes)
    metrics["linear"] = {
        "mode": mode,
        "dtype": "float64",
        "input_shape": list(li.in_shape),
        "output_shape": list(li.out_shape),
        "bias_sources": len(li.sources),
        "output": output if output is None or isinstance(output, (str, int)) else repr(output),
    }
    return Frozen(li, x0, metrics)


def picture(x0: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) tensor -> (H, W) or (H, W, 3) array in [0, 1] for the figures."""
    a = x0[0].detach().float().clamp(0, 1).cpu().numpy()
    return a[0] if a.shape[0] != 3 else a.transpose(1, 2, 0)


def flat_target(li: LinearInterpreter, target: int | None) -> int:
    """``--target`` checked against the outputs, or the largest output."""
    n = math.prod(li.out_shape)
    if target is None:
        return int(li.output.reshape(-1).argmax())
    if not 0 <= target < n:
        raise ConvscopeError(f"--target {target} is out of range for {n} outputs")
    return target


def share(num: torch.Tensor | float, den: torch.Tensor | float) -> float:
    """``num / den`` as a float, NaN where ``den`` is 0."""
    return float(num) / float(den) if float(den) != 0 else float("nan")
