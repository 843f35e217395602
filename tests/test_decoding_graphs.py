"""Decoding through branching graphs: sums, differences, scalings and channel concatenations.

The references are independent of the decoder: for a network that is linear below the decoded
layer (no ReLU, average pools, batch norm in eval mode), a unit's decoded filter must equal the
autograd gradient of that unit with respect to the image, placed where the decoded filter's
stride and padding say; and the decoded filters' correlation with an image must equal the
layer's bias-free response wherever the filter lies inside the image. Float64 throughout.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from convscope.decoding import (
    DecodedFilters,
    decode,
    decoding_chain,
    deconvnet,
    layer_response,
)
from convscope.errors import ConvscopeError

pytestmark = pytest.mark.usefixtures("one_thread")


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=False)


def _calibrated(model: nn.Module, shape: tuple[int, ...], seed: int) -> nn.Module:
    """Float64, eval mode, batch norms with running statistics of random data and random
    affine values (so a norm dropped or mis-scaled changes every answer)."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=torch.float64) + 0.5)
                m.bias.normal_(generator=gen)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, *shape[1:], generator=gen, dtype=torch.float64) * 2 + 0.3)
    return model.eval()


def _window(dec: DecodedFilters, p: tuple[int, int], image: tuple[int, int]) -> tuple[slice, ...]:
    """Where unit ``p``'s decoded filter lies in the image; asserts it lies inside."""
    h, w = dec.filters.shape[-2:]
    top = p[0] * dec.stride[0] - dec.padding[0]
    left = p[1] * dec.stride[1] - dec.padding[1]
    assert 0 <= top and top + h <= image[0] and 0 <= left and left + w <= image[1], (top, left)
    return (slice(top, top + h), slice(left, left + w))


def _gradient_matches_filter(
    model: nn.Module, layer: str, x: torch.Tensor, units: list[tuple[int, int, int]]
) -> float:
    """Max abs difference between each unit's image gradient and its placed decoded filter;
    also asserts the gradient is zero outside the window and did not vanish."""
    dec = decode(model, layer, filters=sorted({k for k, _, _ in units}), unpool="adjoint")
    assert dec.filters.dtype == torch.float64
    row = {k: i for i, k in enumerate(dec.filter_index)}
    worst = 0.0
    for k, py, px in units:
        xi = x.clone().requires_grad_(True)
        out: list[torch.Tensor] = []
        handle = dict(model.named_modules())[layer].register_forward_hook(
            lambda _m, _a, o, out=out: out.append(o)
        )
        try:
            model(xi)
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(out[0][0, k, py, px], xi)
        win = _window(dec, (py, px), tuple(x.shape[-2:]))
        placed = torch.zeros_like(g[0])
        placed[(slice(None), *win)] = dec.filters[row[k]]
        assert g.abs().max() > 1e-3  # the signal did not vanish on the way down
        worst = max(worst, float((g[0] - placed).abs().max() / g.abs().max()))
    return worst


# --------------------------------------------------------------------------- hand-built graphs


class _ResNetLike(nn.Module):
    """A stem, an identity residual, a strided residual with a 1x1 projection, a padded
    average pool, batch norm, and a conv on top: no ReLU, so it is linear below ``top``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(2, 4, 3, padding=1)
        self.a1 = _conv(4, 4, 3, padding=1)
        self.a2 = _conv(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b1 = _conv(4, 6, 3, stride=2, padding=1)
        self.b2 = _conv(6, 6, 3, padding=1)
        self.proj = _conv(4, 6, 1, stride=2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.top = _conv(6, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = self.bn(self.a2(self.a1(y))) + y
        y = self.b2(self.b1(y)) + self.proj(y)
        return self.top(self.pool(y))


class _DenseLike(nn.Module):
    """Concatenations (with the image itself among the parts), differences, scalings, a
    division by a number, a negation, ``torch.add`` with ``alpha`` and tensor methods."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = _conv(3, 4, 3, padding=1)
        self.c2 = _conv(7, 5, 3, padding=1)
        self.c3 = _conv(12, 6, 1)
        self.side = _conv(3, 6, 3, padding=1)
        self.top = _conv(6, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, self.c1(x)], dim=1)
        y = torch.cat([y, self.c2(y)], 1)
        z = 2.0 * self.c3(y) - self.side(x) / 4
        z = torch.add(-z, self.side(x), alpha=0.5)
        return self.top(z.sub(self.c3(y)).mul(0.75))


