"""The linear interpreter (seed 001): a network frozen at one image into ``y = F x + r``.

``LinearInterpreter(model, x0, mode="freeze" | "taylor")`` gives the affine map's
parts (``output``, ``residual``, ``li(x1)``, ``linear``, ``transpose``, ``columns``,
``rows``), its SVD, and the classification analyses: bias contributions, residual
share, pixel discussions and votes. See docs/linear.md.
"""

from __future__ import annotations

from convscope.linear.context import Source
from convscope.linear.contributions import (
    ContributionHistogram,
    contribution_histogram,
    contributions,
    group_contributions,
    pixel_discussion,
    pixel_votes,
    residual_share,
)
from convscope.linear.interpreter import LinearInterpreter

__all__ = [
    "ContributionHistogram",
    "LinearInterpreter",
    "Source",
    "contribution_histogram",
    "contributions",
    "group_contributions",
    "pixel_discussion",
    "pixel_votes",
    "residual_share",
]
