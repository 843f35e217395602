"""``Sequential``: a stack of layers with a training loop, prediction and evaluation."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from convscope.errors import ConvscopeError
from convscope.numpy_cnn.layers.base import Layer, as_rng
from convscope.numpy_cnn.layers.conv import Conv2D
from convscope.numpy_cnn.losses import Loss, get_loss
from convscope.numpy_cnn.optimizers import Optimizer, get_optimizer

__all__ = ["Sequential", "accuracy"]

History = dict[str, list[float]]


def accuracy(out: np.ndarray, target: np.ndarray) -> float:
    """Share of examples classified correctly, or NaN when the targets are not classes.

    Args:
        out: (N, K) network outputs; with K = 1 the output is read as the probability of
            class 1 (threshold 0.5), otherwise the largest entry is the predicted class.
        target: (N,) integer labels, or (N, K) one-hot rows.

    Returns:
        A number in [0, 1], or NaN for targets that are not class labels.
    """
    target = np.asarray(target)
    if out.ndim != 2:
        return float("nan")
    if np.issubdtype(target.dtype, np.integer) and target.ndim == 1:
        labels = target
    elif target.ndim == 2 and target.shape == out.shape and out.shape[1] > 1:
        labels = target.argmax(axis=1)
    elif target.ndim == 2 and target.shape == out.shape == (out.shape[0], 1):
        labels = (target[:, 0] > 0.5).astype(np.int64)
    else:
        return float("nan")
    pred = out.argmax(axis=1) if out.shape[1] > 1 else (out[:, 0] > 0.5).astype(np.int64)
    return float(np.mean(pred == labels))


class Sequential:
    """Layers applied one after another, trained by backpropagation.

    Args:
        *layers: the layers, input first.

    Example:
        >>> from convscope import numpy_cnn as ncnn
        >>> net = ncnn.Sequential(
        ...     ncnn.Conv2D(1, 8, 3, padding="same", seed=0), ncnn.ReLU(), ncnn.MaxPool2D(2),
        ...     ncnn.Flatten(), ncnn.Dense(8 * 14 * 14, 10, seed=0), ncnn.Softmax(),
        ... )
        >>> history = net.fit(x, y, epochs=2, batch_size=32, optimizer=ncnn.Adam(1e-3),
        ...                   loss="bce")  # doctest: +SKIP
    """

    def __init__(self, *layers: Layer) -> None:
        self.layers: list[Layer] = []
        for layer in layers:
            self.add(layer)

    def add(self, layer: Layer) -> Sequential:
        """Append a layer; returns ``self`` so calls can be chained."""
        if not isinstance(layer, Layer):
            raise ConvscopeError(f"Sequential takes numpy_cnn layers, got {type(layer).__name__}")
        self.layers.append(layer)
        return self

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"

    # -- modes, parameters ---------------------------------------------------------------

    @property
    def training(self) -> bool:
        """Whether the layers are in training mode."""
        return all(layer.training for layer in self.layers)

    def train(self, mode: bool = True) -> Sequential:
        """Set training mode on every layer; returns ``self``."""
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> Sequential:
        """Set inference mode on every layer; returns ``self``."""
        return self.train(False)

    @contextlib.contextmanager
    def _mode(self, training: bool) -> Iterator[None]:
        before = [layer.training for layer in self.layers]
        self.train(training)
        try:
            yield
        finally:
            for layer, mode in zip(self.layers, before, strict=True):
                layer.train(mode)

    def parameters(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(parameter, gradient) pairs of every trainable layer, input side first."""
        return [pair for layer in self.layers for pair in layer.parameters()]

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Count of scalar parameters (only the trainable ones by default)."""
        layers = [la for la in self.layers if la.trainable or not trainable_only]
        return int(sum(p.size for la in layers for p in la.params.values()))

    @property
    def dtype(self) -> np.dtype[Any]:
        """The floating dtype of the parameters (float64 unless :meth:`astype` changed it)."""
        for layer in self.layers:
            for p in layer.params.values():
                return p.dtype
        return np.dtype(np.float64)

    def astype(self, dtype: Any) -> Sequential:
        """Cast every parameter to ``dtype`` (float32 trains about twice as fast)."""
        for layer in self.layers:
            layer.astype(dtype)
        return self

    # -- passes --------------------------------------------------------------------------

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run ``x`` through every layer in the current mode."""
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dy: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate dLoss/dOutput through every layer.

        Args:
            dy: dLoss/dOutput, shaped like the output.
            input_grad: return dLoss/dInput. With ``False`` (what training uses) the pass
                stops at the lowest layer that has parameters to learn: a convolution there
                computes only its parameter gradients, and nothing below it runs backward.
                Training never needs the gradient of the images, and below a stack of fixed
                layers (section 11.4) no gradient is needed at all; for a first
                convolution with many filters the input gradient is the costliest part of
                the backward pass. ``None`` is returned.

        Returns:
            dLoss/dInput, or ``None`` when ``input_grad`` is ``False``.
        """
        stop = 0 if input_grad else self._lowest_trainable()
        for i in range(len(self.layers) - 1, stop - 1, -1):
            layer = self.layers[i]
            if i == stop and not input_grad:
                if isinstance(layer, Conv2D):
                    layer.backward_params(dy)
                else:
                    layer.backward(dy)
                return None
            dy = layer.backward(dy)
        return dy

    def _lowest_trainable(self) -> int:
        """Index of the first layer with parameters to learn (the last layer if none)."""
        for i, layer in enumerate(self.layers):
            if layer.parameters():
                return i
        return len(self.layers) - 1

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Network outputs for ``x`` in inference mode, computed in batches."""
        x = np.asarray(x)
        if x.shape[0] == 0:
            raise ConvscopeError("predict got an empty batch")
        with self._mode(False):
            outs = [
                self.forward(x[i : i + batch_size].astype(self.dtype, copy=False))
                for i in range(0, x.shape[0], batch_size)
            ]
        return np.concatenate(outs, axis=0)

    def predict_classes(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted class per example (N,): the arg-max, or ``output > 0.5`` for one unit."""
        out = self.predict(x, batch_size)
        if out.ndim != 2:
            raise ConvscopeError(f"predict_classes needs (N, K) outputs, got {out.shape}")
        if out.shape[1] == 1:
            return (out[:, 0] > 0.5).astype(np.int64)
        return out.argmax(axis=1)

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, loss: str | Loss = "bce", batch_size: int = 256
    ) -> dict[str, float]:
        """Mean loss and accuracy on ``(x, y)`` in inference mode."""
        out = self.predict(x, batch_size)
        return {"loss": get_loss(loss)(out, y), "accuracy": accuracy(out, y)}

    def calibrate_batchnorm(self, x: np.ndarray, batch_size: int = 256) -> int:
        """Replace every batch norm's running statistics by exact ones over ``x``.

        During training the running mean and variance are moving averages of batch
        statistics taken while the weights moved. When a layer's features vary little
        between images (a global average of sigmoid maps, as in the chapter's MNIST CNN)
        their spread can be smaller than the drift of their mean over the last hundred
        steps, and eval mode then sees inputs many standard deviations off. Recomputing the
        statistics with the final weights ("precise batch norm") removes that lag. Layers
        are done in order, each with the already calibrated ones before it, in eval mode.

        Args:
            x: (N, ...) inputs, usually the training images.
            batch_size: images per forward pass.

        Returns:
            How many batch-norm layers were calibrated.
        """
        from convscope.numpy_cnn.normalization import BatchNorm

        x = np.asarray(x)
        done = 0
        with self._mode(False):
            for j, layer in enumerate(self.layers):
                if not isinstance(layer, BatchNorm):
                    continue
                total = np.zeros(layer.num_features)
                total_sq = np.zeros(layer.num_features)
                count = 0
                for i in range(0, x.shape[0], batch_size):
                    h = x[i : i + batch_size].astype(self.dtype, copy=False)
                    for prev in self.layers[:j]:
                        h = prev.forward(h)
                    axes = (0,) if h.ndim == 2 else (0, 2, 3)
                    h64 = h.astype(np.float64)
                    total += h64.sum(axis=axes)
                    total_sq += (h64 * h64).sum(axis=axes)
                    count += h.size // layer.num_features
                if count < 2:
                    raise ConvscopeError(
                        "calibrate_batchnorm needs at least two values per channel"
                    )
                mean = total / count
                var = np.maximum(total_sq / count - mean * mean, 0.0) * (count / (count - 1))
                layer.running_mean = mean.astype(layer.running_mean.dtype)
                layer.running_var = var.astype(layer.running_var.dtype)
                done += 1
        return done

    # -- training ------------------------------------------------------------------------

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int = 1,
        batch_size: int = 32,
        optimizer: str | Optimizer = "adam",
        loss: str | Loss = "bce",
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        progress: bool = True,
        *,
        shuffle: bool = True,
        seed: np.random.Generator | int | None = 0,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    ) -> History:
        """Train with mini-batch gradient descent.

        Each step runs a batch forward, takes the loss, backpropagates, and lets the
        optimizer update every trainable parameter (fixed layers are skipped).

        Args:
            x: (N, ...) inputs.
            y: (N,) integer labels (one-hot encoded where the loss needs it) or targets
                shaped like the output.
            epochs: passes over the data.
            batch_size: examples per step.
            optimizer: an optimizer object or name (default Adam, lr 1e-3).
            loss: a loss object or name (``"bce"``, ``"cce"``, ``"mse"``).
            validation_data: ``(x_val, y_val)`` evaluated after every epoch.
            progress: show a tqdm progress bar with the running loss and accuracy.
            shuffle: reshuffle the examples every epoch.
            seed: seed or generator for the shuffling.
            on_epoch_end: called with ``(epoch, metrics)`` after each epoch.

        Returns:
            History with one entry per epoch: ``"loss"`` and ``"accuracy"`` (running means
            over the epoch's batches, in training mode), ``"time"`` (seconds) and, with
            ``validation_data``, ``"val_loss"`` and ``"val_accuracy"``.
        """
        from tqdm import tqdm

        x, y = np.asarray(x), np.asarray(y)
        if x.shape[0] != y.shape[0]:
            raise ConvscopeError(f"x has {x.shape[0]} examples but y has {y.shape[0]}")
        if epochs < 1 or batch_size < 1:
            raise ConvscopeError("epochs and batch_size must be >= 1")
        opt = get_optimizer(optimizer)
        loss_fn = get_loss(loss)
        rng = as_rng(seed)
        n = x.shape[0]
        history: History = {"loss": [], "accuracy": [], "time": []}
        if validation_data is not None:
            history["val_loss"], history["val_accuracy"] = [], []
        with self._mode(True):
            for epoch in range(epochs):
                start = time.perf_counter()
                order = rng.permutation(n) if shuffle else np.arange(n)
                starts = range(0, n, batch_size)
                bar = tqdm(
                    starts,
                    desc=f"epoch {epoch + 1}/{epochs}",
                    disable=not progress,
                    leave=True,
                    unit="batch",
                )
                seen, loss_sum, correct = 0, 0.0, 0.0
                for i in bar:
                    idx = order[i : i + batch_size]
                    xb = x[idx].astype(self.dtype, copy=False)
                    yb = y[idx]
                    out = self.forward(xb)
                    value = loss_fn(out, yb)
                    self.backward(loss_fn.backward(), input_grad=False)
                    opt.step(self.parameters())
                    m = len(idx)
                    seen += m
                    loss_sum += value * m
                    correct += accuracy(out, yb) * m
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
                bar.close()
                metrics = {"loss": loss_sum / seen, "accuracy": correct / seen}
                if validation_data is not None:
                    with self._mode(False):
                        val = self.evaluate(*validation_data, loss=loss_fn, batch_size=256)
                    metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                metrics["time"] = time.perf_counter() - start
                for key, value in metrics.items():
                    history[key].append(float(value))
                if on_epoch_end is not None:
                    on_epoch_end(epoch, metrics)
        return history
