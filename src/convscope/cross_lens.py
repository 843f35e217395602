"""One unit read three ways: its decoded filter, its deconvnet map and its linear row.

A unit is one value of a convolution's output: ``(layer, channel, (y, x))``. On one image
it is read by

- its **decoded filter** (:func:`convscope.decoding.decode`, seed 003): the channel's
  filter rewritten over the image, ReLUs skipped, pools unpooled. It does not depend on
  the image or on the position: every unit of a channel has the same one, placed over
  that unit's receptive field;
- its **deconvnet reconstruction** (Zeiler-Fergus): the unit's activation projected back
  to the image through the transposed convolutions, the image's max-pool switches and,
  at every ReLU, the rectified backward signal;
- the **linear interpreter's row** (seed 001, :class:`convscope.linear.LinearInterpreter`
  on the network cut at ``layer``): with the image's ReLU masks and max-pool selections
  frozen (``mode="freeze"``, or the Jacobian with ``mode="taylor"``), the unit is a linear
  function of the image, and the row is its weights.

:func:`cross_lens` computes the three for one unit and compares them on the unit's
receptive field (the window its decoded filter covers); :func:`locate_unit` checks a unit
(layer, channel, position) cheaply, before any long computation. With the position left
out, the unit is the channel's strongest on the image, as in
:func:`convscope.decoding.deconvnet` and :func:`convscope.decoding.linear_rows`, which
give the same maps for it. Definitions: ``docs/decoding.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convscope.decoding import UpTo, decode, deconvnet, deconvnet_relus
from convscope.errors import ConvscopeError

__all__ = ["MAPS", "CrossLens", "cross_lens", "locate_unit"]

MAPS: tuple[str, ...] = ("decoded", "deconvnet", "row")
"""The three readings, in the order they are drawn and compared."""

_PAIRS = (("decoded", "deconvnet"), ("decoded", "row"), ("deconvnet", "row"))


@dataclass
class CrossLens:
    """One unit's three readings on one image.

    Attributes:
        layer: dotted name of the unit's convolution.
        channel: the unit's channel (filter) of that layer.
        position: ``(y, x)`` on the layer's output grid.
        map_shape: ``(h, w)`` of the layer's output on this image.
        activation: the unit's value (the layer's output there) on the image.
        decoded: ``(C, h_f, w_f)``, the channel's decoded filter (receptive-field size).
        deconvnet: ``(C, H, W)``, the Zeiler-Fergus reconstruction from the image.
        row: ``(C, H, W)``, the linear interpreter's row for the unit.
        window: ``(top, left, height, width)`` in image pixels: where the decoded filter
            lies for this unit (it may reach past the image's edges under padding).
        unpool: the decoding's unpooling mode.
        mode: the linear interpreter's mode (``"freeze"`` or ``"taylor"``).
    """

    layer: str
    channel: int
    position: tuple[int, int]
    map_shape: tuple[int, int]
    activation: float
    decoded: torch.Tensor
    deconvnet: torch.Tensor
    row: torch.Tensor
    window: tuple[int, int, int, int]
    unpool: str
    mode: str

    def _crop(self, m: torch.Tensor) -> torch.Tensor:
        """An image-size map cut to :attr:`window`; zero where the window leaves the image."""
        top, left, h, w = self.window
        out = m.new_zeros((m.shape[0], h, w))
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + h, m.shape[-2]), min(left + w, m.shape[-1])
        if y1 > y0 and x1 > x0:
            out[:, y0 - top : y1 - top, x0 - left : x1 - left] = m[:, y0:y1, x0:x1]
        return out

    def cropped(self) -> dict[str, torch.Tensor]:
        """The three maps on the unit's receptive field, ``(C, h_f, w_f)`` each."""
        return {
            "decoded": self.decoded,
            "deconvnet": self._crop(self.deconvnet),
            "row": self._crop(self.row),
        }

    def cosine(self) -> dict[str, float]:
        """Cosine similarity of each pair of maps on the receptive field.

        Keys ``"decoded_deconvnet"``, ``"decoded_row"``, ``"deconvnet_row"``; 0 when a
        map is all zero.
        """
        c = self.cropped()
        return {f"{a}_{b}": _cosine(c[a], c[b]) for a, b in _PAIRS}

    def inside_window(self) -> dict[str, float]:
        """The share of each image-size map's squared norm inside the receptive field.

        1.0 for a chain of convolutions and pools (nothing outside can reach the unit);
        NaN for an all-zero map.
        """
        out = {}
        for name in ("deconvnet", "row"):
            full = getattr(self, name)
            total = float(full.double().pow(2).sum())
            inside = float(self._crop(full).double().pow(2).sum())
            out[name] = min(1.0, inside / total) if total > 0 else float("nan")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The numbers (no maps), for a JSON result."""
        top, left, h, w = self.window
        return {
            "layer": self.layer,
            "channel": self.channel,
            "position": list(self.position),
            "map_shape": list(self.map_shape),
            "activation": self.activation,
            "unpool": self.unpool,
            "mode": self.mode,
            "receptive_field": {"top": top, "left": left, "height": h, "width": w},
            "cosine": self.cosine(),
            "inside_receptive_field": self.inside_window(),
            "max_abs": {name: float(getattr(self, name).abs().max()) for name in MAPS},
            "max_abs_deconvnet_minus_row": float((self.deconvnet - self.row).abs().max()),
        }


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ConvscopeError(f"the image must be one (1, C, H, W) tensor; got {shape}")


def locate_unit(
    model: nn.Module,
    layer: nn.Module | str,
    image: torch.Tensor,
    channel: int,
    position: tuple[int, int] | None = None,
) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """Check a unit and find its position: one forward pass, no gradients.

    Args:
        model: the network; below ``layer`` a graph :func:`convscope.decoding.decode` can
            walk (chains, sums, channel concatenations) with ReLU modules, not calls.
        layer: a ``Conv2d`` (or ``KernelBank2d``) of ``model`` or its dotted name.
        image: ``(1, C, H, W)``.
        channel: the unit's channel.
        position: ``(y, x)`` on the layer's output grid; ``None``: where ``channel`` is
            largest on ``image`` (the first such place).

    Returns:
        ``(name, (y, x), (h, w))``: the layer's dotted name, the unit's position and the
        size of the layer's output.

    Raises:
        ConvscopeError: an unknown or undecodable layer (the message from
            :func:`convscope.decoding.deconvnet_relus`), a channel out of range, a position
            outside the map, or a ReLU below the layer that is a function call (the
            deconvnet reaches ReLUs through module hooks).
    """
    _check_image(image)
    name, k_all, _ = deconvnet_relus(model, layer)
    if isinstance(channel, bool) or not 0 <= int(channel) < k_all:
        raise ConvscopeError(f"{name} has channels 0..{k_all - 1}; got {channel}")
    with torch.no_grad():
        out = UpTo(model, name)(image)
    h, w = int(out.shape[-2]), int(out.shape[-1])
    if position is None:
        flat = int(out[0, int(channel)].flatten().argmax())
        return name, divmod(flat, w), (h, w)
    y, x = int(position[0]), int(position[1])
    if not (0 <= y < h and 0 <= x < w):
        raise ConvscopeError(
            f"position {y},{x} lies outside {name}'s output map ({h}x{w}: y 0..{h - 1}, "
            f"x 0..{w - 1})"
        )
    return name, (y, x), (h, w)


def _deconvnet_at(
    model: nn.Module, name: str, image: torch.Tensor, channel: int, position: tuple[int, int]
) -> tuple[torch.Tensor, float]:
    """The Zeiler-Fergus map of one unit, ``(C, H, W)``, and the unit's activation."""
    grad = deconvnet(model, name, image, channel, position)
    with torch.no_grad():
        out = UpTo(model, name)(image)
    y, x = position
    return grad[0], float(out[0, channel, y, x])


def cross_lens(
    model: nn.Module,
    layer: nn.Module | str,
    image: torch.Tensor,
    channel: int,
    position: tuple[int, int] | None = None,
    *,
    unpool: str = "nearest",
    mode: str = "freeze",
) -> CrossLens:
    """A unit's decoded filter, deconvnet reconstruction and linear row on one image.

    Args:
        model: a network whose layers below ``layer`` form a chain, in eval mode.
        layer: a ``Conv2d`` (or ``KernelBank2d``) of ``model`` or its dotted name.
        image: ``(1, C, H, W)``, in the model's dtype and on its device.
        channel: the unit's channel.
        position: ``(y, x)`` on the layer's output grid (``None``: the channel's
            strongest unit on ``image``).
        unpool: the decoding's unpooling mode (see :func:`convscope.decoding.decode`).
        mode: the linear interpreter's, ``"freeze"`` or ``"taylor"``.

    Returns:
        :class:`CrossLens`; its ``to_dict()`` has the numbers.

    Raises:
        ConvscopeError: see :func:`locate_unit`; a bad ``unpool`` or ``mode``.
    """
    from convscope.linear import LinearInterpreter

    name, pos, (h, w) = locate_unit(model, layer, image, channel, position)
    channel = int(channel)
    dec = decode(model, name, unpool, filters=[channel])
    if mode not in ("freeze", "taylor"):  # before the interpreter's first pass
        raise ConvscopeError(f"mode must be one of ['freeze', 'taylor']; got {mode!r}")
    deconv, activation = _deconvnet_at(model, name, image, channel, pos)
    li = LinearInterpreter(UpTo(model, name), image.detach(), mode)  # type: ignore[arg-type]
    row = li.rows([channel * h * w + pos[0] * w + pos[1]]).detach()[0]
    fh, fw = dec.filters.shape[-2:]
    window = (
        pos[0] * dec.stride[0] - dec.padding[0],
        pos[1] * dec.stride[1] - dec.padding[1],
        int(fh),
        int(fw),
    )
    return CrossLens(
        layer=name,
        channel=channel,
        position=pos,
        map_shape=(h, w),
        activation=activation,
        decoded=dec.filters[0].detach(),
        deconvnet=deconv,
        row=row,
        window=window,
        unpool=dec.unpool,
        mode=mode,
    )
