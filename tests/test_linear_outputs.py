"""Models whose output is not one tensor: ``LinearInterpreter(..., output=...)`` with a
key, an index, an attribute name or a callable; the errors without it; and torchvision's
segmentation models (dict outputs ``{"out", "aux"}``), exact against torch.func.jvp."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from _linear_helpers import calibrate, photos, rel_err
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@dataclasses.dataclass
class Heads:
    logits: torch.Tensor
    features: torch.Tensor


class TwoHeads(nn.Module):
    """A conv trunk and two heads, returned as a dict, a tuple or a dataclass."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.trunk = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.a = nn.Linear(48, 4)
        self.b = nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.trunk(x)
        a, b = self.a(h), torch.tanh(self.b(h))
        if self.kind == "dict":
            return OrderedDict(logits=a, features=b)
        if self.kind == "tuple":
            return a, b
        return Heads(a, b)


def _net(kind: str) -> TwoHeads:
    torch.manual_seed(0)
    return TwoHeads(kind).eval()


def _check(net: nn.Module, pick: Callable[[Any], torch.Tensor], output: Any) -> None:
    """li.output, li.linear and li.transpose of the picked tensor against torch.func."""
    x0, x1 = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 4, 4)
    li = LinearInterpreter(net, x0, mode="taylor", output=output)

    def f(x: torch.Tensor) -> torch.Tensor:
        return pick(net(x))

    f0 = f(x0).detach()
    torch.testing.assert_close(li.output, f0, rtol=1e-13, atol=1e-13)
    assert li.out_shape == (4,)
    _, jv = torch.func.jvp(f, (x0.expand_as(x1).clone(),), (x1,))
    jv = jv.detach()
    assert float(jv.abs().max()) > 1e-3
    assert rel_err(li.linear(x1), jv) < 1e-12
    y2 = torch.randn(3, 4)
    _, vjp = torch.func.vjp(f, x0.expand_as(x1).clone())
    assert rel_err(li.transpose(y2), vjp(y2)[0]) < 1e-12


@pytest.mark.parametrize(
    ("kind", "output", "pick"),
    [
        ("dict", "logits", lambda o: o["logits"]),
        ("dict", "features", lambda o: o["features"]),
        ("dict", lambda o: o["features"], lambda o: o["features"]),
        ("tuple", 0, lambda o: o[0]),
        ("tuple", -1, lambda o: o[1]),
        ("tuple", lambda o: o[1], lambda o: o[1]),
        ("dataclass", "features", lambda o: o.features),
        ("dataclass", lambda o: o.logits, lambda o: o.logits),
    ],
)
def test_output_picks_the_tensor(kind: str, output: Any, pick: Callable[[Any], Any]) -> None:
    _check(_net(kind), pick, output)


def test_a_callable_output_is_interpreted_like_the_model() -> None:
    """Torch ops in the callable run inside the pass: a sum of both heads, a slice."""
    net = _net("dict")

    def both(o: Any) -> torch.Tensor:
        return o["logits"] + 2 * o["features"]

    _check(net, both, both)
    net_t = _net("tuple")
    with pytest.raises(ConvscopeError, match=r"torch\.sin in the model's own forward"):
        LinearInterpreter(net_t, torch.randn(1, 2, 4, 4), output=lambda o: torch.sin(o[0]))


def test_a_callable_may_pick_from_a_tensor_output() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 6))
    _check(net, lambda y: y[:, 2:6], lambda y: y[:, 2:6])


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (
            "dict",
            "the model returns an OrderedDict with keys ['logits', 'features'], not one "
            "tensor; pass output= with the key of the tensor to interpret (e.g. "
            "output='logits'), or a callable that picks the tensor from the output",
        ),
        (
            "tuple",
            "the model returns a tuple of 2 values, not one tensor; pass output= with its "
            "index (0 to 1), or a callable that picks the tensor from the output",
        ),
        (
            "dataclass",
            "the model returns a Heads with fields ['logits', 'features'], not one tensor; "
            "pass output= with the attribute name of the tensor, or a callable that picks "
            "the tensor from the output",
        ),
    ],
)
def test_without_output_a_structured_output_is_refused(kind: str, message: str) -> None:
    with pytest.raises(ConvscopeError) as info:
        LinearInterpreter(_net(kind), torch.randn(1, 2, 4, 4))
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("kind", "output", "match"),
    [
        ("dict", "aux", r"^output='aux' is not in the model's output, an OrderedDict with keys"),
        ("dict", 0, r"^output=0 is not in the model's output, an OrderedDict with keys"),
        ("tuple", 2, r"^output=2 is out of range for the model's output, a tuple of 2 values"),
        ("tuple", "logits", r"^output='logits' cannot pick a tensor from the model's output"),
        ("dataclass", "scores", r"^output='scores' cannot pick a tensor from .* a Heads with"),
        ("dataclass", 0, r"^output=0 cannot pick a tensor from the model's output, a Heads"),
        ("tensor", "out", r"^output='out' was given but the model returns one tensor"),
        ("dict", lambda o: o.keys(), r"^output=<lambda> picked an odict_keys, not a tensor"),
        ("dataclass", "kind", r"^output='kind' cannot pick"),
    ],
)
def test_bad_output_choices_are_refused(kind: str, output: Any, match: str) -> None:
    net: nn.Module = nn.Conv2d(2, 3, 1) if kind == "tensor" else _net(kind)
    with pytest.raises(ConvscopeError, match=match):
        LinearInterpreter(net, torch.randn(1, 2, 4, 4), output=output)


