"""The rule registry: one table from op (or module type, or autograd.Function) to rule.

Every call the linear interpreter lets through goes through this table, the built-in
ones included: at import it is filled from the tables of :mod:`convscope.linear.affine`
(``METADATA``, ``CONSTANT_OF_SHAPE``, ``JOINT_LINEAR``, ``FIRST_LINEAR``, ``HANDLERS``)
and :mod:`convscope.linear.rules` (``RULES``), later tables taking precedence where two
name the same op. Users add theirs with :func:`register_rule`, in the spirit of
torchvision's ``register_model``: a key can be registered once, and a second
registration is an error naming it.

A rule is a function ``rule(ctx, func, args, kwargs) -> output``, the same signature the
built-in rules have:

- ``ctx``: the pass's :class:`~convscope.linear.context.PassContext`. What a rule needs
  from it: ``ctx.mode`` (``"freeze"`` or ``"taylor"``), ``ctx.is_tracked(t)`` (whether
  ``t`` depends on the input), ``ctx.add_constant(lin, const, "description")`` (adds an
  additive constant as a bias source, so contributions and ``li.linear`` see it),
  ``ctx.decide(lambda: ...)`` (a branch on tensor values, replayable under CUDA
  graphs) and ``ctx.where()`` (the module path, for error messages).
- ``func``: what was called: the torch function, ``Tensor`` method or ATen op; the
  ``torch.autograd.Function`` subclass; or the module instance for a module-type rule
  (its parameters are there: ``func.weight``).
- ``args``, ``kwargs``: the call's arguments. An input-dependent tensor has the batch
  ``[x0, probe_1 ... probe_B]`` first (``ctx.rows`` rows): row 0 is the image the
  decisions are taken from, the others are probes.
- the return value: the output on every row. Row 0 must be the op's real output at
  ``x0`` (so that ``li(x0) == f(x0)``); the probe rows get ``A(x0) x + c(x0)``, with
  ``A`` and ``c`` read from row 0 only and ``c`` added through ``ctx.add_constant``.
  Every tensor a user rule returns (also inside a tuple, list or dict) is marked input
  dependent (it must keep the batch first). Inside a rule torch calls are not
  intercepted: they compute plain values, and the transposed system (``li.transpose``,
  rows, SVD, pixel discussions) is the autograd of exactly what the rule computes.

Three kinds of keys:

- a torch function, ``Tensor`` method, or ``torch.ops`` overload or packet (a packet
  covers all its overloads): the rule replaces that call.
- a ``torch.autograd.Function`` subclass: the rule replaces ``MyFunction.apply(...)``.
  Without a rule such a call on an input-dependent tensor is refused, because its own
  ``backward`` (a straight-through estimator, a clipped gradient) would be taken for
  the transposed system.
- an ``nn.Module`` subclass (exact type, not its subclasses): the rule replaces the
  whole ``forward`` of every instance during a pass; ``args``/``kwargs`` are the
  forward's. Use it for a block the interpreter cannot read op by op.

Example, a straight-through rounding (identity backward) whose frozen reading is the
identity, with the rounding error ``round(x0) - x0`` as a bias source::

    class RoundSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.round(x)

        @staticmethod
        def backward(ctx, grad):
            return grad

    def round_rule(ctx, func, args, kwargs):
        (x,) = args  # (rows, ...): [x0, probes ...]
        x0 = x[:1]
        return ctx.add_constant(x, torch.round(x0) - x0, "round c(x0)")

    cs.linear.register_rule(RoundSTE, round_rule)

A ReLU-like Function with a custom backward keeps the mask of ``x0`` instead::

    @cs.linear.register_rule(MyReLU)
    def my_relu_rule(ctx, func, args, kwargs):
        x = args[0]
        return x * (x[:1] > 0).to(x.dtype)

The same rule written for the decision cache reads ``x0`` through ``ctx.frozen`` (the
callable runs only in a pass that has row 0; a pass of the probes alone gets its
recorded result back) and is registered with ``cacheable=True``::

    @cs.linear.register_rule(MyReLU, cacheable=True)
    def my_relu_rule(ctx, func, args, kwargs):
        x = args[0]
        return x * ctx.frozen(lambda: x[:1] > 0).to(x.dtype)

And a module type (its forward calls something the interpreter does not know)::

    def binarize_rule(ctx, module, args, kwargs):
        x = args[0]
        x0 = x[:1]
        return ctx.add_constant(torch.zeros_like(x), torch.sign(x0), "sign c(x0)")

    cs.linear.register_rule(Binarize, binarize_rule)

:func:`use_rule` registers a rule for a ``with`` block only (tests, experiments);
:func:`unregister_rule` removes a user rule; :func:`registered_rules` and
:func:`list_rules` list the table.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear.affine import (
    CONSTANT_OF_SHAPE,
    FIRST_LINEAR,
    HANDLERS,
    JOINT_LINEAR,
    METADATA,
    linear_first,
    linear_joint,
)
from convscope.linear.aten import ATEN
from convscope.linear.context import PassContext, op_name
from convscope.linear.rules import RULES

__all__ = [
    "DISPATCH",
    "Rule",
    "installed",
    "key_name",
    "list_rules",
    "lookup_overload",
    "register_rule",
    "registered_rules",
    "unregister_rule",
    "use_rule",
]

Rule = Callable[[PassContext, Any, tuple[Any, ...], dict[str, Any]], Any]
"""``rule(ctx, func, args, kwargs) -> output`` (see the module docstring)."""

Kind = Literal["all", "builtin", "user"]
_R = TypeVar("_R", bound=Rule)


@dataclass(frozen=True)
class _Entry:
    rule: Rule  # as registered
    dispatch: Rule  # what a pass calls (a user rule with its outputs tracked)
    origin: str  # the built-in table it comes from, or "user"


def _as_is(
    ctx: PassContext, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Reads only shapes, dtypes and devices: runs as usual, its output is a constant."""
    return func(*args, **kwargs)


