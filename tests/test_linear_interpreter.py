"""The linear interpreter on small hand-made networks: the matrix F built by hand,
rows against columns, the transposed system against torch.func.vjp, every rule
against its definition or against forward-mode autodiff, functional calls, errors,
and a model that leaves every analysis exactly as it came."""

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


@pytest.fixture(autouse=True)
def _float64() -> object:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# -- a CNN whose F is built by hand ----------------------------------------------------


class Tiny(nn.Module):
    """conv 3x3 (1 -> 2, pad 1) -> ReLU -> 2x2 max-pool -> flatten -> linear (8 -> 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def tiny_matrices(net: Tiny, x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen system of :class:`Tiny` at ``x0`` from explicit loops.

    Returns C (32 x 16, the convolution), D (32, the ReLU mask), P (8 x 32, the pool
    selection), W (3 x 8), the biases, and F = W P diag(D) C.
    """
    w, b = net.conv.weight.detach(), net.conv.bias.detach()
    C = torch.zeros(32, 16)
    for o in range(2):
        for i in range(4):
            for j in range(4):
                for di in range(3):
                    for dj in range(3):
                        ii, jj = i + di - 1, j + dj - 1
                        if 0 <= ii < 4 and 0 <= jj < 4:
                            C[o * 16 + i * 4 + j, ii * 4 + jj] = w[o, 0, di, dj]
    b_conv = b.repeat_interleave(16)
    z0 = C @ x0.reshape(16) + b_conv
    D = (z0 > 0).double()
    a0 = D * z0
    P = torch.zeros(8, 32)
    for o in range(2):
        for p in range(2):
            for q in range(2):
                window = [
                    o * 16 + (2 * p + u) * 4 + (2 * q + v) for u in range(2) for v in range(2)
                ]
                best = max(window, key=lambda k: (a0[k].item(), -k))
                P[o * 4 + p * 2 + q, best] = 1
    W = net.fc.weight.detach()
    return {
        "C": C,
        "D": D,
        "P": P,
        "W": W,
        "b_conv": b_conv,
        "b_fc": net.fc.bias.detach(),
        "F": W @ P @ torch.diag(D) @ C,
    }


@pytest.fixture
def tiny() -> tuple[Tiny, torch.Tensor]:
    torch.manual_seed(0)
    net = Tiny().eval()
    x0 = torch.randn(1, 1, 4, 4)
    return net, x0


