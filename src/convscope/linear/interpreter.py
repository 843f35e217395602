"""The linear interpreter (seed 001): freeze a network's decisions at one image ``x0``.

``LinearInterpreter(model, x0)`` turns ``model`` into the affine map
``y = F(x0) x + r(x0)`` that the network is, with every non-linear decision taken
for ``x0`` held fixed. Nothing is materialized: each query runs the model once on the
batch ``[x0, probes ...]``, and every non-linear unit computes its usual output on
``x0`` and the frozen affine map on the probes (the paper's LinearScope).

The mechanism, in one place. A pass enters :class:`_Interceptor`, a
``torch.overrides.TorchFunctionMode`` that sees every torch function, ``Tensor``
method and ``torch.nn.functional`` call, whether it comes from a module (``nn.ReLU``)
or a functional call in some ``forward`` (``F.relu``, ``torch.flatten``,
``Tensor.relu_``). Calls on input-dependent (tracked) tensors are routed through the
rule registry (:mod:`convscope.linear.registry`: the rules of
:mod:`convscope.linear.rules`, the affine handlers and the linear whitelist of
:mod:`convscope.linear.affine`, and the users' ``register_rule`` entries); anything
else is a :class:`ConvscopeError` naming the op and the module it ran in. Custom
``torch.autograd.Function`` calls and registered module types never reach the mode:
the registry routes them for the duration of a pass. Module forward hooks only keep
track of that module path. Intercepting at the function level matters: module hooks alone miss the
functional calls of densenet, inception, mobilenet_v3 and efficientnet, and a
forward hook on ``nn.ReLU(inplace=True)`` sees its input already overwritten.

The model leaves every pass as it came: the hooks are registered in one context
manager and removed in its ``finally`` (also when the model raises), parameters get
their ``requires_grad`` flags back, and buffers their values (train-mode batch norm
would otherwise count batches). The train/eval flags are never touched: the model
runs in the mode it is in (eval for the usual analysis; train-mode batch norm and
dropout are frozen at ``x0``'s statistics and one random mask).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from convscope.errors import ConvscopeError
from convscope.linear import registry
from convscope.linear.aten import ATEN
from convscope.linear.cache import CacheMode, DecisionCache, check_cache, default_budget
from convscope.linear.context import (
    ALL_OFF,
    ALL_ON,
    Mode,
    PassContext,
    Source,
    SourceHook,
    check_batch_size,
    op_name,
)
from convscope.linear.contributions import (
    Contributions,
    PixelVotes,
    contributions,
    pixel_discussion,
    pixel_votes,
    residual_share,
    votes,
)

if TYPE_CHECKING:
    from convscope.linear.svd import SVDResult

__all__ = ["LinearInterpreter", "ModelWalk", "frozen_pass", "walk"]

_MODES = ("freeze", "taylor")

_DISPATCH = registry.DISPATCH  # built-in and user rules, one table (linear/registry.py)

Output = str | int | Callable[[Any], torch.Tensor] | None
"""Which tensor of the model's output to interpret: a key, an index or a callable."""


class _Interceptor(TorchFunctionMode):
    """Routes every call that touches a tracked tensor to its rule, or refuses it."""

    def __init__(self, ctx: PassContext) -> None:
        super().__init__()
        self.ctx = ctx

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        ctx = self.ctx
        aten = ATEN.get(func)
        if aten is not None:  # an exported program's ATen op or shape guard (linear/aten.py)
            return aten(ctx, self.__torch_function__, func, types, args, kwargs)
        if not ctx.any_tracked(args, kwargs):
            return func(*args, **kwargs)
        handler = _DISPATCH.get(func)
        if handler is not None:
            return handler(ctx, func, args, kwargs)
        handler = registry.lookup_overload(func)
        if handler is not None:
            return handler(ctx, func, args, kwargs)
        raise ConvscopeError(
            f"{op_name(func)} in {ctx.where()} is not linear and convscope.linear has no "
            "rule for it; supported: ReLU-like units, clamps, max-pools, norms, smooth "
            "activations, dropout, elementwise gates and linear ops"
        )


_SAVED_HOOKS = "convscope.linear: saved-tensor hooks are refused during a frozen pass"


@dataclass(frozen=True)
class ModelWalk:
    """What a frozen pass needs to know of the model's structure, gathered once.

    Attributes:
        names: ``id(module) -> dotted path`` of every sub-module (the model is ``""``).
        parameters: Every parameter (their ``requires_grad`` is switched off in a pass).
        buffers: Every buffer (put back if a pass writes to it).
    """

    names: dict[int, str]
    parameters: tuple[torch.Tensor, ...]
    buffers: tuple[torch.Tensor, ...]


