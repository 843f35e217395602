"""Filter decoding by substitution (seed 003): a deep filter as an image-space pattern.

A filter of layer ``L`` is a pattern over the maps of the layer below. Decoding reads
it as a pattern over the image by walking down the network and, at every layer:

- **convolution** (substitution): every value of the pattern is replaced by the
  lower-layer filter it connects to, scaled by that value, placed at the value's
  position on the lower grid (positions ``stride`` apart, filter taps ``dilation``
  apart), overlaps added. That is a full transposed convolution with the layer's own
  weights, so all ``K`` filters of a layer are decoded at once as a batch of ``K``
  patterns: ``F.conv_transpose2d(pattern, weight, stride, dilation=..., groups=...)``.
- **pooling** (unpooling): the pattern is upsampled by the pooling factor, with
  ``"nearest"``, ``"bilinear"`` or ``"bicubic"`` interpolation, or ``"adjoint"``:
  nearest upsampling divided by the pool area, the exact adjoint of average pooling.
- **ReLU** (and the other elementwise rectifiers): skipped, as the paper does. A
  ReLU has no sign pattern without an image; with one, masking gives the image's
  exact gradient, which is the linear interpreter's row, not a decoded filter.
- **batch norm** (eval mode): its linear part, a per-channel scale, is applied.
- **kernel bank** (:class:`~convscope.models.KernelBank2d`, GFNN's first layer): its
  forward is exactly a grouped convolution (the bank's kernels on every input channel,
  no bias, no normalisation), so it is substituted like a ``Conv2d``;
  :func:`kernel_composition` stops just above it and says which named kernels a deep
  filter is built from.

Dropout and identities are no-ops. Branching graphs are decoded where substitution is
defined, because every step is linear in the pattern:

- **sum** of branches (``a + b``, ``a - b``, ``torch.add(a, b, alpha=...)``, residual
  additions through the identity): each branch receives the pattern (the second one
  scaled by ``-1`` or ``alpha``), and a node reached by several paths (a fork) receives
  the sum of their patterns, aligned on its grid;
- **scaling** by a number (``2 * a``, ``a / 4``, ``-a``): the pattern is scaled;
- **concatenation** along the channels (``torch.cat(..., dim=1)``, DenseNet): each part
  receives its slice of the pattern's channels.

So a sum of branches decodes to the sum of the decoded branches. Anything else (a
product of tensors, a concatenation along another dimension, paths reaching one node at
different strides, unknown modules or functions, a second input) is a
:class:`~convscope.errors.ConvscopeError` that names the module or function. The graph
is read from a torch.fx trace of the model, so functional calls are seen too.

A decoded filter ``df_k`` estimates filter ``k``'s response by one correlation with
the image, ``I * df_k`` at the stride that aligns the grids (the product of the
strides below the layer, see :class:`DecodedFilters`). For a chain of convolutions
and average pools without ReLU and without padding, with ``"adjoint"`` unpooling,
this is exact; everything else makes it the paper's approximation, measured by
:func:`reconstruction_error`. Definitions: ``docs/decoding.md``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from convscope.errors import ConvscopeError

if TYPE_CHECKING:  # pragma: no cover
    from convscope.models.gfnn import KernelBank2d

__all__ = [
    "UNPOOL_MODES",
    "ChainStep",
    "DecodedFilters",
    "KernelComposition",
    "UpTo",
    "ReconstructionError",
    "compare_responses",
    "decode",
    "decode_filters",
    "decoded_activations",
    "decoding_chain",
    "deconvnet",
    "deconvnet_relus",
    "error_table",
    "kernel_composition",
    "layer_name",
    "layer_response",
    "linear_rows",
    "max_activation_matrix",
    "reconstruction_error",
    "threshold_filters",
    "top_activating",
]

UnpoolMode = Literal["nearest", "bilinear", "bicubic", "adjoint"]

UNPOOL_MODES: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "adjoint")
"""Unpooling modes accepted by :func:`decode`."""

# Elementwise rectifiers the paper's decoding steps over.
_SKIPPED_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
_SKIPPED_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.dropout,
    F.dropout2d,
    torch.relu,
    torch.relu_,
)
_SKIPPED_METHODS = frozenset({"relu", "relu_", "contiguous"})


# --------------------------------------------------------------------------- the chain


@dataclass(frozen=True)
class ChainStep:
    """One layer between the image and the decoded layer.

    Attributes:
        name: dotted module name (or the function's name for functional calls).
        kind: ``"conv"``, ``"pool"``, ``"scale"`` (batch norm, input normalisation) or ``"skip"``.
        module: the module (``None`` for a skipped function); a ``"conv"`` step's is a
            ``Conv2d`` or a ``KernelBank2d`` (a fixed grouped convolution).
        stride, padding, dilation, kernel_size: of a conv or pool, as (rows, cols);
            ``(1, 1)``/``(0, 0)`` for the others.
    """

    name: str
    kind: Literal["conv", "pool", "scale", "skip"]
    module: nn.Module | None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    kernel_size: tuple[int, int] = (1, 1)

    def describe(self) -> str:
        """One line, e.g. ``"conv features.conv2 (5x5, stride 1)"``."""
        what = type(self.module).__name__ if self.module is not None else "function"
        if self.kind in ("conv", "pool"):
            kh, kw = self.kernel_size
            return f"{self.kind} {self.name} ({what} {kh}x{kw}, stride {_pair_str(self.stride)})"
        return f"{self.kind} {self.name} ({what})"


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def _pair_str(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def layer_name(model: nn.Module, layer: nn.Module | str) -> str:
    """The dotted name of ``layer`` in ``model.named_modules()``.

    A model behind convscope's input normalisation (:func:`convscope.models.normalized`:
    ``normalize`` then ``net``) also takes the inner network's own names: ``"layer1.0.conv1"``
    for ``"net.layer1.0.conv1"``.

    Raises:
        ConvscopeError: the name or module is not part of ``model``.
    """
    if isinstance(layer, str):
        names = dict(model.named_modules())
        if layer not in names and f"net.{layer}" in names and _is_normalizing(model):
            # convscope put the user's network behind its input normalisation: the user's
            # own layer names stay valid
            return f"net.{layer}"
        if layer not in names or layer == "":
            convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
            raise ConvscopeError(
                f"{type(model).__name__} has no module {layer!r}; its Conv2d layers are "
                f"{', '.join(convs) or 'none'}"
            )
        return layer
    for name, m in model.named_modules():
        if m is layer and name:
            return name
    raise ConvscopeError(f"{type(layer).__name__} module is not part of {type(model).__name__}")


def _is_normalize(m: nn.Module | None) -> bool:
    from convscope.models.normalize import Normalize

    return isinstance(m, Normalize)


def _is_normalizing(model: nn.Module) -> bool:
    """Whether ``model`` is :func:`convscope.models.normalized`'s wrapper (normalize, net)."""
    from convscope.models.normalize import Normalize

    children = dict(model.named_children())
    return list(children) == ["normalize", "net"] and isinstance(children["normalize"], Normalize)


