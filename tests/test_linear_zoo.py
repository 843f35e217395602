"""The linear interpreter on every model of the zoo table, generated from one table.

The table is :func:`convscope.linear.verify.zoo_models` (every torchvision classification
and segmentation model, and a few timm families when timm is installed); each model is
built untrained in float64 at its smallest input and calibrated on photos
(:func:`~convscope.linear.verify.build_zoo_model`), then checked by
:func:`~convscope.linear.verify.verify`: taylor mode against ``torch.func.jvp`` and ``vjp``,
freeze mode for reproducing ``f(x0)`` and conserving the contributions, and the model must
come out untouched. Every model is marked slow (a few seconds to minutes each on two cores:
``make experiments`` runs them; the fast interpreter tests of ``make test`` cover a smaller
set in tests/test_linear_torchvision.py and tests/test_linear_transformers.py);
``experiments/linear_coverage.py`` writes the same checks as a table
(experiments/results/linear/coverage.md).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from convscope.linear.verify import build_zoo_model, verify, zoo_models

pytest.importorskip("torchvision")

TOL = 1e-8
TOO_BIG = {"vit_h_14", "regnet_y_128gf"}  # over 600M parameters: beyond a 24 GiB float64 run


def _cases() -> list[object]:
    out = []
    for kind, name in zoo_models():
        if kind == "timm" and importlib.util.find_spec("timm") is None:
            continue
        marks = [pytest.mark.slow]
        if name in TOO_BIG:
            marks.append(pytest.mark.skip(reason="over 600M parameters in float64"))
        out.append(pytest.param(kind, name, marks=marks, id=name))
    return out


def _state(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(k, v.detach().clone()) for k, v in model.state_dict().items()]


@pytest.mark.parametrize(("kind", "name"), _cases())
def test_taylor_is_the_jacobian_and_freeze_conserves(kind: str, name: str) -> None:
    model, x, output = build_zoo_model(kind, name)
    before = _state(model)
    flags = [p.requires_grad for p in model.parameters()]
    t = verify(model, x[:1], x[1:3], mode="taylor", output=output)
    assert t.signal > 1e-3, t  # a signal that did not vanish
    assert t.jvp_floor is not None and t.jvp_floor < TOL, t  # a model well enough conditioned
    assert t.jvp_error is not None and t.jvp_error < TOL, t
    assert t.vjp_error is not None and t.vjp_error < TOL, t
    assert t.x0_error < 1e-9 and t.conservation_error < 1e-8, t
    f = verify(model, x[:1], x[1:3], mode="freeze", output=output)
    assert f.x0_error < 1e-9 and f.conservation_error < 1e-8, f
    for (k, a), (_, b) in zip(before, _state(model), strict=True):
        assert torch.equal(a, b), k  # the model came out untouched
    assert flags == [p.requires_grad for p in model.parameters()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
