"""The linear interpreter on programs saved with ``torch.export.save`` (convscope.linear.aten).

Every program is exported in float64 with a dynamic batch dimension, saved, loaded
back, and turned into a module both ways (``ExportedProgram.module()`` and
``torch.export.unflatten``); the interpreter of the loaded module is compared with
the eager model's, which it must reproduce to rounding:

- taylor: ``li.output == f(x0)``, ``li.linear(dx) == J dx`` from ``torch.func.jvp`` on
  the eager model (with a signal that did not vanish), ``li.transpose(y) == J^T y``
  from ``torch.func.vjp``;
- freeze: ``li.linear(dx)`` equal to the eager model's frozen system, which differs
  from the tangent one for the smooth units (SiLU, hardswish);
- contributions: equal to the eager model's, source by source, and summing to f(x0).

Plus core-ATen programs (``run_decompositions``), a program with a static batch size
(refused with the export hint), ATen ops without a rule (refused by name) and calls of
an ``OpOverloadPacket``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _linear_helpers import photos, rel_err, torchvision_model
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter
from convscope.linear.affine import CONSTANT_OF_SHAPE, METADATA
from convscope.linear.aten import ATEN, torch_level
from convscope.linear.interpreter import _DISPATCH

TOL = 1e-10
LOADERS = ["module", "unflatten"]
HINT = 'dynamic_shapes={"x": {0: torch.export.Dim("batch")}}'


class SmallCNN(nn.Module):
    """SiLU, batch norm, a residual add, max-pool, a mean over a reshape, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn(self.conv(x)))
        h = h + self.conv2(h)
        h = F.max_pool2d(h, 2)
        h = h.reshape(h.shape[0], h.shape[1], -1).mean(2)  # a shape read: aten.sym_size
        return self.fc(h)


def _small_cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = SmallCNN().double()
    with torch.no_grad():
        bn = model.bn
        bn.running_mean.copy_(0.3 * torch.randn(8))
        bn.running_var.copy_(0.5 + torch.rand(8))
        bn.weight.copy_(0.5 + torch.rand(8))
        bn.bias.copy_(0.2 * torch.randn(8))
    return model.eval(), photos(12)


def _export(
    model: nn.Module, x: torch.Tensor, folder: Path, *, dynamic: bool = True, core: bool = False
) -> torch.export.ExportedProgram:
    """Export in float64, save, load back (``core``: decomposed to core ATen first)."""
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    ep = torch.export.export(model, (x,), dynamic_shapes=shapes)
    if core:
        ep = ep.run_decompositions()
    path = folder / "model.pt2"
    torch.export.save(ep, path)
    return torch.export.load(path)


def _load(ep: torch.export.ExportedProgram, loader: str) -> nn.Module:
    return ep.module() if loader == "module" else torch.export.unflatten(ep)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, torch.Tensor, object]:
    model, x = _small_cnn()
    return model, x, _export(model, x[:2], tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def small_core(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model, x = _small_cnn()
    return _export(model, x[:2], tmp_path_factory.mktemp("small_core"), core=True)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, torch.Tensor, object]:
    model, x = torchvision_model("resnet18")
    return model, x, _export(model, x[:2], tmp_path_factory.mktemp("resnet18"))


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, torch.Tensor, object]:
    model, x = torchvision_model("mobilenet_v3_small")
    return model, x, _export(model, x[:2], tmp_path_factory.mktemp("mobilenet"))


