"""CUDA graph replay of the interpreter's passes (``cuda_graphs``) and the recorded
decisions that make capture possible.

The decisions and the option's errors are checked on the CPU; the graph replay itself
needs a GPU, so those tests run only where CUDA is available (the device runs of
benchmarks/README.md), against the eager interpreter and ``torch.func`` in float64.
"""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from _linear_helpers import calibrate, jvp_reference, photos, rel_err
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter
from convscope.linear.context import ALL_ON

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class _SmoothNet(nn.Module):
    """Sigmoid with exact zeros in x0 (a decision in the ratio rule), an added constant
    tensor (a decision in the add rule) and a squeeze-excitation gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shift = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # zeros where the mask is off
        h = torch.sigmoid(h) + self.shift  # sigmoid at exact 0: the h(0) constant
        gate = torch.sigmoid(h.mean((2, 3), keepdim=True))
        return self.fc((h * gate).mean((2, 3)))


def _smooth(dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _SmoothNet().to(dtype).eval(), photos(16)[:3].to(dtype)


def test_a_replayed_pass_takes_the_recorded_branches_and_gives_the_same_output() -> None:
    model, x = _smooth()
    li = LinearInterpreter(model, x[:1])
    out, ctx = li._run(x[1:], [ALL_ON, ALL_ON], cached=False)  # a pass that carries x0
    assert ctx.decisions and False in ctx.decisions and True in ctx.decisions
    again, ctx2 = li._run(x[1:], [ALL_ON, ALL_ON], replay=list(ctx.decisions))
    assert ctx2.decisions == ctx.decisions
    assert torch.equal(out, again)


def test_a_replay_shorter_than_the_pass_is_refused() -> None:
    model, x = _smooth()
    li = LinearInterpreter(model, x[:1])
    _, ctx = li._run(x[1:], [ALL_ON, ALL_ON], cached=False)
    with pytest.raises(ConvscopeError, match="more data-dependent branches"):
        li._run(x[1:], [ALL_ON, ALL_ON], replay=ctx.decisions[:-1])


def test_cuda_graphs_default_to_off_on_the_cpu() -> None:
    model, x = _smooth()
    assert LinearInterpreter(model, x[:1]).cuda_graphs is False


def test_cuda_graphs_true_on_the_cpu_says_why_not() -> None:
    model, x = _smooth()
    with pytest.raises(ConvscopeError, match="x0 is on cpu, not on a CUDA device"):
        LinearInterpreter(model, x[:1], cuda_graphs=True)


def test_cuda_graphs_must_be_a_bool_or_none() -> None:
    model, x = _smooth()
    with pytest.raises(ConvscopeError, match="cuda_graphs must be True, False or None"):
        LinearInterpreter(model, x[:1], cuda_graphs="yes")  # type: ignore[arg-type]


# -- on a GPU ---------------------------------------------------------------------------


def _gpu(name: str, size: int = 64) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = photos(size)
    model = calibrate(getattr(tvm, name)().double(), x)
    return model.cuda(), x.cuda()


@cuda
def test_cuda_graphs_are_on_by_default_for_an_eval_model_on_cuda() -> None:
    model, x = _smooth()
    model, x = model.cuda(), x.cuda()
    assert LinearInterpreter(model, x[:1]).cuda_graphs is True
    with pytest.raises(ConvscopeError, match="training mode"):
        LinearInterpreter(model.train(), x[:1], cuda_graphs=True)
    assert LinearInterpreter(model, x[:1]).cuda_graphs is False  # still training


@cuda
@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0"])
@pytest.mark.parametrize("mode", ["freeze", "taylor"])
def test_graph_replay_equals_the_eager_pass(name: str, mode: str) -> None:
    model, x = _gpu(name)
    x0, x1 = x[:1], x[1:]
    eager = LinearInterpreter(model, x0, mode, cuda_graphs=False)  # type: ignore[arg-type]
    graphs = LinearInterpreter(model, x0, mode, cuda_graphs=True)  # type: ignore[arg-type]
    for _ in range(2):  # capture, then replay
        assert rel_err(graphs(x1), eager(x1)) < 1e-12
    # new data in the same static buffers: the replay reads them
    assert rel_err(graphs(x1.flip(0)), eager(x1.flip(0))) < 1e-12
    assert rel_err(graphs(x0), graphs.output) < 1e-12
    assert rel_err(graphs.linear(x1), eager.linear(x1)) < 1e-12
    cols = torch.arange(0, 3 * 64 * 64, 997)[:8]
    assert rel_err(graphs.columns(cols), eager.columns(cols)) < 1e-12
    assert rel_err(graphs.rows([0, 3, 7]), eager.rows([0, 3, 7])) < 1e-12
    if mode == "taylor":
        f0, tangent = jvp_reference(model, x0, x1)
        assert rel_err(graphs(x1), f0 + tangent) < 1e-10


@cuda
def test_graphs_are_kept_per_pass_kind_and_probe_count() -> None:
    model, x = _gpu("resnet18")
    li = LinearInterpreter(model, x[:1], batch_size=3)
    li(x[1:])  # chunks of 3 and 1 probes
    li.linear(x[1:4])
    assert {k[:2] for k in li._graphs} == {("forward", 3), ("forward", 1)}
    for k in range(6):
        li.columns([k])
    assert len(li._graphs) <= 4
