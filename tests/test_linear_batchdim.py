"""The sample (batch) dimension through the linear interpreter (issue 11, points 1 and 5).

Every op that would mix, reorder, drop or reduce the samples of a pass is refused with
its name and module path; the same op along another dimension still gives the exact
derivative (taylor mode against ``torch.func.jvp``). Ops that move the samples
(transposes, permutes) or merge them with other factors while keeping every sample's
values apart (window partitions) are followed wherever they sit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _linear_helpers import jvp_reference, rel_err
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter
from convscope.linear import batchdim as bd

Fn = Callable[[torch.Tensor], torch.Tensor]


@pytest.fixture(autouse=True)
def _float64() -> object:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Lambda(nn.Module):
    def __init__(self, fn: Fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _net(fn: Fn, channels: int = 6) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.GELU())
    net.add_module("body", nn.Sequential(Lambda(fn)))
    return net.eval()


def _same_everywhere(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor) -> None:
    """Taylor mode is the first-order expansion; freeze reproduces f(x0)."""
    li = LinearInterpreter(model, x0, mode="taylor")
    f0, jv = jvp_reference(model, x0, x1)
    scale = float(f0.abs().max())
    assert float(jv.abs().max()) > 1e-3 * scale
    torch.testing.assert_close(li.output, f0, rtol=1e-12, atol=1e-12 * scale)
    assert rel_err(li.linear(x1 - x0), jv) < 1e-10
    freeze = LinearInterpreter(model, x0, mode="freeze")
    torch.testing.assert_close(freeze(x0), f0, rtol=1e-12, atol=1e-12 * scale)
    parts = freeze.contributions()
    torch.testing.assert_close(sum(parts.values()), f0, rtol=1e-10, atol=1e-10 * scale)


def _perm(y: torch.Tensor) -> torch.Tensor:
    return torch.arange(y.shape[0]).flip(0)


# op on the batch dimension -> the fragment of its name the error must show
REFUSED: dict[str, tuple[Fn, str]] = {
    "getitem_perm": (lambda y: y[_perm(y)], "__getitem__"),
    "getitem_int": (lambda y: y[0:1].expand_as(y), "__getitem__"),
    "getitem_mask": (lambda y: y[torch.ones(y.shape[0], dtype=torch.bool)], "__getitem__"),
    "index_select": (lambda y: y.index_select(0, _perm(y)), "index_select"),
    "gather": (lambda y: torch.gather(y, 0, torch.zeros_like(y, dtype=torch.long)), "gather"),
    "take_along_dim": (
        lambda y: torch.take_along_dim(y, torch.zeros_like(y, dtype=torch.long), 0),
        "take_along_dim",
    ),
    "roll": (lambda y: torch.roll(y, 1, 0), "roll"),
    "roll_flat": (lambda y: torch.roll(y, 1), "roll"),
    "flip": (lambda y: y.flip(0), "flip"),
    "sum": (lambda y: y - y.sum(0), "sum"),
    "mean": (lambda y: y - y.mean(0, keepdim=True), "mean"),
    "max": (lambda y: y - y.max(0).values, "max"),
    "sort": (lambda y: y.sort(0).values, "sort"),
    "topk": (lambda y: y.topk(1, 0).values, "topk"),
    "cumsum_int": (lambda y: y.cumsum(1, dtype=torch.int64).to(y.dtype), "cumsum"),
    "cumsum": (lambda y: y.cumsum(0), "cumsum"),
    "narrow": (lambda y: y.narrow(0, 0, 1).expand_as(y), "narrow"),
    "chunk": (lambda y: y.chunk(2, 0)[0], "chunk"),
    "cat": (lambda y: torch.cat([y, y], 0), "cat"),
    "softmax": (lambda y: F.softmax(y, dim=0), "softmax"),
    "layer_norm": (
        lambda y: F.layer_norm(y.transpose(0, 3), y.shape[:1]).transpose(0, 3),
        "layer_norm",
    ),
    "reshape_mixing": (lambda y: y.reshape(-1, 32)[:, 0], "reshape"),
    "einsum_outer": (lambda y: torch.einsum("nchw,mchw->nm", y, y), "einsum"),
    "matmul_contract": (lambda y: y.flatten(1).T @ y.flatten(1), "matmul"),
    "linear_over_batch": (
        lambda y: F.linear(y.transpose(0, 3), torch.ones(3, y.shape[0])),
        "linear",
    ),
    "setitem_row": (lambda y: _setitem_row(y), "__setitem__"),
    "add_per_sample_constant": (lambda y: y + torch.arange(y.shape[0]).view(-1, 1, 1, 1), "add"),
    "to_int": (lambda y: y.to(torch.int32).to(y.dtype), "to"),
    "type_int": (lambda y: y.type(torch.int64).to(y.dtype), "type"),
    "type_string": (lambda y: y.type("torch.LongTensor").to(y.dtype), "type"),
    "long": (lambda y: y.long().to(y.dtype), "long"),
    "int": (lambda y: y.int().to(y.dtype), "int"),
    "bool": (lambda y: y.bool().to(y.dtype), "bool"),
    "round": (lambda y: y.round(), "round"),
    "view_dtype": (lambda y: y.view(torch.int64).to(y.dtype), "view"),
    "output_not_first": (lambda y: y.transpose(0, 1), "output"),
    "conv_unbatched": (lambda y: F.conv2d(y[:, 0], torch.ones(2, y.shape[0], 3, 3)), "conv2d"),
    "pixel_shuffle_unbatched": (lambda y: F.pixel_shuffle(y[:, 0, :2, :2], 1), "pixel_shuffle"),
    "pool_then_sum_over_batch": (lambda y: F.avg_pool2d(y, 2).sum((0, 1)), "sum"),
}


def _setitem_row(y: torch.Tensor) -> torch.Tensor:
    y = y.clone()
    y[0] = 0.0
    return y


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_op_on_the_batch_dimension_is_refused_with_its_name_and_module(name: str) -> None:
    fn, fragment = REFUSED[name]
    channels = 3 if name == "reshape_mixing" else 6
    model = _net(fn, channels)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConvscopeError) as info:
        LinearInterpreter(model, torch.randn(1, 3, 4, 4), mode="taylor")
    message = str(info.value)
    assert fragment in message
    assert "module 'body.0'" in message or fragment == "output"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def _mask_channels(y: torch.Tensor) -> torch.Tensor:
    keep = torch.tensor([True, False, True, True, False, True])
    return y[:, keep]


def _gather_channels(y: torch.Tensor) -> torch.Tensor:
    idx = torch.tensor([2, 0, 1, 5, 5, 3]).view(1, -1, 1, 1).expand_as(y)
    return torch.gather(y, 1, idx)


def _windows(y: torch.Tensor) -> torch.Tensor:
    """A window partition and its inverse around per-window ops (Swin's pattern)."""
    n, c, h, w = y.shape
    t = y.permute(0, 2, 3, 1)  # (n, h, w, c)
    t = t.view(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, c)
    t = F.layer_norm(t, (c,)) * torch.tanh(t)  # per window, samples merged with windows
    t = t - t.mean(1, keepdim=True)
    t = t.view(n, h // 2, w // 2, 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
    return t.permute(0, 3, 1, 2)


def _seq_first(y: torch.Tensor) -> torch.Tensor:
    """(N, L, D) -> (L, N, D), elementwise, reduce over L, back (ViT's MHA layout)."""
    t = y.flatten(2).transpose(1, 2).transpose(0, 1)  # (L, N, C)
    t = torch.sigmoid(t) * t + t.sum(0, keepdim=True)
    t = F.linear(t, torch.eye(t.shape[-1]) * 0.5 + 0.1, torch.arange(t.shape[-1]) * 0.1)
    return t.transpose(0, 1)


KEPT: dict[str, Fn] = {
    "getitem_channels": lambda y: y[:, [2, 0, 1]],
    "getitem_mask_channels": _mask_channels,
    "getitem_int_channel": lambda y: y[:, 1] * y[:, 2],
    "getitem_ellipsis": lambda y: y[..., 0::2, 1:],
    "index_select": lambda y: y.index_select(1, torch.tensor([3, 3, 0])),
    "gather": _gather_channels,
    "roll": lambda y: torch.roll(y, (1, 2), (2, 3)),
    "flip": lambda y: y.flip(1, 3),
    "sum": lambda y: y.sum(1, keepdim=True) * y.mean((2, 3), keepdim=True) + y.sum(-1)[..., None],
    "max": lambda y: y.max(1, keepdim=True).values + y.amax(2, keepdim=True),
    "sort_topk_cumsum": lambda y: (
        y.sort(1).values[:, :3] * y.topk(2, -1).values.sum(-1, True)[:, :3] + y.cumsum(2)[:, :3]
    ),
    "narrow_chunk_cat": lambda y: torch.cat([*y.chunk(2, 1)[::-1], y.narrow(1, 1, 2)], 1),
    "softmax": lambda y: F.softmax(y, dim=1) * y,
    "log_softmax": lambda y: F.log_softmax(y.flatten(1), dim=-1),
    "transpose_back": lambda y: (y.transpose(0, 2) * 2.0).transpose(0, 2).contiguous(),
    "movedim": lambda y: torch.relu(y.movedim(0, -1) - 0.1).movedim(-1, 0),
    "stack_unbind": lambda y: torch.stack(y.unbind(1)[::-1], dim=2),
    "repeat": lambda y: y.repeat(1, 2, 1, 1),
    "cast_float": lambda y: y.double() + y.to(torch.float64) + y.type(torch.float64),
    "windows": _windows,
    "seq_first": _seq_first,
    "einsum_heads": lambda y: torch.einsum("nchw,nchv->ncwv", y, y),
    "matmul_batched": lambda y: y @ y.transpose(-2, -1),
}


@pytest.mark.parametrize("name", sorted(KEPT))
def test_the_same_op_along_another_dimension_is_exact(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 4, 4, generator=gen)
    _same_everywhere(_net(KEPT[name]), x[:1], x[1:])


def test_reshape_layout_keeps_samples_apart_and_refuses_splits() -> None:
    rows = 3
    # a window partition: (B, H, W, C) -> (B * windows, ws * ws, C)
    split = bd.reshape_layout((rows, 4, 4, 2), bd.FIRST, (rows, 2, 2, 2, 2, 2), rows)
    assert split == bd.FIRST
    merged = bd.reshape_layout((rows, 2, 2, 2, 2, 2), bd.FIRST, (rows * 4, 4, 2), rows)
    assert merged == bd.Layout(0, 1, 4)
    assert bd.reshape_layout((rows * 4, 4, 2), merged, (rows, 4, 4, 2), rows) == bd.FIRST
    # sequence first, then (L * N, E)
    assert bd.reshape_layout((5, rows, 8), bd.Layout(1), (5 * rows, 8), rows) == bd.Layout(0, 5)
    # splitting the samples
    assert bd.reshape_layout((rows, 4), bd.FIRST, (2, 6), rows) is None
    assert bd.reshape_layout((4, rows), bd.Layout(1), (rows, 4), rows) is None


def test_canonical_view_round_trip() -> None:
    rows, layout = 3, bd.Layout(1, 2, 5)
    t = torch.randn(4, 2 * rows * 5, 7)
    c = bd.canon(t, layout, rows)
    assert c.shape == (rows, 4, 2, 5, 7)
    # sample r of the canonical view is the block (a * rows + r) * 5 + j of dimension 1
    assert torch.equal(c[1, :, 1, 3], t[:, (1 * rows + 1) * 5 + 3])
    assert torch.equal(bd.uncanon(c, layout, t.shape, rows), t)