def _kernel_bank_class() -> type[KernelBank2d]:
    from convscope.models.gfnn import KernelBank2d  # lazy: models imports decoding lazily too

    return KernelBank2d


def _is_bank(m: nn.Module | None) -> TypeGuard[KernelBank2d]:
    return m is not None and isinstance(m, _kernel_bank_class())


def _check_bank(name: str, m: nn.Module) -> None:
    """Refuse a kernel bank whose forward is not KernelBank2d's own grouped convolution."""
    cls = _kernel_bank_class()
    if type(m).forward is not cls.forward:
        raise ConvscopeError(
            f"cannot decode through {name} ({type(m).__name__}): it overrides KernelBank2d's "
            "forward, so it is not known to compute the bank's convolution"
        )


def _conv_weight(m: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """The ``(C_out, C_in / groups, kh, kw)`` weight and groups of a conv step's module.

    A kernel bank computes ``conv2d(x, weight.repeat(C, 1, 1, 1), groups=C)``
    (:func:`convscope.models.gfnn.kernel_bank_conv2d`): map ``c * K + k`` is kernel
    ``k`` on channel ``c``.
    """
    if isinstance(m, nn.Conv2d):
        return m.weight.detach().to(dtype), m.groups
    assert _is_bank(m)
    c = m.in_channels
    return m.weight.detach().to(dtype).repeat(c, 1, 1, 1), c


def _out_channels(m: nn.Module | None) -> int:
    if isinstance(m, nn.Conv2d):
        return m.out_channels
    assert _is_bank(m)
    return m.out_channels


def _step_for_module(name: str, m: nn.Module) -> ChainStep:
    if _is_bank(m):
        _check_bank(name, m)
        w = m.weight
        return ChainStep(
            name,
            "conv",
            m,
            stride=_pair(m.stride),
            padding=_pair(m.padding),
            kernel_size=(int(w.shape[-2]), int(w.shape[-1])),
        )
    if isinstance(m, nn.Conv2d):
        return ChainStep(
            name,
            "conv",
            m,
            stride=_pair(m.stride),
            padding=_pair(m.padding) if not isinstance(m.padding, str) else _same_padding(m),
            dilation=_pair(m.dilation),
            kernel_size=_pair(m.kernel_size),
        )
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        if isinstance(m, nn.AvgPool2d) and m.divisor_override is not None:
            raise ConvscopeError(f"cannot decode through {name}: AvgPool2d with divisor_override")
        dil = _pair(m.dilation) if isinstance(m, nn.MaxPool2d) else (1, 1)
        return ChainStep(
            name,
            "pool",
            m,
            stride=_pair(m.stride if m.stride is not None else m.kernel_size),
            padding=_pair(m.padding),
            dilation=dil,
            kernel_size=_pair(m.kernel_size),
        )
    if _is_normalize(m):
        return ChainStep(name, "scale", m)  # (x - mean) / std: its linear part is 1 / std
    if isinstance(m, nn.BatchNorm2d):
        if m.training or m.running_var is None:
            raise ConvscopeError(
                f"cannot decode through {name}: BatchNorm2d needs eval mode and running "
                "statistics (call model.eval())"
            )
        return ChainStep(name, "scale", m)
    if isinstance(m, _SKIPPED_MODULES):
        return ChainStep(name, "skip", m)
    raise ConvscopeError(
        f"cannot decode through {name} ({type(m).__name__}): decoding knows Conv2d, "
        "KernelBank2d, MaxPool2d, AvgPool2d, BatchNorm2d, convscope's input normalisation and "
        "skips ReLU, dropout and identities"
    )


def _same_padding(m: nn.Conv2d) -> tuple[int, int]:
    if m.padding == "valid":
        return (0, 0)
    # padding="same" (stride 1): PyTorch pads total d*(k-1), the smaller half first
    d, k = _pair(m.dilation), _pair(m.kernel_size)
    return (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)


def _where(node: torch.fx.Node) -> str:
    """The module a traced function call sits in, for error messages."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        if path:
            return f" inside {path}"
    return ""


class _LeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps every module without children as one call.

    A custom layer (say, a fixed kernel bank with an input check in its forward) is then
    one node the chain walk can recognise (``KernelBank2d``) or name in its error, instead
    of a trace that fails inside it.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or not any(
            True for _ in m.children()
        )


def _top_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """The decoded layer's name and module, refused unless it is a Conv2d or kernel bank."""
    name = layer_name(model, layer)
    m = dict(model.named_modules())[name]
    if not isinstance(m, nn.Conv2d) and not _is_bank(m):
        raise ConvscopeError(
            f"{name} is a {type(m).__name__}; decode_filters decodes Conv2d layers "
            "(and KernelBank2d)"
        )
    if _is_bank(m):
        _check_bank(name, m)
    return name, m


def decoding_chain(model: nn.Module, layer: nn.Module | str) -> list[ChainStep]:
    """The layers from the image up to ``layer`` (inclusive), bottom first.

    The model is traced with torch.fx; from ``layer`` the trace is followed back
    to the input along the single tensor argument of each call. This is the
    chain view that :func:`kernel_composition` and :func:`deconvnet` need;
    :func:`decode` also follows sums and concatenations.

    Args:
        model: any model torch.fx can trace (``nn.Sequential`` chains, LeNet ...).
        layer: a ``Conv2d`` (or ``KernelBank2d``) module of ``model`` or its dotted name.

    Raises:
        ConvscopeError: ``layer`` is not a Conv2d of ``model``, is called more than
            once, or something below it is not decodable (a branch, a merge, an
            unknown module or function); the message names it.
    """
    name, _ = _top_layer(model, layer)
    g = _Graph(model, name)
    from_input = g.from_input
    steps: list[ChainStep] = []
    node = g.top
    while node.op != "placeholder":
        step = g.step(node)
        if step is None:
            fname = getattr(node.target, "__name__", str(node.target))
            raise ConvscopeError(
                f"cannot decode {name} as a chain: {node.op} {fname}{_where(node)} lies between "
                "it and the input; a chain is Conv2d, pooling, batch norm and ReLU (decode() "
                "also follows sums and concatenations)"
            )
        steps.append(step)
        inputs = [a for a in node.all_input_nodes if a in from_input]
        if len(inputs) != 1:
            raise ConvscopeError(
                f"cannot decode {name} as a chain: {step.name} takes {len(inputs)} inputs that "
                "depend on the image (a branch or merge); decode() follows sums and "
                "concatenations, this needs a chain"
            )
        node = inputs[0]
    steps.reverse()
    return steps


# --------------------------------------------------------------------------- branching graphs

_ADDS: frozenset[Any] = frozenset({operator.add, operator.iadd, torch.add})
_SUBS: frozenset[Any] = frozenset({operator.sub, operator.isub, torch.sub})
_SCALES: frozenset[Any] = frozenset({operator.mul, operator.imul, torch.mul})
_DIVS: frozenset[Any] = frozenset({operator.truediv, operator.itruediv, torch.div})
_NEGS: frozenset[Any] = frozenset({operator.neg, torch.neg})
_CATS: frozenset[Any] = frozenset({torch.cat, torch.concat})
_METHODS = {"add": operator.add, "add_": operator.add, "sub": operator.sub, "mul": operator.mul}


@dataclass
class _Pattern:
    """Patterns ``(F, C, h, w)`` over one node's maps and where they sit.

    ``d[..., 0, 0]`` lies at position ``p * stride - offset`` of the node's grid for the
    unit at position ``p`` of the decoded layer's grid.
    """

    d: torch.Tensor
    offset: tuple[int, int]
    stride: tuple[int, int]


def _aligned_sum(a: _Pattern, b: _Pattern, where: str) -> _Pattern:
    """``a + b`` on the union of their boxes (the patterns of two paths into one node)."""
    if a.stride != b.stride:
        raise ConvscopeError(
            f"cannot decode: {where} is reached at strides {_pair_str(a.stride)} and "
            f"{_pair_str(b.stride)} from the decoded layer; its paths do not share a grid"
        )
    off = (max(a.offset[0], b.offset[0]), max(a.offset[1], b.offset[1]))
    size = tuple(max(off[i] - p.offset[i] + p.d.shape[-2 + i] for p in (a, b)) for i in range(2))

    def placed(p: _Pattern) -> torch.Tensor:
        top, left = off[0] - p.offset[0], off[1] - p.offset[1]
        h, w = p.d.shape[-2:]
        return F.pad(p.d, (left, size[1] - left - w, top, size[0] - top - h))

    return _Pattern(placed(a) + placed(b), off, a.stride)


def _step_down(d: torch.Tensor, step: ChainStep, unpool: str) -> torch.Tensor:
    """Patterns over the output of one step -> patterns over its input."""
    m = step.module
    if step.kind == "conv":
        assert m is not None
        weight, groups = _conv_weight(m, d.dtype)
        return F.conv_transpose2d(
            d, weight, stride=step.stride, dilation=step.dilation, groups=groups
        )
    if step.kind == "pool":
        return _unpool(d, step, unpool)
    if step.kind == "scale":
        if _is_normalize(m):
            std = torch.tensor(m.std, dtype=d.dtype, device=d.device)  # type: ignore[union-attr]
            return d / std[None, :, None, None]
        assert isinstance(m, nn.BatchNorm2d) and m.running_var is not None
        scale = torch.rsqrt(m.running_var.detach().to(d.dtype) + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach().to(d.dtype)
        return d * scale[None, :, None, None]
    return d


class _Graph:
    """The traced model, read from the decoded layer down to the image."""

    def __init__(self, model: nn.Module, name: str) -> None:
        self.name = name
        self.modules = dict(model.named_modules())
        try:
            self.graph = _LeafTracer().trace(model)
        except Exception as e:  # fx raises TraceError, TypeError, NotImplementedError ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConvscopeError(
                f"cannot trace {type(model).__name__} with torch.fx ({first[:160]}); decoding "
                "needs a traceable model, e.g. an nn.Sequential chain"
            ) from None
        calls = [n for n in self.graph.nodes if n.op == "call_module" and n.target == name]
        if not calls:
            raise ConvscopeError(f"{name} is never called in {type(model).__name__}.forward")
        if len(calls) > 1:
            raise ConvscopeError(f"{name} is called {len(calls)} times; its filters are ambiguous")
        self.top = calls[0]
        # nodes whose value depends on the input: only they carry patterns
        self.from_input: set[torch.fx.Node] = set()
        for n in self.graph.nodes:
            if n.op == "placeholder" or any(a in self.from_input for a in n.all_input_nodes):
                self.from_input.add(n)
        self._channels: dict[torch.fx.Node, int] = {}

    def tensor_args(self, node: torch.fx.Node) -> list[tuple[int, torch.fx.Node]]:
        """(position, node) of the positional arguments that depend on the image."""
        return [
            (i, a)
            for i, a in enumerate(node.args)
            if isinstance(a, torch.fx.Node) and a in self.from_input
        ]

    def refuse(self, node: torch.fx.Node, why: str) -> ConvscopeError:
        fname = getattr(node.target, "__name__", str(node.target))
        return ConvscopeError(
            f"cannot decode {self.name}: {node.op} {fname}{_where(node)} lies between it and "
            f"the input ({why}); decoding follows convolutions, pooling, batch norm, ReLU, "
            "sums and channel concatenations"
        )

    def step(self, node: torch.fx.Node) -> ChainStep | None:
        """The chain step of a module or skipped call; ``None`` for a merge or scaling."""
        if node.op == "call_module":
            return _step_for_module(str(node.target), self.modules[str(node.target)])
        if node.op == "call_function" and node.target in _SKIPPED_FUNCTIONS:
            fname = getattr(node.target, "__name__", str(node.target))
            return ChainStep(f"{fname}{_where(node)}", "skip", None)
        if node.op == "call_method" and node.target in _SKIPPED_METHODS:
            return ChainStep(f"Tensor.{node.target}{_where(node)}", "skip", None)
        return None

    def channels(self, node: torch.fx.Node) -> int:
        """Channels of a node's output (for splitting a concatenation's pattern)."""
        if node not in self._channels:
            self._channels[node] = self._count(node)
        return self._channels[node]

    def _count(self, node: torch.fx.Node) -> int:
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            if isinstance(m, nn.Conv2d) or _is_bank(m):
                return _out_channels(m)
            if isinstance(m, nn.BatchNorm2d):
                return m.num_features
        if node.op != "placeholder":
            if node.target in _CATS:
                return sum(self.channels(a) for a in self.cat_inputs(node))
            args = self.tensor_args(node)
            if args:
                return self.channels(args[0][1])
        raise self.refuse(node, "its channels cannot be read without an image")

    def _cat_counts(self, node: torch.fx.Node, parts: list[torch.fx.Node], total: int) -> list[int]:
        """Channels of each part of a concatenation whose output has ``total`` channels.

        One part whose channels the graph does not tell (the image itself, say) gets what
        the others leave of ``total``.
        """
        counts: list[int | None] = []
        for a in parts:
            try:
                counts.append(self.channels(a))
            except ConvscopeError:
                counts.append(None)
        known = sum(c for c in counts if c is not None)
        if counts.count(None) == 1:
            counts[counts.index(None)] = total - known
        if None in counts or known > total or sum(c or 0 for c in counts) != total:
            raise self.refuse(node, "the channels of its parts cannot be read without an image")
        return [int(c or 0) for c in counts]

    def cat_inputs(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        """The tensors a ``torch.cat`` call joins."""
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        if not isinstance(parts, (list, tuple)) or not all(
            isinstance(a, torch.fx.Node) for a in parts
        ):
            raise self.refuse(node, "its tensors are not a list of traced values")
        return [a for a in parts if isinstance(a, torch.fx.Node)]

    def propagate(
        self, node: torch.fx.Node, p: _Pattern, unpool: str
    ) -> list[tuple[torch.fx.Node, _Pattern]]:
        """The patterns ``node``'s image-dependent inputs receive from ``p`` over its output."""
        step = self.step(node)
        if step is not None:
            inputs = [a for a in node.all_input_nodes if a in self.from_input]
            if len(inputs) != 1:
                raise self.refuse(node, f"{len(inputs)} image-dependent inputs")
            off, stride = p.offset, p.stride
            if step.kind in ("conv", "pool"):
                (sh, sw), (ph, pw) = step.stride, step.padding
                off = (off[0] * sh + ph, off[1] * sw + pw)
                stride = (stride[0] * sh, stride[1] * sw)
            return [(inputs[0], _Pattern(_step_down(p.d, step, unpool), off, stride))]
        target = node.target
        if node.op == "call_method":
            if target not in _METHODS:
                raise self.refuse(node, "not a linear operation decoding knows")
            target = _METHODS[str(target)]
        if node.op not in ("call_function", "call_method"):
            raise self.refuse(node, "not a function call")
        if target in _CATS:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim not in (1, -3):
                raise self.refuse(node, f"concatenation along dim {dim}, not the channels")
            parts = self.cat_inputs(node)
            counts = self._cat_counts(node, parts, p.d.shape[1])
            out: list[tuple[torch.fx.Node, _Pattern]] = []
            start = 0
            for a, c in zip(parts, counts, strict=True):
                if a in self.from_input:
                    piece = p.d[:, start : start + c]
                    out.append((a, _Pattern(piece, p.offset, p.stride)))
                start += c
            return out
        args = self.tensor_args(node)
        if target in _ADDS or target in _SUBS:
            alpha = node.kwargs.get("alpha", 1)
            if not isinstance(alpha, (int, float)) or set(node.kwargs) - {"alpha"}:
                raise self.refuse(node, "keyword arguments other than a number alpha")
            sign = {0: 1.0, 1: (-1.0 if target in _SUBS else 1.0) * float(alpha)}
            return [(a, _Pattern(p.d * sign[i], p.offset, p.stride)) for i, a in args]
        if target in _SCALES or target in _DIVS or target in _NEGS:
            others = [a for i, a in enumerate(node.args) if (i, a) not in args]
            numbers = [float(o) for o in others if isinstance(o, (int, float))]
            arity = 0 if target in _NEGS else 1
            if len(args) != 1 or len(others) != arity or len(numbers) != arity or node.kwargs:
                raise self.refuse(node, "a product of tensors, not a scaling by a number")
            if target in _DIVS and args[0][0] != 0:
                raise self.refuse(node, "a number divided by a tensor, not a scaling")
            factor = -1.0 if target in _NEGS else numbers[0]
            if target in _DIVS:
                factor = 1.0 / factor
            return [(args[0][1], _Pattern(p.d * factor, p.offset, p.stride))]
        raise self.refuse(node, "not a linear operation decoding knows")


def _decode_graph(
    model: nn.Module, name: str, d: torch.Tensor, unpool: str
) -> tuple[_Pattern, list[str]]:
    """Walk unit patterns over ``name``'s output down every path to the image.

    Nodes are visited from the decoded layer down, each once all its consumers have
    given it their patterns (reverse topological order): a node used by several paths
    receives the sum of their patterns, aligned on its grid.
    """
    g = _Graph(model, name)
    pending: dict[torch.fx.Node, _Pattern] = {g.top: _Pattern(d, (0, 0), (1, 1))}
    chain: list[str] = []
    image: list[tuple[torch.fx.Node, _Pattern]] = []
    nodes = list(g.graph.nodes)
    for node in reversed(nodes[: nodes.index(g.top) + 1]):
        p = pending.pop(node, None)
        if p is None:
            continue
        if node.op == "placeholder":
            image.append((node, p))
            continue
        step = g.step(node)
        inputs = g.propagate(node, p, unpool)
        if step is not None:
            chain.append(step.describe())
        else:
            chain.append(f"{'merge' if len(inputs) > 1 else 'scale'} {node.name}{_where(node)}")
        for a, q in inputs:
            where = f"{a.name}{_where(a)}"
            pending[a] = _aligned_sum(pending[a], q, where) if a in pending else q
    if len(image) != 1:
        image.reverse()  # visited last to first: name them in forward's order
        names = ", ".join(n.name for n, _ in image)
        raise ConvscopeError(
            f"cannot decode {name}: it depends on {len(image)} inputs of "
            f"{type(model).__name__}.forward ({names}); decoding needs one image"
        )
    chain.reverse()
    return image[0][1], chain


# --------------------------------------------------------------------------- decoding


@dataclass
class DecodedFilters:
    """Decoded filters of one layer and how to correlate them with images.

    Attributes:
        filters: ``(K, C_in, h, w)`` image-space patterns, raw (not normalised).
        layer: dotted name of the decoded layer.
        unpool: the unpooling mode used.
        stride: ``(S_h, S_w)``, the product of the strides of every conv and pool
            in the chain (the layer included): one step on the layer's grid is
            ``S`` pixels in the image.
        padding: ``(P_h, P_w)``, the zero padding of every layer in the chain,
            measured in image pixels (each layer's padding times the stride below it).
        chain: :meth:`ChainStep.describe` of each step, image first.
        filter_index: which filters of the layer, in order (all by default).
    """

    filters: torch.Tensor
    layer: str
    unpool: str
    stride: tuple[int, int]
    padding: tuple[int, int]
    chain: list[str] = field(default_factory=list)
    filter_index: list[int] = field(default_factory=list)

    def correlate(self, images: torch.Tensor) -> torch.Tensor:
        """Each image correlated with every decoded filter on the layer's grid.

        Args:
            images: ``(N, C_in, H, W)``.

        Returns:
            ``(N, K, h', w')``: ``F.conv2d(images, filters, stride, padding)``;
            the estimate of the layer's response (without its biases).
        """
        w = self.filters.to(device=images.device, dtype=images.dtype)
        if images.dim() != 4 or images.shape[1] != w.shape[1]:
            raise ConvscopeError(
                f"images must be (N, {w.shape[1]}, H, W) for these filters, got "
                f"{tuple(images.shape)}"
            )
        return F.conv2d(images, w, stride=self.stride, padding=self.padding)


def _unpool(d: torch.Tensor, step: ChainStep, mode: str) -> torch.Tensor:
    """Upsample patterns ``(K, C, h, w)`` from a pool's output grid to its input grid."""
    (sh, sw), (kh, kw), (dh, dw) = step.stride, step.kernel_size, step.dilation
    h, w = d.shape[-2:]
    # the pooled windows of an (h, w) map cover this much of the grid below
    size = ((h - 1) * sh + dh * (kh - 1) + 1, (w - 1) * sw + dw * (kw - 1) + 1)
    if mode == "adjoint":
        c = d.shape[1]
        box = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=d.dtype, device=d.device)
        return F.conv_transpose2d(d, box, stride=(sh, sw), dilation=(dh, dw), groups=c)
    if mode == "nearest":
        # integer source indices floor(i * h / H): exact replication for an integer
        # factor, where F.interpolate's float scale can land one pixel off
        iy = torch.div(torch.arange(size[0], device=d.device) * h, size[0], rounding_mode="floor")
        ix = torch.div(torch.arange(size[1], device=d.device) * w, size[1], rounding_mode="floor")
        return d[:, :, iy[:, None], ix[None, :]]
    return F.interpolate(d, size=size, mode=mode, align_corners=False)


def _unit_patterns(
    name: str, top: nn.Module, filters: Iterable[int] | None, dtype: torch.dtype | None
) -> tuple[list[int], torch.Tensor]:
    """The filter indices and one unit pattern ``(F, K, 1, 1)`` per decoded filter."""
    k_all = _out_channels(top)
    idx = list(range(k_all)) if filters is None else [int(i) for i in filters]
    bad = [i for i in idx if not 0 <= i < k_all]
    if bad or not idx:
        raise ConvscopeError(f"{name} has filters 0..{k_all - 1}; got {bad or 'none'}")
    assert isinstance(top, nn.Conv2d) or _is_bank(top)
    w = top.weight
    d = torch.zeros(len(idx), k_all, 1, 1, dtype=dtype or w.dtype, device=w.device)
    d[torch.arange(len(idx)), idx] = 1.0
    return idx, d


def _walk_down(d: torch.Tensor, steps: Sequence[ChainStep], unpool: str) -> torch.Tensor:
    """Patterns over the output of ``steps[-1]`` -> patterns over the input of ``steps[0]``."""
    for step in reversed(steps):
        d = _step_down(d, step, unpool)
    return d


def _check_mode(unpool: str) -> None:
    if unpool not in UNPOOL_MODES:
        raise ConvscopeError(f"unknown unpool {unpool!r}; use one of {', '.join(UNPOOL_MODES)}")


def decode(
    model: nn.Module,
    layer: nn.Module | str,
    unpool: UnpoolMode | str = "nearest",
    *,
    filters: Iterable[int] | None = None,
    dtype: torch.dtype | None = None,
) -> DecodedFilters:
    """Decode the filters of ``layer`` into image space (all at once).

    Args:
        model: a traceable model; below ``layer`` it may branch and merge through
            sums, scalings by numbers and channel concatenations (see the module).
        layer: a ``Conv2d`` (or ``KernelBank2d``) of ``model`` or its dotted name (see
            ``named_modules()``).
        unpool: ``"nearest"``, ``"bilinear"``, ``"bicubic"`` or ``"adjoint"``.
        filters: indices of the filters to decode (default: all ``K``).
        dtype: compute in this dtype (default: the layer's weight dtype), e.g.
            ``torch.float64`` for comparisons to 1e-10.

    Returns:
        :class:`DecodedFilters`; ``.filters`` is ``(K, C_in, h, w)`` with
        ``h = (h_L - 1) * S + ...``, the receptive field of one unit of the layer.

    Raises:
        ConvscopeError: ``layer`` is not a Conv2d of ``model`` or is called more than
            once; something below it is not decodable (named in the message); an
            unknown mode or filter index.
    """
    _check_mode(unpool)
    name, top = _top_layer(model, layer)
    idx, d = _unit_patterns(name, top, filters, dtype)
    with torch.no_grad():
        # substituting layer L's own weights into the unit patterns gives the
        # (dilated, group-expanded) filters themselves
        image, chain = _decode_graph(model, name, d, unpool)
    return DecodedFilters(
        filters=image.d,
        layer=name,
        unpool=str(unpool),
        stride=image.stride,
        padding=image.offset,
        chain=chain,
        filter_index=idx,
    )


def decode_filters(
    model: nn.Module, layer: nn.Module | str, unpool: UnpoolMode | str = "nearest"
) -> torch.Tensor:
    """Raw image-space filters of ``layer``: ``(K, C_in, h, w)``.

    Shorthand for ``decode(model, layer, unpool).filters``; see :func:`decode`.
    ReLUs below the layer are skipped, as in seed 003.
    """
    return decode(model, layer, unpool).filters


# --------------------------------------------------------------------------- kernel banks


@dataclass
class KernelComposition:
    """Deep filters written over the named kernels of a fixed kernel bank (GFNN).

    Decoding a filter stops just above the bank: what is left is a pattern over the
    bank's maps, one coefficient map per (input channel, kernel). The decoded filter
    is exactly the sum of those maps, each with its kernel substituted in
    (:meth:`parts`, :meth:`filters`). The coefficients are the network's own wiring
    through the chain (ReLUs skipped, pools unpooled, as in :func:`decode`), not a fit
    of the image-space filter: the bank is overcomplete (40 kernels of 3x3), so the
    image-space filter alone would not determine them.

    Attributes:
        coefficients: ``(F, C, K, h, w)``; ``[f, c, k]`` is filter ``f``'s pattern over
            the map of kernel ``k`` on input channel ``c``, on the bank's output grid.
        kernels: ``(K, kh, kw)``, the bank's weights (in the coefficients' dtype).
        kernel_names: the bank's ``kernel_names`` (``random_XX`` for random banks).
        layer: dotted name of the decoded layer; bank: of the bank.
        unpool: the unpooling mode used above the bank.
        bank_stride: the bank's stride (the coefficients' grid step in image pixels).
        filter_index: which filters of the layer, in order.
    """

    coefficients: torch.Tensor
    kernels: torch.Tensor
    kernel_names: list[str]
    layer: str
    bank: str
    unpool: str
    bank_stride: tuple[int, int]
    filter_index: list[int] = field(default_factory=list)

    @property
    def net(self) -> torch.Tensor:
        """``(F, K)``: each kernel's signed total weight, summed over channels and positions."""
        return self.coefficients.sum(dim=(1, 3, 4))

    @property
    def magnitude(self) -> torch.Tensor:
        """``(F, K)``: each kernel's total absolute weight (L1 over channels and positions)."""
        return self.coefficients.abs().sum(dim=(1, 3, 4))

    @property
    def share(self) -> torch.Tensor:
        """``(F, K)``: :attr:`magnitude` as a fraction of the filter's total (rows sum to 1).

        A filter with no weight on any kernel has a row of zeros.
        """
        mag = self.magnitude
        total = mag.sum(1, keepdim=True)
        return torch.where(total > 0, mag / torch.where(total > 0, total, 1), 0.0)

    def parts(self) -> torch.Tensor:
        """``(F, K, C, h', w')``: the image-space part of each filter owed to each kernel.

        Part ``[f, k, c]`` is the coefficient map ``[f, c, k]`` with kernel ``k``
        substituted in (a transposed convolution at the bank's stride); summed over
        ``k`` the parts are the decoded filters.
        """
        n, c, k, h, w = self.coefficients.shape
        x = self.coefficients.reshape(1, n * c * k, h, w)
        wt = self.kernels[:, None].repeat(n * c, 1, 1, 1)  # (n*c*k, 1, kh, kw), k fastest
        out = F.conv_transpose2d(x, wt, stride=self.bank_stride, groups=n * c * k)
        return out.view(n, c, k, *out.shape[-2:]).transpose(1, 2).contiguous()

    def filters(self) -> torch.Tensor:
        """``(F, C, h', w')``: the decoded filters, the sum of :meth:`parts` over kernels."""
        return self.parts().sum(1)

    def table(self, row: int = 0) -> list[dict[str, Any]]:
        """One decoded filter's kernels, largest share first.

        Args:
            row: position in :attr:`filter_index` (not the filter's index in the layer).

        Returns:
            ``[{"kernel", "net", "magnitude", "share"}, ...]``, one entry per kernel.
        """
        if not 0 <= row < len(self.filter_index):
            raise ConvscopeError(f"row must lie in 0..{len(self.filter_index) - 1}, got {row}")
        net, mag, share = self.net[row], self.magnitude[row], self.share[row]
        rows = [
            {
                "kernel": name,
                "net": float(net[k]),
                "magnitude": float(mag[k]),
                "share": float(share[k]),
            }
            for k, name in enumerate(self.kernel_names)
        ]
        return sorted(rows, key=lambda r: -r["share"])


def _check_named_kernels(name: str, bank: KernelBank2d) -> None:
    """Refuse a bank whose weights are no longer the kernels its names say."""
    from convscope import kernels as kb

    names = list(bank.kernel_names)
    if bank.mode == "random":
        return  # named random_XX: no registry kernel to compare with
    w = bank.weight.detach().double().cpu()[:, 0]
    ref = torch.from_numpy(kb.bank_array(names))
    if w.shape != ref.shape:
        raise ConvscopeError(
            f"{name} holds {tuple(w.shape)} kernels but names {len(names)} of {tuple(ref.shape)}"
        )
    # the bank stores float32: its untrained weights are the named ones to float32 rounding
    dev = float((w - ref).abs().max())
    if dev > 1e-6 * max(1.0, float(ref.abs().max())):
        raise ConvscopeError(
            f"the kernels of {name} are no longer the named ones (largest change {dev:.3g}, "
            f"mode {bank.mode!r}: trained or loaded weights); their names "
            "would be wrong - decode() still decodes through the bank as it is"
        )


def kernel_composition(
    model: nn.Module,
    layer: nn.Module | str,
    unpool: UnpoolMode | str = "nearest",
    *,
    filters: Iterable[int] | None = None,
    dtype: torch.dtype | None = None,
) -> KernelComposition:
    """Which named kernels of the model's kernel bank each filter of ``layer`` is built from.

    The filters are decoded as in :func:`decode` down to the output of the
    ``KernelBank2d`` below ``layer`` (GFNN's first layer, or a colour front-end's bank),
    giving each filter's pattern over the bank's maps, grouped by input channel and
    named kernel. Substituting the kernels in gives exactly ``decode(...).filters``.

    Args:
        layer: a ``Conv2d`` above the bank (or the bank itself), or its dotted name.
        unpool, filters, dtype: as in :func:`decode`.

    Returns:
        :class:`KernelComposition`; ``.share`` says how much of each filter is each
        kernel, ``.table(row)`` lists one filter's kernels by name.

    Raises:
        ConvscopeError: ``layer`` cannot be decoded (:func:`decoding_chain`); no bank or
            more than one lies below it; something other than ReLU, dropout or an
            identity lies between the image and the bank; the bank's weights are no
            longer its named kernels (a trained ``"init"`` bank).
    """
    _check_mode(unpool)
    steps = decoding_chain(model, layer)
    name = steps[-1].name
    banks = [i for i, s in enumerate(steps) if _is_bank(s.module)]
    if not banks:
        raise ConvscopeError(
            f"no kernel bank (KernelBank2d) lies below {name} in {type(model).__name__}; "
            "kernel_composition needs a GFNN-style model - decode() decodes any chain"
        )
    if len(banks) > 1:
        raise ConvscopeError(
            f"{len(banks)} kernel banks lie below {name} "
            f"({', '.join(steps[i].name for i in banks)}); which kernels it is built from is "
            "ambiguous"
        )
    b = banks[0]
    below = [s for s in steps[:b] if s.kind != "skip"]
    if below:
        raise ConvscopeError(
            f"{below[0].describe()} lies between the image and the kernel bank "
            f"{steps[b].name}; kernel_composition needs the bank to read the image"
        )
    bank = steps[b].module
    assert _is_bank(bank)
    _check_named_kernels(steps[b].name, bank)
    top = steps[-1].module
    assert top is not None
    idx, d = _unit_patterns(name, top, filters, dtype)
    with torch.no_grad():
        d = _walk_down(d, steps[b + 1 :], unpool)  # patterns over the bank's maps
        c, k = bank.in_channels, bank.num_kernels
        kernels = bank.weight.detach().to(d.dtype)[:, 0]
    return KernelComposition(
        coefficients=d.reshape(d.shape[0], c, k, *d.shape[-2:]),
        kernels=kernels,
        kernel_names=list(bank.kernel_names),
        layer=name,
        bank=steps[b].name,
        unpool=str(unpool),
        bank_stride=steps[b].stride,
        filter_index=idx,
    )


# --------------------------------------------------------------------------- responses


def layer_response(
    model: nn.Module, layer: nn.Module | str, images: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """The output of ``layer`` for a batch of images, ``(N, K, h, w)``.

    Captured with a forward hook that is always removed; the model runs in the
    mode it is in (call ``model.eval()`` first for batch norm and dropout).
    """
    name = layer_name(model, layer)
    module = dict(model.named_modules())[name]
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        captured.append(out.detach())

    handle = module.register_forward_hook(hook)
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                captured.clear()
                try:
                    model(images[i : i + batch_size])
                except RuntimeError as e:  # a shape or dtype the model cannot take
                    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
                    raise ConvscopeError(
                        f"{type(model).__name__} failed on images shaped "
                        f"{tuple(images.shape[1:])}: {first}"
                    ) from None
                if len(captured) != 1:
                    raise ConvscopeError(f"{name} ran {len(captured)} times in one forward pass")
                outs.append(captured[0])
    finally:
        handle.remove()
    return torch.cat(outs)


def _minmax(z: torch.Tensor) -> torch.Tensor:
    """Contrast range per image: ``(z - min) / (max - min)`` over all but dim 0."""
    flat = z.flatten(1)
    lo = flat.min(1).values[:, None, None, None]
    hi = flat.max(1).values[:, None, None, None]
    span = hi - lo
    # a constant response has no contrast to normalise: map it to 0
    return torch.where(span > 0, (z - lo) / torch.where(span > 0, span, 1), 0.0)


@dataclass
class ReconstructionError:
    """Seed 003 eq. 3 for one layer and unpooling mode (see ``docs/decoding.md``).

    Attributes:
        layer: dotted name; unpool: the mode.
        mean, std: over images of the per-image error.
        per_image: ``(N,)`` per-image error: mean over filters and positions of the
            squared difference between the contrast-normalised response and the
            contrast-normalised reconstruction.
        offset: whether the response to a black image was added to the reconstruction.
    """

    layer: str
    unpool: str
    mean: float
    std: float
    per_image: np.ndarray
    offset: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the per-image values)."""
        return {
            "layer": self.layer,
            "unpool": self.unpool,
            "mean": self.mean,
            "std": self.std,
            "n_images": int(self.per_image.shape[0]),
            "offset": self.offset,
        }


def _decoded_for(
    model: nn.Module,
    layer: nn.Module | str,
    unpool: str,
    decoded: DecodedFilters | None,
) -> tuple[str, DecodedFilters]:
    name = layer_name(model, layer)
    dec = decoded if decoded is not None else decode(model, name, unpool, dtype=torch.float64)
    if dec.layer != name or dec.filter_index != list(range(len(dec.filter_index))):
        raise ConvscopeError(f"pass all decoded filters of {name} (got {dec.layer})")
    return name, dec


def _black_response(model: nn.Module, name: str, images: torch.Tensor) -> torch.Tensor:
    """The layer's response to an all-zero image ``(1, K, h, w)``: the biases, carried up."""
    return layer_response(model, name, torch.zeros_like(images[:1])).double()


def _normalized_pair(
    model: nn.Module,
    name: str,
    x: torch.Tensor,
    dec: DecodedFilters,
    base: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r = layer_response(model, name, x).double()
    e = dec.correlate(x.double())
    h, w = min(r.shape[-2], e.shape[-2]), min(r.shape[-1], e.shape[-1])
    r, e = r[..., :h, :w], e[..., :h, :w]
    if base is not None:
        e = e + base[..., :h, :w]
    return _minmax(r), _minmax(e)


def compare_responses(
    model: nn.Module,
    layer: nn.Module | str,
    images: torch.Tensor,
    unpool: UnpoolMode | str = "nearest",
    *,
    offset: bool = True,
    decoded: DecodedFilters | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's response and its decoded estimate, as :func:`reconstruction_error` compares them.

    Args:
        images: ``(N, C_in, H, W)``, a few (everything is held in memory).
        decoded: reuse filters decoded before (all filters of ``layer``); then
            ``unpool`` is ignored.

    Returns:
        ``(response, estimate)``, both ``(N, K, h, w)`` float64, cropped to their
        common extent and contrast-normalised to [0, 1] per image.
    """
    name, dec = _decoded_for(model, layer, unpool, decoded)
    base = _black_response(model, name, images) if offset else None
    return _normalized_pair(model, name, images, dec, base)


def reconstruction_error(
    model: nn.Module,
    layer: nn.Module | str,
    images: torch.Tensor,
    unpool: UnpoolMode | str = "nearest",
    *,
    offset: bool = True,
    decoded: DecodedFilters | None = None,
    batch_size: int = 256,
) -> ReconstructionError:
    """Mean squared error between a layer's response and its decoded estimate.

    For each image ``I``: ``R = layer response (K, h, w)``, ``E = I * df`` (correlation
    at the aligning stride, :meth:`DecodedFilters.correlate`), plus, with ``offset``,
    the layer's response to an all-zero image (it carries the biases, which decoded
    filters leave out). Both are cropped to their common top-left extent, then each
    is contrast-normalised to [0, 1] over all its filters and positions; the error
    is the mean squared difference. Computed in float64.

    Args:
        images: ``(N, C_in, H, W)`` on the model's device.
        offset: add the response to a black image to the estimate (default); without
            it, eq. 3 is read literally and the biases count as error.
        decoded: reuse filters decoded before (all filters of ``layer``); then
            ``unpool`` is ignored.

    Returns:
        :class:`ReconstructionError` with the mean and std over the images.
    """
    name, dec = _decoded_for(model, layer, unpool, decoded)
    base = _black_response(model, name, images) if offset else None
    errs = []
    for i in range(0, images.shape[0], batch_size):
        r, e = _normalized_pair(model, name, images[i : i + batch_size], dec, base)
        errs.append(((r - e) ** 2).flatten(1).mean(1))
    per = torch.cat(errs).cpu().numpy()
    return ReconstructionError(
        layer=name,
        unpool=dec.unpool,
        mean=float(per.mean()),
        std=float(per.std()),
        per_image=per,
        offset=offset,
    )


def error_table(
    model: nn.Module,
    layers: Sequence[nn.Module | str],
    images: torch.Tensor,
    unpools: Sequence[str] = UNPOOL_MODES,
    *,
    offset: bool = True,
) -> dict[str, dict[str, ReconstructionError]]:
    """:func:`reconstruction_error` for every layer and unpooling mode.

    Returns:
        ``table[layer_name][unpool]``.
    """
    table: dict[str, dict[str, ReconstructionError]] = {}
    for layer in layers:
        name = layer_name(model, layer)
        table[name] = {
            mode: reconstruction_error(model, name, images, mode, offset=offset) for mode in unpools
        }
    return table


# --------------------------------------------------------------------------- other views


def _unit_positions(response: torch.Tensor, k: int) -> torch.Tensor:
    """Flat index of filter ``k``'s strongest unit per image in ``(N, K, h, w)``."""
    n, kk, h, w = response.shape
    best = response[:, k].flatten(1).argmax(1)  # position in (h, w)
    return k * h * w + best


_RECTIFIED = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)


def deconvnet_relus(model: nn.Module, layer: nn.Module | str) -> tuple[str, int, list[nn.Module]]:
    """What :func:`deconvnet` needs of a layer: its name, filter count and the ReLUs below.

    The graph below ``layer`` must be one :func:`decode` can walk (chains, sums,
    scalings, channel concatenations); every rectifier on it must be a module, since
    the deconvnet rectifies the backward signal through module hooks.

    Returns:
        ``(name, K, relus)``: the dotted name, the layer's number of filters and the
        ReLU (ReLU6, LeakyReLU) modules on the paths from the image to the layer.

    Raises:
        ConvscopeError: an undecodable layer or graph, or a rectifier below it that is
            a function call (``F.relu``); the message names it.
    """
    name, top = _top_layer(model, layer)
    g = _Graph(model, name)
    _decode_graph(model, name, _unit_patterns(name, top, [0], torch.float32)[1], "nearest")
    below: set[torch.fx.Node] = set()
    stack = [g.top]
    while stack:
        for a in stack.pop().all_input_nodes:
            if a in g.from_input and a not in below:
                below.add(a)
                stack.append(a)
    relus: list[nn.Module] = []
    for node in g.graph.nodes:
        if node not in below or node.op == "placeholder":
            continue
        step = g.step(node)
        if step is not None and step.kind == "skip" and step.module is None:
            raise ConvscopeError(
                f"deconvnet needs ReLU modules below {name}; found function call {step.name}"
            )
        m = step.module if step is not None else None
        if isinstance(m, _RECTIFIED) and all(m is not r for r in relus):
            relus.append(m)
    return name, _out_channels(top), relus


def deconvnet(
    model: nn.Module,
    layer: nn.Module | str,
    images: torch.Tensor,
    filter_index: int,
    position: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Zeiler-Fergus deconvolution of one unit of filter ``filter_index``, per image.

    The unit's activation is projected back to the image through the layers below:
    transposed convolutions, max-pool switches recorded in the forward pass, and at
    every ReLU the rectified backward signal (``relu`` of it, not the forward mask);
    at a sum the signal goes down every branch, at a concatenation each part gets its
    channels. Next to the decoded filter (no image, no switches, ReLUs skipped) and
    the linear interpreter's row (switches and the forward ReLU masks of this image),
    it is the third way of reading one unit.

    Args:
        images: ``(N, C, H, W)``.
        position: ``(y, x)`` on the layer's output grid, the same for every image;
            ``None``: each image's strongest unit of the filter.

    Returns:
        ``(N, C, H, W)``.

    Raises:
        ConvscopeError: see :func:`deconvnet_relus`; a filter index or position out of
            range.
    """
    name, k_all, relus = deconvnet_relus(model, layer)
    if not 0 <= filter_index < k_all:
        raise ConvscopeError(f"{name} has filters 0..{k_all - 1}; got {filter_index}")

    def rectify(_m: nn.Module, _gin: Any, gout: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        return (gout[0].clamp(min=0),)

    captured: list[torch.Tensor] = []
    module = dict(model.named_modules())[name]
    # a full backward hook cannot follow an in-place op: run the ReLUs out of place meanwhile
    inplace = [m for m in relus if getattr(m, "inplace", False)]
    handles = [module.register_forward_hook(lambda _m, _i, out: captured.append(out))]
    try:
        for m in inplace:
            m.inplace = False  # type: ignore[assignment]
        handles += [m.register_full_backward_hook(rectify) for m in relus]
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            model(x)
            out = captured[0]
            n, _, h, w = out.shape
            seed = torch.zeros_like(out).flatten(1)
            if position is None:
                flat = _unit_positions(out.detach(), filter_index)
            else:
                y, xx = int(position[0]), int(position[1])
                if not (0 <= y < h and 0 <= xx < w):
                    raise ConvscopeError(
                        f"position {y},{xx} lies outside {name}'s output map ({h}x{w})"
                    )
                flat = torch.full((n,), (filter_index * h + y) * w + xx, dtype=torch.long)
            seed[torch.arange(n), flat] = 1.0
            (grad,) = torch.autograd.grad(out, x, seed.view_as(out))
    finally:
        for hd in handles:
            hd.remove()
        for m in inplace:
            m.inplace = True  # type: ignore[assignment]
    return grad.detach()


class UpTo(nn.Module):
    """``model`` cut at ``name``: returns that module's output (the rest still runs).

    What the linear interpreter reads a unit of an inner layer through (its rows are
    then that layer's units).
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.target = dict(model.named_modules())[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.target.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[0]


def linear_rows(
    model: nn.Module, layer: nn.Module | str, images: torch.Tensor, filter_index: int
) -> torch.Tensor:
    """The linear interpreter's row for filter ``filter_index``'s strongest unit, per image.

    With every ReLU mask and max-pool selection frozen at the image (seed 001), the
    unit is a linear function of the image; its row is that function's weights, the
    image-specific counterpart of the decoded filter.

    Args:
        images: ``(N, C, H, W)``; one interpreter per image.

    Returns:
        ``(N, C, H, W)``.
    """
    from convscope.linear import LinearInterpreter

    name = layer_name(model, layer)
    cut = UpTo(model, name)
    out = []
    for i in range(images.shape[0]):
        x0 = images[i : i + 1]
        with torch.no_grad():
            unit = int(_unit_positions(cut(x0), filter_index)[0])
        out.append(LinearInterpreter(cut, x0).rows([unit]).detach())
    return torch.cat(out)


# --------------------------------------------------------------------------- reading them


def threshold_filters(filters: torch.Tensor, fraction: float = 0.5) -> torch.Tensor:
    """Seed 003's thresholded filters: the sign where ``|v| >= fraction * max|v|``, else 0.

    The maximum is taken per filter (over channels and positions), so every filter
    keeps its own strongest positive and negative strokes.

    Args:
        filters: ``(K, ...)``.

    Returns:
        Same shape, values in {-1, 0, 1}.
    """
    if not 0 < fraction <= 1:
        raise ConvscopeError(f"fraction must lie in (0, 1], got {fraction}")
    peak = filters.abs().flatten(1).max(1).values.view(-1, *([1] * (filters.dim() - 1)))
    return torch.where(filters.abs() >= fraction * peak, torch.sign(filters), 0.0)


def decoded_activations(
    decoded: DecodedFilters, images: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Each decoded filter's strongest response to each image: ``(N, K)``.

    The correlation :meth:`DecodedFilters.correlate`, maxed over positions (for
    filters as large as the image there is one position).
    """
    out = [
        decoded.correlate(images[i : i + batch_size]).flatten(2).amax(2)
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out)


def top_activating(scores: torch.Tensor, n: int = 4) -> torch.Tensor:
    """Indices of the ``n`` images with the highest score per filter.

    Args:
        scores: ``(N, K)`` activations (e.g. a decoded filter's correlation, maxed
            over positions).

    Returns:
        ``(K, n)`` image indices, highest first.
    """
    n = min(n, scores.shape[0])
    return scores.topk(n, dim=0).indices.T.contiguous()


def max_activation_matrix(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed 003 Fig. 1: each filter against the images that excite each filter most.

    Args:
        scores: ``(N, K)`` activations of ``K`` filters on ``N`` images.

    Returns:
        ``(best, matrix)``: ``best (K,)`` the image index with the highest score per
        filter; ``matrix (K, K)`` with ``matrix[k, j]`` = score of filter ``k`` on
        image ``best[j]``. Its diagonal is each row's maximum by construction; how
        much smaller the rest of a row is says how selective the filter is.
    """
    best = scores.argmax(0)
    return best, scores[best].T.contiguous()