@pytest.mark.parametrize(
    ("cls", "layer", "units"),
    [
        (_ResNetLike, "top", [(0, 5, 5), (4, 6, 4)]),
        (_ResNetLike, "b2", [(1, 10, 10), (5, 8, 12)]),
        (_DenseLike, "top", [(0, 6, 6), (3, 4, 9)]),
        (_DenseLike, "c2", [(2, 7, 7), (4, 5, 10)]),
    ],
)
def test_branching_decoded_filter_is_the_image_gradient(
    cls: type[nn.Module], layer: str, units: list[tuple[int, int, int]]
) -> None:
    torch.manual_seed(11)
    shape = (1, 2, 48, 48) if cls is _ResNetLike else (1, 3, 24, 24)
    model = _calibrated(cls(), shape, seed=5)
    x = torch.randn(shape, dtype=torch.float64)
    assert _gradient_matches_filter(model, layer, x, units) < 1e-12


@pytest.mark.parametrize("cls", [_ResNetLike, _DenseLike])
def test_branching_correlation_is_the_bias_free_response_inside_the_image(
    cls: type[nn.Module],
) -> None:
    torch.manual_seed(2)
    shape = (3, 2 if cls is _ResNetLike else 3, 32, 32)
    model = _calibrated(cls(), shape, seed=9)
    for m in model.modules():  # a linear, bias-free network: F x is the response itself
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.zero_()
            m.running_mean.zero_()
    x = torch.randn(shape, dtype=torch.float64)
    dec = decode(model, "top", unpool="adjoint")
    est = dec.correlate(x)
    real = layer_response(model, "top", x)
    (fh, fw), (sh, sw), (ph, pw) = dec.filters.shape[-2:], dec.stride, dec.padding
    inside = [
        (i, j)
        for i in range(min(est.shape[-2], real.shape[-2]))
        for j in range(min(est.shape[-1], real.shape[-1]))
        if 0 <= i * sh - ph <= 32 - fh and 0 <= j * sw - pw <= 32 - fw
    ]
    assert len(inside) >= 4
    iy, ix = zip(*inside, strict=True)
    assert real.abs().max() > 1e-2
    torch.testing.assert_close(est[..., iy, ix], real[..., iy, ix], rtol=1e-11, atol=1e-11)


