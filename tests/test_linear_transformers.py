"""The linear interpreter on vision transformers (issue 11, point 2): ViT, Swin, MaxViT
and ``nn.MultiheadAttention`` in its variants.

Untrained models in float64, every parameter given random values (torchvision zeroes
the heads, biases and class tokens of these models, which would make every check
trivially easy) and batch norm calibrated with cumulative averaging.

- taylor: ``li.linear(x1 - x0)`` is ``J(x0)(x1 - x0)`` (``torch.func.jvp``) and
  ``li.transpose`` is ``J^T`` (``torch.func.vjp``) to 1e-8 relative, the signal did not
  vanish, ``x0`` is reproduced and the contributions sum to ``f(x0)``;
- freeze (the attention weights frozen at ``x0``): ``x0`` reproduced, contributions
  conserved, ``li.linear`` linear in its argument, and different from the Jacobian;
- the model leaves every analysis as it came.

The references run on PyTorch's math attention kernel: forward-mode autodiff has no
formula for the CPU flash kernel.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from _linear_helpers import calibrate, rel_err
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from convscope.linear import LinearInterpreter

tvm = pytest.importorskip("torchvision.models")

TOL = 1e-8


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every parameter torchvision leaves at 0 or 1 (heads, biases,
    class tokens, layer-norm affines), then batch-norm calibration on random images."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if p.ndim == 1 and name.endswith("weight"):  # norm scales
                p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=gen, dtype=p.dtype))
            elif p.ndim == 1:
                p.add_(0.05 * noise)
            elif not bool(p.abs().max() > 0):
                p.copy_(0.05 * noise)
    return model


def _model(name: str) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    if name == "vit_tiny":
        model: nn.Module = tvm.VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=10,
        )
        size = 32
    elif name == "vit_b_16":
        model, size = tvm.vit_b_16(image_size=32), 32
    elif name == "swin_t":
        model, size = tvm.swin_t(), 32
    elif name == "maxvit_tiny":  # MaxViT's blocks at a size that runs in seconds
        from torchvision.models.maxvit import MaxVit

        model = MaxVit(
            input_size=(56, 56),
            stem_channels=8,
            partition_size=7,
            block_channels=[16, 32],
            block_layers=[1, 1],
            head_dim=8,
            stochastic_depth_prob=0.0,
            num_classes=10,
        )
        size = 56
    elif name == "maxvit_t":  # its grids need 224 (7 x 7 windows at stride 32)
        model, size = tvm.maxvit_t(), 224
    else:
        raise KeyError(name)
    model = _randomize(model.double())
    gen = torch.Generator().manual_seed(1)
    calibrate(model, torch.randn(4, 3, size, size, generator=gen, dtype=torch.float64))
    return model, size


_CACHE: dict[str, tuple[nn.Module, torch.Tensor]] = {}


def _setup(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name not in _CACHE:
        model, size = _model(name)
        gen = torch.Generator().manual_seed(2)
        _CACHE[name] = (model, torch.randn(3, 3, size, size, generator=gen, dtype=torch.float64))
    return _CACHE[name]


def _jvp(model: nn.Module, x0: torch.Tensor, dx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # with gradients on: nn.MultiheadAttention's fused fast path has no forward-mode formula
    with sdpa_kernel([SDPBackend.MATH]):
        f0 = model(x0)
        _, tangent = torch.func.jvp(model, (x0.expand_as(dx).clone(),), (dx,))
    return f0.detach(), tangent.detach()


def _vjp(model: nn.Module, x0: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel([SDPBackend.MATH]):
        _, pullback = torch.func.vjp(model, x0)
        return torch.cat([pullback(y2[i : i + 1])[0] for i in range(len(y2))]).detach()


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], list[bool]]:
    return (
        copy.deepcopy(model.state_dict()),
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def _check_untouched(
    model: nn.Module, snap: tuple[dict[str, torch.Tensor], list[bool], list[bool]]
) -> None:
    state, training, grads = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == grads


def _check_taylor(name: str, whole_contributions: bool) -> None:
    model, x = _setup(name)
    snap = _snapshot(model)
    x0, x1 = x[:1], x[1:]
    li = LinearInterpreter(model, x0, mode="taylor")
    f0, jv = _jvp(model, x0, x1 - x0)
    scale = float(f0.abs().max())
    assert float(jv.abs().max()) > 1e-2 * scale  # the signal did not vanish
    torch.testing.assert_close(li.output, f0, rtol=1e-10, atol=1e-10 * scale)
    assert rel_err(li.linear(x1 - x0), jv) < TOL
    y2 = torch.randn(2, *li.out_shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    assert rel_err(li.transpose(y2), _vjp(model, x0, y2)) < TOL
    _check_conservation(li, f0, whole_contributions)
    _check_untouched(model, snap)


def _check_conservation(li: LinearInterpreter, f0: torch.Tensor, whole: bool) -> None:
    scale = float(f0.abs().max())
    if whole:  # one probe per bias source
        total = sum(li.contributions().values())
        torch.testing.assert_close(total, f0, rtol=1e-9, atol=1e-9 * scale)
    else:  # the shares of the top score, from one forward and one backward pass
        c = int(f0.argmax())
        parts = li.contributions(c)
        assert abs(float(sum(parts.values())) - float(f0.reshape(-1)[c])) < 1e-9 * scale


def _check_freeze(name: str, whole_contributions: bool) -> None:
    model, x = _setup(name)
    snap = _snapshot(model)
    x0, x1 = x[:1], x[1:]
    li = LinearInterpreter(model, x0, mode="freeze")
    f0, jv = _jvp(model, x0, x1 - x0)
    scale = float(f0.abs().max())
    torch.testing.assert_close(li(x0), f0, rtol=1e-10, atol=1e-10 * scale)
    _check_conservation(li, f0, whole_contributions)
    # the frozen system is linear: attention weights, norms and GELU ratios held at x0
    a, b = 0.7, -1.3
    both = li.linear(torch.cat([x1, a * x1[:1] + b * x1[1:]]))
    expected = a * both[:1] + b * both[1:2]
    assert rel_err(both[2:], expected) < 1e-10
    # ... and not the tangent map
    assert rel_err(li.linear(x1 - x0), jv) > 1e-3
    _check_untouched(model, snap)


FAST = ["vit_tiny", "swin_t", "maxvit_tiny"]
SLOW = ["vit_b_16", "maxvit_t"]


def _params(names: list[str]) -> list[object]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.mark.parametrize("name", _params(FAST + SLOW))
def test_taylor_is_the_jacobian(name: str) -> None:
    _check_taylor(name, whole_contributions=name == "vit_tiny")


@pytest.mark.parametrize("name", _params(FAST + SLOW))
def test_freeze_reproduces_x0_conserves_and_is_linear(name: str) -> None:
    _check_freeze(name, whole_contributions=name == "vit_tiny")


# -- nn.MultiheadAttention in its variants -----------------------------------------------------


class _Attend(nn.Module):
    """Patches -> tokens -> one nn.MultiheadAttention call -> a score per token."""

    def __init__(
        self, call: Callable[[nn.MultiheadAttention, torch.Tensor], torch.Tensor], **kw: object
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 2, stride=2)
        self.attn = nn.MultiheadAttention(8, 2, **kw)  # type: ignore[arg-type]
        self.call = call
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, 4, 8)
        return self.head(self.call(self.attn, tokens)).flatten(1)


def _batch_first(m: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    return m(t, t, t, need_weights=False)[0]


def _weights(m: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    out, w = m(t, t, t, need_weights=True)
    return out + w.sum(-1, keepdim=True) * out + w[..., :1]


def _per_head_weights(m: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    out, w = m(t, t, t, need_weights=True, average_attn_weights=False)
    return out * w.mean((1, 2))[:, None, :1]


def _seq_first(m: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    s = t.transpose(0, 1)
    return m(s, s, s)[0].transpose(0, 1)


def _masks(m: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    causal = torch.ones(4, 4, dtype=torch.bool).triu(1)
    padding = torch.zeros(t.shape[0], 4, dtype=torch.bool)
    padding[:, -1] = True
    return m(t, t, t, attn_mask=causal, key_padding_mask=padding, need_weights=False)[0]


def _float_mask(m: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    bias = torch.linspace(-1.0, 1.0, 16, dtype=t.dtype).view(4, 4)
    return m(t, t, t, attn_mask=bias, need_weights=True)[0]


def _cross(m: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    memory = (
        torch.linspace(-1.0, 1.0, 6 * 8, dtype=t.dtype).view(1, 6, 8).expand(t.shape[0], -1, -1)
    )
    return m(t, memory, memory, need_weights=False)[0] + m(t, t.flip(1), t)[0]


def _kv_dims(m: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    return m(t, t[..., :6], t[..., 3:], need_weights=False)[0]


MHA: dict[
    str, tuple[Callable[[nn.MultiheadAttention, torch.Tensor], torch.Tensor], dict[str, object]]
] = {
    "batch_first": (_batch_first, {"batch_first": True}),
    "weights": (_weights, {"batch_first": True}),
    "per_head_weights": (_per_head_weights, {"batch_first": True}),
    "sequence_first": (_seq_first, {}),
    "masks": (_masks, {"batch_first": True}),
    "float_mask": (_float_mask, {"batch_first": True}),
    "cross_attention": (_cross, {"batch_first": True}),
    "kdim_vdim_bias_kv_zero_attn": (
        _kv_dims,
        {"batch_first": True, "kdim": 6, "vdim": 5, "add_bias_kv": True, "add_zero_attn": True},
    ),
}


@pytest.mark.parametrize("mode", ["taylor", "freeze"])
@pytest.mark.parametrize("name", sorted(MHA))
def test_multihead_attention_variants(name: str, mode: str) -> None:
    call, kw = MHA[name]
    torch.manual_seed(0)
    model = _randomize(_Attend(call, **kw).double()).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 4, 4, generator=gen, dtype=torch.float64)
    x0, x1 = x[:1], x[1:]
    snap = _snapshot(model)
    li = LinearInterpreter(model, x0, mode=mode)  # type: ignore[arg-type]
    f0, jv = _jvp(model, x0, x1 - x0)
    scale = float(f0.abs().max())
    torch.testing.assert_close(li(x0), f0, rtol=1e-10, atol=1e-10 * scale)
    total = sum(li.contributions().values())
    torch.testing.assert_close(total, f0, rtol=1e-9, atol=1e-9 * scale)
    if mode == "taylor":
        assert rel_err(li.linear(x1 - x0), jv) < TOL
        y2 = torch.randn(2, *li.out_shape, generator=gen, dtype=x.dtype)
        assert rel_err(li.transpose(y2), _vjp(model, x0, y2)) < TOL
    _check_untouched(model, snap)


def test_freeze_attention_is_the_frozen_gate_times_the_values() -> None:
    """The paper's reading: the probes see ``P0 (x Wv + bv)`` with ``P0`` the attention
    weights of ``x0``, through the out-projection; built here by hand."""
    torch.manual_seed(0)
    mha = _randomize(nn.MultiheadAttention(6, 2, batch_first=True).double()).eval()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(1, 5, 6, generator=gen, dtype=torch.float64)
    x1 = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    li = LinearInterpreter(Net(), x0, mode="freeze")
    with torch.no_grad():
        _, p0 = mha(x0, x0, x0, need_weights=True, average_attn_weights=False)  # (1, h, L, L)
        wv = mha.in_proj_weight[12:]
        v = (x1 @ wv.T).view(2, 5, 2, 3).transpose(1, 2)  # (2, h, L, hd)
        expected = (p0 @ v).transpose(1, 2).reshape(2, 5, 6) @ mha.out_proj.weight.T
    assert rel_err(li.linear(x1), expected) < 1e-12
