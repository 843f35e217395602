"""The baseline seed 001 improves on: Deep Filter Visualization (DfV, its reference [28]).

DfV records what every non-linear unit did for ``x0`` in one pass and stores it; each
later query then runs the probes alone through the network with every unit replaced by
its stored decision. Seed 001's LinearScope instead carries ``x0`` in the same batch as
the probes and stores nothing. This module is the benchmark's own implementation of the
DfV scheme for the units of the benchmarked models, so both can be timed side by side:

- ReLU (``torch.relu``, ``F.relu``, in place or not): the mask ``x0 > 0``, kept as bool;
- SiLU: the ratio ``silu(x0) / x0`` (the seed's freeze rule; the slope 1/2 at 0);
- sigmoid: its output for ``x0``, given back for the probes (in the benchmarked models
  the only sigmoids are squeeze-excitation gates, which the freeze rule holds at their
  ``x0`` value);
- 2-d max-pooling: the indices of the positions ``x0`` selected.

Every other op runs as usual on the probes (convolutions, eval batch norm, average
pools, additions), so a query returns ``F x1 + r`` like ``LinearInterpreter(x1)``.
Decisions are stored on the GPU (``store="device"``) or in pinned CPU memory copied back
unit by unit during each query (``store="cpu"``), the two first rows of the seed's
Table 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

T = torch.Tensor

_RELU: dict[Callable[..., Any], bool | None] = {
    torch.relu: False,
    T.relu: False,
    torch.relu_: True,
    T.relu_: True,
    F.relu: None,  # inplace keyword
}
_SILU = {F.silu}
_SIGMOID = {torch.sigmoid, T.sigmoid, F.sigmoid}
_POOL = {f for f in (F.max_pool2d, getattr(F, "_max_pool2d", None), torch.max_pool2d) if f}


def _inplace(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    spec = _RELU[func]
    if spec is None:
        return bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
    return spec


class _Mode(TorchFunctionMode):
    def __init__(self, dfv: DfV, record: bool) -> None:
        super().__init__()
        self.dfv, self.record, self.i = dfv, record, 0

    def _next(self) -> T:
        stored = self.dfv.stored[self.i]
        self.i += 1
        return stored.to(self.dfv.device, non_blocking=True)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _RELU:
            x = args[0]
            if self.record:
                self.dfv.keep(x > 0)
                return func(*args, **kwargs)
            mask = self._next()
            return x.mul_(mask) if _inplace(func, args, kwargs) else x * mask
        if func in _SILU:
            x = args[0]
            if self.record:
                safe = torch.where(x == 0, torch.ones_like(x), x)
                self.dfv.keep(torch.where(x == 0, torch.full_like(x, 0.5), F.silu(x) / safe))
                return func(*args, **kwargs)
            return x * self._next()
        if func in _SIGMOID:
            if self.record:
                out = func(*args, **kwargs)
                self.dfv.keep(out)
                return out
            return self._next().expand_as(args[0])
        if func in _POOL:
            x = args[0]
            params = args[1:6]
            kw = {k: v for k, v in kwargs.items() if k != "return_indices"}
            if self.record:
                out, idx = F.max_pool2d_with_indices(x, *params, **{**kw, "return_indices": True})
                self.dfv.keep(idx)
                return out
            idx = self._next()
            n, c = x.shape[:2]
            flat = idx.reshape(1, c, -1).expand(n, -1, -1)
            return x.reshape(n, c, -1).gather(2, flat).reshape(n, *idx.shape[1:])
        return func(*args, **kwargs)


class DfV:
    """Record the decisions of ``model`` at ``x0``, then answer ``F x1 + r`` by replay.

    Args:
        model: an eval-mode network made of the units listed in the module docstring.
        x0: ``(1, C, H, W)``.
        store: ``"device"`` (decisions stay where ``x0`` is) or ``"cpu"`` (pinned host
            memory, copied back for every query).
    """

    def __init__(self, model: nn.Module, x0: T, store: Literal["device", "cpu"] = "device") -> None:
        self.model, self.device, self.store = model, x0.device, store
        self.in_shape = tuple(x0.shape[1:])
        self.stored: list[T] = []
        with torch.no_grad(), _Mode(self, record=True):
            model(x0)
        self.residual = self(torch.zeros_like(x0))

    def keep(self, t: T) -> None:
        t = t.detach()
        if self.store == "cpu":
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
            host.copy_(t)
            t = host
        self.stored.append(t)

    @property
    def nbytes(self) -> int:
        """Bytes of stored decisions."""
        return sum(t.numel() * t.element_size() for t in self.stored)

    def __call__(self, x1: T) -> T:
        with torch.no_grad():
            mode = _Mode(self, record=False)
            with mode:
                out = self.model(x1)
        if mode.i != len(self.stored):
            raise RuntimeError(f"replay used {mode.i} of {len(self.stored)} stored decisions")
        return out

    def columns(self, n: int) -> T:
        """The first ``n`` columns of ``F``: impulse probes through the replay, minus ``r``."""
        basis = torch.zeros(n, math.prod(self.in_shape), device=self.device)
        basis[torch.arange(n), torch.arange(n)] = 1
        return self(basis.view(n, *self.in_shape)) - self.residual
