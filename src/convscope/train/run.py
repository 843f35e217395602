"""Deprecated: moved to :mod:`convscope.runs.train` (``train_model`` is now ``train``).

A shim kept only until ``convscope.cli`` calls :func:`convscope.runs.train.train`; it
imports :mod:`convscope.runs` when called, never when :mod:`convscope.train` is imported.
"""

from __future__ import annotations

from typing import Any

from convscope.train.history import History

__all__ = ["train_model"]


def train_model(**options: Any) -> History:
    """:func:`convscope.runs.train.train`; ``overwrite`` defaults to True here, as before."""
    from convscope.runs.train import train

    options.setdefault("overwrite", True)
    return train(**options)
