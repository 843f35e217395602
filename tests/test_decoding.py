"""Filter decoding: the fast batched version against the paper's literal loops, exactness
for linear chains, the chain walk and its errors, and the reading helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _literal_decoding import literal_decode
from torch import nn

import convscope as cs
from convscope.decoding import (
    UNPOOL_MODES,
    compare_responses,
    decode,
    decode_filters,
    decoded_activations,
    decoding_chain,
    deconvnet,
    layer_response,
    linear_rows,
    max_activation_matrix,
    reconstruction_error,
    threshold_filters,
    top_activating,
)
from convscope.errors import ConvscopeError
from convscope.models import LeNet, load_checkpoint

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "decoding"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead


def _random_net(variant: str) -> nn.Sequential:
    torch.manual_seed(hash(variant) % 1000)
    if variant == "plain":
        layers: list[nn.Module] = [
            nn.Conv2d(1, 3, 3),
            nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.Conv2d(4, 2, 2),
        ]
    elif variant == "stride_padding":
        layers = [
            nn.Conv2d(2, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(4, 3, (3, 2), stride=(1, 2), padding=(0, 1)),
            nn.AvgPool2d(2),
            nn.Conv2d(3, 5, 2),
        ]
    elif variant == "dilation_groups":
        layers = [
            nn.Conv2d(2, 4, 3, dilation=2),
            nn.MaxPool2d(2, dilation=2),
            nn.Conv2d(4, 6, 3, groups=2, dilation=(1, 2)),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 4, 2, stride=2, groups=2, dilation=2),
        ]
    else:  # overlapping pools: non-integer bilinear/bicubic scale factors
        layers = [
            nn.Conv2d(1, 3, 2, stride=2),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(3, 3, 2),
            nn.AvgPool2d((3, 2), (2, 1)),
            nn.Conv2d(3, 2, 3, padding=2),
        ]
    net = nn.Sequential(*layers).double().eval()
    for m in net:
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_var is not None and m.running_mean is not None
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.uniform_(-1.0, 1.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    return net


@pytest.mark.parametrize("variant", ["plain", "stride_padding", "dilation_groups", "overlap"])
@pytest.mark.parametrize("mode", UNPOOL_MODES)
def test_fast_equals_literal(variant: str, mode: str) -> None:
    net = _random_net(variant)
    top = str(len(net) - 1)
    fast = decode(net, top, mode).filters
    assert fast.dtype == torch.float64
    for k in range(fast.shape[0]):
        ref = torch.from_numpy(literal_decode(list(net), k, mode))
        assert fast[k].shape == ref.shape
        torch.testing.assert_close(fast[k], ref, rtol=0, atol=1e-10)


def test_fast_equals_literal_on_lenet_subset() -> None:
    model = LeNet().double()
    dec = decode(model, "features.conv3", "bicubic", filters=[0, 499])
    assert dec.filters.shape == (2, 1, 28, 28)
    layers = list(model.features)[:5]
    for row, k in enumerate([0, 499]):
        ref = torch.from_numpy(literal_decode(layers, k, "bicubic"))
        torch.testing.assert_close(dec.filters[row], ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bias", [False, True])
def test_adjoint_unpooling_is_exact_for_linear_average_chains(bias: bool) -> None:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, dilation=2, bias=bias),
        nn.AvgPool2d(3, 2),
        nn.Conv2d(4, 6, 3, groups=2, dilation=(1, 2), bias=bias),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 5, 2, stride=(1, 2), bias=bias),
    ).double()
    x = torch.rand(3, 2, 61, 67, dtype=torch.float64)
    dec = decode(net, "4", "adjoint")
    assert dec.stride == (8, 16) and dec.padding == (0, 0)
    response = layer_response(net, "4", x)
    black = layer_response(net, "4", torch.zeros_like(x[:1]))  # the biases, carried up
    estimate = dec.correlate(x) + black
    assert estimate.shape == response.shape
    torch.testing.assert_close(estimate, response, rtol=0, atol=1e-12)
    err = reconstruction_error(net, "4", x, "adjoint")
    assert err.mean < 1e-20
    # nearest unpooling is the same pattern times the pool area only when windows do
    # not overlap; here they do, so it is an approximation
    assert reconstruction_error(net, "4", x, "nearest").mean > 1e-4


def test_lenet_shapes_strides_and_first_layer() -> None:
    model = LeNet()
    expected = {
        "features.conv1": ((20, 1, 5, 5), (1, 1)),
        "features.conv2": ((50, 1, 14, 14), (2, 2)),
        "features.conv3": ((500, 1, 28, 28), (4, 4)),
        "features.conv4": ((10, 1, 28, 28), (4, 4)),
    }
    for name, (shape, stride) in expected.items():
        dec = decode(model, name)
        assert tuple(dec.filters.shape) == shape and dec.stride == stride
    torch.testing.assert_close(
        decode_filters(model, model.features.conv1), model.features.conv1.weight
    )
    chain = [s.kind for s in decoding_chain(model, "features.conv4")]
    assert chain == ["conv", "pool", "conv", "pool", "conv", "skip", "conv"]


def test_top_layer_dilation_and_groups_expand_the_filter() -> None:
    conv = nn.Conv2d(4, 2, 2, dilation=3, groups=2)
    f = decode_filters(nn.Sequential(conv), "0")
    assert f.shape == (2, 4, 4, 4)
    torch.testing.assert_close(f[0, :2, ::3, ::3], conv.weight[0])
    torch.testing.assert_close(f[1, 2:, ::3, ::3], conv.weight[1])
    assert f[0, 2:].abs().sum() == 0 and f[1, :2].abs().sum() == 0
    assert f[:, :, 1:3].abs().sum() == 0  # the dilation's holes


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3)
        self.b = nn.Conv2d(2, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.relu(self.a(x)))


class _Residual(_Functional):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.b(y + torch.tanh(y))


class _PoolCall(_Functional):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.avg_pool2d(self.a(x), 2))


class _Untraceable(_Functional):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return self.b(self.a(x))


class _CheckedLayer(nn.Module):
    """A childless custom layer whose forward cannot be traced (a shape check)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 2:
            raise ValueError("two channels expected")
        return x * 2


