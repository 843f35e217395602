"""The linear interpreter (seed 001): a network frozen at one image into ``y = F x + r``.

``LinearInterpreter(model, x0, mode="freeze" | "taylor")`` gives the affine map's
parts (``output``, ``residual``, ``li(x1)``, ``linear``, ``transpose``, ``columns``,
``rows``), its SVD (:func:`power_svd`, :func:`randomized_svd` on any pair of
callables), and the classification analyses: bias contributions, residual share,
pixel discussions and votes, and :func:`fgsm` to attack an image before looking again.
The explorer page's data: :func:`explore` (drawn by ``convscope.report.explorer``).
Rules for ops, autograd.Functions and module types it does not know:
:func:`register_rule` (see :mod:`convscope.linear.registry`).
See docs/linear.md.
"""

from __future__ import annotations

from convscope.linear.attacks import fgsm
from convscope.linear.context import PassContext, Source
from convscope.linear.contributions import (
    ContributionHistogram,
    Contributions,
    PixelVotes,
    contribution_histogram,
    contributions,
    group_contributions,
    pixel_discussion,
    pixel_votes,
    residual_share,
    votes,
)
from convscope.linear.explorer import ExplorerData, explore
from convscope.linear.interpreter import LinearInterpreter
from convscope.linear.registry import (
    Rule,
    list_rules,
    register_rule,
    registered_rules,
    unregister_rule,
    use_rule,
)
from convscope.linear.svd import SVDResult, power_svd, randomized_svd

__all__ = [
    "ContributionHistogram",
    "Contributions",
    "ExplorerData",
    "LinearInterpreter",
    "PassContext",
    "PixelVotes",
    "Rule",
    "SVDResult",
    "Source",
    "contribution_histogram",
    "contributions",
    "explore",
    "fgsm",
    "group_contributions",
    "list_rules",
    "pixel_discussion",
    "pixel_votes",
    "power_svd",
    "randomized_svd",
    "register_rule",
    "registered_rules",
    "residual_share",
    "unregister_rule",
    "use_rule",
    "votes",
]
