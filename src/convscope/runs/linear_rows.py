"""``convscope linear rows``: rows of F, receptive filters (seed 001 Fig. 11)."""

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

OWNED = ("rows.json", "rows.png")


def run(
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "freeze",
    output: Output = None,
    at: Sequence[Position] | None = None,
    channel: int | None = None,
    target: int | None = None,
    **options: Unpack[Options],
) -> RunResult:
    """Rows of F (receptive filters) at output positions, or of a class (seed 001 Fig. 11).

    Writes ``rows.json`` and ``rows.png``.

    Args:
        model, image, out, mode, output, **options: As in
            :func:`convscope.runs.linear_residual.run`.
        at: Image-to-image models: output positions (y, x) or ``"y,x"`` (default: the
            centre).
        channel: One output channel at each position (default: all at once).
        target: Classifiers: the class whose row is taken (default: the top-1).

    Returns:
        The :class:`~convscope.runs.RunResult` (``result``: the maps). Metrics: for a
        classifier ``target``, ``class_name``, ``flat_indices`` and ``maps`` (one
        :func:`map_stats` entry); otherwise ``at``, ``channel``, ``flat_indices`` (per
        position, the flat output indices summed into its row) and ``maps``.
    """
    return filters_run("row", model, image, out, mode, output, at, channel, target, options)
