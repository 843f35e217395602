"""Turning what users have into torch datasets, and the data of the command line."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from convscope.errors import ConvscopeError

__all__ = ["as_dataset", "toy_dataset"]


def as_dataset(data: Any) -> Dataset[Any]:
    """A map-style torch dataset from what users tend to have.

    Accepts a torch ``Dataset`` (with ``__len__``), anything with a ``to_torch()``
    method (``convscope.data.ArrayDataset``), a pair ``(images, labels)`` of
    tensors or arrays (``(N, C, H, W)`` floats and ``(N,)`` integers), or a lone
    ``(N, C, H, W)`` tensor or array of images (for :func:`predict`).
    """
    to_torch = getattr(data, "to_torch", None)
    if callable(to_torch):
        # ArrayDataset.to_torch() is a TensorDataset: cheaper than per-item NumPy access
        data = to_torch()
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise ConvscopeError("the dataset must be map-style (have __len__), not iterable")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(np.asarray(a)) if not torch.is_tensor(a) else a for a in data)
        if len(x) != len(y):
            raise ConvscopeError(f"{len(x)} images but {len(y)} labels")
        return TensorDataset(x, y.long())
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return TensorDataset(torch.as_tensor(data))
    raise ConvscopeError(
        f"cannot use a {type(data).__name__} as a dataset: pass a torch Dataset of "
        "(image, label) pairs, an ArrayDataset, or a pair (images, labels)"
    )


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split a batch into images and (optional) labels."""
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _prepare(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if not x.is_floating_point():
        # integer pixels (0..255) silently fed to a float model would be wrong by 255x
        raise ConvscopeError(
            f"images must be floating point (got {x.dtype}); scale them to [0, 1] first"
        )
    return x.to(device=device, dtype=dtype, non_blocking=True)


def toy_dataset(n: int = 128, size: int = 16, num_classes: int = 4, seed: int = 0) -> TensorDataset:
    """A tiny learnable image set for smoke tests: class ``k`` is a bright bar at slot ``k``.

    Returns:
        ``TensorDataset`` of ``(n, 1, size, size)`` float32 images in [0, 1] (the
        bar plus uniform noise) and ``(n,)`` int64 labels cycling through the classes.
    """
    if size < 8 or num_classes < 2 or num_classes > size:
        raise ConvscopeError("toy_dataset needs size >= 8 and 2 <= num_classes <= size")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    x = 0.3 * torch.rand(n, 1, size, size, generator=g)
    width = size // num_classes
    for k in range(num_classes):
        x[labels == k, 0, :, k * width : (k + 1) * width] += 0.7
    return TensorDataset(x.clamp_(0, 1), labels)


def _num_classes(ds: Dataset[Any]) -> int:
    """Classes in a labelled dataset: the largest label plus one."""
    if isinstance(ds, TensorDataset):
        return int(ds.tensors[1].max()) + 1
    return max(int(_unpack(ds[i])[1]) for i in range(len(ds))) + 1  # type: ignore[arg-type,call-overload]
