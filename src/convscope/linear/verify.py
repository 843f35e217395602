"""Check the interpreter on a model against autograd: is the frozen system what it claims?

:func:`verify` freezes ``model`` at ``x0`` and measures, in float64 where the model allows:

- ``x0_error``: how far the interpreter's ``f(x0)`` is from the model's own output;
- ``conservation_error``: how far the contributions (input part plus every bias source)
  are from summing to ``f(x0)`` (seed 001, Theorem 1);
- ``jvp_error`` (``mode="taylor"``): ``li.linear(x1 - x0)`` against ``torch.func.jvp`` of
  the model at ``x0`` (the linear part compared on its own: a difference of two outputs
  would lose digits when ``f(x0)`` dominates), and ``vjp_error``: ``li.transpose(y)``
  against ``torch.func.vjp``;
- ``signal``: ``|J dx| / |f(x0)|``, so a check that passes because the signal vanished
  (untrained batch-norm statistics of 0 and 1 do that) is seen for what it is.

:func:`calibrate_batch_norm` gives an untrained model what makes these checks mean
something: random affine values and batch-norm statistics set from real images by
cumulative averaging (``momentum=None``; a couple of passes at the default 0.1 still
shrink the signal block by block).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = ["Verification", "calibrate_batch_norm", "verify"]


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor, *, seed: int = 0) -> nn.Module:
    """Random affine values and biases, batch-norm statistics from ``x``; then eval mode.

    Args:
        model: An untrained network (changed in place).
        x: ``(N, C, H, W)`` real images the statistics are taken from (one pass).
        seed: Seed of the random affine values.

    Returns:
        ``model``, in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=gen))
        model.train()
        model(x)
    return model.eval()


@dataclass(frozen=True)
class Verification:
    """How exact the interpreter is on one model at one image (relative errors).

    Attributes:
        mode: ``"freeze"`` or ``"taylor"``.
        x0_error: ``max |li.output - f(x0)| / max |f(x0)|``.
        conservation_error: ``max |sum of contributions - f(x0)| / max |f(x0)|``.
        jvp_error: taylor only: ``li.linear(dx)`` against ``torch.func.jvp`` (``None`` in
            freeze mode, where ``F`` is not the Jacobian).
        vjp_error: taylor only: ``li.transpose(y)`` against ``torch.func.vjp``.
        signal: ``max |J dx| / max |f(x0)|`` (taylor) or ``max |F dx| / max |f(x0)|``.
        sources: the number of bias sources.
        seconds: the time the checks took.
    """

    mode: str
    x0_error: float
    conservation_error: float
    jvp_error: float | None
    vjp_error: float | None
    signal: float
    sources: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    ref = (scale if scale is not None else b).detach().abs().max()
    diff = (a - b).detach().abs().max()
    return float(diff / ref) if float(ref) > 0 else float(diff)


def verify(
    model: nn.Module,
    x0: torch.Tensor,
    x1: torch.Tensor,
    *,
    mode: str = "taylor",
    output: Any = None,
    seed: int = 0,
) -> Verification:
    """Freeze ``model`` at ``x0`` and compare the frozen system with autograd at ``x1``.

    Args:
        model: The network (in the mode it is read in, usually eval).
        x0: ``(1, *in_shape)`` the operating point.
        x1: ``(B, *in_shape)`` probes; ``x1 - x0`` are the tangents.
        mode: ``"taylor"`` (``F`` must be the Jacobian: jvp and vjp are compared) or
            ``"freeze"`` (reproduction of ``f(x0)`` and conservation only).
        output: Passed to the interpreter for models whose output is not one tensor
            (a key, an index or a callable), and used to pick the same tensor here.
        seed: Seed of the random output-space vector of the vjp check.

    Returns:
        The :class:`Verification`.

    Raises:
        ConvscopeError: Whatever the interpreter refuses (an op without a rule ...).
    """
    from convscope.linear import LinearInterpreter

    if mode not in ("freeze", "taylor"):
        raise ConvscopeError(f"mode must be freeze or taylor; got {mode!r}")
    pick: Callable[[Any], torch.Tensor]
    if output is None:
        pick = lambda out: out  # noqa: E731
    elif callable(output):
        pick = output
    else:
        pick = lambda out: out[output]  # noqa: E731

    def f(x: torch.Tensor) -> torch.Tensor:
        return pick(model(x))

    start = time.perf_counter()
    kwargs: dict[str, Any] = {} if output is None else {"output": output}
    li = LinearInterpreter(model, x0, mode=mode, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        f0 = f(x0)
    x0_error = _rel(li.output, f0)
    total = sum(v for v in li.contributions().values())
    conservation = _rel(total, f0)
    dx = x1 - x0
    lin = li.linear(dx)
    jvp_error = vjp_error = None
    if mode == "taylor":
        _, jv = torch.func.jvp(f, (x0.expand_as(x1).clone(),), (dx,))
        jvp_error = _rel(lin, jv)
        signal = float(jv.abs().max() / f0.abs().max())
        gen = torch.Generator().manual_seed(seed)
        y = torch.randn(li.out_shape, generator=gen, dtype=f0.dtype).to(f0.device)[None]
        _, pullback = torch.func.vjp(f, x0)
        (vj,) = pullback(y)
        vjp_error = _rel(li.transpose(y), vj)
    else:
        signal = float(lin.abs().max() / f0.abs().max())
    return Verification(mode, x0_error, conservation, jvp_error, vjp_error, signal,
                        len(li.sources), round(time.perf_counter() - start, 3))  # fmt: skip
