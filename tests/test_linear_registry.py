"""The rule registry (convscope.linear.registry): the built-in tables go through it, user
rules for torch ops, ``torch.ops`` packets, custom autograd.Functions and module types
work and are exact against torch.func, duplicates and bad keys are refused, and a
custom autograd.Function without a rule is refused instead of silently using its own
backward for the transposed system."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from _linear_helpers import rel_err
from torch import nn

import convscope.linear as L
from convscope.errors import ConvscopeError
from convscope.linear import affine, interpreter, registry, rules
from convscope.linear.context import PassContext


@pytest.fixture(autouse=True)
def _float64_and_no_leaked_rules() -> Iterator[None]:
    assert L.registered_rules("user") == {}  # before the dtype changes: a failure restores it
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
    leaked = L.registered_rules("user")
    for key in leaked:
        L.unregister_rule(key)
    assert leaked == {}, "a test left a rule registered"
    assert torch.autograd.Function.__dict__["apply"] is registry._ORIGINAL_APPLY


# -- the built-in tables ------------------------------------------------------------------


def _expected_builtins() -> dict[Any, Any]:
    """What the interceptor dispatched to before the registry existed, table by table."""
    return {
        **dict.fromkeys(affine.METADATA, registry._as_is),
        **dict.fromkeys(affine.CONSTANT_OF_SHAPE, registry._as_is),
        **dict.fromkeys(affine.JOINT_LINEAR, affine.linear_joint),
        **dict.fromkeys(affine.FIRST_LINEAR, affine.linear_first),
        **affine.HANDLERS,
        **rules.RULES,
    }


def test_every_builtin_table_entry_is_registered_and_dispatched() -> None:
    expected = _expected_builtins()
    builtin = L.registered_rules("builtin")
    assert set(builtin) == set(expected)
    assert interpreter._DISPATCH is registry.DISPATCH  # the interceptor's one table
    for key, rule in builtin.items():
        assert callable(rule), key
        assert rule is expected[key], registry.key_name(key)
        assert interpreter._DISPATCH[key] is rule, registry.key_name(key)
    assert L.registered_rules() == builtin  # no user rules now
    names = L.list_rules()
    assert names == sorted(names) and len(names) == len(builtin)
    assert {"torch.relu", "torch.nn.functional.conv2d", "torch.Tensor.view"} <= set(names)


def test_the_builtin_rules_are_what_a_pass_calls() -> None:
    """Each call of a small network on a tracked tensor reaches the rule the registry holds."""
    called: list[str] = []
    saved = dict(registry.DISPATCH)

    def spy(rule: Any) -> Any:
        def run(ctx: Any, func: Any, args: Any, kwargs: Any) -> Any:
            called.append(registry.key_name(func))
            return rule(ctx, func, args, kwargs)

        return run

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    x0, x1 = torch.randn(1, 1, 4, 4), torch.randn(2, 1, 4, 4)
    plain = L.LinearInterpreter(net, x0).linear(x1)
    try:
        registry.DISPATCH.update({k: spy(v) for k, v in saved.items()})
        spied = L.LinearInterpreter(net, x0).linear(x1)
    finally:
        registry.DISPATCH.update(saved)
    assert called == 2 * [
        "torch.nn.functional.conv2d",
        "torch.nn.functional.relu",
        "torch.nn.functional.max_pool2d",
        "torch.Tensor.flatten",
    ]
    assert torch.equal(spied, plain)


# -- registering --------------------------------------------------------------------------


def _identity(ctx: PassContext, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0]


def test_a_builtin_key_is_refused_by_name() -> None:
    with pytest.raises(
        ConvscopeError, match=r"^torch\.relu already has a built-in rule \(rules\.RULES\)"
    ):
        L.register_rule(torch.relu, _identity)
    with pytest.raises(ConvscopeError, match=r"torch\.Tensor\.view already has a built-in"):
        L.register_rule(torch.Tensor.view, _identity)
    with pytest.raises(ConvscopeError, match=r"aten\.relu\.default already has a built-in"):
        L.register_rule(torch.ops.aten.relu.default, _identity)


def test_registering_twice_is_refused_and_unregistering_frees_the_key() -> None:
    L.register_rule(torch.sin, _identity)
    try:
        with pytest.raises(
            ConvscopeError, match=r"^torch\.sin already has a registered rule \(user\)"
        ):
            L.register_rule(torch.sin, _identity)
        assert L.registered_rules("user") == {torch.sin: _identity}
        assert "torch.sin" in L.list_rules("user")
    finally:
        L.unregister_rule(torch.sin)
    assert torch.sin not in L.registered_rules()
    with pytest.raises(ConvscopeError, match=r"torch\.sin has no registered rule to remove"):
        L.unregister_rule(torch.sin)
    with pytest.raises(ConvscopeError, match=r"torch\.relu has a built-in rule.*cannot be removed"):
        L.unregister_rule(torch.relu)


def test_use_rule_removes_the_rule_even_after_an_error() -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with L.use_rule(torch.cos, _identity):
            assert L.registered_rules("user") == {torch.cos: _identity}
            raise RuntimeError("inside")
    assert L.registered_rules("user") == {}


def test_register_rule_as_a_decorator() -> None:
    @L.register_rule(torch.tan)
    def tan_rule(ctx: PassContext, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args[0]

    try:
        assert L.registered_rules("user") == {torch.tan: tan_rule}
    finally:
        L.unregister_rule(torch.tan)


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.mark.parametrize(
    ("key", "rule", "match"),
    [
        (_plain, _identity, r"cannot register a rule for '_plain': the interpreter sees"),
        (int, _identity, r"class builtins\.int: a class key must be a subclass"),
        (nn.Module, _identity, r"class torch\.nn\.modules\.module\.Module: a class key"),
        (torch.autograd.Function, _identity, r"a class key must be a subclass"),
        (torch.sin, "not a rule", r"rule for torch\.sin must be callable .*got str"),
    ],
)
def test_bad_keys_and_rules_are_refused(key: Any, rule: Any, match: str) -> None:
    with pytest.raises(ConvscopeError, match=match):
        L.register_rule(key, rule)
    assert L.registered_rules("user") == {}


def test_registered_rules_kind_is_checked() -> None:
    with pytest.raises(ConvscopeError, match="kind must be"):
        L.registered_rules("mine")  # type: ignore[arg-type]


# -- a user rule for a torch op: exact against torch.func -----------------------------------


def _sin_taylor(ctx: PassContext, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    x0 = x[:1]
    slope = torch.cos(x0)
    return ctx.add_constant(x * slope, torch.sin(x0) - slope * x0, "sin c(x0)")


class SinNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sin(self.conv(x)).flatten(1))


def test_a_user_rule_for_a_torch_op_is_exact() -> None:
    torch.manual_seed(0)
    net = SinNet().eval()
    x0, x1 = torch.randn(1, 2, 4, 4), torch.randn(3, 2, 4, 4)
    with pytest.raises(ConvscopeError, match=r"torch\.sin in the model's own forward is not"):
        L.LinearInterpreter(net, x0)
    with L.use_rule(torch.sin, _sin_taylor):
        li = L.LinearInterpreter(net, x0)
        f0 = net(x0).detach()
        torch.testing.assert_close(li.output, f0, rtol=1e-13, atol=1e-13)
        _, jv = torch.func.jvp(net, (x0.expand_as(x1).clone(),), (x1,))
        assert rel_err(li.linear(x1), jv) < 1e-12
        y2 = torch.randn(3, 4)
        _, vjp = torch.func.vjp(net, x0.expand(3, -1, -1, -1).clone())
        assert rel_err(li.transpose(y2), vjp(y2)[0]) < 1e-12
        parts = li.contributions()
        assert "(root)" in parts  # the rule's constant is a bias source
        torch.testing.assert_close(sum(parts.values()), f0, rtol=1e-12, atol=1e-12)


@torch.library.custom_op("convscope_test::triple", mutates_args=())
def _triple(x: torch.Tensor) -> torch.Tensor:
    return x * 3


@_triple.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class TripleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.ops.convscope_test.triple.default(x))


def test_a_torch_ops_packet_rule_covers_its_overloads() -> None:
    torch.manual_seed(1)
    net = TripleNet()
    x0, x1 = torch.randn(1, 5), torch.randn(2, 5)
    with pytest.raises(ConvscopeError, match=r"convscope_test\.triple\.default in the model"):
        L.LinearInterpreter(net, x0)

    def rule(ctx: PassContext, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args[0] * 3

    with L.use_rule(torch.ops.convscope_test.triple, rule):
        li = L.LinearInterpreter(net, x0)
        torch.testing.assert_close(li.linear(x1), 3 * x1 @ net.fc.weight.T.detach())
        torch.testing.assert_close(li.output, net(x0).detach())


# -- custom autograd.Functions ---------------------------------------------------------------


class RoundSTE(torch.autograd.Function):
    """Rounding with a straight-through (identity) backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class ReLUSTE(torch.autograd.Function):
    """A ReLU whose backward lets every gradient through (a straight-through estimator):
    its forward is made of ops the interpreter knows, so without the refusal ``li.linear``
    looks right while rows and transposes come out of this backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


def round_rule(ctx: PassContext, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    (x,) = args
    x0 = x[:1]
    # the Function's own value at x0 (the rule may call it: no interception in here)
    return ctx.add_constant(x, func.apply(x0) - x0, "round c(x0)")


def relu_rule(ctx: PassContext, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    return x * (x[:1] > 0).to(x.dtype)


class Quantize(nn.Module):
    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn.apply(x)  # type: ignore[no-any-return]


def ste_net(fn: type[torch.autograd.Function]) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.Sequential(nn.Identity(), Quantize(fn)),
        nn.Flatten(),
        nn.Linear(48, 5),
    ).eval()


def _materialized(li: L.LinearInterpreter) -> tuple[torch.Tensor, torch.Tensor]:
    n, m = 16, 5
    cols = li.columns(range(n)).reshape(n, m).T
    rows = li.rows(range(m)).reshape(m, n)
    return cols, rows


@pytest.mark.parametrize("fn", [RoundSTE, ReLUSTE])
def test_a_custom_function_without_a_rule_is_refused(fn: type[torch.autograd.Function]) -> None:
    with pytest.raises(ConvscopeError) as info:
        L.LinearInterpreter(ste_net(fn), 3 * torch.randn(1, 1, 4, 4))
    assert str(info.value) == (
        f"the custom autograd.Function {__name__}.{fn.__qualname__} in module '1.1' has no "
        "linear interpreter rule: its own backward would be taken for the transposed "
        "system (rows, transpose, SVD, contributions) and its forward is not known to be "
        f"linear; register one with convscope.linear.register_rule({fn.__qualname__}, rule)"
    )


def test_a_straight_through_round_with_the_identity_rule() -> None:
    net = ste_net(RoundSTE)
    x0 = 3 * torch.randn(1, 1, 4, 4)
    conv, fc = net[0], net[3]
    reference = nn.Sequential(conv, nn.Flatten(), fc)  # the rule's linear map: no rounding
    F_ref = torch.func.jacrev(lambda x: reference(x.reshape(1, 1, 4, 4)).reshape(5))(
        torch.zeros(16)
    ).detach()
    for mode in ("freeze", "taylor"):
        with L.use_rule(RoundSTE, round_rule):
            li = L.LinearInterpreter(net, x0, mode=mode)  # type: ignore[arg-type]
            cols, rows = _materialized(li)
            f0 = net(x0).detach()
            parts = li.contributions()
        torch.testing.assert_close(cols, F_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(rows, F_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(li.output, f0, rtol=1e-12, atol=1e-12)  # rounded at x0
        assert "1.1" in parts  # the rounding error of x0 is a bias source of the module
        torch.testing.assert_close(sum(parts.values()), f0, rtol=1e-12, atol=1e-12)
        # the rounding really happened at x0: without it the output differs
        assert float((reference(x0).detach() - f0).abs().max()) > 1e-3


def test_a_relu_like_function_with_the_mask_rule_matches_relu() -> None:
    net = ste_net(ReLUSTE)
    conv, fc = net[0], net[3]
    reference = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc)
    x0 = torch.randn(1, 1, 4, 4)
    J = torch.func.jacrev(lambda x: reference(x.reshape(1, 1, 4, 4)).reshape(5))(
        x0.reshape(16)
    ).detach()
    # the Function's own backward gives the rows of the network without the mask
    x = x0.clone().requires_grad_(True)
    (ste_rows,) = torch.autograd.grad(net(x)[0, 0], x)
    assert float((ste_rows.reshape(16) - J[0]).abs().max()) > 1e-3
    with L.use_rule(ReLUSTE, relu_rule):
        li = L.LinearInterpreter(net, x0)
        cols, rows = _materialized(li)
        y2 = torch.randn(2, 5)
        transposed = li.transpose(y2)
    torch.testing.assert_close(rows, J, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cols, J, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(transposed.reshape(2, 16), y2 @ J, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(li.output, net(x0).detach(), rtol=1e-12, atol=1e-12)


def test_a_function_on_constants_only_is_not_refused() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * RoundSTE.apply(3 * self.w)  # type: ignore[no-any-return]

    net = Scaled()
    x0, x1 = torch.randn(1, 4), torch.randn(2, 4)
    li = L.LinearInterpreter(net, x0)
    torch.testing.assert_close(li.linear(x1), x1 * torch.round(3 * net.w.detach()))


# -- module-type rules --------------------------------------------------------------------------


class Binarize(nn.Module):
    """``sign(x)``: an op the interpreter has no rule for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)


