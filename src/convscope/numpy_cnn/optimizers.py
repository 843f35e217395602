"""Gradient-descent optimizers that update NumPy arrays in place.

An optimizer gets the same list of ``(parameter, gradient)`` pairs, in the same order, at
every :meth:`Optimizer.step`; the per-parameter state (velocities, squared-gradient sums)
is kept by position in that list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convscope.errors import ConvscopeError

__all__ = ["SGD", "Adagrad", "Adam", "Momentum", "Optimizer", "RMSprop", "get_optimizer"]

Pairs = Sequence[tuple[np.ndarray, np.ndarray]]


class Optimizer:
    """Base class: subclasses implement :meth:`_update` for one parameter.

    Args:
        lr: learning rate (the textbook's ``eta``).
    """

    def __init__(self, lr: float = 1e-3) -> None:
        if not lr > 0:
            raise ConvscopeError(f"learning rate must be > 0, got {lr}")
        self.lr = float(lr)
        self.t = 0
        self._state: list[dict[str, np.ndarray]] = []

    def step(self, pairs: Pairs) -> None:
        """Move every parameter against its gradient, in place."""
        if not self._state:
            self._state = [{} for _ in pairs]
        elif len(self._state) != len(pairs):
            raise ConvscopeError(
                f"{type(self).__name__} was used with {len(self._state)} parameters and now "
                f"gets {len(pairs)}; call reset() or use a fresh optimizer per model"
            )
        self.t += 1
        for (p, g), state in zip(pairs, self._state, strict=True):
            self._update(p, g, state)

    def reset(self) -> None:
        """Forget the step count and every per-parameter state."""
        self.t = 0
        self._state = []

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr})"


class SGD(Optimizer):
    """Plain gradient descent: ``p -= lr * g``."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__(lr)

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        p -= self.lr * g


class Momentum(Optimizer):
    """Gradient descent with momentum (heavy ball): ``v = mu v + g``, ``p -= lr v``.

    This is PyTorch's ``SGD(momentum=mu)``. The textbook writes the velocity as a moving
    average, ``m = mu m - (1 - mu) g``, ``p += lr m``; that is the same method with the
    learning rate multiplied by ``1 - mu``.

    Args:
        lr: learning rate.
        momentum: ``mu`` in [0, 1).
    """

    def __init__(self, lr: float = 1e-2, momentum: float = 0.9) -> None:
        super().__init__(lr)
        if not 0.0 <= momentum < 1.0:
            raise ConvscopeError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        v = state.get("v")
        if v is None:
            v = state["v"] = np.zeros_like(p)
        v *= self.momentum
        v += g
        p -= self.lr * v


class Adagrad(Optimizer):
    """Adagrad: divide by the root of the running *sum* of squared gradients.

    ``s += g^2``, ``p -= lr g / (sqrt(s) + eps)``: parameters that have seen large gradients
    take ever smaller steps.
    """

    def __init__(self, lr: float = 1e-2, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.eps = float(eps)

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        s = state.get("s")
        if s is None:
            s = state["s"] = np.zeros_like(p)
        s += g * g
        p -= self.lr * g / (np.sqrt(s) + self.eps)


class RMSprop(Optimizer):
    """RMSprop: divide by the root of a moving *average* of squared gradients.

    ``v = rho v + (1 - rho) g^2``, ``p -= lr g / (sqrt(v) + eps)``.

    Args:
        lr: learning rate.
        rho: decay of the average (the textbook's ``gamma``, 0.9).
        eps: added to the root.
    """

    def __init__(self, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-8) -> None:
        super().__init__(lr)
        if not 0.0 < rho < 1.0:
            raise ConvscopeError(f"rho must be in (0, 1), got {rho}")
        self.rho, self.eps = float(rho), float(eps)

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        v = state.get("v")
        if v is None:
            v = state["v"] = np.zeros_like(p)
        v *= self.rho
        v += (1.0 - self.rho) * g * g
        p -= self.lr * g / (np.sqrt(v) + self.eps)


class Adam(Optimizer):
    """Adam: momentum on the gradient and RMSprop scaling, both bias-corrected.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` (as ``torch.optim.Adam``).
    """

    def __init__(
        self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        super().__init__(lr)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ConvscopeError(f"{name} must be in [0, 1), got {b}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _update(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> None:
        if "m" not in state:
            state["m"] = np.zeros_like(p)
            state["v"] = np.zeros_like(p)
        m, v = state["m"], state["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * g * g
        m_hat = m / (1.0 - self.beta1**self.t)
        v_hat = v / (1.0 - self.beta2**self.t)
        p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


_OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "momentum": Momentum,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
}


def get_optimizer(optimizer: str | Optimizer, lr: float | None = None) -> Optimizer:
    """An optimizer from a name (``"adam"``, ``"sgd"`` ...) or the object itself."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    key = str(optimizer).lower()
    if key not in _OPTIMIZERS:
        raise ConvscopeError(
            f"unknown optimizer {optimizer!r}; choose one of {', '.join(sorted(_OPTIMIZERS))}"
        )
    cls = _OPTIMIZERS[key]
    return cls() if lr is None else cls(lr=lr)
