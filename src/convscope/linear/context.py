"""State of one frozen forward pass: which tensors depend on the input, where we are
in the model, and which additive constants (bias sources) each probe sees.

A pass runs the model on the batch ``[x0, p_1 ... p_B]`` (``rows = B + 1``). Row 0 is
the image the non-linear decisions are taken from; rows ``1 .. B`` are probes that go
through the frozen, affine system. The rules in :mod:`convscope.linear.rules` and
:mod:`convscope.linear.affine` read and write this state; the interception itself
lives in :mod:`convscope.linear.interpreter`.

Input dependence. A tensor is *tracked* when its values depend on the batch: the
batch itself and every output of an op that had a tracked argument. Tracking is by
identity (a dictionary from ``id`` to a weak reference, so a freed tensor whose id is
reused is not mistaken for a tracked one), not by shape: a parameter that happens to
have ``rows`` entries in its first dimension is not mistaken for a batch. Ops on
untracked tensors only (parameters, buffers, constants) run untouched. Where the
sample index is in each tracked tensor (first, or moved and merged by transformers'
reshapes) is its *layout*, computed by every op (:mod:`convscope.linear.batchdim`);
the model must treat the samples of a batch independently (no train-mode batch
statistics over the batch, which the rules replace by ``x0``'s statistics; ops that
mix the samples are refused).

Bias sources. Every additive constant the frozen system adds to a tracked tensor is a
*source*, numbered in the order the pass meets them: conv/linear biases, batch-norm
shifts, constants added by ``x + c``, and the ``c(x0)`` of frozen units. Each probe row
has a switch: all sources on (``li(x1)``), all off (``li.linear(x1)``, which is then
``F x1`` exactly, with no subtraction of the residual), or one source only
(``contributions()``). Row 0 always sees every source, so it computes ``f(x0)``.

Probes alone. Once a first pass has recorded what the rules read from ``x0``
(:mod:`convscope.linear.cache`), later passes may run on ``[p_1 ... p_B]`` only
(``rows = B``, :attr:`PassContext.offset` 0): :meth:`PassContext.frozen` then gives the
recorded values back instead of computing them from a row 0 that is not there.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.overrides import resolve_name

from convscope.errors import ConvscopeError
from convscope.linear.cache import DecisionCache, Recall

__all__ = [
    "ALL_OFF",
    "ALL_ON",
    "Mode",
    "PassContext",
    "Source",
    "SourceHook",
    "check_batch_size",
    "op_name",
]

Mode = Literal["freeze", "taylor"]

ALL_ON = -1
"""Switch code of a probe that sees every bias source (``F x1 + r``)."""
ALL_OFF = -2
"""Switch code of a probe that sees no bias source (``F x1``)."""

SourceHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``hook(index, lin, const) -> out``: replaces how a pass adds source ``index``."""


@dataclass(frozen=True)
class Source:
    """One additive constant of the frozen system.

    Attributes:
        name: unique key, the module path where the constant is added (``"(root)"``
            for the model's own ``forward``), with ``#2``, ``#3`` ... when the same
            path adds more than one constant in a pass.
        module: the module path (``""`` for the root).
        op: what adds it, e.g. ``"conv2d bias"``, ``"batch_norm shift"``, ``"silu c(x0)"``.
    """

    name: str
    module: str
    op: str


def op_name(func: Callable[..., Any]) -> str:
    """A readable name for a torch function or method (``torch.sin``, ``torch.Tensor.abs``)."""
    try:
        return resolve_name(func) or getattr(func, "__qualname__", repr(func))
    except Exception:  # resolve_name walks torch's namespaces and can trip on odd callables
        return getattr(func, "__qualname__", repr(func))


