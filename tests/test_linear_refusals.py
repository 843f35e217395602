"""Refuse, never guess: non-finite images, probes and outputs are errors naming what
was not finite (and the first module whose output was not), and the model leaves every
refusal exactly as it came (parameters, buffers, requires_grad flags, training flags,
hooks, instance attributes, torch's own autograd.Function.apply)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope.linear as L
from convscope.errors import ConvscopeError
from convscope.linear import registry


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
    assert L.registered_rules("user") == {}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))


# -- non-finite x0 and probes ----------------------------------------------------------------


def test_a_non_finite_x0_is_refused_with_its_count() -> None:
    x0 = torch.randn(1, 3, 4, 4)
    x0[0, 0, 0, 0] = float("nan")
    x0[0, 1, 2, 3] = float("inf")
    x0[0, 2, 1, 1] = -float("inf")
    with pytest.raises(ConvscopeError) as info:
        L.LinearInterpreter(_net(), x0)
    assert str(info.value) == (
        "x0 is not finite: 3 of 48 values are not finite (1 NaN, 2 inf); the linear "
        "interpreter needs a finite image to take its decisions from"
    )


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda li, x, y: li(x), "x1"),
        (lambda li, x, y: li.linear(x), "x1"),
        (lambda li, x, y: li.transpose(y), "y2"),
    ],
)
def test_a_non_finite_probe_is_refused_naming_the_argument(
    call: Callable[[L.LinearInterpreter, torch.Tensor, torch.Tensor], Any], name: str
) -> None:
    li = L.LinearInterpreter(_net(), torch.randn(1, 3, 4, 4))
    x1, y2 = torch.randn(2, 3, 4, 4), torch.randn(2, 5)
    x1[1, 0, 0, 0] = float("nan")
    y2[0, 3] = float("inf")
    n = 96 if name == "x1" else 10
    kind = "1 NaN, 0 inf" if name == "x1" else "0 NaN, 1 inf"
    with pytest.raises(ConvscopeError) as info:
        call(li, x1, y2)
    assert str(info.value) == (
        f"{name} is not finite: 1 of {n} values are not finite ({kind}); the linear "
        "interpreter needs finite probes"
    )


def test_a_probe_that_overflows_the_model_dtype_is_refused() -> None:
    net = _net().float()
    li = L.LinearInterpreter(net, torch.randn(1, 3, 4, 4, dtype=torch.float32))
    x1 = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    x1[0, 0, 0, 0] = 1e300  # finite in float64, inf in the interpreter's float32
    with pytest.raises(ConvscopeError, match=r"^x1 is not finite: 1 of 48 values .*\(0 NaN, 1"):
        li(x1)


def test_columns_rows_and_svd_still_work_after_the_checks() -> None:
    li = L.LinearInterpreter(_net(), torch.randn(1, 3, 4, 4))
    cols = li.columns(range(48)).reshape(48, 5)
    rows = li.rows(range(5)).reshape(5, 48)
    torch.testing.assert_close(rows, cols.T, rtol=1e-12, atol=1e-12)
    S, _, _ = li.svd(k=2, method="randomized")
    torch.testing.assert_close(S, torch.linalg.svdvals(rows)[:2], rtol=1e-6, atol=0)


# -- non-finite outputs --------------------------------------------------------------------------


class Blow(nn.Module):
    """Multiplies by a buffer holding an inf: 0 * inf is NaN where the ReLU cut."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor([1.0, float("inf"), 1.0, 1.0]).view(4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _count(t: torch.Tensor) -> str:
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    return f"{nan + inf} of {t.numel()} values are not finite ({nan} NaN, {inf} inf)"


def test_a_non_finite_output_names_the_first_module_that_went_non_finite() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Sequential(nn.ReLU(), Blow()),
        nn.Flatten(),
        nn.Linear(64, 5),
    )
    x0 = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        f0 = net(x0)
    assert not bool(torch.isfinite(f0).any())
    with pytest.raises(ConvscopeError) as info:
        L.LinearInterpreter(net, x0)
    assert str(info.value) == (
        f"the model's output f(x0) is not finite: {_count(f0)}; the first module whose "
        "output is not finite is '1.1' (Blow)"
    )


def test_a_non_finite_weight_is_found_too() -> None:
    net = _net()
    with torch.no_grad():
        net[3].weight[2, 7] = float("nan")
    with pytest.raises(
        ConvscopeError,
        match=r"f\(x0\) is not finite: 1 of 5 values .*first module whose output is not "
        r"finite is '3' \(Linear\)$",
    ):
        L.LinearInterpreter(net, torch.randn(1, 3, 4, 4))


