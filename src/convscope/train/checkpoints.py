"""``last.pt``: everything :func:`convscope.train.fit` needs to resume a run.

The final ``checkpoint.pt`` is :func:`convscope.models.save_checkpoint`'s; this module
holds only the per-epoch resume file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.io import atomic_path
from convscope.train.history import History

if TYPE_CHECKING:
    from convscope.train.config import TrainConfig

__all__: list[str] = []

LAST_FORMAT = "convscope-last-v1"


def _last_state(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    history: History,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, Any]:
    """The ``last.pt`` contents after ``epoch`` finished epochs (tensors and plain data only)."""
    return {
        "format": LAST_FORMAT,
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": history.to_dict(),
        "config": config.to_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _save_last(path: Path, blob: dict[str, Any]) -> None:
    """Write ``blob`` to ``path`` atomically (a reader never sees half a file)."""
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def _load_last(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
) -> tuple[int, History]:
    """Restore a ``last.pt`` written by :func:`fit`; returns (epochs done, history)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise ConvscopeError(f"cannot read {path} to resume: {str(e)[:200]}") from None
    if not isinstance(blob, dict) or blob.get("format") != LAST_FORMAT:
        raise ConvscopeError(f"{path} is not a convscope resume file")
    try:
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob.get("scheduler") is not None:
            scheduler.load_state_dict(blob["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConvscopeError(f"{path} does not match this model or optimiser: {e}") from None
    # the RNG state at the end of the saved epoch, so dropout continues as if uninterrupted
    torch.set_rng_state(blob["rng_cpu"])
    if device.type == "cuda" and blob.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(blob["rng_cuda"], device)
    return int(blob["epoch"]), History.from_dict(blob["history"])
