"""convscope.linear.verify: the interpreter checked against autograd, and checks that can fail."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter
from convscope.linear.verify import calibrate_batch_norm, verify


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.SiLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).double()


def test_calibration_sets_statistics_and_affine_values() -> None:
    net = _net()
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64) * 2 + 1
    calibrate_batch_norm(net, x)
    bn = net[1]
    assert not net.training and bn.momentum is None and int(bn.num_batches_tracked) == 1
    conv = net[0](x)
    torch.testing.assert_close(bn.running_mean, conv.mean((0, 2, 3)))
    assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))  # random affine values
    assert float(bn.bias.abs().max()) > 0


def test_taylor_is_exact_and_freeze_conserves() -> None:
    net = _net()
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    calibrate_batch_norm(net, x)
    t = verify(net, x[:1], x[1:3], mode="taylor")
    assert t.jvp_error is not None and t.jvp_error < 1e-12
    assert t.vjp_error is not None and t.vjp_error < 1e-12
    assert t.x0_error < 1e-12 and t.conservation_error < 1e-12
    assert t.signal > 1e-2
    assert t.sources == len(LinearInterpreter(net, x[:1], mode="taylor").sources) == 6
    f = verify(net, x[:1], x[1:3], mode="freeze")
    assert f.jvp_error is None and f.x0_error < 1e-12 and f.conservation_error < 1e-12
    assert f.to_dict()["mode"] == "freeze"


def test_a_wrong_linear_part_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _net()
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    calibrate_batch_norm(net, x)
    real_linear, real_transpose = LinearInterpreter.linear, LinearInterpreter.transpose
    monkeypatch.setattr(LinearInterpreter, "linear", lambda s, v: 1.01 * real_linear(s, v))
    monkeypatch.setattr(LinearInterpreter, "transpose", lambda s, v: real_transpose(s, v) + 1e-3)
    t = verify(net, x[:1], x[1:3], mode="taylor")
    assert t.jvp_error == pytest.approx(0.01, rel=1e-6)
    assert t.vjp_error is not None and t.vjp_error > 1e-4


def test_bad_mode() -> None:
    with pytest.raises(ConvscopeError, match="mode must be freeze or taylor; got 'exact'"):
        verify(_net(), torch.zeros(1, 3, 8, 8, dtype=torch.float64),
               torch.zeros(1, 3, 8, 8, dtype=torch.float64), mode="exact")  # fmt: skip


def test_zero_initialised_heads_get_weights() -> None:
    net = _net()
    with torch.no_grad():
        net[-1].weight.zero_()
    calibrate_batch_norm(net, torch.randn(4, 3, 12, 12, dtype=torch.float64))
    assert float(net[-1].weight.abs().min()) > 0  # else the output would not depend on x
