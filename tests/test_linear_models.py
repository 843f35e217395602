"""The linear interpreter on convscope's own architectures: the bicubic upscaler (the
reference: space-invariant columns, zero residual), ESPCN, EDSR-baseline, the CycleGAN
generator (instance norm, reflection padding, transposed convolutions, tanh), LeNet and
GFNN."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _linear_helpers import jvp_reference, rel_err
from torch import nn

from convscope.linear import LinearInterpreter
from convscope.models import GFNN
from convscope.models.i2i import CycleGANGenerator
from convscope.models.lenet import LeNet
from convscope.models.sr import ESPCN, BicubicUpscaler, EDSRBaseline


def _randomize_biases(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=gen))
    return model


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]] = {
    # name: (constructor, input shape, piecewise linear)
    "espcn_relu": (lambda: ESPCN(scale=2, features=(8, 8)), (1, 1, 8, 8), True),
    "espcn_tanh": (lambda: ESPCN(scale=3, features=(8, 6), activation="tanh"), (1, 1, 6, 6), False),
    "edsr": (
        lambda: EDSRBaseline(scale=2, channels=3, n_resblocks=2, n_feats=8),
        (1, 3, 6, 6),
        True,
    ),
    "cyclegan": (lambda: CycleGANGenerator(ngf=4, n_blocks=2), (1, 3, 16, 16), False),
    "lenet": (LeNet, (1, 1, 28, 28), True),
    "gfnn": (lambda: GFNN(num_classes=10), (1, 1, 28, 28), True),
}


def _build(name: str) -> tuple[nn.Module, torch.Tensor, bool]:
    factory, shape, piecewise = MODELS[name]
    torch.manual_seed(0)
    model = _randomize_biases(factory(), 1).double().eval()
    x = torch.rand(3, *shape[1:], dtype=torch.float64)
    return model, x, piecewise


@pytest.mark.parametrize("name", sorted(MODELS))
def test_taylor_and_freeze_on_convscope_models(name: str) -> None:
    model, x, piecewise = _build(name)
    x0, x1 = x[:1], x[1:]
    f0, jv = jvp_reference(model, x0, x1)
    assert float(jv.abs().max()) > 1e-4 * float(f0.abs().max())
    modes = ("taylor", "freeze") if piecewise else ("taylor",)
    for mode in modes:
        li = LinearInterpreter(model, x0, mode=mode)  # type: ignore[arg-type]
        y = li(x)
        torch.testing.assert_close(y[:1], f0, rtol=1e-10, atol=1e-12)
        assert rel_err(y[1:] - y[:1], jv) < 1e-9, mode
        assert rel_err(li.linear(x1 - x0), jv) < 1e-9, mode
        assert rel_err(sum(li.contributions().values()), f0) < 1e-9, mode
    if not piecewise:
        # freeze: the frozen norms and ratios reproduce x0 but are not the tangent map
        li = LinearInterpreter(model, x0, mode="freeze")
        torch.testing.assert_close(li(x0), f0, rtol=1e-10, atol=1e-12)
        assert rel_err(sum(li.contributions().values()), f0) < 1e-9
        assert rel_err(li.linear(x1 - x0), jv) > 1e-3


def test_bicubic_upscaler_is_space_invariant_with_zero_residual() -> None:
    model = BicubicUpscaler(scale=2).double()
    x0 = torch.rand(1, 1, 10, 10, dtype=torch.float64)
    li = LinearInterpreter(model, x0)
    assert li.sources == ()
    torch.testing.assert_close(li.residual, torch.zeros_like(li.residual))
    torch.testing.assert_close(li.output, model(x0))
    # columns of interior pixels are one kernel shifted by the scale
    cols = li.columns([4 * 10 + 4, 5 * 10 + 6]).reshape(2, 20, 20)
    a = cols[0, 8 - 4 : 8 + 4, 8 - 4 : 8 + 4]
    b = cols[1, 10 - 4 : 10 + 4, 12 - 4 : 12 + 4]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    assert float(a.abs().sum()) > 1.0
    # every column carries the whole pixel (the kernel sums to scale**2 over the output)
    assert float(cols[0].sum()) == pytest.approx(4.0)