def _jvp(model: nn.Module, x0: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        f0 = model(x0)
    _, jv = torch.func.jvp(model, (x0.expand_as(dx).clone(),), (dx,))
    return f0, jv.detach()


def _vjp(model: nn.Module, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    _, pullback = torch.func.vjp(model, x0)
    return torch.cat([pullback(row[None])[0] for row in y]).detach()


def _check_against_eager(
    eager: nn.Module, loaded: nn.Module, x: torch.Tensor, *, smooth: bool
) -> tuple[LinearInterpreter, LinearInterpreter]:
    """Every equality of the module docstring; returns the freeze interpreters
    (loaded, eager)."""
    x0, dx = x[:1], x[1:3] - x[:1]
    f0, jv = _jvp(eager, x0, dx)
    assert jv.abs().max() > 1e-3 * f0.abs().max()  # the signal did not vanish

    taylor = LinearInterpreter(loaded, x0, mode="taylor")
    torch.testing.assert_close(taylor.output, f0, rtol=TOL, atol=TOL * float(f0.abs().max()))
    assert rel_err(taylor.linear(dx), jv) < TOL
    y = torch.randn((2, *f0.shape[1:]), dtype=f0.dtype, generator=torch.Generator().manual_seed(1))
    assert rel_err(taylor.transpose(y), _vjp(eager, x0, y)) < TOL

    freeze = LinearInterpreter(loaded, x0)
    reference = LinearInterpreter(eager, x0)
    assert rel_err(freeze.linear(dx), reference.linear(dx)) < TOL
    gap = rel_err(reference.linear(dx), jv)
    assert gap > 1e-4 if smooth else gap < TOL  # the modes differ exactly for smooth units

    contributions = freeze.contributions()
    expected = reference.contributions()
    assert len(contributions) == len(expected) == len(reference.sources) + 1
    for got, want in zip(contributions.values(), expected.values(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=TOL * float(f0.abs().max()))
    torch.testing.assert_close(
        sum(contributions.values()), f0, rtol=1e-9, atol=TOL * float(f0.abs().max())
    )
    return freeze, reference


# -- the small CNN -------------------------------------------------------------------------


@pytest.mark.parametrize("loader", LOADERS)
def test_small_cnn_matches_the_eager_model(small: tuple, loader: str) -> None:
    model, x, ep = small
    freeze, reference = _check_against_eager(model, _load(ep, loader), x, smooth=True)
    # conv, conv2 and fc biases, the batch-norm shift (silu has no constant in freeze)
    assert len(reference.sources) == 4
    names = [s.name for s in freeze.sources]
    if loader == "unflatten":  # the module hierarchy survives: sources keep their paths
        assert names == [s.name for s in reference.sources] == ["conv", "bn", "conv2", "fc"]
    else:  # one flat graph: every constant is added in the root's forward
        assert names == ["(root)", "(root)#2", "(root)#3", "(root)#4"]


def test_small_cnn_rows_are_the_transposed_jacobian(small: tuple) -> None:
    model, x, ep = small
    x0 = x[:1]
    li = LinearInterpreter(torch.export.unflatten(ep), x0, mode="taylor")
    idx = [0, 3, 4]
    e = torch.zeros(3, 5, dtype=torch.float64)
    e[range(3), idx] = 1
    rows = li.rows(idx)
    assert rows.shape == (3, *x0.shape[1:])
    assert rel_err(rows, _vjp(model, x0, e)) < TOL


def test_small_cnn_core_aten(small: tuple, small_core: Any) -> None:
    # convolution, _native_batch_norm_legit_no_training (a tuple), sigmoid * x,
    # max_pool2d_with_indices, view, permute + addmm for the linear layer
    model, x, _ = small
    ops = {str(n.target) for n in small_core.graph.nodes if n.op == "call_function"}
    assert {"aten.convolution.default", "aten.addmm.default"} <= ops
    assert "aten._native_batch_norm_legit_no_training.default" in ops
    for loader in LOADERS:
        _check_against_eager(model, _load(small_core, loader), x, smooth=True)


# -- torchvision ------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", LOADERS)
def test_resnet18_matches_the_eager_model(resnet: tuple, loader: str) -> None:
    model, x, ep = resnet
    freeze, reference = _check_against_eager(model, _load(ep, loader), x, smooth=False)
    assert len(reference.sources) == 21  # 20 batch norms and the classifier's bias
    if loader == "unflatten":
        assert [s.name for s in freeze.sources] == [s.name for s in reference.sources]


def test_mobilenet_v3_small_matches_the_eager_model(mobilenet: tuple) -> None:
    # hardswish_, hardsigmoid gates of squeeze-excitation (aten.mul of two tracked
    # tensors), relu / relu_, adaptive_avg_pool2d, flatten, dropout_ in eval
    model, x, ep = mobilenet
    freeze, reference = _check_against_eager(model, torch.export.unflatten(ep), x, smooth=True)
    assert [s.name for s in freeze.sources] == [s.name for s in reference.sources]


class ManyOps(nn.Module):
    """One of each op whose ATen schema needs an adapter (norms, padding, upsampling,
    transposed convolution, slices, selections) and of several plain mappings.

    ``core``: without instance norm, PReLU and softplus, which core ATen decomposes
    into ops the interpreter refuses (a view merging the batch into channels, a
    comparison, ``where``).
    """

    def __init__(self, core: bool) -> None:
        super().__init__()
        self.core = core
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.gn = nn.GroupNorm(2, 8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.ln = nn.LayerNorm(8)
        self.prelu = nn.PReLU(8)
        self.c3 = nn.Conv2d(8, 12, 1)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gn(F.leaky_relu(self.c1(x), 0.1))
        h = F.relu6(self.c2(h))
        h = F.gelu(h if self.core else self.inorm(h))
        h = F.avg_pool2d(self.up(h), 2)
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = F.interpolate(h, size=(10, 10), mode="bilinear", align_corners=False)
        h = F.pad(h, (1, 1, 1, 1), value=0.5)
        h = self.ln(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = torch.tanh(h) * torch.sigmoid(h[:, :1]) + F.elu(h)
        h = h if self.core else self.prelu(h)
        h = F.pixel_shuffle(self.c3(h)[:, :, 1:-1, 1:-1], 2)
        h = torch.cat([h, torch.ones_like(h[:, :1])], 1)
        h = F.adaptive_max_pool2d(h, 3)
        h = torch.cat([h.amax(2), h.max(dim=3)[0]], 2).flatten(1)
        h = torch.clamp(h, min=-1.0, max=2.0)
        return self.fc(h if self.core else h + F.softplus(h))


@pytest.mark.parametrize("core", [False, True], ids=["training-ir", "core-aten"])
def test_many_ops_match_the_eager_model(tmp_path: Path, core: bool) -> None:
    torch.manual_seed(0)
    model = ManyOps(core).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # affine norms and PReLU away from 1 and 0
    model.eval()
    x = photos(16)
    ep = _export(model, x[:2], tmp_path, core=core)
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    adapted = {
        "aten.upsample_nearest2d.vec",
        "aten.upsample_bilinear2d.vec",
        "aten.slice.Tensor",
        "aten.amax.default",
        "aten.max.dim",
    }
    adapted |= (
        {"aten.native_group_norm.default", "aten.native_layer_norm.default"}
        | {"aten.constant_pad_nd.default", "aten.index.Tensor", "aten.convolution.default"}
        if core
        else {"aten.group_norm.default", "aten.instance_norm.default", "aten.layer_norm.default"}
        | {"aten.pad.default", "aten.conv_transpose2d.input", "aten.prelu.default"}
    )
    assert adapted <= ops
    for loader in LOADERS:
        _check_against_eager(model, _load(ep, loader), x, smooth=True)


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", LOADERS)
def test_a_static_batch_size_asks_for_a_dynamic_export(tmp_path: Path, loader: str) -> None:
    model, x = _small_cnn()
    ep = _export(model, x[:1], tmp_path, dynamic=False)
    loaded = _load(ep, loader)
    torch.testing.assert_close(loaded(x[:1]), model(x[:1]))  # the program itself is fine
    with pytest.raises(ConvscopeError, match="static batch size of 1") as info:
        LinearInterpreter(loaded, x[:1])
    assert HINT in str(info.value)


def test_an_input_of_another_size_is_named(small: tuple) -> None:
    model, x, ep = small  # dynamic batch, fixed 12 x 12 images
    with pytest.raises(ConvscopeError, match=re.escape("x.size()[2] == 12")):
        LinearInterpreter(ep.module(), photos(16)[:1])


class _Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x).mean((2, 3))


class _AmaxTwoDims(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


@pytest.mark.parametrize(
    ("model", "op"), [(_Exp(), "aten.exp.default"), (_AmaxTwoDims(), "aten.amax.default")]
)
@pytest.mark.parametrize("loader", LOADERS)
def test_an_aten_op_without_a_rule_is_refused_by_name(
    tmp_path: Path, model: nn.Module, op: str, loader: str
) -> None:
    x = photos(8)[:2]
    loaded = _load(_export(model, x, tmp_path), loader)
    with pytest.raises(ConvscopeError, match=re.escape(op)):
        LinearInterpreter(loaded, x[:1])


# -- calls of ATen ops in eager code --------------------------------------------------------------


class _Clamped(nn.Module):
    def __init__(self, packet: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.packet = packet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.packet:
            h = torch.ops.aten.hardtanh(h, -0.1, 0.2)  # an OpOverloadPacket
            return torch.ops.aten.mean.dim(h, [2, 3])
        return F.hardtanh(h, -0.1, 0.2).mean((2, 3))


def test_overload_packets_run_their_overloads_rule() -> None:
    torch.manual_seed(0)
    eager = _Clamped(packet=False).double()
    packet = _Clamped(packet=True).double()
    packet.load_state_dict(eager.state_dict())
    x = photos(8)
    li, ref = LinearInterpreter(packet, x[:1]), LinearInterpreter(eager, x[:1])
    dx = x[1:] - x[:1]
    assert rel_err(li.linear(dx), ref.linear(dx)) < TOL
    assert [s.op for s in li.sources] == [s.op for s in ref.sources]
    assert "hardtanh c(x0)" in {s.op for s in li.sources}  # the clamped values are a source
    for got, want in zip(li.contributions().values(), ref.contributions().values(), strict=True):
        torch.testing.assert_close(got, want)


def test_every_mapping_lands_on_a_known_torch_function() -> None:
    known = set(_DISPATCH) | METADATA | CONSTANT_OF_SHAPE
    targets = {op: torch_level(op) for op in ATEN if isinstance(op, torch._ops.OpOverload)}
    unknown = {op_: t for op_, t in targets.items() if t is not None and t not in known}
    assert not unknown
    for key in ("conv2d.default", "batch_norm.default", "relu_.default", "add_.Tensor"):
        name, overload = key.split(".")
        assert getattr(getattr(torch.ops.aten, name), overload) in ATEN
    assert torch.ops.aten.exp.default not in ATEN
