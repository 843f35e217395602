"""The hand-made net of seed 003's supplementary material: strokes -> parts -> letters.

Four layers, as in the supplement: conv 4 @ 5x5 (strokes), conv 14 @ 5x5 (parts built
from strokes), 2x2 max-pool, conv 8 @ 3x3 (letters built from parts). No biases and no
ReLU. A 14x14 image gives one 1x1 output per letter, and decoding a letter filter gives
a 14x14 picture of the letter.

Every weight is set by hand:

- strokes: 5-pixel lines through the centre of a 5x5 window: ``-``, ``|``, ``\\``, ``/``;
- parts: one or two strokes placed on the 5x5 grid of layer 2 so that, decoded, they are
  bars at the top, middle or bottom (left, centre, right) of a 9x9 field, corners and
  crossings;
- letters: parts placed on the 3x3 grid of layer 4 (one step = 2 image pixels).

Each letter filter is scaled so that its decoded filter (nearest unpooling) has unit
norm: letters made of more parts would otherwise answer every image more strongly, and
a letter containing another (E contains C) would win on the smaller one's picture.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["LETTERS", "PARTS", "STROKES", "letter_net"]

STROKES: tuple[str, ...] = ("horizontal", "vertical", "diagonal_down", "diagonal_up")
"""Layer-1 filters, in order."""

_H, _V, _D, _U = range(4)

# part name -> strokes (channel, row, col) on layer 2's 5x5 grid; a stroke placed at
# (r, c) is centred on pixel (r + 2, c + 2) of the part's 9x9 decoded field
_PARTS: dict[str, list[tuple[int, int, int]]] = {
    "bar_top": [(_H, 0, 2)],
    "bar_middle": [(_H, 2, 2)],
    "bar_bottom": [(_H, 4, 2)],
    "bar_left": [(_V, 2, 0)],
    "bar_centre": [(_V, 2, 2)],
    "bar_right": [(_V, 2, 4)],
    "diagonal_down": [(_D, 2, 2)],
    "diagonal_up": [(_U, 2, 2)],
    "corner_top_left": [(_H, 0, 2), (_V, 2, 0)],
    "corner_top_right": [(_H, 0, 2), (_V, 2, 4)],
    "corner_bottom_left": [(_H, 4, 2), (_V, 2, 0)],
    "corner_bottom_right": [(_H, 4, 2), (_V, 2, 4)],
    "tee": [(_H, 0, 2), (_V, 2, 2)],
    "cross": [(_D, 2, 2), (_U, 2, 2)],
}
PARTS: tuple[str, ...] = tuple(_PARTS)
"""Layer-2 filters, in order."""

# letter -> parts (name, row, col) on layer 4's 3x3 grid; the letters fill a 10x10 box
# (rows and columns 2..11) of the 14x14 image with 2-pixel-wide strokes
_LETTERS: dict[str, list[tuple[str, int, int]]] = {
    "O": [
        ("corner_top_left", 0, 0),
        ("corner_top_right", 0, 2),
        ("corner_bottom_left", 2, 0),
        ("corner_bottom_right", 2, 2),
    ],
    "C": [
        ("corner_top_left", 0, 0),
        ("bar_top", 0, 2),
        ("corner_bottom_left", 2, 0),
        ("bar_bottom", 2, 2),
    ],
    "L": [("bar_left", 0, 0), ("corner_bottom_left", 2, 0), ("bar_bottom", 2, 2)],
    "T": [("bar_top", 0, 0), ("tee", 0, 1), ("bar_top", 0, 2), ("bar_centre", 2, 1)],
    "E": [
        ("corner_top_left", 0, 0),
        ("bar_top", 0, 2),
        ("bar_middle", 1, 0),
        ("corner_bottom_left", 2, 0),
        ("bar_bottom", 2, 2),
    ],
    "H": [
        ("bar_left", 0, 0),
        ("bar_left", 2, 0),
        ("bar_middle", 1, 0),
        ("bar_middle", 1, 2),
        ("bar_right", 0, 2),
        ("bar_right", 2, 2),
    ],
    "X": [
        ("diagonal_down", 0, 0),
        ("diagonal_up", 0, 2),
        ("cross", 1, 1),
        ("diagonal_up", 2, 0),
        ("diagonal_down", 2, 2),
    ],
    "F": [
        ("corner_top_left", 0, 0),
        ("bar_top", 0, 2),
        ("bar_middle", 1, 0),
        ("bar_left", 2, 0),
    ],
}
LETTERS: tuple[str, ...] = tuple(_LETTERS)
"""Layer-4 filters, in order."""


def _strokes() -> torch.Tensor:
    w = torch.zeros(4, 1, 5, 5)
    w[_H, 0, 2, :] = 1.0
    w[_V, 0, :, 2] = 1.0
    w[_D, 0] = torch.eye(5)
    w[_U, 0] = torch.eye(5).flip(1)
    return w


def letter_net() -> nn.Sequential:
    """The hand-made strokes -> parts -> letters net (float32, eval mode, no biases).

    Returns:
        ``nn.Sequential`` with modules ``conv1`` (4 @ 5x5), ``conv2`` (14 @ 5x5),
        ``pool`` (max 2x2) and ``conv3`` (8 @ 3x3), mapping ``(N, 1, 14, 14)`` images to
        ``(N, 8, 1, 1)`` letter scores, in the order of :data:`LETTERS`.
    """
    from convscope.decoding import decode_filters

    conv1 = nn.Conv2d(1, len(STROKES), 5, bias=False)
    conv2 = nn.Conv2d(len(STROKES), len(PARTS), 5, bias=False)
    conv3 = nn.Conv2d(len(PARTS), len(LETTERS), 3, bias=False)
    w2 = torch.zeros(len(PARTS), len(STROKES), 5, 5)
    for p, strokes in enumerate(_PARTS.values()):
        for ch, r, c in strokes:
            w2[p, ch, r, c] = 1.0
    w3 = torch.zeros(len(LETTERS), len(PARTS), 3, 3)
    for k, parts in enumerate(_LETTERS.values()):
        for name, r, c in parts:
            w3[k, PARTS.index(name), r, c] = 1.0
    with torch.no_grad():
        conv1.weight.copy_(_strokes())
        conv2.weight.copy_(w2)
        conv3.weight.copy_(w3)
    net = nn.Sequential(
        OrderedDict(conv1=conv1, conv2=conv2, pool=nn.MaxPool2d(2), conv3=conv3)
    ).eval()
    norms = decode_filters(net, "conv3", "nearest").flatten(1).norm(dim=1)
    with torch.no_grad():
        conv3.weight.div_(norms[:, None, None, None])
    return net