def test_freeze_columns_equal_the_hand_built_matrix(tiny: tuple[Tiny, torch.Tensor]) -> None:
    net, x0 = tiny
    M = tiny_matrices(net, x0)
    assert 0 < M["D"].sum() < 32  # the mask really decides something
    li = LinearInterpreter(net, x0, mode="freeze")
    F_cols = li.columns(range(16)).T  # (3, 16)
    torch.testing.assert_close(F_cols, M["F"], rtol=1e-12, atol=1e-12)
    r = M["W"] @ M["P"] @ (M["D"] * M["b_conv"]) + M["b_fc"]
    torch.testing.assert_close(li.residual[0], r, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(li.output, net(x0), rtol=1e-12, atol=1e-12)
    # F x0 + r = f(x0) (seed 001 eq. 5)
    torch.testing.assert_close(M["F"] @ x0.reshape(16) + r, net(x0)[0], rtol=1e-12, atol=1e-12)


def test_rows_equal_columns_transposed(tiny: tuple[Tiny, torch.Tensor]) -> None:
    net, x0 = tiny
    li = LinearInterpreter(net, x0, batch_size=5)
    cols = li.columns(torch.arange(16)).reshape(16, 3)
    rows = li.rows([0, 1, 2]).reshape(3, 16)
    torch.testing.assert_close(rows, cols.T, rtol=1e-12, atol=1e-12)
    assert rows.abs().max() > 0.05


def test_probes_are_independent_of_batching(tiny: tuple[Tiny, torch.Tensor]) -> None:
    net, x0 = tiny
    li = LinearInterpreter(net, x0)
    x1 = torch.randn(7, 1, 4, 4)
    torch.testing.assert_close(li(x1, batch_size=2), li(x1), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(li.linear(x1) + li.residual, li(x1), rtol=1e-12, atol=1e-12)
    M = tiny_matrices(net, x0)
    torch.testing.assert_close(li.linear(x1), x1.reshape(7, 16) @ M["F"].T, rtol=1e-12, atol=1e-12)


# -- a richer network: rows vs columns, transpose vs vjp, both modes -----------------------


class Rich(nn.Module):
    """conv -> BN -> SiLU -> SE gate -> max-pool -> conv -> LayerNorm -> GELU -> avg -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.se1 = nn.Conv2d(4, 2, 1)
        self.se2 = nn.Conv2d(2, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.ln = nn.LayerNorm([4, 3, 3])
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn(self.conv1(x)))
        gate = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        x = gate * x
        x = F.max_pool2d(x, 2)
        x = F.gelu(self.ln(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def rich() -> tuple[Rich, torch.Tensor]:
    torch.manual_seed(1)
    net = Rich()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.3, 0.3)
        net.ln.weight.uniform_(0.5, 1.5)
        net.ln.bias.uniform_(-0.3, 0.3)
    return net.eval(), torch.randn(1, 3, 6, 6)


@pytest.mark.parametrize("mode", ["freeze", "taylor"])
def test_rows_equal_columns_on_a_rich_network(rich: tuple[Rich, torch.Tensor], mode: str) -> None:
    net, x0 = rich
    li = LinearInterpreter(net, x0, mode=mode)  # type: ignore[arg-type]
    n, N = 3 * 36, 5
    cols = li.columns(range(n)).reshape(n, N)
    rows = li.rows(range(N)).reshape(N, n)
    torch.testing.assert_close(rows, cols.T, rtol=1e-11, atol=1e-12)
    x1 = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(
        li(x1), x1.reshape(2, n) @ cols + li.residual, rtol=1e-11, atol=1e-12
    )


def test_taylor_is_the_jacobian_on_a_rich_network(rich: tuple[Rich, torch.Tensor]) -> None:
    net, x0 = rich
    li = LinearInterpreter(net, x0, mode="taylor")
    x1 = x0 + 0.3 * torch.randn(3, 3, 6, 6)
    f0, jv = jvp_reference(net, x0, x1)
    assert rel_err(li(x1) - li(x0), jv) < 1e-10
    assert rel_err(li.linear(x1 - x0), jv) < 1e-10
    assert rel_err(li(x1), f0 + jv) < 1e-10
    # the transposed system is the vector-Jacobian product
    y2 = torch.randn(3, 5)
    _, vjp = torch.func.vjp(net, x0)
    expected = torch.cat([vjp(y2[i : i + 1])[0] for i in range(3)])
    assert rel_err(li.transpose(y2), expected) < 1e-10
    # freeze differs from taylor here (SiLU, GELU, gate, layer norm): the modes mean something
    assert rel_err(LinearInterpreter(net, x0, mode="freeze").linear(x1 - x0), jv) > 1e-3


# -- functional calls are caught ---------------------------------------------------------------


class Functional(nn.Module):
    """Every non-linearity as a functional call or a Tensor method, none as a module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x), inplace=True)
        x = torch.max_pool2d(x, 2)
        y = self.conv2(x)
        y.relu_()
        y = F.leaky_relu(y - 0.1, 0.2) + F.hardtanh(y, -0.5, 0.5)
        y = F.adaptive_max_pool2d(y, 2)
        return self.fc(torch.flatten(y, 1))


@pytest.mark.parametrize("mode", ["freeze", "taylor"])
def test_functional_calls_are_caught(mode: str) -> None:
    torch.manual_seed(2)
    net = Functional().eval()
    x0 = torch.randn(1, 3, 8, 8)
    li = LinearInterpreter(net, x0, mode=mode)  # type: ignore[arg-type]
    x1 = x0 + 0.5 * torch.randn(2, 3, 8, 8)
    f0, jv = jvp_reference(net, x0, x1)
    torch.testing.assert_close(li(x0), f0, rtol=1e-12, atol=1e-12)
    assert rel_err(li.linear(x1 - x0), jv) < 1e-12
    assert rel_err(li(x1), f0 + jv) < 1e-12
    # a missed F.relu would make probes pass through unmasked: far from J
    assert jv.abs().max() > 1e-2


