"""Explanation quality: which maps are faithful to the model, measured side by side.

:func:`compare` scores every method of :mod:`convscope.evaluate.methods` (convscope's own,
Captum's, Zennit's, pytorch-grad-cam's) on every metric of :mod:`convscope.evaluate.metrics`
(Quantus's implementations where Quantus has them) over a set of images, one score per
image, means with 95 % intervals. The peers are the ``interop`` extra.
"""

from __future__ import annotations

from convscope.evaluate.compare import (
    DEFAULT_METHODS,
    BatchScores,
    Evaluation,
    choose,
    compare,
    interval,
    score_batch,
    summarise,
)
from convscope.evaluate.methods import (
    Method,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)
from convscope.evaluate.metrics import Metric, get_metric, list_metrics

__all__ = [
    "DEFAULT_METHODS",
    "Evaluation",
    "Method",
    "Metric",
    "BatchScores",
    "choose",
    "compare",
    "score_batch",
    "summarise",
    "get_method",
    "get_metric",
    "interval",
    "list_methods",
    "list_metrics",
    "register_method",
    "unregister_method",
]