def binarize_rule(
    ctx: PassContext, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    assert isinstance(module, Binarize)
    x = args[0]
    # frozen reading: the output is a constant decided by x0, its linear part zero
    return ctx.add_constant(torch.zeros_like(x), torch.sign(x[:1]), "sign c(x0)")


def test_a_module_type_rule_replaces_the_forward_during_a_pass_only() -> None:
    torch.manual_seed(4)
    block = Binarize()
    net = nn.Sequential(nn.Linear(3, 4), block, nn.Linear(4, 2))
    skip = nn.Linear(3, 2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main, self.skip = net, skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.main(x) + self.skip(x)

    model = Net()
    x0, x1 = torch.randn(1, 3), torch.randn(2, 3)
    with pytest.raises(ConvscopeError, match=r"torch\.sign in module 'main\.1'"):
        L.LinearInterpreter(model, x0)
    with L.use_rule(Binarize, binarize_rule):
        li = L.LinearInterpreter(model, x0)
        assert "forward" not in block.__dict__  # only during a pass
        torch.testing.assert_close(li.output, model(x0).detach(), rtol=1e-13, atol=1e-13)
        # the linear part is the skip connection alone
        torch.testing.assert_close(li.linear(x1), x1 @ skip.weight.detach().T)
        torch.testing.assert_close(li.rows([0, 1]), skip.weight.detach())
        parts = li.contributions()
        assert "main.1" in parts
        torch.testing.assert_close(sum(parts.values()), li.output, rtol=1e-12, atol=1e-12)
    assert "forward" not in block.__dict__


def test_a_module_type_rule_is_for_that_exact_type() -> None:
    class Sub(Binarize):
        pass

    net = nn.Sequential(nn.Linear(3, 4), Sub())
    with L.use_rule(Binarize, binarize_rule):
        with pytest.raises(ConvscopeError, match=r"torch\.sign in module '1'"):
            L.LinearInterpreter(net, torch.randn(1, 3))


def test_an_instance_forward_of_its_own_comes_back() -> None:
    block = Binarize()

    def own(x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) * 2

    block.forward = own  # type: ignore[method-assign]
    net = nn.Sequential(nn.Linear(3, 4), block)
    x0 = torch.randn(1, 3)
    with L.use_rule(Binarize, binarize_rule):
        li = L.LinearInterpreter(net, x0)
        assert block.__dict__["forward"] is own
        torch.testing.assert_close(li.linear(torch.randn(2, 3)), torch.zeros(2, 4))
    # the rule's constant is sign(x0), not the instance forward's 2 sign(x0)
    torch.testing.assert_close(li.output, torch.sign(net[0](x0)).detach())


class Halves(nn.Module):
    """Returns a dict: twice the input and its sign (which the interpreter has no rule for)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"twice": 2 * x, "sign": torch.sign(x)}


class HalvesNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre, self.halves, self.post = nn.Linear(3, 4), Halves(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = self.halves(self.pre(x))
        return self.post(parts["twice"]) + parts["sign"][:, :2]


def test_the_tensors_of_a_dict_a_module_rule_returns_are_input_dependent() -> None:
    def rule(ctx: PassContext, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        x = args[0]
        sign = ctx.add_constant(torch.zeros_like(x), torch.sign(x[:1]), "sign c(x0)")
        return {"twice": 2 * x, "sign": sign}  # computed in the rule: tracked by the registry

    torch.manual_seed(5)
    net = HalvesNet()
    x0, x1 = torch.randn(1, 3), torch.randn(2, 3)
    with L.use_rule(Halves, rule):
        li = L.LinearInterpreter(net, x0)
        linear = li.linear(x1)
        parts = li.contributions()
    W = 2 * (net.post.weight @ net.pre.weight).detach()
    torch.testing.assert_close(linear, x1 @ W.T, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(li.output, net(x0).detach(), rtol=1e-13, atol=1e-13)
    assert "halves" in parts  # the sign of x0 is a source, switched off in li.linear
    torch.testing.assert_close(sum(parts.values()), li.output, rtol=1e-12, atol=1e-12)


class _SinAfterTranspose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x.transpose(0, 1)).transpose(0, 1).flatten(1)


def test_a_user_rule_never_reads_rows_that_are_not_samples() -> None:
    # after the transpose, x[:1] inside a rule would be the first pixel row, not x0
    with L.use_rule(torch.cos, _identity):
        with pytest.raises(ConvscopeError, match="needs the sample index in dimension 0"):
            L.LinearInterpreter(_SinAfterTranspose(), torch.rand(1, 2, 3, dtype=torch.float64))
