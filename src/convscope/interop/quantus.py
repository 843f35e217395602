"""Quantus's side of the registry: an ``explain_func`` for every method of
:mod:`convscope.evaluate.methods`, convscope's and the peers'.

Quantus metrics call ``explain_func(model=..., inputs=..., targets=..., **kwargs)`` with
NumPy batches and expect NumPy attributions back; :func:`explain_func` does the conversions
and picks the method by name::

    import quantus
    from convscope.interop.quantus import explain_func

    metric = quantus.FaithfulnessCorrelation(nr_runs=50, subset_size=64)
    scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None,
                    explain_func=explain_func,
                    explain_func_kwargs={"method": "input_contribution"})
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.evaluate.methods import get_method
from convscope.interop import require

__all__ = ["explain_func"]

require("quantus", "convscope.interop.quantus")


def _place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def explain_func(
    model: nn.Module,
    inputs: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor | int,
    *,
    method: str = "input_contribution",
    **kwargs: Any,
) -> np.ndarray:
    """Attributions of ``method`` for a Quantus batch, as a float32 NumPy array.

    Args:
        model: The torch model Quantus hands over.
        inputs: ``(N, C, H, W)`` images (channel first, as Quantus passes them to torch).
        targets: One class per image, or one class for all.
        method: A name of :func:`convscope.evaluate.methods.list_methods`.
        kwargs: What Quantus passes besides (``device``, ...); ignored, the model's own
            device and dtype are used.

    Returns:
        ``(N, C, H, W)`` attributions.

    Raises:
        ConvscopeError: an unknown method, inputs that are not ``(N, C, H, W)``, or a
            method that does not apply to the model.
    """
    m = get_method(method)
    device, dtype = _place(model)
    x = torch.as_tensor(np.asarray(inputs) if not torch.is_tensor(inputs) else inputs)
    if x.ndim != 4:
        raise ConvscopeError(
            f"explain_func needs channel-first images (N, C, H, W); got {tuple(x.shape)}"
        )
    x = x.to(device=device, dtype=dtype)
    t = torch.as_tensor(np.asarray(targets) if not torch.is_tensor(targets) else targets)
    t = t.to(device=device, dtype=torch.long).reshape(-1)
    if t.numel() == 1 and x.shape[0] != 1:
        t = t.expand(x.shape[0])
    if not m.applies_to(model):
        raise ConvscopeError(f"the method {method!r} needs a model with a fixed kernel bank")
    was_training = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        a = m.explain(model, x, t)
    finally:
        for mod, flag in was_training:
            mod.training = flag
    return a.detach().to("cpu", torch.float32).numpy()
