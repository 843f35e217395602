"""Decoding through GFNN's kernel bank: deep filters down to the image, and down to the
named kernels they are built from (seed 003 decoding on seed 000's networks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _literal_decoding import literal_decode
from torch import nn

from convscope import kernels as kb
from convscope.decoding import (
    decode,
    decoding_chain,
    deconvnet,
    kernel_composition,
    layer_response,
    linear_rows,
    reconstruction_error,
)
from convscope.errors import ConvscopeError
from convscope.models import GFNN, ColorFrontEnd, KernelBank2d

THREE = ["sobel_e", "sobel_n", "box_blur"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead


def _bank_as_conv(bank: KernelBank2d) -> nn.Conv2d:
    """The grouped Conv2d a KernelBank2d claims to be, built by hand from its kernels."""
    c, k = bank.in_channels, bank.num_kernels
    conv = nn.Conv2d(c, c * k, 3, stride=bank.stride, padding=bank.padding, groups=c, bias=False)
    w = torch.from_numpy(kb.bank_array(bank.kernel_names)).float()  # as the bank stores them
    with torch.no_grad():
        conv.weight.copy_(w[:, None].repeat(c, 1, 1, 1))  # group c: kernels 0..K-1 on channel c
    return conv.double()


def _tiny(weights: list[list[float]], pool: nn.Module | None = None) -> nn.Sequential:
    """bank (3 named kernels, no padding) -> [pool] -> 1x1 conv with the given weights."""
    conv = nn.Conv2d(3, len(weights), 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weights)[:, :, None, None])
    layers = [KernelBank2d(THREE, padding=0), *([pool] if pool is not None else []), conv]
    return nn.Sequential(*layers).double().eval()


def test_kernel_bank_is_a_conv_step_and_decodes_to_its_kernels() -> None:
    net = _tiny([[1.0, 0.0, 0.0]])
    chain = decoding_chain(net, "1")
    assert [s.kind for s in chain] == ["conv", "conv"]
    assert chain[0].describe() == "conv 0 (KernelBank2d 3x3, stride 1)"
    # the bank decoded as a layer gives its kernels, as a Conv2d gives its weights
    f = decode(net, "0").filters
    assert f.dtype == torch.float64 and f.shape == (3, 1, 3, 3)
    bank = torch.from_numpy(kb.bank_array(THREE)).float().double()
    torch.testing.assert_close(f[:, 0], bank, rtol=0, atol=0)


def test_hand_composition_through_an_average_pool() -> None:
    """bank -> 2x2 average pool -> 1x1 conv: filter 0 is 2 sobel_e - sobel_n, filter 1 is
    0.5 sobel_n + 3 box_blur, each spread over the pool's 2x2 window."""
    net = _tiny([[2.0, -1.0, 0.0], [0.0, 0.5, 3.0]], nn.AvgPool2d(2))
    comp = kernel_composition(net, "2", "adjoint")
    assert comp.kernel_names == THREE and comp.bank == "0" and comp.layer == "2"
    assert comp.coefficients.shape == (2, 1, 3, 2, 2) and comp.filter_index == [0, 1]
    # adjoint unpooling spreads each weight evenly over the window: w / 4 at 4 positions
    expected = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.5, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(
        comp.coefficients[:, 0], (expected / 4)[:, :, None, None].expand(2, 3, 2, 2)
    )
    torch.testing.assert_close(comp.net, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(comp.magnitude, expected.abs(), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        comp.share,
        torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 1 / 7, 6 / 7]], dtype=torch.float64),
        rtol=0,
        atol=1e-15,
    )
    assert [r["kernel"] for r in comp.table(1)] == ["box_blur", "sobel_n", "sobel_e"]
    assert comp.table(0)[0] == {
        "kernel": "sobel_e",
        "net": 2.0,
        "magnitude": 2.0,
        "share": pytest.approx(2 / 3, abs=1e-15),
    }
    # the parts by hand: each kernel, scaled by its coefficient, at the 4 window offsets
    k32 = kb.bank_array(THREE).astype(np.float32).astype(np.float64)
    parts = comp.parts()
    assert parts.shape == (2, 3, 1, 4, 4)
    for f in range(2):
        for k in range(3):
            ref = np.zeros((4, 4))
            for dy in range(2):
                for dx in range(2):
                    ref[dy : dy + 3, dx : dx + 3] += expected[f, k].item() / 4 * k32[k]
            np.testing.assert_allclose(parts[f, k, 0].numpy(), ref, rtol=0, atol=1e-15)
    # summed over kernels the parts are the decoded filters, which are exact here
    dec = decode(net, "2", "adjoint")
    torch.testing.assert_close(comp.filters(), dec.filters, rtol=0, atol=1e-15)
    x = torch.rand(3, 1, 17, 20, dtype=torch.float64)
    torch.testing.assert_close(dec.correlate(x), layer_response(net, "2", x), rtol=0, atol=1e-12)
    # nearest unpooling carries each weight to all 4 positions: 4x the net, same shares
    near = kernel_composition(net, "2", "nearest")
    torch.testing.assert_close(near.net, 4 * expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(near.share, comp.share, rtol=0, atol=1e-15)


def test_hand_composition_of_two_layers_with_relus_skipped() -> None:
    """bank -> ReLU -> 1x1 conv W1 -> ReLU -> 1x1 conv W2: the composition is W2 W1."""
    w1 = [[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]]
    conv2 = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv2.weight.copy_(torch.tensor([3.0, -2.0])[None, :, None, None])
    t = _tiny(w1)
    net = nn.Sequential(t[0], nn.ReLU(), t[1], nn.ReLU(), conv2).double()
    comp = kernel_composition(net, "4")
    # 3 [1, 0, 2] - 2 [0, -1, 1] = [3, 2, 4]
    torch.testing.assert_close(
        comp.net, torch.tensor([[3.0, 2.0, 4.0]], dtype=torch.float64), rtol=0, atol=0
    )
    torch.testing.assert_close(comp.share, torch.tensor([[3 / 9, 2 / 9, 4 / 9]]).double())
    # the filter of the middle layer is its own row of W1
    mid = kernel_composition(net, "2", filters=[1])
    assert mid.filter_index == [1]
    torch.testing.assert_close(mid.net, torch.tensor([[0.0, -1.0, 1.0]]).double())


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_gfnn_deep_filters_equal_the_literal_decoding(mode: str) -> None:
    """GFNN as built (40-kernel bank, ReLUs, max pools, padding): the fast decoding of
    conv 2 and conv 3 equals the paper's loops through the bank written as a Conv2d."""
    torch.manual_seed(0)
    model = GFNN().double().eval()
    assert isinstance(model.first, KernelBank2d)
    layers = [_bank_as_conv(model.first), *model.features]
    for name, top, shape in (("features.2", 4, (64, 1, 8, 8)), ("features.5", 7, (128, 1, 18, 18))):
        dec = decode(model, name, mode, filters=[0, 37])
        assert tuple(dec.filters.shape) == (2, *shape[1:])
        assert dec.stride == ({"features.2": 2, "features.5": 4}[name],) * 2
        for row, k in enumerate([0, 37]):
            ref = torch.from_numpy(literal_decode(layers[:top], k, mode))
            torch.testing.assert_close(dec.filters[row], ref, rtol=0, atol=1e-10)
        comp = kernel_composition(model, name, mode, filters=[0, 37])
        assert comp.kernel_names == [k.name for k in kb.gfnn_bank()]
        torch.testing.assert_close(comp.filters(), dec.filters, rtol=0, atol=1e-12)
        torch.testing.assert_close(comp.share.sum(1), torch.ones(2, dtype=torch.float64))


def test_linearised_gfnn_decoding_matches_the_network_in_the_interior() -> None:
    """GFNN with its ReLUs removed and its pools averaging is linear: with adjoint unpooling
    the decoded filters reproduce conv 3's response wherever no padding inside the network
    is read (the bank's own padding is image padding, so it is exact too)."""
    torch.manual_seed(1)
    model = GFNN(bias=False).double().eval()
    for i in (0, 3, 6):
        model.features[i] = nn.Identity()
    for i in (1, 4):
        model.features[i] = nn.AvgPool2d(2)
    dec = decode(model, "features.5", "adjoint")
    assert dec.filters.shape == (128, 1, 18, 18)
    assert dec.stride == (4, 4) and dec.padding == (1 + 1 * 2 + 1 * 4,) * 2
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    response = layer_response(model, "features.5", x)
    estimate = dec.correlate(x)
    assert estimate.shape == response.shape == (2, 128, 7, 7)
    # unit i reads pool 1's map at 2i-3..2i+4 of 0..13: only i = 2..4 reads no padding of
    # conv 2 or conv 3
    inner = (..., slice(2, 5), slice(2, 5))
    torch.testing.assert_close(estimate[inner], response[inner], rtol=0, atol=1e-12)
    assert (estimate - response).abs().max() > 1e-3  # the border reads intermediate zeros
    # with the biases back in, eq. 3 runs through the bank too
    err = reconstruction_error(GFNN().eval(), "features.5", x.float(), "bilinear")
    assert err.per_image.shape == (2,) and 0 < err.mean < 1


def test_colour_front_end_composition_is_the_mix_weights() -> None:
    torch.manual_seed(2)
    model = GFNN(in_channels=3, kernels=THREE, input_size=16).double().eval()
    assert isinstance(model.first, ColorFrontEnd)
    mix = model.first.mix
    comp = kernel_composition(model, "first.mix")
    assert comp.bank == "first.bank" and comp.coefficients.shape == (64, 3, 3, 1, 1)
    # map c * K + k of the bank is kernel k on channel c: the 1x1 mix's weights, regrouped
    torch.testing.assert_close(
        comp.coefficients[..., 0, 0], mix.weight.detach()[:, :, 0, 0].view(64, 3, 3)
    )
    deep = kernel_composition(model, "features.2", "bilinear", filters=[5])
    dec = decode(model, "features.2", "bilinear", filters=[5])
    assert dec.filters.shape == (1, 3, 12, 12)
    torch.testing.assert_close(deep.filters(), dec.filters, rtol=0, atol=1e-12)
    # and the whole decoding against the loops, the bank as a grouped Conv2d
    layers = [_bank_as_conv(model.first.bank), mix, *model.features[:3]]
    ref = torch.from_numpy(literal_decode(layers, 5, "bilinear"))
    torch.testing.assert_close(dec.filters[0], ref, rtol=0, atol=1e-10)


def test_other_readings_run_through_the_bank() -> None:
    torch.manual_seed(3)
    model = GFNN().double().eval()
    x = torch.zeros(1, 1, 28, 28, dtype=torch.float64)
    x[..., 10:18, 10:18] = torch.rand(8, 8, dtype=torch.float64)  # strongest units inside
    d = deconvnet(model, "features.2", x, 4)
    r = linear_rows(model, "features.2", x, 4)
    assert d.shape == r.shape == (1, 1, 28, 28) and d.abs().sum() > 0 and r.abs().sum() > 0
    # the bank's own filters, placed at the strongest unit, as for a first Conv2d
    d = deconvnet(model, "first", x, 7)
    y, x_ = divmod(int(layer_response(model, "first", x)[0, 7].argmax()), 28)
    assert isinstance(model.first, KernelBank2d)
    bank = torch.from_numpy(kb.bank_array(model.first.kernel_names)).float().double()
    padded = torch.nn.functional.pad(d[0, 0], (1, 1, 1, 1))
    torch.testing.assert_close(padded[y : y + 3, x_ : x_ + 3], bank[7], rtol=0, atol=0)


def test_random_bank_composes_over_its_random_kernels() -> None:
    model = GFNN(first_layer="random", kernels=THREE).double().eval()
    comp = kernel_composition(model, "features.2", filters=[0])
    assert comp.kernel_names == ["random_00", "random_01", "random_02"]
    torch.testing.assert_close(comp.filters(), decode(model, "features.2", filters=[0]).filters)


class _SubclassedBank(KernelBank2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / (x.abs().amax() + 1)  # a normalisation: not a convolution


def test_errors_name_what_cannot_be_composed_or_decoded() -> None:
    # a trained init bank: decoding goes through it, its kernel names would be wrong
    model = GFNN(first_layer="init", kernels=THREE).double().eval()
    assert kernel_composition(model, "features.2").kernel_names == THREE  # untrained: fine
    with torch.no_grad():
        assert isinstance(model.first, KernelBank2d)
        model.first.weight[1, 0, 0, 0] += 0.25
    assert decode(model, "features.2").filters.shape == (64, 1, 8, 8)
    with pytest.raises(ConvscopeError, match=r"no longer the named ones \(largest change 0.25"):
        kernel_composition(model, "features.2")
    # a regular CNN has no bank
    with pytest.raises(ConvscopeError, match="no kernel bank"):
        kernel_composition(GFNN(first_layer="learned"), "features.2")
    # something between the image and the bank
    net = nn.Sequential(nn.AvgPool2d(2), KernelBank2d(THREE), nn.Conv2d(3, 2, 1))
    assert decode(net, "2").filters.shape == (2, 1, 6, 6)
    with pytest.raises(ConvscopeError, match="pool 0 .* lies between the image and the kernel"):
        kernel_composition(net, "2")
    # two banks in the chain
    two = nn.Sequential(KernelBank2d(THREE), KernelBank2d(THREE, in_channels=3))
    with pytest.raises(ConvscopeError, match="2 kernel banks lie below 1"):
        kernel_composition(two, "1")
    # a bank whose forward is not KernelBank2d's convolution is refused, not decoded
    odd = nn.Sequential(_SubclassedBank(THREE), nn.Conv2d(3, 2, 1))
    with pytest.raises(ConvscopeError, match=r"0 \(_SubclassedBank\): it overrides"):
        decode(odd, "1")
    # layers that are not convolutions, bad modes and indices stay refused
    with pytest.raises(ConvscopeError, match="is a Linear; decode_filters decodes Conv2d"):
        kernel_composition(GFNN(), "classifier.1")
    with pytest.raises(ConvscopeError, match="unknown unpool"):
        kernel_composition(GFNN(), "features.2", "lanczos")
    with pytest.raises(ConvscopeError, match="filters 0..63"):
        kernel_composition(GFNN(), "features.2", filters=[64])
    with pytest.raises(ConvscopeError, match="row must lie in 0..0"):
        kernel_composition(GFNN(), "features.2", filters=[3]).table(1)