# -- every rule against its definition ------------------------------------------------------


class Unit(nn.Module):
    """conv -> op -> conv 1x1, so the op sees structured values of both signs."""

    def __init__(self, op: Callable[[torch.Tensor], torch.Tensor], channels: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.op = op
        self.conv2 = nn.Conv2d(channels, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.op(self.conv1(x)))


class Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _max_unpool(x: torch.Tensor) -> torch.Tensor:
    y, idx = F.max_pool2d(x, 2, return_indices=True)
    return F.max_unpool2d(y, idx, 2, output_size=x.shape[-2:])


PIECEWISE: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "prelu": lambda: nn.PReLU(4, init=0.3),
    "relu6": nn.ReLU6,
    "relu6_functional": lambda: Lambda(lambda x: F.relu6(x)),
    "hardtanh": lambda: nn.Hardtanh(-1.5, 2.0),
    "clamp": lambda: Lambda(lambda x: x.clamp(-1.0, 1.5)),
    "clamp_min": lambda: Lambda(lambda x: torch.clamp_min(x, 0.5)),
    "threshold": lambda: nn.Threshold(0.2, -3.0),
    "maxpool": lambda: nn.MaxPool2d(3, stride=2, padding=1),
    "maxpool_ceil": lambda: nn.MaxPool2d(2, ceil_mode=True),
    "maxpool_dilated": lambda: Lambda(lambda x: F.max_pool2d(x, 2, 1, dilation=2)),
    "maxpool1d": lambda: Lambda(lambda x: F.max_pool1d(x.flatten(2), 3).view(x.shape[0], 4, 2, -1)),
    "adaptive_max": lambda: nn.AdaptiveMaxPool2d((2, 3)),
    "max_unpool": lambda: Lambda(_max_unpool),
    "max_dim": lambda: Lambda(lambda x: torch.max(x, dim=1, keepdim=True).values + x),
    "amax": lambda: Lambda(lambda x: x.amax(3, keepdim=True) + x),
    "dropout_eval": lambda: nn.Dropout(0.5).eval(),
    "dropout2d_eval": lambda: nn.Dropout2d(0.5).eval(),
}

SMOOTH: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "silu_inplace": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "elu": lambda: nn.ELU(0.7),
    "selu": nn.SELU,
    "celu": lambda: nn.CELU(1.3),
    "mish": nn.Mish,
    "softplus": lambda: nn.Softplus(beta=2.0),
    "logsigmoid": nn.LogSigmoid,
    "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid,
    "instancenorm": lambda: nn.InstanceNorm2d(4, affine=True),
    "groupnorm": lambda: nn.GroupNorm(2, 4),
    "layernorm": lambda: nn.LayerNorm([4, 5, 5]),
    "rmsnorm": lambda: nn.RMSNorm([5]),
    "square": lambda: Lambda(lambda x: x * x),
    "se_gate": lambda: Lambda(lambda x: x * torch.sigmoid(x.mean((2, 3), keepdim=True))),
    "gate_first": lambda: Lambda(lambda x: torch.sigmoid(x[:, :1]) * x),
    "quotient": lambda: Lambda(lambda x: x / (2.0 + torch.tanh(x))),
    "inplace_gate": lambda: Lambda(lambda x: x.clone().mul_(torch.sigmoid(x))),
}


