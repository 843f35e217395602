"""The supplement's hand-made strokes -> parts -> letters net."""

from __future__ import annotations

import pytest
import torch

from convscope.decoding import UNPOOL_MODES, decode_filters
from convscope.models.letters import LETTERS, PARTS, STROKES, letter_net

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead


def test_layout() -> None:
    net = letter_net()
    assert [tuple(m.weight.shape) for m in (net.conv1, net.conv2, net.conv3)] == [
        (len(STROKES), 1, 5, 5),
        (len(PARTS), 4, 5, 5),
        (len(LETTERS), 14, 3, 3),
    ]
    assert (len(STROKES), len(PARTS), len(LETTERS)) == (4, 14, 8)
    assert net(torch.rand(2, 1, 14, 14)).shape == (2, 8, 1, 1)
    assert decode_filters(net, "conv2").shape == (14, 1, 9, 9)
    df = decode_filters(net, "conv3")
    assert df.shape == (8, 1, 14, 14)
    torch.testing.assert_close(df.flatten(1).norm(dim=1), torch.ones(8))


def test_decoded_letters_have_their_shapes() -> None:
    df = decode_filters(letter_net(), "conv3")[:, 0]
    ink = df > 0
    o, c, l_, t, e, h = (ink[LETTERS.index(s)] for s in "OCLTEH")
    box = slice(2, 12)
    assert o[2, box].all() and o[11, box].all() and o[box, 2].all() and o[box, 11].all()
    assert not o[5:9, 5:9].any()  # the O's hole
    assert not c[5:9, 10:12].any() and c[2, box].all()  # open on the right
    assert l_[box, 2].all() and l_[11, box].all() and not l_[2:5, 6:12].any()
    assert t[2, box].all() and t[box, 6].all() and not t[6:12, 2:5].any()
    assert e[6, 2:8].all() and not e[6, 10:12].any()
    assert h[box, 2].all() and h[box, 11].all() and not h[2:5, 5:9].any()
    assert not ink[:, :2].any() and not ink[:, :, :2].any()  # a 2-pixel margin


@pytest.mark.parametrize("mode", UNPOOL_MODES)
def test_each_decoded_letter_excites_its_own_filter_most(mode: str) -> None:
    """Supplement: a decoded top filter fed back as the image wins at its own filter."""
    net = letter_net()
    images = decode_filters(net, "conv3", mode)  # (8, 1, 14, 14)
    with torch.no_grad():
        scores = net(images).flatten(1)  # (image, filter)
    assert scores.argmax(1).tolist() == list(range(len(LETTERS)))