def test_a_non_finite_output_made_in_the_models_own_forward() -> None:
    class Own(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) / 0.0

    with pytest.raises(
        ConvscopeError, match=r"not finite: .*; it turns non-finite in the model's own forward$"
    ):
        L.LinearInterpreter(Own(), torch.randn(1, 3, 4, 4))


def test_a_non_finite_residual_is_refused() -> None:
    """A rule whose probe rows are not finite while f(x0) is."""

    def bad_sin(ctx: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = args[0]
        return torch.cat([torch.sin(x[:1]), x[1:] / 0.0])

    class Act(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    net = nn.Sequential(nn.Linear(3, 4), Act(), nn.Linear(4, 2))
    with L.use_rule(torch.sin, bad_sin):
        with pytest.raises(ConvscopeError) as info:
            L.LinearInterpreter(net, torch.randn(1, 3))
    assert str(info.value) == (
        "the frozen system at x0 is not finite: in the residual r(x0) = li(0), 2 of 2 "
        "values are not finite (2 NaN, 0 inf); the first module whose output is not "
        "finite is '1' (Act)"
    )


def test_an_infinite_constant_in_the_linear_stream_is_refused_though_the_model_is_finite() -> None:
    """relu(x + b) with b = -inf in one channel: the model gives 0 there, the frozen system
    0 * (-inf) = NaN (the mask is 0 but the constant is carried): refused, naming why."""

    class MaskedBias(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("b", torch.tensor([0.0, float("-inf"), 0.0]).view(1, 3, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.b) * 2

    net = MaskedBias().double()
    x0 = torch.randn(1, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        assert bool(torch.isfinite(net(x0)).all())
    for mode in ("taylor", "freeze"):
        with pytest.raises(ConvscopeError) as info:
            L.LinearInterpreter(net, x0, mode=mode)
        assert str(info.value).startswith(
            "the frozen system's f(x0) is not finite although the model's output is: 4 of 12 "
            "values are not finite (4 NaN, 0 inf)"
        ), info.value
        assert "torch.finfo(dtype).min" in str(info.value)
    assert torch.equal(net.b, torch.tensor([0.0, float("-inf"), 0.0]).view(1, 3, 1).double())


class _Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.a, self.b, self.reentrant = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3), reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        h = checkpoint(lambda t: torch.relu(self.a(t)), x, use_reentrant=self.reentrant)
        return self.b(h)  # type: ignore[no-any-return]


def test_activation_checkpointing_is_refused_where_it_would_change_the_backward() -> None:
    """Non-reentrant checkpointing recomputes the block in the backward pass, outside the
    interpreter's rules: the forward (li.linear) is still right, the transpose is refused."""
    torch.manual_seed(0)
    net = _Checkpointed(reentrant=False).double().eval()
    x0 = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    dx = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    li = L.LinearInterpreter(net, x0, mode="taylor")
    jv = torch.func.jvp(net, (x0.expand_as(dx).clone(),), (dx,))[1]
    assert torch.allclose(li.linear(dx), jv, rtol=0, atol=1e-13 * float(jv.abs().max()))
    with pytest.raises(ConvscopeError) as info:
        li.transpose(torch.randn(1, *li.out_shape, dtype=torch.float64))
    assert str(info.value).startswith(
        "saved-tensor hooks in the model's own forward (torch.utils.checkpoint with "
        "use_reentrant=False"
    ), info.value
    assert "without activation checkpointing" in str(info.value)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    # the reentrant kind is a custom autograd.Function: refused at the first pass
    with pytest.raises(ConvscopeError, match=r"autograd\.Function .*CheckpointFunction"):
        L.LinearInterpreter(_Checkpointed(reentrant=True).double().eval(), x0)


# -- the model leaves every refusal as it came ------------------------------------------------


class ReLUSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ReLUSTE.apply(x)  # type: ignore[no-any-return]


class Victim(nn.Module):
    """Train-mode batch norm and dropout beside eval-mode parts, user hooks of every
    kind, a frozen parameter, and a middle step that fails in the way ``fail`` says."""

    def __init__(self, fail: str) -> None:
        super().__init__()
        self.fail = fail
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.gate = Gate()
        self.register_buffer("scale", torch.ones(4, 1, 1))
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> Any:
        x = self.drop(F.relu(self.bn(self.conv(x))))
        if self.fail in ("function", "function rule"):
            x = self.gate(x)
        elif self.fail == "unknown op":
            x = torch.sin(x)
        elif self.fail == "batch reduction":
            x = x - x.mean()
        elif self.fail == "runtime":
            raise RuntimeError("boom inside forward")
        elif self.fail == "module rule":
            x = self.head(x)
        x = self.head(x * self.scale)
        y = x.mean((2, 3))
        if self.fail in ("dict", "bad key"):
            return OrderedDict(out=y, aux=y)
        return y


def _refusing_rule(ctx: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise ConvscopeError(f"the test's rule refuses in {ctx.where()}")


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [
            (name, d, list(getattr(m, d).items()))
            for name, m in model.named_modules()
            for d in _HOOK_DICTS
        ],
        "attributes": [sorted(m.__dict__) for m in model.modules()],
        "apply": torch.autograd.Function.__dict__["apply"],
        "user rules": L.registered_rules("user"),
        "grad mode": torch.is_grad_enabled(),
        "torch function modes": torch._C._len_torch_function_stack(),
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _scenario(fail: str) -> tuple[Victim, Callable[[], Any], str, Any]:
    """The model, the call that must be refused, a fragment of the refusal and the
    ``(key, rule)`` to register for it (or ``None``)."""
    torch.manual_seed(9)
    model = Victim(fail)
    model.train()
    model.head.eval()
    model.conv.weight.requires_grad_(False)
    model.head[0].register_forward_hook(lambda m, a, o: None)
    model.head[0].register_forward_hook(lambda m, a, o: None, always_call=True)
    model.register_forward_pre_hook(lambda m, a: None)
    model.bn.register_forward_pre_hook(lambda m, a, k: None, with_kwargs=True)
    x0 = torch.randn(1, 3, 6, 6)

    def construct(**kw: Any) -> Callable[[], Any]:
        return lambda: L.LinearInterpreter(model, x0, **kw)

    if fail == "nan x0":
        x0[0, 0, 0, 0] = float("nan")
        return model, construct(), "x0 is not finite", None
    if fail == "nan output":
        with torch.no_grad():
            model.scale[1] = float("inf")
        return model, construct(), "f(x0) is not finite", None
    if fail == "bad key":
        return model, construct(output="logits"), "output='logits' is not in", None
    if fail == "nan x1":
        li = L.LinearInterpreter(model, x0)
        return model, lambda: li(torch.full((1, 3, 6, 6), float("nan"))), "x1 is not", None
    if fail == "nan y2":
        li = L.LinearInterpreter(model, x0)
        return model, lambda: li.transpose(torch.full((1, 4), float("nan"))), "y2 is not", None
    if fail == "function rule":
        rule = (ReLUSTE, _refusing_rule)
        return model, construct(), "the test's rule refuses in module 'gate'", rule
    if fail == "module rule":
        # every Sequential's forward goes to the rule: the head's raises
        rule = (nn.Sequential, _refusing_rule)
        return model, construct(), "the test's rule refuses in module 'head'", rule
    fragment = {
        "unknown op": "torch.sin in the model's own forward",
        "function": "custom autograd.Function",
        "batch reduction": "batch",
        "dict": "not one tensor",
        "runtime": "boom inside forward",
    }[fail]
    return model, construct(), fragment, None


FAILURES = [
    "unknown op",
    "function",
    "function rule",
    "module rule",
    "batch reduction",
    "runtime",
    "nan x0",
    "nan output",
    "nan x1",
    "nan y2",
    "dict",
    "bad key",
]


@pytest.mark.parametrize("fail", FAILURES)
def test_the_model_leaves_every_refusal_as_it_came(fail: str) -> None:
    model, call, fragment, rule = _scenario(fail)
    with L.use_rule(*rule) if rule else contextlib.nullcontext():
        before, state, rng = _snapshot(model), _state(model), torch.get_rng_state()
        with pytest.raises((ConvscopeError, RuntimeError)) as info:
            call()
        assert fragment in str(info.value)
        assert _snapshot(model) == before
        after = _state(model)
        assert after.keys() == state.keys()
        for k, v in after.items():
            assert torch.equal(v, state[k]), k
        assert torch.equal(torch.get_rng_state(), rng)
    assert torch.autograd.Function.__dict__["apply"] is registry._ORIGINAL_APPLY
