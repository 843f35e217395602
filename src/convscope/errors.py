"""The one exception type convscope raises for bad input."""

from __future__ import annotations

__all__ = ["ConvscopeError"]


class ConvscopeError(ValueError):
    """A user-facing error: the message says what was wrong and what to do.

    The command line prints the message on one line and exits with status 2.
    It subclasses ``ValueError`` so callers that already catch that keep working.
    """