@pytest.mark.parametrize("output", [1.5, True, ("out",)])
def test_output_must_be_a_key_an_index_or_a_callable(output: Any) -> None:
    with pytest.raises(ConvscopeError, match=r"^output must be a key \(str\), an index \(int\)"):
        LinearInterpreter(_net("dict"), torch.randn(1, 2, 4, 4), output=output)


# -- torchvision segmentation models --------------------------------------------------------------

SEGMENTATION = {
    "fcn_resnet50": {"aux_loss": True},
    "deeplabv3_mobilenet_v3_large": {"aux_loss": True},
    "lraspp_mobilenet_v3_large": {},
}
_MODELS: dict[str, tuple[nn.Module, torch.Tensor]] = {}


def segmentation_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """An untrained segmentation model (5 classes), float64, calibrated on 32x32 photos."""
    if name not in _MODELS:
        segmentation = pytest.importorskip("torchvision.models.segmentation")
        torch.manual_seed(0)
        build = getattr(segmentation, name)
        model = build(weights=None, weights_backbone=None, num_classes=5, **SEGMENTATION[name])
        x = photos(32)
        _MODELS[name] = (calibrate(model.double(), x), x)
    return _MODELS[name]


def _hooks(model: nn.Module) -> list[tuple[int, ...]]:
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._forward_hooks_always_called))
        for m in model.modules()
    ]


CASES = [
    ("fcn_resnet50", "out"),
    ("fcn_resnet50", "aux"),
    ("deeplabv3_mobilenet_v3_large", "out"),
    ("deeplabv3_mobilenet_v3_large", "aux"),
    ("lraspp_mobilenet_v3_large", "out"),
]


@pytest.mark.parametrize(("name", "key"), CASES)
def test_segmentation_taylor_is_the_jacobian_of_the_picked_output(name: str, key: str) -> None:
    model, x = segmentation_model(name)
    x0, x1 = x[:1], x[1:3]
    hooks = _hooks(model)
    # "out" by key, "aux" by a callable: both ways of picking
    output: Any = key if key == "out" else (lambda o: o[key])
    li = LinearInterpreter(model, x0, mode="taylor", output=output)
    with torch.no_grad():
        f0 = model(x0)[key]
    assert li.out_shape == (5, 32, 32)
    scale = float(f0.abs().max())
    torch.testing.assert_close(li.output, f0, rtol=1e-10, atol=1e-10 * scale)
    dx = x1 - x0

    def f(z: torch.Tensor) -> torch.Tensor:
        return model(z)[key]  # type: ignore[no-any-return]

    _, jv = torch.func.jvp(f, (x0.expand_as(x1).clone(),), (dx,))
    jv = jv.detach()
    assert float(jv.abs().max()) > 1e-3 * scale  # a signal that did not vanish
    assert rel_err(li.linear(dx), jv) < 1e-8
    torch.testing.assert_close(li(x0), f0, rtol=1e-10, atol=1e-10 * scale)
    parts = li.contributions()
    assert len(parts) > 10  # the batch-norm shifts and head biases are sources
    torch.testing.assert_close(sum(parts.values()), f0, rtol=1e-9, atol=1e-9 * scale)
    assert _hooks(model) == hooks


@pytest.mark.parametrize("name", sorted(SEGMENTATION))
def test_segmentation_freeze_reproduces_x0_and_conserves_contributions(name: str) -> None:
    model, x = segmentation_model(name)
    x0 = x[:1]
    li = LinearInterpreter(model, x0, output="out")
    with torch.no_grad():
        f0 = model(x0)["out"]
    scale = float(f0.abs().max())
    torch.testing.assert_close(li(x0), f0, rtol=1e-10, atol=1e-10 * scale)
    parts = li.contributions()
    torch.testing.assert_close(sum(parts.values()), f0, rtol=1e-9, atol=1e-9 * scale)


def test_segmentation_without_output_names_the_keys() -> None:
    model, x = segmentation_model("lraspp_mobilenet_v3_large")
    with pytest.raises(ConvscopeError, match=r"returns an OrderedDict with keys \['out'\], not"):
        LinearInterpreter(model, x[:1])