def walk(model: nn.Module) -> ModelWalk:
    """The :class:`ModelWalk` of ``model`` as it is now."""
    return ModelWalk(
        {id(m): name for name, m in model.named_modules()},
        tuple(model.parameters()),
        tuple(model.buffers()),
    )


@contextlib.contextmanager
def frozen_pass(
    model: nn.Module, ctx: PassContext, structure: ModelWalk | None = None
) -> Iterator[None]:
    """Run ``model`` under the interceptor, leaving it exactly as it was afterwards.

    Registers one global forward pre-hook and one always-called global forward hook
    (``torch.nn.modules.module.register_module_forward_*``: two registrations per pass
    rather than two per sub-module) that keep the current module path of the model's
    own modules (``structure``, from :func:`walk`; walked here when not given),
    switches off ``requires_grad`` on the parameters (the transposed system needs
    gradients for the probes only), snapshots the buffers and routes registered module
    types and autograd.Functions to their rules
    (:func:`convscope.linear.registry.installed`); all of it is undone in ``finally``.
    With ``ctx.find_nonfinite`` the forward hook also records the first module whose
    output is not finite (``ctx.nonfinite_at``). A probes-only pass (``ctx.offset`` 0)
    goes without the two hooks, which put every module call on PyTorch's slow path: its
    sources are the first pass's, and an error in it is raised again from a pass that
    carries ``x0``, with its module path (:meth:`LinearInterpreter._run`).
    """
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    handles: list[Any] = []
    raised_in: list[str] = []  # where an exception left the forward (innermost first)
    found = walk(model) if structure is None else structure
    flags = [(p, p.requires_grad) for p in found.parameters]
    buffers = [(b, b._version, b.detach().clone()) for b in found.buffers]
    paths = found.names
    pushed: list[bool] = []  # per module call under way: whether it pushed a path

    def enter(module: nn.Module, args: Any) -> None:
        name = paths.get(id(module))
        pushed.append(name is not None)
        if name is not None:
            ctx.stack.append(name)

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        if not pushed or not pushed.pop():  # not one of the model's modules
            return
        if output is None and not raised_in:  # called on the way out of an exception
            raised_in.append(ctx.where())
        if ctx.find_nonfinite and ctx.nonfinite_at is None:
            with torch._C.DisableTorchFunction():  # hooks run under the interceptor
                finite = _finite(output)
            if not finite:
                ctx.nonfinite_at = (ctx.path, type(module).__name__)
        if ctx.stack:
            ctx.stack.pop()

    try:
        if ctx.offset:  # a probes-only pass knows its sources and raises nothing new
            handles.append(register_module_forward_pre_hook(enter))
            handles.append(register_module_forward_hook(leave, always_call=True))
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            with (
                torch.autograd.graph.disable_saved_tensors_hooks(_SAVED_HOOKS),
                registry.installed(model, ctx),
                _Interceptor(ctx),
            ):
                yield
        except RuntimeError as e:
            if str(e) != _SAVED_HOOKS:
                raise
            where = raised_in[0] if raised_in else ctx.where()
            raise ConvscopeError(
                f"saved-tensor hooks in {where} (torch.utils.checkpoint with "
                "use_reentrant=False, or torch.autograd.graph.saved_tensors_hooks): they "
                "recompute or replace what the frozen system's backward pass reads, so rows, "
                "transpose and contributions would not be the frozen system's; run the model "
                "without activation checkpointing (timm: model.set_grad_checkpointing(False))"
            ) from None
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, version, saved in buffers:
                # only what the pass wrote to: an unneeded in-place copy would bump the
                # version of a buffer the backward pass of a transpose still needs
                if b._version != version:
                    b.copy_(saved)


