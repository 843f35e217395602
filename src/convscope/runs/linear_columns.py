"""``convscope linear columns``: columns of F, projective filters (seed 001 Fig. 11)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from typing_extensions import Unpack

from convscope.runs.linear_filters import Position, filters_run
from convscope.runs.linear_setup import Output
from convscope.runs.options import Options
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["OWNED", "run"]

OWNED = ("columns.json", "columns.png")


def run(
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "freeze",
    output: Output = None,
    at: Sequence[Position] | None = None,
    channel: int | None = None,
    **options: Unpack[Options],
) -> RunResult:
    """Columns of F (projective filters) at input positions (seed 001 Fig. 11).

    Writes ``columns.json`` and ``columns.png``.

    Args:
        model, image, out, mode, output, **options: As in
            :func:`convscope.runs.linear_residual.run`.
        at: Input positions (y, x) or ``"y,x"`` (default: the centre).
        channel: One input channel at each position (default: all at once).

    Returns:
        The :class:`~convscope.runs.RunResult` (``result``: the maps). Metrics: ``at``,
        ``channel``, ``flat_indices`` (per position, the flat input indices summed into
        its column), and ``maps`` (:func:`map_stats` per column) for an image-to-image
        model or ``columns`` (one score vector per position) for a classifier.
    """
    return filters_run("column", model, image, out, mode, output, at, channel, None, options)
