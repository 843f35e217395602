"""Loss functions with their gradients.

Every loss is a mean over the batch (and over classes where the formula has them), matching
the ``reduction="mean"`` losses of PyTorch. Call :meth:`Loss.forward` (or the object) for
the value, then :meth:`Loss.backward` for the gradient with respect to the predictions.

Targets may be integer class labels (N,); they are turned into one-hot rows where the loss
needs them (one column of 0/1 for a network with a single output).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convscope.errors import ConvscopeError

__all__ = [
    "BinaryCrossEntropy",
    "CategoricalCrossEntropy",
    "Loss",
    "MeanSquaredError",
    "get_loss",
    "one_hot",
]

# PyTorch clamps log terms at -100 and the BCE derivative's denominator at 1e-12, so a
# saturated output gives a large finite loss instead of inf or nan; we do the same.
_LOG_FLOOR = -100.0
_DENOM_FLOOR = 1e-12


def one_hot(labels: np.ndarray, num_classes: int, dtype: Any = np.float64) -> np.ndarray:
    """(N,) integer labels -> (N, num_classes) rows of zeros with a 1 at the label."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConvscopeError(f"labels must be a 1-D array of class indices, got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConvscopeError(
            f"labels span {labels.min()}..{labels.max()} but the output has {num_classes} classes"
        )
    out = np.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _as_targets(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Targets shaped like ``pred``: integer labels become one-hot (or a 0/1 column)."""
    target = np.asarray(target)
    if np.issubdtype(target.dtype, np.integer) and target.ndim == 1 and pred.ndim == 2:
        if pred.shape[1] == 1:
            return target.astype(pred.dtype)[:, None]
        return one_hot(target, pred.shape[1], pred.dtype)
    if target.shape != pred.shape:
        if target.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
            return target.astype(pred.dtype)[:, None]
        raise ConvscopeError(
            f"targets shaped {target.shape} do not match predictions shaped {pred.shape}"
        )
    return target.astype(pred.dtype, copy=False)


class Loss:
    """A scalar loss of predictions (N, ...) and targets, with its gradient."""

    name = "loss"

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        """The loss value for a batch."""
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        """dLoss/dPred for the last :meth:`forward` call, shaped like ``pred``."""
        raise NotImplementedError

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        return self.forward(pred, target)

    def _saved(self, key: str) -> np.ndarray:
        try:
            return self._cache[key]
        except KeyError:
            raise ConvscopeError(
                f"{type(self).__name__}.backward called before forward; compute the loss first"
            ) from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy of probabilities, averaged over examples and classes.

    ``E = -mean(y ln a + (1 - y) ln(1 - a))`` over all N x K entries: the textbook's
    eq. 11.5.3 with one-hot targets (each class is its own yes/no question), and
    ``torch.nn.BCELoss``. Predictions must be probabilities (after a sigmoid or softmax).

    Shapes:
        pred (N, K) in [0, 1]; target (N, K) in [0, 1], or (N,) integer labels.
    """

    name = "binary_cross_entropy"

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        """Mean binary cross-entropy."""
        y = _as_targets(pred, target)
        if pred.size and (pred.min() < 0 or pred.max() > 1):
            raise ConvscopeError(
                "BinaryCrossEntropy needs probabilities in [0, 1]; end the network with "
                "Sigmoid or Softmax"
            )
        with np.errstate(divide="ignore"):
            log_a = np.maximum(np.log(pred), _LOG_FLOOR)
            log_1a = np.maximum(np.log1p(-pred), _LOG_FLOOR)
        self._cache = {"pred": pred, "y": y}
        return float(-np.mean(y * log_a + (1 - y) * log_1a))

    def backward(self) -> np.ndarray:
        """``(a - y) / (a (1 - a)) / (N K)``: eq. 11.5.4 before the activation's derivative."""
        a, y = self._saved("pred"), self._cache["y"]
        return (a - y) / np.maximum(a * (1 - a), _DENOM_FLOOR) / a.size


class CategoricalCrossEntropy(Loss):
    """Cross-entropy of a softmax over classes, averaged over examples.

    With ``from_logits=True`` (the default) predictions are raw scores and the softmax is
    taken inside, in log space (``torch.nn.CrossEntropyLoss``); the gradient is then simply
    ``(softmax - y) / N``. With ``from_logits=False`` predictions are probabilities.

    Shapes:
        pred (N, K); target (N,) integer labels or (N, K) probabilities.
    """

    name = "categorical_cross_entropy"

    def __init__(self, from_logits: bool = True) -> None:
        super().__init__()
        self.from_logits = from_logits

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        """Mean over examples of ``-sum_k y_k ln p_k``."""
        if pred.ndim != 2 or pred.shape[1] < 2:
            raise ConvscopeError(
                f"CategoricalCrossEntropy needs (N, K) predictions with K >= 2, got {pred.shape}"
            )
        y = _as_targets(pred, target)
        if self.from_logits:
            shifted = pred - pred.max(axis=1, keepdims=True)
            log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        else:
            with np.errstate(divide="ignore"):
                log_p = np.maximum(np.log(pred), _LOG_FLOOR)
        self._cache = {"pred": pred, "y": y, "log_p": log_p}
        return float(-(y * log_p).sum(axis=1).mean())

    def backward(self) -> np.ndarray:
        """``(softmax(z) - y) / N`` from logits, ``-y / p / N`` from probabilities."""
        pred, y = self._saved("pred"), self._cache["y"]
        n = pred.shape[0]
        if self.from_logits:
            return (np.exp(self._cache["log_p"]) - y) / n
        return -y / np.maximum(pred, _DENOM_FLOOR) / n

    def __repr__(self) -> str:
        return f"CategoricalCrossEntropy(from_logits={self.from_logits})"


class MeanSquaredError(Loss):
    """Mean of squared differences over every entry (``torch.nn.MSELoss``).

    Shapes:
        pred (N, ...); target the same shape, or (N,) labels for (N, K) predictions.
    """

    name = "mse"

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        """``mean((pred - y)^2)``."""
        y = _as_targets(pred, target)
        diff = pred - y
        self._cache = {"diff": diff}
        return float(np.mean(diff * diff))

    def backward(self) -> np.ndarray:
        """``2 (pred - y) / size``."""
        diff = self._saved("diff")
        return 2.0 * diff / diff.size


_LOSSES: dict[str, type[Loss]] = {
    "bce": BinaryCrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
    "cce": CategoricalCrossEntropy,
    "categorical_cross_entropy": CategoricalCrossEntropy,
    "cross_entropy": CategoricalCrossEntropy,
    "mse": MeanSquaredError,
}


def get_loss(loss: str | Loss) -> Loss:
    """A loss object from a name (``"bce"``, ``"cce"``, ``"mse"`` ...) or the object itself."""
    if isinstance(loss, Loss):
        return loss
    key = str(loss).lower().replace(" ", "_").replace("-", "_")
    if key not in _LOSSES:
        raise ConvscopeError(f"unknown loss {loss!r}; choose one of {', '.join(sorted(_LOSSES))}")
    return _LOSSES[key]()
