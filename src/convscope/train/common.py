"""Small helpers the loop and its callers share: seeding, devices, a weight digest."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = ["parameter_digest", "resolve_device", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    # the legacy global generator on purpose: it is what np.random.* calls in user code draw from
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None``: CUDA when available, else CPU; anything else as ``torch.device``.

    Raises:
        ConvscopeError: unknown name, or CUDA asked for but not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConvscopeError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConvscopeError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and raw bytes).

    Equal digests mean bitwise-equal weights and buffers; used to check that all
    processes of a distributed run ended identical.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # a uint8 view hashes every dtype (bfloat16 has no NumPy equivalent)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