_ENTRIES: dict[Any, _Entry] = {}
DISPATCH: dict[Any, Rule] = {}
"""Op key -> the rule a pass calls; the interceptor's one lookup per call."""
_MODULES: dict[type[nn.Module], _Entry] = {}
_FUNCTIONS: dict[type[torch.autograd.Function], _Entry] = {}


def _builtins() -> None:
    tables: list[tuple[str, dict[Any, Rule]]] = [
        ("affine.METADATA", dict.fromkeys(METADATA, _as_is)),
        ("affine.CONSTANT_OF_SHAPE", dict.fromkeys(CONSTANT_OF_SHAPE, _as_is)),
        ("affine.JOINT_LINEAR", dict.fromkeys(JOINT_LINEAR, linear_joint)),
        ("affine.FIRST_LINEAR", dict.fromkeys(FIRST_LINEAR, linear_first)),
        ("affine.HANDLERS", dict(HANDLERS)),
        ("rules.RULES", dict(RULES)),
    ]
    for origin, table in tables:
        for key, rule in table.items():  # a later table wins, as the tables intend
            _ENTRIES[key] = _Entry(rule, rule, origin)
            DISPATCH[key] = rule


_builtins()


# -- keys -------------------------------------------------------------------------------

_BUILTIN_TYPES = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
)


def key_name(key: Any) -> str:
    """A readable name for a registry key (``torch.relu``, ``mypkg.RoundSTE``)."""
    if isinstance(key, type):
        return f"{key.__module__}.{key.__qualname__}"
    name = op_name(key)
    module = getattr(key, "__module__", None)
    if "." not in name and isinstance(module, str):  # torch._C._nn.elu resolves to "elu"
        return f"{module}.{name}"
    return name