def test_a_sum_of_branches_decodes_to_the_aligned_sum_of_the_decoded_branches() -> None:
    torch.manual_seed(4)
    a = _conv(1, 3, 5, padding=1)  # 5x5 with padding 1 and 3x3 without: equal output sizes
    b = _conv(1, 3, 3)
    top = _conv(3, 2, 3, padding=1)

    class Together(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.top = a, b, top

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.top(self.a(x) + self.b(x))

    together = Together().double()
    dec = decode(together, "top")
    da = decode(nn.Sequential(together.a, top).double(), "1")
    db = decode(nn.Sequential(b, top).double(), "1")
    assert (da.padding, db.padding) == ((2, 2), (1, 1))
    assert dec.padding == (2, 2) and dec.stride == (1, 1)
    assert dec.filters.shape[-2:] == (7, 7) and db.filters.shape[-2:] == (5, 5)
    expect = da.filters.clone()
    expect[..., 1:6, 1:6] += db.filters  # b's box starts one pixel later: offset 2 - 1
    torch.testing.assert_close(dec.filters, expect, rtol=0, atol=1e-12)
    assert db.filters.abs().sum() > 0 and (dec.filters - da.filters).abs().max() > 1e-3
    assert any(s.startswith("merge ") for s in dec.chain)


def test_a_fork_used_twice_gets_both_patterns() -> None:
    conv, top = _conv(1, 2, 3), _conv(2, 2, 1)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.top = conv, top

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.top(y + y - 0.5 * y)

    twice = decode(Twice().double(), "top")
    once = decode(nn.Sequential(conv, top).double(), "1")
    torch.testing.assert_close(twice.filters, 1.5 * once.filters, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- torchvision


def _linear_resnet18() -> nn.Module:
    """torchvision's resnet18 with its ReLUs removed and the max pool made an average pool:
    what decoding reads of it (it skips ReLUs, unpools max pools as average pools) as an
    actual network whose gradients are the reference."""
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(weights=None)
    for name, m in list(model.named_modules()):
        for child, sub in list(m.named_children()):
            if isinstance(sub, nn.ReLU):
                setattr(m, child, nn.Identity())
            elif isinstance(sub, nn.MaxPool2d):
                setattr(m, child, nn.AvgPool2d(3, stride=2, padding=1))
        del name
    return _calibrated(model, (1, 3, 96, 96), seed=1)


@pytest.mark.parametrize(
    ("layer", "units"),
    [("layer1.1.conv2", [(3, 6, 7)]), ("layer2.1.conv1", [(17, 7, 7), (100, 9, 12)])],
)
def test_torchvision_resnet18_decodes_to_its_image_gradient(
    layer: str, units: list[tuple[int, int, int]]
) -> None:
    torch.manual_seed(0)
    model = _linear_resnet18()
    x = torch.randn(1, 3, 160, 160, dtype=torch.float64)
    assert _gradient_matches_filter(model, layer, x, units) < 1e-10


def test_trained_style_resnet18_decodes_with_nearest_unpooling() -> None:
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(weights=None).eval()
    dec = decode(model, "layer2.0.conv2", filters=[0, 5], unpool="nearest")
    assert dec.stride == (8, 8)
    assert dec.filters.shape[:2] == (2, 3) and dec.filters.abs().sum() > 0
    assert dec.chain[0] == "conv conv1 (Conv2d 7x7, stride 2)"
    assert sum(c.startswith("merge") for c in dec.chain) == 2  # layer1's two residual adds
    # the decoded layer's own filter comes last; what lies above it is not read
    assert dec.chain[-1] == "conv layer2.0.conv2 (Conv2d 3x3, stride 1)"
    with pytest.raises(ConvscopeError, match="cannot decode layer2.0.conv2 as a chain"):
        decoding_chain(model, "layer2.0.conv2")


# --------------------------------------------------------------------------- refusals


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _conv(1, 2, 3)
        self.b = _conv(1, 2, 3)
        self.c = _conv(1, 2, 5)
        self.s2 = _conv(1, 2, 2, stride=2)
        self.top = _conv(2, 2, 1)


class _Product(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.a(x) * self.b(x))


class _CatRows(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(torch.cat([self.a(x), self.b(x)], dim=2))


class _TwoInputs(_Two):
    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.top(self.a(x) + self.b(z))


class _Strides(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # 8x8 in: both 4x4, strides 1 and 2
        return self.top(self.c(x) + self.s2(x))


class _Reciprocal(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(2.0 / self.a(x))


class _Tanh(_Two):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.a(x) + torch.tanh(self.b(x)))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (_Product, r"cannot decode top: call_function mul .*a product of tensors"),
        (_CatRows, r"call_function cat .*concatenation along dim 2, not the channels"),
        (_TwoInputs, r"it depends on 2 inputs of _TwoInputs.forward \(x, z\); decoding needs"),
        (_Strides, r"add_\d* .*reached at strides 1 and 2 from the decoded layer|strides"),
        (_Reciprocal, r"call_function truediv .*a number divided by a tensor"),
        (_Tanh, r"call_function tanh .*not a linear operation decoding knows"),
    ],
)
def test_undecodable_branches_name_the_operation(cls: type[nn.Module], message: str) -> None:
    with pytest.raises(ConvscopeError, match=message):
        decode(cls(), "top")


# --------------------------------------------------------------------------- deconvnet


class _RectifiedBackward(torch.autograd.Function):
    """ReLU forward, ``relu`` of the incoming gradient backward: Zeiler-Fergus's rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g.clamp(min=0)


class _DeconvReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RectifiedBackward.apply(x)


def _resnet18(seed: int) -> nn.Module:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    return _calibrated(tv.models.resnet18(weights=None), (1, 3, 64, 64), seed=seed)


def test_deconvnet_through_resnet18_is_autograd_with_rectified_relus() -> None:
    """The reference swaps every ReLU module for one whose backward is relu(grad): plain
    autograd then is the deconvnet, switches, residual splits and all."""
    model = _resnet18(3)
    ref = copy.deepcopy(model)
    for m in list(ref.modules()):
        for child, sub in list(m.named_children()):
            if isinstance(sub, nn.ReLU):
                setattr(m, child, _DeconvReLU())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    got = deconvnet(model, "layer2.1.conv2", x, 7)
    xr = x.clone().requires_grad_(True)
    out: list[torch.Tensor] = []
    h = dict(ref.named_modules())["layer2.1.conv2"].register_forward_hook(
        lambda _m, _a, o: out.append(o)
    )
    try:
        ref(xr)
    finally:
        h.remove()
    o = out[0]
    best = o[:, 7].flatten(1).argmax(1)
    seed = torch.zeros_like(o)
    for i in range(2):
        seed[i, 7].view(-1)[best[i]] = 1.0
    (want,) = torch.autograd.grad(o, xr, seed, retain_graph=True)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the model's own ReLUs are in place again and hook-free afterwards
    assert model.relu.inplace and not model.relu._backward_hooks
    # a fixed position: the same unit (row 3, column 4) for every image
    at = deconvnet(model, "layer2.1.conv2", x, 7, position=(3, 4))
    seed = torch.zeros_like(o)
    seed[:, 7, 3, 4] = 1.0
    (want_at,) = torch.autograd.grad(o, xr, seed, retain_graph=True)
    torch.testing.assert_close(at, want_at, rtol=1e-10, atol=1e-12)
    one = deconvnet(model, "layer2.1.conv2", x[1:], 7, position=(3, 4))
    torch.testing.assert_close(at[1:], one, rtol=1e-12, atol=1e-14)
    with pytest.raises(ConvscopeError, match=r"position 8,0 lies outside layer2.1.conv2's"):
        deconvnet(model, "layer2.1.conv2", x, 7, position=(8, 0))


def test_cross_lens_reads_a_resnet_unit_three_ways() -> None:
    from convscope.cross_lens import cross_lens

    model = _resnet18(4)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    lens = cross_lens(model, "layer2.0.conv2", x, 3, position=(4, 4))
    # the row of a ReLU / max-pool network in freeze mode is the unit's gradient
    xr = x.clone().requires_grad_(True)
    out: list[torch.Tensor] = []
    h = model.layer2[0].conv2.register_forward_hook(lambda _m, _a, o: out.append(o))
    try:
        model(xr)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(out[0][0, 3, 4, 4], xr)
    torch.testing.assert_close(lens.row, g[0], rtol=1e-9, atol=1e-12)
    assert lens.decoded.abs().max() > 0 and lens.deconvnet.abs().max() > 0
    assert all(-1 <= v <= 1 for v in lens.cosine().values())


def test_a_model_behind_input_normalisation_keeps_its_names_and_decodes_through_it() -> None:
    """convscope puts torchvision models behind ``normalize`` (``(x - mean) / std``): the
    user's layer names still work, and the decoded filter is still the image gradient (so
    the per-channel 1 / std is applied; the mean is a bias)."""
    from convscope.models import normalized

    torch.manual_seed(0)
    inner = _linear_resnet18()
    model = normalized(inner, (0.485, 0.456, 0.406), (0.229, 0.224, 0.5)).double().eval()
    x = torch.rand(1, 3, 96, 96, dtype=torch.float64)
    dec = decode(model, "layer1.1.conv2", filters=[3])
    assert dec.layer == "net.layer1.1.conv2" and dec.chain[0] == "scale normalize (Normalize)"
    assert _gradient_matches_filter(model, "net.layer1.1.conv2", x, [(3, 6, 7)]) < 1e-10
    bare = decode(inner, "layer1.1.conv2", filters=[3])
    scale = torch.tensor([0.229, 0.224, 0.5], dtype=torch.float64)[None, :, None, None]
    torch.testing.assert_close(dec.filters, bare.filters / scale, rtol=1e-12, atol=1e-14)
    with pytest.raises(ConvscopeError, match="has no module 'layer9'"):
        decode(model, "layer9")
