"""The explainable-AI walkthrough of the textbook's section 11.6.3, on digits we have.

The chapter trains the smallest possible CNN - one 3x3 convolution, flatten, one sigmoid
unit - to tell a capital "I" from a "Q" (EMNIST), then reads the learned kernel ``K`` by
its responses ``Z_n = X_n (star) K + b`` to eight 3x3 line probes ``X1``-``X8``; guided by
them it writes a kernel ``F`` by hand from a Prewitt edge kernel and a line probe, fits its
bias, puts it into the trained network in place of ``K`` and compares test accuracy and
loss.

Here the same steps run on binary tasks cut from the embedded MNIST subset (by default
"1" vs "0" and "7" vs "1"; 28x28 images, so the flattened map has 26 x 26 values):

1. train the one-filter network (Adam, lr 1e-3, batches of 32, 25 epochs, as the chapter);
2. the learned kernel's responses to the line probes (raw, and clipped to [0, 1], the way
   the chapter prints them);
3. the hand-designed kernel: among one Prewitt or Sobel compass edge kernel, alone or plus
   one line probe (the chapter's ``F = F1 + F2``), the one whose probe responses point in
   the direction closest to the learned kernel's (cosine similarity);
4. its bias fitted by minimising the training loss with the learned dense layer kept, as
   the chapter does; test accuracy and loss of both networks;
5. beyond the chapter: the same fixed kernel with the dense layer trained afresh (fixed-
   filter training, section 11.4), and the learned kernel from a few other random starts,
   to see how much of it the data actually pins down.

The analysis is here (NumPy only); the run that trains, draws and writes
``metrics.json``, the figures and ``report.html`` is
:func:`convscope.runs.numpy_cnn_walkthrough.run` (``convscope numpy-cnn walkthrough``).
"""

from __future__ import annotations

import numpy as np

from convscope import kernels as kb
from convscope.errors import ConvscopeError
from convscope.numpy_cnn.activations import Sigmoid
from convscope.numpy_cnn.layers import Conv2D, Dense, FixedConv2D, Flatten
from convscope.numpy_cnn.model import Sequential

__all__ = [
    "CHAPTER_F",
    "CHAPTER_K",
    "PROBE_NAMES",
    "binary_task",
    "design_fixed_kernel",
    "fit_bias",
    "one_filter_network",
    "probe_responses",
]

PROBE_NAMES: tuple[str, ...] = tuple(f"line_x{i}" for i in range(1, 9))
_PROBE_LABELS = [f"X{i}" for i in range(1, 9)]

# The chapter's learned kernel (eq. 11.6.1, b_K = -0.4) and hand-made kernel (eq. 11.6.2,
# Prewitt vertical + X7, b_F = -0.67), with the probe responses it prints.
CHAPTER_K = (
    np.array([[-0.55, 0.04, 0.63], [0.05, -0.03, 0.37], [-0.49, 0.8, 1.03]]),
    -0.4,
    np.array([0, 0.42, 1, 0.05, 0, 0, 0.94, 0.02]),
)
CHAPTER_F = (
    np.array([[-1.0, 0, 1], [-1, 0, 1], [0, 1, 2]]),
    -0.67,
    np.array([0, 0.33, 1, 0.33, 0, 0, 1, 0.33]),
)

# Building blocks for the hand-made kernel: the textbook's edge kernels in 8 directions.
_EDGE_FAMILIES = ("prewitt", "sobel")


def probe_responses(kernel: np.ndarray, bias: float = 0.0, clip: bool = False) -> np.ndarray:
    """Responses of a 3x3 kernel to the eight line probes, through a convolution layer.

    Args:
        kernel: (3, 3) weights, used as cross-correlation (as the chapter does).
        bias: added to every response.
        clip: clip to [0, 1], the way the chapter prints its ``Z_n``.

    Returns:
        (8,) array ``Z_n = X_n (star) K + b`` for n = 1..8.
    """
    layer = FixedConv2D(np.asarray(kernel, dtype=np.float64)[None, None], bias=float(bias))
    z = layer.forward(kb.bank_array(PROBE_NAMES)[:, None]).reshape(-1)
    return np.clip(z, 0.0, 1.0) if clip else z