def check_batch_size(size: int) -> int:
    """``size`` if it is a valid number of probes per pass, else a ConvscopeError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConvscopeError(f"batch_size must be an integer >= 1; got {size!r}")
    return size


class PassContext:
    """Per-pass state shared by the interceptor and the rules.

    Args:
        rows: ``B + 1``, the leading size of every tracked tensor.
        mode: ``"freeze"`` or ``"taylor"``.
        codes: ``(B,)`` switch of each probe row: :data:`ALL_ON`, :data:`ALL_OFF` or a
            source index ``s >= 0`` (only that source on).
        source_hook: when given, every source goes through it instead of the mask.
        replay: the decisions (see :meth:`decide`) of an earlier pass of the same
            kind, to be given back in order instead of read from the device; used
            while a CUDA graph is captured, where reading a device value would
            synchronize (and is refused).
        record: a cache this pass records what the rules read from ``x0`` into.
        recall: a cache recorded by an earlier pass: this pass has no ``x0`` row
            (``rows`` is the number of probes) and every :meth:`frozen` value and
            branch comes from it.
    """

    def __init__(
        self,
        rows: int,
        mode: Mode,
        codes: torch.Tensor,
        source_hook: SourceHook | None = None,
        replay: list[bool] | None = None,
        *,
        record: DecisionCache | None = None,
        recall: DecisionCache | None = None,
    ) -> None:
        if recall is not None:
            if record is not None or replay is not None:
                raise ConvscopeError("internal: a pass recalls a cache or records one, not both")
            replay = recall.decisions
        self.rows = rows
        self.offset = 0 if recall is not None else 1
        """Where the probes start: 1 after the ``x0`` row, 0 in a probes-only pass."""
        self.mode: Mode = mode
        self.codes = codes
        self.source_hook = source_hook
        self.all_on = bool((codes == ALL_ON).all())
        self.all_off = bool((codes == ALL_OFF).all())
        self.sources: list[Source] = []
        self.stack: list[str] = []
        self._tracked: dict[int, weakref.ref[torch.Tensor]] = {}
        self._gates: dict[int, weakref.ref[torch.Tensor]] = {}
        self._layouts: dict[int, Any] = {}  # where the sample index is, when not first
        self._name_counts: dict[str, int] = {}
        self.decisions: list[bool] = []
        self.tracked_bytes = 0
        """Bytes of every input-dependent tensor the pass made (views counted too): an
        upper estimate of what a pass that keeps them for its backward holds."""
        self._replay = replay
        self._record = record
        self._recall = Recall(recall) if recall is not None else None
        self._frozen_depth = 0
        # set by the interpreter when f(x0) came out non-finite, to find where
        self.find_nonfinite = False
        self.nonfinite_at: tuple[str, str] | None = None  # (module path, type name)

    # -- decisions read from tensor values ------------------------------------------

    def decide(self, question: Callable[[], Any]) -> bool:
        """``bool(question())``, a branch taken on tensor values that are the same in
        every pass (``x0``'s row, parameters, constants), recorded in order.

        With ``replay`` the recorded answer is given back without asking, so a pass
        under CUDA graph capture takes the same branches without reading the device.
        """
        if self._replay is not None:
            i = len(self.decisions)
            if i >= len(self._replay):
                raise ConvscopeError(
                    "this pass took more data-dependent branches than the pass it "
                    "replays: the model does not compute the same graph every time"
                )
            answer = self._replay[i]
        else:
            answer = bool(question())
        self.decisions.append(answer)
        if self._record is not None and self._frozen_depth == 0:
            self._record.decisions.append(answer)
        return answer

    def frozen(self, compute: Callable[[], Any]) -> Any:
        """What a rule reads from ``x0`` (a mask, indices, statistics, a ratio, a gate,
        a constant ``c(x0)``): ``compute()``, which reads row 0 only, in a pass that has
        an ``x0`` row (and recorded when the pass records); the recorded value, in the
        order the first pass asked, in a probes-only pass (``compute`` is not called).
        """
        if self._recall is not None:
            return self._recall(compute)
        self._frozen_depth += 1
        try:
            value = compute()
        finally:
            self._frozen_depth -= 1
        if self._record is not None:
            value = self._record.keep(value)
        return value

    def uncached(self, why: str) -> None:
        """Say that the op running now reads ``x0`` without :meth:`frozen` (a user
        rule): a recording pass stops recording, since a probes-only pass could not
        give that op its ``x0``."""
        if self._recall is not None:
            raise ConvscopeError(
                f"internal: {why} ran in a probes-only pass but not in the pass that "
                "recorded x0's decisions"
            )
        if self._record is not None:
            self._record.stop(why)

    @staticmethod
    def constant(value: Any, like: torch.Tensor) -> torch.Tensor:
        """``value`` as a tensor of ``like``'s dtype and device, without a host-to-device
        copy for a Python number or a 0-d CPU tensor (which CUDA graph capture refuses)."""
        if isinstance(value, torch.Tensor) and not (value.ndim == 0 and value.device.type == "cpu"):
            return value.detach().to(dtype=like.dtype, device=like.device)
        number = value.item() if isinstance(value, torch.Tensor) else value
        return torch.full((), number, dtype=like.dtype, device=like.device)

    # -- where we are -------------------------------------------------------------

    @property
    def path(self) -> str:
        """Dotted path of the innermost module running now (``""``: the root)."""
        return self.stack[-1] if self.stack else ""

    def where(self) -> str:
        return f"module {self.path!r}" if self.path else "the model's own forward"

    # -- input dependence ---------------------------------------------------------

    def is_tracked(self, t: object) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        ref = self._tracked.get(id(t))
        return ref is not None and ref() is t

    def any_tracked(self, args: Iterable[Any], kwargs: dict[str, Any]) -> bool:
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor):
                if self.is_tracked(a):
                    return True
            elif isinstance(a, (list, tuple)):
                for b in a:
                    if isinstance(b, torch.Tensor) and self.is_tracked(b):
                        return True
        return False

    def track(self, out: Any, func: Callable[..., Any] | None = None, layout: Any = None) -> Any:
        """Mark every tensor in ``out`` as input dependent and check its batch size.

        ``layout``: where the sample index is when it is not the leading dimension, a
        :class:`convscope.linear.batchdim.Layout` checked by whoever computed it."""
        if isinstance(out, torch.Tensor):
            if layout is not None:
                self._layouts[id(out)] = layout
            elif out.ndim == 0 or out.shape[0] != self.rows:
                what = op_name(func) if func is not None else "an op"
                size = "a scalar" if out.ndim == 0 else f"leading size {out.shape[0]}"
                raise ConvscopeError(
                    f"{what} in {self.where()} moved or merged the batch dimension "
                    f"({size} instead of {self.rows}); the linear interpreter needs every "
                    "input-dependent tensor to keep the sample index first"
                )
            else:
                self._layouts.pop(id(out), None)
            self._tracked[id(out)] = weakref.ref(out)
            self.tracked_bytes += out.numel() * out.element_size()
        elif isinstance(out, (list, tuple)):
            for o in out:
                self.track(o, func, layout)
        return out

    def layout(self, t: object) -> Any:
        """The layout ``track`` was given for ``t`` (``None``: the sample index is first)."""
        return self._layouts.get(id(t)) if self.is_tracked(t) else None

    def mark_gate(self, t: torch.Tensor) -> torch.Tensor:
        """Remember ``t`` as the output of a gating unit (sigmoid-like)."""
        self._gates[id(t)] = weakref.ref(t)
        return t

    def is_gate(self, t: torch.Tensor) -> bool:
        ref = self._gates.get(id(t))
        return ref is not None and ref() is t

    # -- bias sources -------------------------------------------------------------

    @property
    def plain(self) -> bool:
        """Every probe sees every source and nobody listens: add constants as usual."""
        return self.all_on and self.source_hook is None

    @property
    def silent(self) -> bool:
        """No row sees any source (``li.linear``, columns, rows on the probes alone):
        constants can be left out instead of masked to zero."""
        return self.all_off and not self.offset and self.source_hook is None

    def new_source(self, op: str) -> int:
        """Register the next source met in this pass and return its index.

        A probes-only pass runs without module-path hooks (they cost a slow module call
        each): its sources are the recorded pass's, in order."""
        if self._recall is not None:
            known = self._recall.cache.sources
            i = len(self.sources)
            if i >= len(known):
                raise ConvscopeError(
                    f"this pass met more than the {len(known)} bias sources of the first: "
                    "the model does not compute the same graph for x0 every time (random "
                    "or data-dependent control flow?)"
                )
            self.sources.append(known[i])
            return i
        base = self.path or "(root)"
        n = self._name_counts.get(base, 0) + 1
        self._name_counts[base] = n
        name = base if n == 1 else f"{base}#{n}"
        self.sources.append(Source(name=name, module=self.path, op=op))
        return len(self.sources) - 1

    def mask(self, index: int, like: torch.Tensor) -> torch.Tensor | None:
        """``(rows, 1, ..., 1)`` 0/1 mask of the rows that see source ``index``
        (``None``: all of them); the ``x0`` row, when there is one, sees every source."""
        if self.all_on:
            return None
        if self.all_off:
            on = torch.zeros(self.rows - self.offset, dtype=torch.bool, device=like.device)
        else:
            if self.codes.device != like.device:
                self.codes = self.codes.to(like.device)  # once per pass, not per source
            on = (self.codes == ALL_ON) | (self.codes == index)
        if self.offset:
            on = torch.cat([torch.ones(1, dtype=torch.bool, device=like.device), on])
        return on.to(like.dtype).view(self.rows, *([1] * (like.ndim - 1)))

    def add_constant(self, lin: torch.Tensor, const: Any, op: str) -> torch.Tensor:
        """``lin + const`` with ``const`` a new source: row 0 and the rows whose switch
        lets it through get it, the others do not.

        Args:
            lin: ``(rows, ...)`` the linear part, already computed on every row.
            const: a tensor broadcastable to ``lin`` (without the batch dimension or
                with a leading 1 or ``rows``) or a number.
            op: description of the source.

        Returns:
            ``(rows, ...)``.
        """
        index = self.new_source(op)
        c = self.constant(const, lin)
        if self.source_hook is not None:
            return self.source_hook(index, lin, c)
        m = self.mask(index, lin)
        return lin + c if m is None else lin + m * c