def _kind(key: Any) -> Literal["op", "module", "function"]:
    if isinstance(key, type):
        if issubclass(key, torch.autograd.Function) and key is not torch.autograd.Function:
            return "function"
        if issubclass(key, nn.Module) and key is not nn.Module:
            return "module"
        raise ConvscopeError(
            f"cannot register a rule for the class {key_name(key)}: a class key must be a "
            "subclass of torch.autograd.Function or of torch.nn.Module"
        )
    if isinstance(key, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return "op"
    if isinstance(key, _BUILTIN_TYPES):
        return "op"
    module = getattr(key, "__module__", None) or ""
    if callable(key) and (module == "torch" or module.startswith("torch.")):
        return "op"
    what = getattr(key, "__qualname__", None) or type(key).__name__
    raise ConvscopeError(
        f"cannot register a rule for {what!r}: the interpreter sees torch functions, "
        "Tensor methods and torch.ops overloads (not plain Python functions, whose torch "
        "calls it sees one by one), torch.autograd.Function subclasses and nn.Module "
        "subclasses; register one of those"
    )


def _tracking(rule: Rule, cacheable: bool = False) -> Rule:
    """``rule`` with every tensor it returns (also in a tuple, list or dict) tracked;
    unless ``cacheable``, a pass that meets it records no decision cache."""

    def dispatch(ctx: PassContext, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # a user rule reads x0 as x[:1]: refuse inputs whose samples are not first
        # (after a transpose in a transformer) instead of reading the wrong rows
        from convscope.linear import batchdim

        batchdim.require_first(ctx, func, *args, *kwargs.values())
        # it reads x0 as x[:1], not through ctx.frozen: no probes-only passes
        if not cacheable:
            ctx.uncached(
                f"the user rule for {key_name(type(func) if isinstance(func, nn.Module) else func)}"
            )
        out = rule(ctx, func, args, kwargs)
        ctx.track(list(out.values()) if isinstance(out, Mapping) else out, func)
        return out

    return dispatch


# -- the public API -----------------------------------------------------------------------


def register_rule(key: Any, rule: Rule | None = None, *, cacheable: bool = False) -> Any:
    """Teach the linear interpreter an op, an autograd.Function or a module type.

    Args:
        key: a torch function, ``Tensor`` method or ``torch.ops`` overload/packet; a
            ``torch.autograd.Function`` subclass; or an ``nn.Module`` subclass (the
            rule replaces the forward of its instances). See the module docstring.
        rule: ``rule(ctx, func, args, kwargs) -> output``. Omitted: returns a decorator
            that registers the function it decorates.
        cacheable: the rule reads ``x0`` only through ``ctx.frozen(lambda: ...)`` (a
            callable that reads row 0 and returns what the rule needs of it), never as
            ``x[:1]`` directly; then an interpreter keeps its decision cache and runs the
            rule on the probes alone too (:mod:`convscope.linear.cache`). Otherwise a
            model with this rule runs every pass with ``x0``.

    Returns:
        ``rule`` (so it can be used as a decorator).

    Raises:
        ConvscopeError: ``key`` already has a rule (built in or registered; a rule is
            never replaced silently: :func:`unregister_rule` a user rule first), is not
            a kind of key the interpreter sees, or ``rule`` is not callable.
    """
    if rule is None:

        def decorate(fn: _R) -> _R:
            register_rule(key, fn, cacheable=cacheable)
            return fn

        return decorate
    kind = _kind(key)
    if not callable(rule):
        raise ConvscopeError(
            f"the rule for {key_name(key)} must be callable as rule(ctx, func, args, "
            f"kwargs); got {type(rule).__name__}"
        )
    entry = _ENTRIES.get(key)
    if entry is not None:
        where = "a built-in rule" if entry.origin != "user" else "a registered rule"
        raise ConvscopeError(
            f"{key_name(key)} already has {where} ({entry.origin}); a key is registered "
            "once (unregister_rule() a rule of your own before registering another)"
        )
    if key in ATEN:
        raise ConvscopeError(
            f"{key_name(key)} already has a built-in rule: exported programs' ATen ops run "
            "the rule of their torch-level op (convscope.linear.aten)"
        )
    new = _Entry(rule, _tracking(rule, cacheable), "user")
    _ENTRIES[key] = new
    if kind == "op":
        DISPATCH[key] = new.dispatch
    elif kind == "module":
        _MODULES[key] = new
    else:
        _FUNCTIONS[key] = new
    return rule


def unregister_rule(key: Any) -> None:
    """Remove a rule added by :func:`register_rule`.

    Raises:
        ConvscopeError: ``key`` has no rule, or its rule is built in.
    """
    entry = _ENTRIES.get(key)
    if entry is None:
        raise ConvscopeError(f"{key_name(key)} has no registered rule to remove")
    if entry.origin != "user":
        raise ConvscopeError(
            f"{key_name(key)} has a built-in rule ({entry.origin}), which cannot be removed"
        )
    del _ENTRIES[key]
    DISPATCH.pop(key, None)
    _MODULES.pop(key, None)
    _FUNCTIONS.pop(key, None)


@contextlib.contextmanager
def use_rule(key: Any, rule: Rule, *, cacheable: bool = False) -> Iterator[Rule]:
    """Register ``rule`` for ``key`` inside a ``with`` block, and remove it afterwards."""
    register_rule(key, rule, cacheable=cacheable)
    try:
        yield rule
    finally:
        unregister_rule(key)


def registered_rules(kind: Kind = "all") -> dict[Any, Rule]:
    """Every key and its rule (a copy), built-in ones first.

    Args:
        kind: ``"all"``, ``"builtin"`` or ``"user"``.
    """
    if kind not in ("all", "builtin", "user"):
        raise ConvscopeError(f"kind must be 'all', 'builtin' or 'user'; got {kind!r}")
    return {
        k: e.rule
        for k, e in _ENTRIES.items()
        if kind == "all" or (e.origin == "user") == (kind == "user")
    }


def list_rules(kind: Kind = "all") -> list[str]:
    """The sorted names of the keys that have a rule (``torch.relu``, ``mypkg.RoundSTE``)."""
    return sorted({key_name(k) for k in registered_rules(kind)})


# -- for the interpreter --------------------------------------------------------------------


def lookup_overload(func: Any) -> Rule | None:
    """The rule of an ATen/custom overload's packet, when the packet was registered
    (called only for ops the table does not name, off the hot path)."""
    if isinstance(func, torch._ops.OpOverload):
        return DISPATCH.get(func.overloadpacket)
    return None


class _Active(threading.local):
    ctx: PassContext | None = None


_ACTIVE = _Active()
_LOCK = threading.Lock()
_USERS = 0
_ORIGINAL_APPLY = torch.autograd.Function.__dict__["apply"]


def _run_rule(entry: _Entry, ctx: PassContext, func: Any, args: Any, kwargs: Any) -> Any:
    # the interceptor is still on the mode stack here (the call came from the model):
    # switch it off, as it is for every handler, so the rule computes plain values
    with torch._C.DisableTorchFunction():
        return entry.dispatch(ctx, func, args, kwargs)


def _apply(cls: type[torch.autograd.Function], *args: Any, **kwargs: Any) -> Any:
    """``Function.apply`` while a pass runs: a rule, a refusal, or the original."""
    ctx = _ACTIVE.ctx
    if (
        ctx is None
        or not torch._C._is_torch_function_mode_enabled()  # inside a rule or handler
        or not ctx.any_tracked(args, kwargs)
    ):
        return _ORIGINAL_APPLY.__get__(None, cls)(*args, **kwargs)
    entry = _FUNCTIONS.get(cls)
    if entry is None:
        name = key_name(cls)
        raise ConvscopeError(
            f"the custom autograd.Function {name} in {ctx.where()} has no linear "
            "interpreter rule: its own backward would be taken for the transposed system "
            "(rows, transpose, SVD, contributions) and its forward is not known to be "
            f"linear; register one with convscope.linear.register_rule({cls.__qualname__}, "
            "rule)"
        )
    return _run_rule(entry, ctx, cls, args, kwargs)


def _patched_forward(module: nn.Module, entry: _Entry, ctx: PassContext) -> Callable[..., Any]:
    original = module.__dict__.get("forward") or type(module).forward.__get__(module)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch._C._is_torch_function_mode_enabled() or not ctx.any_tracked(args, kwargs):
            return original(*args, **kwargs)
        return _run_rule(entry, ctx, module, args, kwargs)

    return forward


@contextlib.contextmanager
def installed(model: nn.Module, ctx: PassContext) -> Iterator[None]:
    """Route ``autograd.Function.apply`` and the forwards of registered module types to
    their rules for one pass of ``model``; everything is put back afterwards.

    ``Function.apply`` is replaced on the base class while any pass runs (counted, so
    passes in several threads share one replacement; the pass's context is per thread);
    a registered module type's instances get an instance ``forward`` that shadows the
    class's and is deleted (or the one they had given back) afterwards.
    """
    global _USERS
    saved: list[tuple[nn.Module, Any]] = []
    previous = _ACTIVE.ctx
    with _LOCK:
        if _USERS == 0:
            torch.autograd.Function.apply = classmethod(_apply)  # type: ignore[assignment,method-assign]
        _USERS += 1
    try:
        _ACTIVE.ctx = ctx
        if _MODULES:
            for module in model.modules():
                entry = _MODULES.get(type(module))
                if entry is not None:
                    saved.append((module, module.__dict__.get("forward")))
                    module.forward = _patched_forward(module, entry, ctx)  # type: ignore[method-assign]
        yield
    finally:
        for module, own in reversed(saved):
            if own is None:
                del module.forward
            else:
                module.forward = own  # type: ignore[method-assign]
        _ACTIVE.ctx = previous
        with _LOCK:
            _USERS -= 1
            if _USERS == 0:
                torch.autograd.Function.apply = _ORIGINAL_APPLY  # type: ignore[method-assign]