def test_childless_custom_layer_is_named_not_traced_into() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), _CheckedLayer(), nn.Conv2d(2, 2, 3))
    with pytest.raises(ConvscopeError, match=r"cannot decode through 1 \(_CheckedLayer\)"):
        decode_filters(net, "2")
    assert decode_filters(net, "0").shape == (2, 1, 3, 3)  # what lies above does not matter


def test_functional_relu_is_skipped() -> None:
    kinds = [(s.kind, s.name) for s in decoding_chain(_Functional(), "b")]
    assert kinds[1][0] == "skip" and "relu" in kinds[1][1]


@pytest.mark.parametrize(
    ("model", "layer", "message"),
    [
        (_Residual(), "b", r"call_function tanh.*not a linear operation"),
        (_PoolCall(), "b", "avg_pool2d"),
        (_Untraceable(), "b", "cannot trace _Untraceable"),
        (_Functional(), "c", "has no module 'c'"),
        (LeNet(), "features.pool1", "decodes Conv2d layers"),
        (
            nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Conv2d(2, 2, 3)),
            "2",
            r"1 \(Sigmoid\)",
        ),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3)), "2", "eval"),
    ],
)
def test_undecodable_graphs_name_the_culprit(model: nn.Module, layer: str, message: str) -> None:
    with pytest.raises(ConvscopeError, match=message):
        decode_filters(model, layer)


def test_shared_module_and_bad_arguments() -> None:
    conv = nn.Conv2d(2, 2, 3)
    with pytest.raises(ConvscopeError, match="called 2 times"):
        decode_filters(nn.Sequential(nn.Conv2d(1, 2, 1), conv, conv), "1")
    with pytest.raises(ConvscopeError, match="unknown unpool"):
        decode_filters(LeNet(), "features.conv2", "lanczos")
    with pytest.raises(ConvscopeError, match="filters 0..19"):
        decode(LeNet(), "features.conv1", filters=[20])
    with pytest.raises(ConvscopeError, match="not part of"):
        decode_filters(LeNet(), nn.Conv2d(1, 1, 1))


def test_model_left_as_it_came() -> None:
    model = LeNet().train()
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    reconstruction_error(model, "features.conv2", torch.rand(4, 1, 28, 28))
    assert model.training
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert all(p.grad is None for p in model.parameters())


def test_first_layer_reconstruction_is_exact_with_offset() -> None:
    model = LeNet().eval()
    x = torch.rand(5, 1, 28, 28)
    assert reconstruction_error(model, "features.conv1", x).mean < 1e-12  # float32 model
    assert reconstruction_error(model, "features.conv1", x, offset=False).mean > 0