def _unit_net(factory: Callable[[], nn.Module], seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = Unit(factory())
    net.conv1.eval()
    net.conv2.eval()
    x0 = 2.5 * torch.randn(1, 3, 5, 5)  # wide enough to reach every clamp and saturation
    return net, x0


@pytest.mark.parametrize("name", sorted(PIECEWISE))
def test_piecewise_units_are_exact_in_both_modes(name: str) -> None:
    net, x0 = _unit_net(PIECEWISE[name], 3)
    x1 = x0 + 0.7 * torch.randn(2, 3, 5, 5)
    f0, jv = jvp_reference(net, x0, x1)
    for mode in ("freeze", "taylor"):
        li = LinearInterpreter(net, x0, mode=mode)  # type: ignore[arg-type]
        torch.testing.assert_close(li.output, f0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(li(x0), f0, rtol=1e-12, atol=1e-12)
        assert rel_err(li.linear(x1 - x0), jv) < 1e-12, mode
        assert rel_err(li(x1) - li(x0), jv) < 1e-12, mode
        total = sum(li.contributions().values())
        assert rel_err(total, f0) < 1e-10, mode


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_smooth_units_taylor_is_the_jacobian_and_freeze_reproduces_x0(name: str) -> None:
    net, x0 = _unit_net(SMOOTH[name], 4)
    x1 = x0 + 0.3 * torch.randn(2, 3, 5, 5)
    f0, jv = jvp_reference(net, x0, x1)
    taylor = LinearInterpreter(net, x0, mode="taylor")
    assert rel_err(taylor.linear(x1 - x0), jv) < 1e-10
    assert rel_err(taylor(x1), f0 + jv) < 1e-10
    freeze = LinearInterpreter(net, x0, mode="freeze")
    torch.testing.assert_close(freeze(x0), f0, rtol=1e-11, atol=1e-11)
    for li in (taylor, freeze):
        assert rel_err(sum(li.contributions().values()), f0) < 1e-10


def test_freeze_smooth_unit_is_the_ratio() -> None:
    x0 = torch.randn(1, 3, 4, 4)
    li = LinearInterpreter(nn.SiLU(), x0, mode="freeze")
    x1 = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(li.linear(x1), x1 * F.silu(x0) / x0, rtol=1e-13, atol=1e-13)
    assert li.sources == ()
    torch.testing.assert_close(li.residual, torch.zeros_like(x0))


def test_freeze_sigmoid_at_an_exact_zero_keeps_its_value_as_a_source() -> None:
    x0 = torch.randn(1, 2, 3, 3)
    x0[0, 1, 1, 1] = 0.0
    li = LinearInterpreter(nn.Sigmoid(), x0, mode="freeze")
    torch.testing.assert_close(li(x0), torch.sigmoid(x0), rtol=1e-14, atol=1e-14)
    expected = torch.zeros_like(x0)
    expected[0, 1, 1, 1] = 0.5
    torch.testing.assert_close(li.residual, expected)
    assert [s.op for s in li.sources] == ["sigmoid h(0)"]
    # the slope at the zero is the derivative sigmoid'(0) = 1/4
    e = torch.zeros_like(x0)
    e[0, 1, 1, 1] = 1.0
    assert float(li.linear(e)[0, 1, 1, 1]) == pytest.approx(0.25)


NORMS: dict[str, Callable[[], nn.Module]] = {
    "instance": lambda: nn.InstanceNorm2d(3, affine=True),
    "batch_train": lambda: nn.BatchNorm2d(3).train(),
    "group": lambda: nn.GroupNorm(3, 3),
}


@pytest.mark.parametrize("name", sorted(NORMS))
def test_freeze_norm_uses_the_statistics_of_x0(name: str) -> None:
    torch.manual_seed(5)
    norm = NORMS[name]()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)  # type: ignore[operator]
        norm.bias.uniform_(-1, 1)  # type: ignore[operator]
    x0 = 3 * torch.randn(1, 3, 4, 4) + 1
    li = LinearInterpreter(norm, x0, mode="freeze")
    mean = x0.mean((2, 3), keepdim=True)
    std = (x0.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    w = norm.weight.view(1, 3, 1, 1)  # type: ignore[union-attr]
    b = norm.bias.view(1, 3, 1, 1)  # type: ignore[union-attr]
    x1 = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(li(x1), (x1 - mean) / std * w + b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(li.linear(x1), x1 / std * w, rtol=1e-12, atol=1e-12)


def test_freeze_gate_is_held_at_x0() -> None:
    torch.manual_seed(6)
    fc = nn.Conv2d(3, 3, 1)

    def se(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(fc(x.mean((2, 3), keepdim=True))) * x

    x0 = torch.randn(1, 3, 4, 4)
    li = LinearInterpreter(Lambda(se), x0, mode="freeze")
    gate = torch.sigmoid(fc(x0.mean((2, 3), keepdim=True))).detach()
    x1 = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(li.linear(x1), gate * x1, rtol=1e-13, atol=1e-13)


def test_taylor_product_has_the_product_rule_and_its_constant() -> None:
    x0 = torch.randn(1, 2, 3, 3)
    li = LinearInterpreter(Lambda(lambda x: x * x), x0, mode="taylor")
    x1 = torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(li.linear(x1), 2 * x0 * x1, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(li.residual, -(x0 * x0), rtol=1e-13, atol=1e-13)
    assert [s.op for s in li.sources] == ["mul c(x0)"]


def test_train_mode_dropout_freezes_one_mask_for_every_probe_and_pass() -> None:
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))
    net.train()
    x0 = torch.randn(1, 3, 6, 6)
    li = LinearInterpreter(net, x0)
    torch.testing.assert_close(li(x0), li.output, rtol=1e-13, atol=1e-13)
    x1 = torch.randn(4, 3, 6, 6)
    cols = li.columns(range(3 * 36)).reshape(3 * 36, -1)
    torch.testing.assert_close(li.linear(x1).reshape(4, -1), x1.reshape(4, -1) @ cols)
    assert rel_err(sum(li.contributions().values()), li.output) < 1e-12


class LinearOps(nn.Module):
    """Linear and affine ops that are not conv/linear: each must pass or become a source."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bicubic")
        self.shuffle = nn.PixelShuffle(2)
        self.register_buffer("shift", torch.linspace(-1, 1, 4).view(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        x = F.pad(x, (1, 0, 0, 1), value=0.25)
        x = self.conv(x)
        x = 1.5 - x
        x = x + self.shift
        x = torch.cat([x, torch.ones_like(x[:, :1])], 1)[:, :4]
        a, b = x.chunk(2, dim=1)
        x = torch.cat([b.flip(-1), a.transpose(2, 3)], dim=1)
        x = self.shuffle(self.up(x))
        x = F.avg_pool2d(x, 3, stride=2, count_include_pad=False)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return x[:, ::3] * 0.5


@pytest.mark.parametrize("mode", ["freeze", "taylor"])
def test_linear_and_affine_ops(mode: str) -> None:
    torch.manual_seed(8)
    net = LinearOps()
    x0 = torch.randn(1, 3, 6, 6)
    li = LinearInterpreter(net, x0, mode=mode)  # type: ignore[arg-type]
    x1 = torch.randn(2, 3, 6, 6)
    f0, jv = jvp_reference(net, x0, x1)
    torch.testing.assert_close(li(x0), f0, rtol=1e-12, atol=1e-12)
    assert rel_err(li.linear(x1 - x0), jv) < 1e-12
    # an affine network: the residual is f(0)
    torch.testing.assert_close(li.residual, net(torch.zeros_like(x0)), rtol=1e-12, atol=1e-12)
    ops = [s.op for s in li.sources]
    assert ops == ["pad value", "conv2d bias", "__rsub__ constant", "add constant", "cat constant"]
    assert rel_err(sum(li.contributions().values()), f0) < 1e-12


# -- errors -----------------------------------------------------------------------------------


UNSUPPORTED: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "sin": (torch.sin, "torch.sin"),
    "abs": (lambda x: x * x.abs(), "abs"),
    "exp": (lambda x: x.exp(), "exp"),
    "pow": (lambda x: x.pow(2), "pow"),
    "softmax": (lambda x: F.softmax(x, dim=0), "softmax"),
    "compare": (lambda x: x * (x > 0), "gt"),
    "batch_sum": (lambda x: x - x.sum(), "sum"),
    "batch_mean": (lambda x: x - x.mean(0, keepdim=True), "mean"),
    "item": (lambda x: x * x.max().item(), "max"),
    "matmul": (lambda x: x.flatten(1).T @ x.flatten(1), "matmul"),
    "reciprocal": (lambda x: 1.0 / x, "__rtruediv__"),
    "flip_batch": (lambda x: x.flip(0), "flip"),
    "batch_not_first": (lambda x: x.transpose(0, 1).contiguous().view(x.shape[0], -1), "output"),
    "set_constant": (lambda x: _set_constant(x), "__setitem__"),
}


def _set_constant(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, 0] = 1.0
    return x


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_an_unsupported_op_is_an_error_naming_it_and_its_module(name: str) -> None:
    fn, fragment = UNSUPPORTED[name]
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(Lambda(fn)))
    x0 = torch.randn(1, 3, 4, 4)
    with pytest.raises(ConvscopeError) as info:
        LinearInterpreter(net, x0, mode="taylor")
    message = str(info.value)
    assert fragment in message
    assert "'1.0'" in message or "batch" in message


def test_the_error_names_the_module_path_of_a_functional_call() -> None:
    class Weird(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 3, 1))
    net.add_module("weird", Weird())
    with pytest.raises(ConvscopeError, match=r"torch\.sin in module 'weird'"):
        LinearInterpreter(net, torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize(
    ("x0", "mode", "match"),
    [
        (torch.randn(2, 3, 4, 4), "freeze", "one image"),
        (torch.randn(3, 4, 4), "freeze", "one image"),
        (torch.ones(1, 3, 4, 4, dtype=torch.long), "freeze", "floating-point"),
        (torch.randn(1, 3, 4, 4), "jacobian", "mode"),
    ],
)
def test_bad_arguments(x0: torch.Tensor, mode: str, match: str) -> None:
    with pytest.raises(ConvscopeError, match=match):
        LinearInterpreter(nn.Conv2d(3, 2, 1), x0, mode=mode)  # type: ignore[arg-type]


def test_bad_probes_and_indices(tiny: tuple[Tiny, torch.Tensor]) -> None:
    net, x0 = tiny
    li = LinearInterpreter(net, x0)
    with pytest.raises(ConvscopeError, match="x1 must be a batch"):
        li(torch.randn(2, 1, 5, 5))
    with pytest.raises(ConvscopeError, match="y2 must be a batch"):
        li.transpose(torch.randn(2, 4))
    with pytest.raises(ConvscopeError, match="out of range"):
        li.columns([16])
    with pytest.raises(ConvscopeError, match="out of range"):
        li.rows([-1])
    with pytest.raises(ConvscopeError, match="batch_size"):
        li(x0, batch_size=0)


def test_model_returning_a_tuple_is_refused() -> None:
    with pytest.raises(ConvscopeError, match="one tensor"):
        LinearInterpreter(Lambda(lambda x: (x, x)), torch.randn(1, 2, 3, 3))  # type: ignore[arg-type,return-value]


# -- the model leaves as it came ------------------------------------------------------------------


def _hook_state(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    names = [
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks_with_kwargs",
    ]
    out = []
    for mname, m in model.named_modules():
        for n in names:
            out.append((f"{mname}.{n}", tuple(getattr(m, n, {}).keys())))
    # the interpreter's own hooks are global ones (one pair per pass): gone after it too
    import torch.nn.modules.module as module_hooks

    for n in ("_global_forward_hooks", "_global_forward_pre_hooks",
              "_global_forward_hooks_always_called"):  # fmt: skip
        out.append((f"global.{n}", tuple(getattr(module_hooks, n).keys())))
    return out


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": _hook_state(model),
        "rng": torch.get_rng_state(),
    }


def _assert_same(model: nn.Module, before: dict[str, object]) -> None:
    after = _snapshot(model)
    state_before = before["state"]
    assert isinstance(state_before, dict)
    for k, v in after["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(v, state_before[k]), k
    assert after["grad"] == before["grad"]
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    assert torch.equal(after["rng"], before["rng"])  # type: ignore[arg-type]
    assert torch._C._len_torch_function_stack() == 0


class Mixed(nn.Module):
    """Train-mode batch norm and dropout beside an eval-mode part, plus a user hook."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.bn(self.conv(x))))
        if self.fail == "runtime":
            raise RuntimeError("boom inside forward")
        if self.fail == "unsupported":
            x = torch.sin(x)
        return self.head(x).mean((2, 3))


@pytest.mark.parametrize("fail", [None, "runtime", "unsupported"])
def test_the_model_leaves_exactly_as_it_came(fail: str | None) -> None:
    torch.manual_seed(9)
    net = Mixed(fail)
    net.train()
    net.head.eval()
    net.conv.weight.requires_grad_(False)
    net.head[0].register_forward_hook(lambda m, a, o: None)
    net.register_forward_pre_hook(lambda m, a: None)
    x0 = torch.randn(1, 3, 6, 6)
    x1, y2 = torch.randn(2, 3, 6, 6), torch.randn(1, 4)
    before = _snapshot(net)
    if fail is None:
        li = LinearInterpreter(net, x0)
        li(x1)
        li.rows([0, 1])
        li.contributions()
        li.pixel_discussion([0, 1])
        LinearInterpreter(net, x0, mode="taylor").transpose(y2)
    else:
        with pytest.raises((RuntimeError, ConvscopeError)):
            LinearInterpreter(net, x0)
    _assert_same(net, before)


def test_train_mode_batch_norm_output_is_the_single_image_forward() -> None:
    torch.manual_seed(10)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    net.train()
    x0 = torch.randn(1, 3, 6, 6)
    li = LinearInterpreter(net, x0, mode="taylor")
    # the reference: the same net with batch statistics and no running statistics,
    # so forward-mode autodiff does not try to update buffers
    ref = copy.deepcopy(net)
    ref[1].track_running_stats = False
    ref[1].running_mean = ref[1].running_var = None
    expected = ref(x0)  # batch statistics of x0 alone
    torch.testing.assert_close(li.output, expected.detach(), rtol=1e-12, atol=1e-12)
    x1 = x0 + 0.2 * torch.randn(2, 3, 6, 6)
    # in train mode a batch would share statistics: take the jvp one probe at a time
    for i in range(2):
        _, jv_i = torch.func.jvp(ref, (x0,), (x1[i : i + 1] - x0,))
        assert rel_err(li.linear(x1[i : i + 1] - x0), jv_i) < 1e-10
        assert rel_err(li(x1[i : i + 1]), expected.detach() + jv_i) < 1e-10


def test_transpose_through_a_buffer_used_as_a_factor() -> None:
    """A fixed kernel held as a buffer (GFNN's bank, the bicubic upscaler) is saved for
    the backward pass: the pass must not touch it when it restores buffers."""

    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("kernel", torch.randn(3, 1, 3, 3))
            self.bn = nn.BatchNorm2d(3)  # train mode: its counters are written and restored

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.bn(F.conv2d(x, self.kernel, padding=1)))

    torch.manual_seed(14)
    net = Fixed().train()
    x0 = torch.randn(1, 1, 4, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    li = LinearInterpreter(net, x0)
    cols = li.columns(range(16)).reshape(16, 48)
    rows = li.rows(range(48)).reshape(48, 16)
    torch.testing.assert_close(rows, cols.T, rtol=1e-12, atol=1e-12)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


# -- SVD through the interpreter ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["power", "randomized"])
def test_svd_matches_the_materialized_matrix(method: str) -> None:
    # a conv net with a decaying spectrum (the middle layer's singular values fall by
    # 0.6 per step), so power iteration converges in a few dozen steps
    torch.manual_seed(2)
    dense = nn.Linear(36, 36)
    q1, _ = torch.linalg.qr(torch.randn(36, 36))
    q2, _ = torch.linalg.qr(torch.randn(36, 36))
    with torch.no_grad():
        dense.weight.copy_(q1 @ torch.diag(0.6 ** torch.arange(36.0)) @ q2)
    net = nn.Sequential(
        nn.Conv2d(1, 1, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        dense,
        nn.Tanh(),
        nn.Unflatten(1, (1, 6, 6)),
    )
    x0 = torch.randn(1, 1, 6, 6)
    li = LinearInterpreter(net, x0, mode="taylor")
    Fm = li.columns(range(36)).reshape(36, 36).T  # (N, n)
    S_ref = torch.linalg.svdvals(Fm)[:5]
    if method == "power":
        result = li.svd(k=5, steps=300)
    else:
        result = li.svd(k=5, method="randomized", power_iters=6)
    S, U, V = result
    assert U.shape == (5, 1, 6, 6) and V.shape == (5, 1, 6, 6)
    torch.testing.assert_close(S, S_ref, rtol=1e-2, atol=0)
    _, _, Vh = torch.linalg.svd(Fm)
    for i in range(5):
        v, u = V[i].reshape(36), U[i].reshape(36)
        assert float(torch.dot(v, Vh[i]).abs()) > 0.99  # aligned with the exact eigen-input
        assert float(torch.dot(Fm @ v, u).abs() / (Fm @ v).norm()) > 0.99  # F v = s u
