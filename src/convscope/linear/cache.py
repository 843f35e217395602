"""x0's decisions kept from one pass, so that later passes run the probes alone.

Every rule reads what it needs from ``x0`` (a ReLU's mask, a max-pool's selected
positions, a norm's statistics, a smooth unit's ratio or slope, a gate's value, the
constant ``c(x0)``) through :meth:`convscope.linear.context.PassContext.frozen`. In a
pass that carries ``x0`` as row 0 the rule computes it there; the interpreter's first
pass also *records* each value in a :class:`DecisionCache`, in the order the pass meets
them. A later pass of the same model then runs on the probes alone (no ``x0`` row, no
decision recomputed) and every ``frozen`` call gives back the next recorded value:
seed 001's store-the-decisions scheme (DfV), inside the same rules.

The cache is kept only while it fits its memory budget; past the budget, or when a rule
that does not read ``x0`` through ``frozen`` runs (a user rule from
:func:`convscope.linear.register_rule`), recording stops, what was kept is dropped and
every pass carries ``x0`` again (the LinearScope). :attr:`DecisionCache.why_not` says
which. Masks are kept as ``bool``, indices as ``int64``, expanded views of one row as
that row only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import torch

from convscope.errors import ConvscopeError

__all__ = ["CacheMode", "DecisionCache", "check_cache", "default_budget"]

CacheMode = Literal["auto", "on", "off"]
_MODES = ("auto", "on", "off")


def check_cache(cache: Any, budget: Any) -> None:
    """Refuse a bad ``cache`` / ``cache_budget`` pair with one line naming it."""
    if cache not in _MODES:
        raise ConvscopeError(f"cache must be one of {list(_MODES)}; got {cache!r}")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < 0
    ):
        raise ConvscopeError(
            f"cache_budget must be a number of bytes >= 0 (or None for the default); got {budget!r}"
        )


def default_budget(device: torch.device) -> int:
    """A quarter of the memory free now on ``device`` (CUDA: the device's own; otherwise
    the machine's available RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free) // 4
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return 1 << 30


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.untyped_storage().nbytes()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _own(value: Any) -> Any:
    """``value`` detached, as its own storage when it is a small view of a large one
    (a row sliced out of the batch would keep the whole batch alive)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.untyped_storage().nbytes() > t.numel() * t.element_size():
            t = t.clone()
        return t
    if isinstance(value, tuple):
        return tuple(_own(v) for v in value)
    if isinstance(value, list):
        return [_own(v) for v in value]
    return value


class DecisionCache:
    """What one pass read from ``x0``, in order, and the branches it took.

    Args:
        budget: at most this many bytes are kept; the first value past it stops the
            recording (:attr:`why_not`).

    Attributes:
        values: the recorded values, in the order the rules asked for them.
        decisions: the answers of :meth:`PassContext.decide` outside any ``frozen``
            computation (the branches a probes-only pass takes without asking).
        nbytes: the memory the values hold.
        why_not: ``None`` while the cache is usable, else why it is not.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.values: list[Any] = []
        self.decisions: list[bool] = []
        self.sources: tuple[Any, ...] = ()  # the recorded pass's bias sources
        self.nbytes = 0
        self.why_not: str | None = None

    @property
    def usable(self) -> bool:
        return self.why_not is None

    def keep(self, value: Any) -> Any:
        """Record ``value`` (detached; as its own storage when it was a view) and return it."""
        value = _own(value)
        if self.why_not is None:
            size = _nbytes(value)
            if self.nbytes + size > self.budget:
                self.stop(
                    f"x0's decisions need more than the cache budget of {self.budget:,} bytes"
                )
            else:
                self.values.append(value)
                self.nbytes += size
        return value

    def stop(self, why: str) -> None:
        """Stop recording and drop what was kept: passes will carry ``x0`` again."""
        if self.why_not is None:
            self.why_not = why
        self.values.clear()
        self.decisions.clear()
        self.nbytes = 0


class Recall:
    """Gives a probes-only pass the recorded values back, in order."""

    def __init__(self, cache: DecisionCache) -> None:
        self.cache = cache
        self.next = 0

    def __call__(self, compute: Callable[[], Any]) -> Any:
        values = self.cache.values
        if self.next >= len(values):
            raise ConvscopeError(
                "this pass read more of x0's decisions than the pass they were recorded "
                "in: the model does not compute the same graph every time; build the "
                "interpreter with cache='off'"
            )
        value = values[self.next]
        self.next += 1
        return value
