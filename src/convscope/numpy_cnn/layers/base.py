"""The layer protocol every part of the NumPy CNN follows."""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.errors import ConvscopeError

__all__ = ["Layer", "as_rng"]


def as_rng(seed: np.random.Generator | int | None) -> np.random.Generator:
    """A NumPy generator from a seed, an existing generator (used as is) or ``None``."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


class Layer:
    """One step of a network, with an explicit forward and backward pass.

    Subclasses implement :meth:`forward` (keeping whatever the backward pass needs) and
    :meth:`backward`, which takes dLoss/dOutput and returns dLoss/dInput. Learnable arrays
    live in :attr:`params`; each backward pass *overwrites* :attr:`grads` (same keys and
    shapes), it does not accumulate.

    Attributes:
        params: name -> array of learnable values, updated in place by optimizers.
        grads: name -> gradient of the loss for the same array, from the last backward pass.
        trainable: when ``False`` optimizers skip this layer and its parameters never change.
        training: training mode (dropout active, batch statistics); ``eval()`` clears it.
    """

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.trainable = True
        self.training = True
        self._cache: dict[str, Any] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Compute the output for a batch ``x``."""
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Given dLoss/dOutput for the last forward batch, return dLoss/dInput."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def train(self, mode: bool = True) -> Layer:
        """Switch training mode on (or off with ``mode=False``); returns ``self``."""
        self.training = mode
        return self

    def eval(self) -> Layer:
        """Switch to inference mode; returns ``self``."""
        return self.train(False)

    def astype(self, dtype: np.dtype[Any] | type) -> Layer:
        """Cast parameters (and any other stored arrays of floats) to ``dtype`` in place."""
        for name, p in self.params.items():
            self.params[name] = p.astype(dtype)
        for name, g in self.grads.items():
            self.grads[name] = g.astype(dtype)
        return self

    def parameters(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(parameter, gradient) pairs an optimizer should update, in a fixed order."""
        if not self.trainable:
            return []
        return [(self.params[k], self.grads[k]) for k in sorted(self.params)]

    def _saved(self, key: str) -> Any:
        try:
            return self._cache[key]
        except KeyError:
            raise ConvscopeError(
                f"{type(self).__name__}.backward called before forward; run forward first"
            ) from None

    def extra_repr(self) -> str:
        """Arguments shown by ``repr``."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