def _finite(value: Any) -> bool:
    """Whether every tensor in ``value`` (a tensor, or one level of tuple/list/dict) is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value.detach()).all())
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    return True


def _nonfinite_count(t: torch.Tensor) -> str:
    """``"3 of 48 values are not finite (2 NaN, 1 inf)"``."""
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    return f"{nan + inf} of {t.numel()} values are not finite ({nan} NaN, {inf} inf)"


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw from ``seed`` inside, give every generator its state back afterwards."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield


@dataclass
class _Graph:
    """One captured pass: write the probes into ``inputs``, replay, read ``output``."""

    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    weights: torch.Tensor | None  # the transpose's ``y2``
    output: torch.Tensor


_MAX_GRAPHS = 4
_MAX_AUTO_BATCH = 1024


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


class LinearInterpreter:
    """``y = F(x0) x + r(x0)``: a network with its non-linear decisions frozen at ``x0``.

    Args:
        model: a network that treats the samples of a batch independently and returns
            one tensor ``(N, *out_shape)`` (or a dict, tuple or dataclass holding it:
            see ``output``); usually in eval mode.
        x0: ``(1, *in_shape)`` the image the decisions are taken from, e.g. ``(1, C, H, W)``;
            finite.
        mode: ``"freeze"`` (the paper's frozen masks, selections, statistics, ratios
            and gates) or ``"taylor"`` (first-order expansion: ``F`` is the Jacobian).
        output: which tensor of a model output that is not one tensor to interpret: a
            key of a dict output (``"out"`` for torchvision's segmentation models), an
            index into a tuple or list, an attribute name of a dataclass-like output, or
            a callable ``output(model_output) -> tensor`` (it runs inside the pass, so
            torch ops in it are interpreted like the model's own). ``None``: the model
            must return one tensor.
        batch_size: at most this many probes per forward pass (bounds memory), or
            ``"auto"``: as many as fit ``memory_budget``, from the bytes one probe's
            input-dependent tensors took in the first pass (an upper estimate of what a
            pass and its backward keep), at most 1024.
        memory_budget: bytes a pass may take with ``batch_size="auto"`` (``None``: a
            quarter of the memory free on ``x0``'s device).
        seed: every pass draws its random numbers (train-mode dropout masks) from
            this seed, so all passes freeze the same mask; the caller's random state
            is restored afterwards.
        cuda_graphs: replay the passes of ``li(x1)``, ``li.linear``, ``li.columns``,
            ``li.transpose`` and ``li.rows`` from CUDA graphs: each kind of pass and
            probe count is run once eagerly, captured once, and then replayed without
            Python, which removes the per-op cost of the interception (see
            benchmarks/README.md). ``None`` (default): on when ``x0`` is on a CUDA
            device and no module is in training mode; ``True``: the same, but an
            error when it cannot be on; ``False``: off. A graph reads the parameters
            from where they were at capture: update them in place, or build a new
            interpreter after replacing them.
        cache: keep what the rules read from ``x0`` (masks as bool, selected indices,
            statistics, ratios, gates, constants) after the first pass, and run later
            passes on the probes alone (:mod:`convscope.linear.cache`). ``"auto"``
            (default): on while it fits ``cache_budget`` and every rule met supports it
            (user rules do not), else every pass carries ``x0`` as now; off under CUDA
            graphs, which replay full passes. ``"on"``: the same, but an error when it
            cannot be on. ``"off"``: every pass carries ``x0``. The results are the
            same either way (to rounding). The cache holds the decisions of the model
            as it was when the interpreter was built (as ``output`` and ``sources``
            do): after changing its parameters, build a new interpreter.
        cache_budget: at most this many bytes for the cache (``None``: a quarter of the
            memory free on ``x0``'s device when the interpreter is built).

    Attributes:
        output: ``(1, *out_shape)`` ``f(x0)``.
        residual: ``(1, *out_shape)`` ``r(x0) = li(0)``.
        sources: the bias sources in the order a pass meets them (see
            :mod:`convscope.linear.context`).
        cache_bytes: memory held by the decision cache (0 when it is off).
        cache_off_because: why the cache is off (``None`` when it is on).
        in_shape, out_shape: shapes of one input and one output, without the batch.

    Raises:
        ConvscopeError: a bad or non-finite ``x0``, a bad ``mode``, a model output that
            is not a batched tensor (or that ``output`` cannot pick from), an output
            ``f(x0)`` or residual that is not finite (naming the first module whose
            output was not), an op or a custom ``torch.autograd.Function`` the
            interpreter has no rule for (named with its module; see
            :func:`convscope.linear.register_rule`). The model is left as it came.
    """

    def __init__(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        mode: Mode = "freeze",
        *,
        batch_size: int | Literal["auto"] = 32,
        seed: int = 0,
        cuda_graphs: bool | None = None,
        output: Output = None,
        cache: CacheMode = "auto",
        cache_budget: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        if mode not in _MODES:
            raise ConvscopeError(f"mode must be one of {list(_MODES)}; got {mode!r}")
        if not isinstance(x0, torch.Tensor) or x0.ndim < 2 or x0.shape[0] != 1:
            shape = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise ConvscopeError(
                f"x0 must be one image with a batch dimension (1, C, H, W); got {shape}"
            )
        if not x0.is_floating_point():
            raise ConvscopeError(f"x0 must be a floating-point tensor; got dtype {x0.dtype}")
        if not bool(torch.isfinite(x0).all()):
            raise ConvscopeError(
                f"x0 is not finite: {_nonfinite_count(x0)}; the linear interpreter needs a "
                "finite image to take its decisions from"
            )
        _check_output(output)
        if batch_size != "auto":
            check_batch_size(batch_size)
        check_cache(cache, cache_budget)
        if memory_budget is not None and (
            isinstance(memory_budget, bool)
            or not isinstance(memory_budget, int)
            or memory_budget < 1
        ):
            raise ConvscopeError(
                f"memory_budget must be a number of bytes >= 1 (or None); got {memory_budget!r}"
            )
        self.model = model
        # the module paths, parameters and buffers, once: the interpreter is of this
        # model as it is now
        self._structure = walk(model)
        self.mode: Mode = mode
        self.batch_size = 32 if batch_size == "auto" else batch_size
        self.seed = seed
        self.output_selector: Output = output
        self.x0 = x0.detach()
        self.in_shape: tuple[int, ...] = tuple(x0.shape[1:])
        self.cuda_graphs = _graphs_wanted(cuda_graphs, model, self.x0)
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self._sources: tuple[Source, ...] | None = None
        self._cache: DecisionCache | None = None
        record = None
        if cache == "on" and self.cuda_graphs:
            raise ConvscopeError(
                "cache='on' cannot be honoured with CUDA graphs, which replay passes that "
                "carry x0; pass cuda_graphs=False to use the cache, or cache='auto'"
            )
        if cache != "off" and not self.cuda_graphs:
            budget = default_budget(self.x0.device) if cache_budget is None else cache_budget
            record = DecisionCache(budget)
        self.cache_off_because: str | None = (
            "cache='off'" if cache == "off" else "CUDA graphs replay full passes"
        )
        out, ctx = self._run(torch.zeros_like(self.x0), [ALL_ON], record=record)
        if not bool(torch.isfinite(out).all()):
            self._refuse_nonfinite(out)
        self._sources = tuple(ctx.sources)
        if record is not None:
            record.sources = self._sources
            if record.usable:
                self._cache, self.cache_off_because = record, None
            elif cache == "on":
                raise ConvscopeError(f"cache='on' cannot be honoured: {record.why_not}")
            else:
                self.cache_off_because = record.why_not
        self.output = out[:1].detach()
        self.residual = out[1:2].detach()
        self.out_shape: tuple[int, ...] = tuple(out.shape[1:])
        self.bytes_per_probe = max(1, ctx.tracked_bytes // ctx.rows)
        """What one probe's input-dependent tensors took in the first pass."""
        if batch_size == "auto":
            mem: int = (
                max(1, default_budget(self.x0.device) - self.cache_bytes)
                if memory_budget is None
                else memory_budget
            )
            self.batch_size = max(1, min(_MAX_AUTO_BATCH, mem // self.bytes_per_probe))

    def __repr__(self) -> str:
        return (
            f"LinearInterpreter({type(self.model).__name__}, mode={self.mode!r}, "
            f"in_shape={self.in_shape}, out_shape={self.out_shape}, "
            f"sources={len(self.sources)})"
        )

    @property
    def sources(self) -> tuple[Source, ...]:
        assert self._sources is not None
        return self._sources

    @property
    def cache_bytes(self) -> int:
        return 0 if self._cache is None else self._cache.nbytes

    # -- one pass --------------------------------------------------------------------

    def _run(
        self,
        probes: torch.Tensor,
        codes: Sequence[int] | torch.Tensor,
        *,
        source_hook: SourceHook | None = None,
        grad: bool = False,
        replay: list[bool] | None = None,
        find_nonfinite: bool = False,
        record: DecisionCache | None = None,
        cached: bool = True,
    ) -> tuple[torch.Tensor, PassContext]:
        """One forward pass; returns the output and the pass's context.

        The pass runs on ``[x0, probes]`` (output ``(1 + B, *out)``, ``ctx.offset`` 1),
        or, when the decision cache is on and nothing below asks for ``x0``'s row, on
        the probes alone (output ``(B, *out)``, ``ctx.offset`` 0): the probes' outputs
        are ``out[ctx.offset:]`` either way.

        ``replay``: the decisions of an earlier pass of this kind, given back while a
        CUDA graph is captured (no random state is touched then: graphs are used only
        when no module is in training mode). ``find_nonfinite``: record the first
        module whose output is not finite in ``ctx.nonfinite_at`` (one check per module:
        only to explain an error). ``record``: the cache the first pass fills.
        ``cached=False``: carry ``x0`` even when the cache is on. Source hooks see the
        ``x0`` row, so a pass with one always carries it, and so does a pass of one
        probe (a batch of one sample would make the sample dimension ambiguous).
        """
        # one probe alone would be a batch of 1, where a reshape cannot tell the sample
        # dimension from the others of size 1 (transformers' head splits): x0 rides along
        recall = (
            self._cache
            if cached
            and probes.shape[0] >= 2
            and source_hook is None
            and replay is None
            and not find_nonfinite
            else None
        )
        if recall is not None:
            try:
                return self._pass(probes, codes, grad, recall)
            except ConvscopeError:
                # the same pass with x0 and module paths, for the error with its module
                self._run(probes, codes, grad=grad, cached=False)
                raise
        return self._pass(probes, codes, grad, None, source_hook, replay, find_nonfinite, record)

    def _pass(
        self,
        probes: torch.Tensor,
        codes: Sequence[int] | torch.Tensor,
        grad: bool,
        recall: DecisionCache | None,
        source_hook: SourceHook | None = None,
        replay: list[bool] | None = None,
        find_nonfinite: bool = False,
        record: DecisionCache | None = None,
    ) -> tuple[torch.Tensor, PassContext]:
        codes_t = torch.as_tensor(codes, dtype=torch.long)
        if recall is not None:
            rows = probes.shape[0]
            ctx = PassContext(rows, self.mode, codes_t, recall=recall)
            # a copy, as torch.cat makes one below: a model that works in place on its
            # input must not write into the caller's probes (nor into a leaf of autograd)
            batch = probes.to(self.x0).clone()
        else:
            rows = 1 + probes.shape[0]
            ctx = PassContext(rows, self.mode, codes_t, source_hook, replay, record=record)
            batch = torch.cat([self.x0, probes.to(self.x0)])
        ctx.find_nonfinite = find_nonfinite
        ctx.track(batch)
        seeded = _seeded(self.seed) if replay is None else contextlib.nullcontext()
        with seeded, torch.set_grad_enabled(grad), frozen_pass(self.model, ctx, self._structure):
            # picked inside the pass: a callable's torch ops are interpreted too
            out = _pick(self.model(batch), self.output_selector)
        if not ctx.is_tracked(out):
            raise ConvscopeError("the model's output does not depend on its input")
        if ctx.layout(out) is not None:  # an op moved the samples and nothing moved them back
            raise ConvscopeError(
                f"the model's output {tuple(out.shape)} does not have the batch dimension "
                f"first (the samples are in {ctx.layout(out).describe()}); the linear "
                "interpreter needs outputs shaped (N, ...)"
            )
        if self._sources is not None and tuple(ctx.sources) != self._sources:
            raise ConvscopeError(
                f"this pass met {len(ctx.sources)} bias sources where the first met "
                f"{len(self._sources)}: the model does not compute the same graph for x0 "
                "every time (random or data-dependent control flow?)"
            )
        return out, ctx

    def _own_output(self) -> torch.Tensor:
        """The model's own ``f(x0)``, leaving its buffers and the random state as they were
        (the error path only)."""
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        try:
            with torch.no_grad(), _seeded(self.seed):
                return _pick(self.model(self.x0), self.output_selector)
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)

    def _refuse_nonfinite(self, out: torch.Tensor) -> None:
        """Raise for a first pass whose output is not finite, naming where it went so."""
        try:  # once more, watching every module's output (the error path only)
            _, ctx = self._run(torch.zeros_like(self.x0), [ALL_ON], find_nonfinite=True)
            at = ctx.nonfinite_at
        except ConvscopeError:
            at = None
        if at is None:
            where = ""
        elif at[0]:
            where = f"; the first module whose output is not finite is {at[0]!r} ({at[1]})"
        else:
            where = "; it turns non-finite in the model's own forward"
        if not bool(torch.isfinite(out[:1]).all()):
            if bool(torch.isfinite(self._own_output()).all()):
                raise ConvscopeError(
                    "the frozen system's f(x0) is not finite although the model's output is: "
                    f"{_nonfinite_count(out[:1])}{where}; an infinite constant (a buffer, "
                    "or a literal such as float('-inf')) enters what the interpreter keeps "
                    "linear, and 0 * inf is NaN there; use a large finite value instead "
                    "(torch.finfo(dtype).min)"
                )
            raise ConvscopeError(
                f"the model's output f(x0) is not finite: {_nonfinite_count(out[:1])}{where}"
            )
        raise ConvscopeError(
            "the frozen system at x0 is not finite: in the residual r(x0) = li(0), "
            f"{_nonfinite_count(out[1:])}{where}"
        )

    def _probes(
        self, x1: torch.Tensor, name: str, shape: tuple[int, ...], check: bool = True
    ) -> torch.Tensor:
        if not isinstance(x1, torch.Tensor) or tuple(x1.shape[1:]) != shape or x1.ndim < 1:
            got = tuple(x1.shape) if isinstance(x1, torch.Tensor) else type(x1).__name__
            raise ConvscopeError(
                f"{name} must be a batch (B, {', '.join(map(str, shape))}); got {got}"
            )
        x1 = x1.detach().to(self.x0)
        # one reduction per call, outside any CUDA graph; the interpreter's own probes
        # (columns, rows, SVD) are finite by construction and skip it
        if check and not bool(torch.isfinite(x1).all()):
            raise ConvscopeError(
                f"{name} is not finite: {_nonfinite_count(x1)}; the linear interpreter "
                "needs finite probes"
            )
        return x1

    def _forward(
        self, x1: torch.Tensor, code: int, batch_size: int | None, check: bool = True
    ) -> torch.Tensor:
        x1 = self._probes(x1, "x1", self.in_shape, check)
        size = check_batch_size(self.batch_size if batch_size is None else batch_size)
        outs = []
        for sl in _chunks(x1.shape[0], size):
            if self.cuda_graphs:
                outs.append(self._replay(("forward", sl.stop - sl.start, code), x1[sl]))
                continue
            out, ctx = self._run(x1[sl], [code] * (sl.stop - sl.start))
            outs.append(out[ctx.offset :])
        if not outs:
            return self.output.new_zeros((0, *self.out_shape))
        return torch.cat(outs)

    # -- CUDA graphs -----------------------------------------------------------------

    def _replay(self, key: tuple[Any, ...], data: torch.Tensor) -> torch.Tensor:
        """Run the pass ``key`` (``("forward", B, code)`` or ``("transpose", B)``) on
        ``data`` from its CUDA graph, capturing it first if needed."""
        g = self._graphs.get(key)
        if g is None:
            g = self._capture(key, data)
            self._graphs[key] = g
            while len(self._graphs) > _MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        (g.inputs if g.weights is None else g.weights).copy_(data)
        g.graph.replay()
        return g.output.clone()

    def _capture(self, key: tuple[Any, ...], data: torch.Tensor) -> _Graph:
        kind, b = key[0], key[1]
        x1 = data.clone() if kind == "forward" else torch.zeros((b, *self.in_shape)).to(self.x0)
        y2 = data.clone() if kind == "transpose" else None
        codes = [key[2]] * b if kind == "forward" else [ALL_OFF] * b

        def one_pass(replay: list[bool] | None) -> tuple[torch.Tensor, list[bool]]:
            if y2 is None:
                out, ctx = self._run(x1, codes, replay=replay, cached=False)
                return out[1:], ctx.decisions
            x1.requires_grad_(True)
            out, ctx = self._run(x1, codes, grad=True, replay=replay, cached=False)
            return _grad_or_zero(out[1:], x1, y2), ctx.decisions

        device = self.x0.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up off the main stream, as capture wants
            _, decisions = one_pass(None)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output, _ = one_pass(decisions)
        return _Graph(graph, x1, y2, output)

    # -- the affine map and its parts ------------------------------------------------------

    def __call__(self, x1: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """``F x1 + r`` for a batch of inputs.

        Args:
            x1: ``(B, *in_shape)``.
            batch_size: probes per pass (default: the interpreter's).

        Returns:
            ``(B, *out_shape)``; ``li(x0) == f(x0)``.
        """
        return self._forward(x1, ALL_ON, batch_size)

    def linear(self, x1: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """``F x1``, the linear part alone (every bias source off, not ``li(x1) - r``).

        Args:
            x1: ``(B, *in_shape)``.
            batch_size: probes per pass.

        Returns:
            ``(B, *out_shape)``.
        """
        return self._forward(x1, ALL_OFF, batch_size)

    def transpose(self, y2: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """``F^T y2`` by autograd through the frozen pass (seed 001 eq. 6).

        Args:
            y2: ``(B, *out_shape)``.
            batch_size: probes per pass.

        Returns:
            ``(B, *in_shape)``.
        """
        return self._transpose(y2, batch_size)

    def _transpose(
        self, y2: torch.Tensor, batch_size: int | None, check: bool = True
    ) -> torch.Tensor:
        y2 = self._probes(y2, "y2", self.out_shape, check)
        size = check_batch_size(self.batch_size if batch_size is None else batch_size)
        grads = []
        for sl in _chunks(y2.shape[0], size):
            b = sl.stop - sl.start
            if self.cuda_graphs:
                grads.append(self._replay(("transpose", b), y2[sl]))
                continue
            x1 = torch.zeros((b, *self.in_shape), dtype=self.x0.dtype, device=self.x0.device)
            x1.requires_grad_(True)
            out, ctx = self._run(x1, [ALL_OFF] * b, grad=True)
            grads.append(_grad_or_zero(out[ctx.offset :], x1, y2[sl]))
        if not grads:
            return self.x0.new_zeros((0, *self.in_shape))
        return torch.cat(grads)

    def columns(
        self, idx: int | Sequence[int] | torch.Tensor, *, batch_size: int | None = None
    ) -> torch.Tensor:
        """Columns of ``F`` (projective filters): the response to one input value.

        Args:
            idx: flat indices into one input (``0 <= i < prod(in_shape)``).
            batch_size: probes per pass.

        Returns:
            ``(len(idx), *out_shape)``.
        """
        flat = _indices(idx, math.prod(self.in_shape), "input")
        probes = _impulses(flat, self.in_shape, self.x0)
        return self._forward(probes, ALL_OFF, batch_size, check=False)

    def rows(
        self, idx: int | Sequence[int] | torch.Tensor, *, batch_size: int | None = None
    ) -> torch.Tensor:
        """Rows of ``F`` (receptive filters): the inputs one output value reads.

        Args:
            idx: flat indices into one output (``0 <= i < prod(out_shape)``).
            batch_size: probes per pass.

        Returns:
            ``(len(idx), *in_shape)``.
        """
        flat = _indices(idx, math.prod(self.out_shape), "output")
        e = _impulses(flat, self.out_shape, self.x0)
        return self._transpose(e, batch_size, check=False)

    def svd(
        self,
        k: int = 5,
        steps: int = 100,
        momentum: float = 0.0,
        *,
        method: str = "power",
        **options: Any,
    ) -> SVDResult:
        """The ``k`` largest singular triplets of ``F``, never materializing it.

        ``method="power"`` is the paper's Algorithm 1 with deflation
        (:func:`convscope.linear.svd.power_svd`); ``"randomized"`` the block subspace
        iteration (:func:`convscope.linear.svd.randomized_svd`, which ignores
        ``steps`` and ``momentum``; pass ``power_iters``/``oversample``).

        Returns:
            ``SVDResult`` unpacking as ``S`` ``(k,)``, ``U`` ``(k, *out_shape)``,
            ``V`` ``(k, *in_shape)``.
        """
        from convscope.linear import svd as svd_module

        options.setdefault("device", self.x0.device)

        # the SVD's own iterates: it checks what comes back for finiteness itself
        def linear(x: torch.Tensor) -> torch.Tensor:
            return self._forward(x, ALL_OFF, None, check=False)

        def transpose(y: torch.Tensor) -> torch.Tensor:
            return self._transpose(y, None, check=False)

        if method == "power":
            return svd_module.power_svd(
                linear,
                transpose,
                self.in_shape,
                self.out_shape,
                k,
                steps,
                momentum,
                **options,
            )
        if method == "randomized":
            return svd_module.randomized_svd(
                linear, transpose, self.in_shape, self.out_shape, k, **options
            )
        raise ConvscopeError(f"unknown SVD method {method!r}; choose 'power' or 'randomized'")

    # -- classification analyses (convscope.linear.contributions) ----------------------------

    def contributions(
        self, target: int | None = None, *, batch_size: int | None = None
    ) -> Contributions:
        """``"input"`` = ``F x0`` and one entry per bias source; they sum to ``f(x0)``.

        A mapping that also knows its target, score, layer groups and shares; see
        :func:`convscope.linear.contributions.contributions`.
        """
        return contributions(self, target, batch_size=batch_size)

    def residual_share(self, target: int | None = None) -> float:
        """``r_c / y_c`` for output ``target`` (default: the largest output)."""
        return residual_share(self, target)

    def pixel_discussion(
        self,
        targets: int | Sequence[int] | torch.Tensor,
        *,
        normalize: bool = True,
        batch_size: int | None = None,
        channels: bool = False,
    ) -> torch.Tensor:
        """Pixel-wise contributions to each target score, ``(T, H, W)`` (``(T, C, H, W)``
        with ``channels=True``).

        See :func:`convscope.linear.contributions.pixel_discussion`.
        """
        return pixel_discussion(
            self, targets, normalize=normalize, batch_size=batch_size, channels=channels
        )

    def pixel_votes(
        self,
        targets: int | Sequence[int] | torch.Tensor | None = None,
        *,
        top: int = 10,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """``(H, W)`` the target each pixel's discussion is largest for.

        See :func:`convscope.linear.contributions.pixel_votes`.
        """
        return pixel_votes(self, targets, top=top, batch_size=batch_size)

    def votes(
        self,
        targets: int | Sequence[int] | torch.Tensor | None = None,
        *,
        top: int = 10,
        batch_size: int | None = None,
    ) -> PixelVotes:
        """Pixel votes with the discussions and scores behind them.

        See :func:`convscope.linear.contributions.votes`.
        """
        return votes(self, targets, top=top, batch_size=batch_size)


def _check_output(output: Any) -> None:
    if output is None or callable(output) or isinstance(output, str):
        return
    if isinstance(output, int) and not isinstance(output, bool):
        return
    raise ConvscopeError(
        "output must be a key (str), an index (int) or a callable that picks the tensor "
        f"from the model's output; got {output!r}"
    )


def _a(value: Any) -> str:
    """``"a tuple"``, ``"an OrderedDict"``: the type of ``value`` with its article."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _describe(out: Any) -> str:
    """What a model output that is not one tensor holds, for an error message."""
    if isinstance(out, Mapping):
        return f"{_a(out)} with keys {list(out.keys())}"
    if isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
        return f"{_a(out)} of {len(out)} values"
    if dataclasses.is_dataclass(out):
        return f"{_a(out)} with fields {[f.name for f in dataclasses.fields(out)]}"
    if hasattr(out, "_fields"):  # a named tuple
        return f"{_a(out)} with fields {list(out._fields)}"
    return _a(out)


def _pick(out: Any, output: Output) -> torch.Tensor:
    """The tensor ``output`` selects from the model's output ``out``."""
    if output is None:
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping):
            hint = f"the key of the tensor to interpret (e.g. output={next(iter(out), 'out')!r})"
        elif isinstance(out, (tuple, list)) and not hasattr(out, "_fields"):
            hint = f"its index (0 to {len(out) - 1})" if len(out) else "a callable"
        else:
            hint = "the attribute name of the tensor"
        raise ConvscopeError(
            f"the model returns {_describe(out)}, not one tensor; pass output= with {hint}, "
            "or a callable that picks the tensor from the output"
        )
    if callable(output):
        picked = output(out)
        what = f"output={getattr(output, '__name__', 'callable')}"
    elif isinstance(out, torch.Tensor):
        raise ConvscopeError(
            f"output={output!r} was given but the model returns one tensor; leave output "
            "out (or pass a callable to pick part of it)"
        )
    elif isinstance(out, Mapping):
        if output not in out:
            raise ConvscopeError(
                f"output={output!r} is not in the model's output, {_describe(out)}"
            )
        picked, what = out[output], f"output={output!r}"
    elif isinstance(output, int) and isinstance(out, (tuple, list)):
        if not -len(out) <= output < len(out):
            raise ConvscopeError(
                f"output={output} is out of range for the model's output, {_describe(out)}"
            )
        picked, what = out[output], f"output={output}"
    elif isinstance(output, str) and hasattr(out, output):
        picked, what = getattr(out, output), f"output={output!r}"
    else:
        raise ConvscopeError(
            f"output={output!r} cannot pick a tensor from the model's output, {_describe(out)}"
        )
    if not isinstance(picked, torch.Tensor):
        raise ConvscopeError(f"{what} picked {_a(picked)}, not a tensor")
    return picked


def _graphs_wanted(wanted: bool | None, model: nn.Module, x0: torch.Tensor) -> bool:
    if wanted is not None and not isinstance(wanted, bool):
        raise ConvscopeError(f"cuda_graphs must be True, False or None; got {wanted!r}")
    if wanted is False:
        return False
    why = None
    if x0.device.type != "cuda":
        why = f"x0 is on {x0.device.type}, not on a CUDA device"
    elif any(m.training for m in model.modules()):
        why = "the model is in training mode (call model.eval() first)"
    if why is None:
        return True
    if wanted:
        raise ConvscopeError(f"cuda_graphs=True cannot be honoured: {why}")
    return False


def _grad_or_zero(out: torch.Tensor, x1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    if not out.requires_grad:  # F is zero: the output ignores the probes
        return torch.zeros_like(x1)
    (g,) = torch.autograd.grad(out, x1, grad_outputs=weights, allow_unused=True)
    return torch.zeros_like(x1) if g is None else g.detach()


def _impulses(flat: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``(len(flat), *shape)`` unit vectors, made where ``like`` lives (no host copy)."""
    e = torch.zeros((len(flat), math.prod(shape)), dtype=like.dtype, device=like.device)
    e[torch.arange(len(flat), device=like.device), flat.to(like.device)] = 1
    return e.view(-1, *shape)


def _indices(idx: int | Sequence[int] | torch.Tensor, n: int, what: str) -> torch.Tensor:
    flat = torch.as_tensor(idx).reshape(-1)
    if flat.is_floating_point() or flat.dtype == torch.bool:
        raise ConvscopeError(f"{what} indices must be integers; got dtype {flat.dtype}")
    flat = flat.long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= n):
        bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
        raise ConvscopeError(f"{what} index {bad} is out of range for {n} {what} values")
    return flat