def binary_task(
    positive: int, negative: int, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Images of two digits from the embedded MNIST subset, label 1 for ``positive``.

    Returns:
        x (N, 1, 28, 28) float64 in [0, 1] and y (N,) int64 in {0, 1}, in the subset's order.
    """
    from convscope.data import load_mnist_subset

    if positive == negative or not (0 <= positive <= 9 and 0 <= negative <= 9):
        raise ConvscopeError(f"need two different digits 0-9, got {positive} and {negative}")
    ds = load_mnist_subset(split)  # type: ignore[arg-type]
    keep = (ds.labels == positive) | (ds.labels == negative)
    return ds.images[keep].astype(np.float64), (ds.labels[keep] == positive).astype(np.int64)


def one_filter_network(
    seed: int = 0, size: int = 28, kernel: np.ndarray | None = None, bias: float = 0.0
) -> Sequential:
    """The chapter's network: one 3x3 convolution (no padding), flatten, one sigmoid unit.

    Args:
        seed: seed for the initial weights.
        size: image side; the flattened map has ``(size - 2)^2`` values.
        kernel: a fixed (3, 3) kernel instead of a learned one (then ``bias`` is fixed too).
        bias: the fixed kernel's bias.

    Shapes:
        (N, 1, size, size) -> (N, 1) probabilities of the positive class.
    """
    rng = np.random.default_rng(seed)
    conv: Conv2D
    if kernel is None:
        conv = Conv2D(1, 1, 3, seed=rng)
    else:
        conv = FixedConv2D(np.asarray(kernel, dtype=np.float64)[None, None], bias=bias)
    return Sequential(
        conv, Flatten(), Dense((size - 2) ** 2, 1, init="xavier", seed=rng), Sigmoid()
    )


def _edge_names() -> list[str]:
    return [n for n in kb.names("edge") if kb.get(n).family in _EDGE_FAMILIES]


def design_fixed_kernel(learned: np.ndarray) -> tuple[list[str], np.ndarray, float]:
    """Pick a hand-made kernel that answers the line probes the way ``learned`` does.

    Candidates are one edge kernel (Prewitt or Sobel, 8 directions) alone or plus one line
    probe, the form of the chapter's ``F = F1 + F2``. The winner maximises the cosine
    similarity between its probe responses and those of ``learned`` (biases left out: they
    are fitted afterwards); the first candidate wins a tie.

    Returns:
        (names of the summed kernels, (3, 3) weights, cosine similarity).
    """
    target = probe_responses(learned)
    best: tuple[float, list[str]] = (-np.inf, [])
    for edge in _edge_names():
        for extra in (None, *PROBE_NAMES):
            names = [edge] if extra is None else [edge, extra]
            z = probe_responses(kb.bank_array(names).sum(axis=0))
            den = float(np.linalg.norm(z) * np.linalg.norm(target))
            cos = float(z @ target) / den if den else -np.inf
            if cos > best[0] + 1e-12:
                best = (cos, names)
    return best[1], kb.bank_array(best[1]).sum(axis=0), best[0]


def _same_as_registered(weight: np.ndarray) -> str | None:
    """The name of a registered kernel with exactly these weights, if there is one."""
    for name in kb.names():
        w = kb.get(name).weight
        if w.shape == weight.shape and np.array_equal(w, weight):
            return name
    return None


def fit_bias(learned_net: Sequential, kernel: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """The bias for ``kernel`` that minimises the training loss, the dense layer kept fixed.

    With the learned network's dense weights ``w`` and bias ``c``, the output logit is
    ``w . flatten(x (star) F) + c + b * sum(w)``, affine in ``b``, so the binary
    cross-entropy is convex in ``b`` and a scalar minimiser finds the optimum.
    """
    from scipy.optimize import minimize_scalar

    dense = learned_net[2]
    if not isinstance(dense, Dense):
        raise ConvscopeError("fit_bias expects the one-filter network: conv, flatten, dense")
    maps = FixedConv2D(np.asarray(kernel, dtype=np.float64)[None, None]).forward(x)
    w, c = dense.params["W"][0], float(dense.params["b"][0])
    base = maps.reshape(len(x), -1) @ w + c
    slope = float(w.sum())

    def loss(b: float) -> float:
        z = base + b * slope
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    return float(minimize_scalar(loss, bracket=(-1.0, 1.0)).x)


def _evaluate(net: Sequential, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    ev = net.evaluate(x, y, loss="bce")
    return {"accuracy": ev["accuracy"], "loss": ev["loss"]}


def _kernel_of(net: Sequential) -> tuple[np.ndarray, float]:
    conv = net[0]
    assert isinstance(conv, Conv2D)
    return conv.params["W"][0, 0].copy(), float(conv.params["b"][0])