def test_reading_helpers() -> None:
    f = torch.tensor([[[1.0, -0.6], [0.2, -0.1]], [[0.0, 0.3], [-0.3, 0.1]]])
    t = threshold_filters(f, 0.5)
    assert t.tolist() == [[[1, -1], [0, 0]], [[0, 1], [-1, 0]]]
    with pytest.raises(ConvscopeError, match="fraction"):
        threshold_filters(f, 0.0)
    scores = torch.tensor([[1.0, 0.0], [3.0, 1.0], [2.0, 5.0]])  # 3 images, 2 filters
    assert top_activating(scores, 2).tolist() == [[1, 2], [2, 1]]
    best, matrix = max_activation_matrix(scores)
    assert best.tolist() == [1, 2]
    assert matrix.tolist() == [[3.0, 2.0], [1.0, 5.0]]


def test_table_shape_on_trained_lenet() -> None:
    """Seed 003 Table 1 in small: error grows with depth, unpooling modes agree."""
    model, _ = load_checkpoint(RESULTS / "lenet_mnist.pt")
    x = torch.from_numpy(cs.data.load_mnist_subset("test").images[:100])
    layers = ["features.conv2", "features.conv3", "features.conv4"]
    errs = {
        (layer, mode): reconstruction_error(model, layer, x, mode).mean
        for layer in layers
        for mode in ("nearest", "bilinear", "bicubic")
    }
    for mode in ("nearest", "bilinear", "bicubic"):
        e = [errs[layer, mode] for layer in layers]
        assert e[0] < e[1] < e[2] < 0.2
    for layer in layers:
        e = [errs[layer, mode] for mode in ("nearest", "bilinear", "bicubic")]
        assert max(e) < 1.5 * min(e)


def test_compare_responses_and_activations() -> None:
    model = LeNet().eval()
    x = torch.rand(3, 1, 28, 28)
    r, e = compare_responses(model, "features.conv2", x, "bicubic")
    assert r.shape == e.shape == (3, 50, 8, 8)
    for t in (r, e):
        flat = t.flatten(1)
        torch.testing.assert_close(flat.amin(1), torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(flat.amax(1), torch.ones(3, dtype=torch.float64))
    err = reconstruction_error(model, "features.conv2", x, "bicubic")
    torch.testing.assert_close(
        torch.from_numpy(err.per_image), ((r - e) ** 2).flatten(1).mean(1), rtol=1e-12, atol=0
    )
    dec = decode(model, "features.conv2")
    acts = decoded_activations(dec, x)
    torch.testing.assert_close(acts, dec.correlate(x).amax((2, 3)))
    with pytest.raises(ConvscopeError, match="all decoded filters"):
        reconstruction_error(
            model, "features.conv2", x, decoded=decode(model, "features.conv2", filters=[1])
        )


def test_deconvnet_and_linear_row_agree_below_the_relu_only() -> None:
    torch.manual_seed(1)
    model = LeNet().double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    for layer, same in (("features.conv2", True), ("features.conv4", False)):
        d = deconvnet(model, layer, x, 3)
        r = linear_rows(model, layer, x, 3)
        assert d.shape == r.shape == (2, 1, 28, 28)
        assert torch.allclose(d, r, atol=1e-10) == same
    # at the first layer the deconvolution is the filter, placed at the strongest unit
    d = deconvnet(model, "features.conv1", x[:1], 5)
    y, x_ = divmod(int(layer_response(model, "features.conv1", x[:1])[0, 5].argmax()), 24)
    torch.testing.assert_close(d[0, 0, y : y + 5, x_ : x_ + 5], model.features.conv1.weight[5, 0])
    assert d.abs().sum() == model.features.conv1.weight[5].abs().sum()
    with pytest.raises(ConvscopeError, match="needs ReLU modules"):
        deconvnet(_Functional(), "b", torch.rand(1, 1, 8, 8), 0)


def test_padding_is_counted_in_image_pixels_through_the_strides_below() -> None:
    """Each layer's zero padding, times the stride of everything below it, is the decoded
    filter's padding: the composed correlation then equals the chain wherever no
    intermediate padding is read (the interior), and is shifted otherwise."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 3, padding=(1, 2), bias=False),
    ).double()
    dec = decode(net, "2", "adjoint")
    assert dec.stride == (4, 4)
    assert dec.padding == (1 + 1 * 4, 1 + 2 * 4)  # conv 1's, then conv 2's times 2 * 2
    x = torch.rand(2, 2, 40, 44, dtype=torch.float64)
    response = layer_response(net, "2", x)
    estimate = dec.correlate(x)
    assert estimate.shape == response.shape
    inner = (..., slice(2, -2), slice(2, -2))
    torch.testing.assert_close(estimate[inner], response[inner], rtol=0, atol=1e-12)
    assert (estimate - response).abs().max() > 1e-3  # the border reads intermediate zeros
