"""The dataset record, :class:`ArrayDataset`, and the fixed stratified splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from convscope.errors import ConvscopeError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset

Split = Literal["train", "test", "all"]

_SPLIT_SEED = 0

_DIGIT_NAMES = [str(d) for d in range(10)]


@dataclass
class ArrayDataset:
    """A labelled image dataset held in memory as NumPy arrays.

    Attributes:
        images: float32 array (N, C, H, W), values in [0, 1].
        labels: int64 array (N,), values in ``0 .. len(class_names) - 1``.
        class_names: Name of each class, indexed by label.
        name: Short name, e.g. ``"mnist-subset/train"``.
        source: One line of provenance: where the data comes from and its licence.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    name: str
    source: str = ""

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.ndim != 4 or images.dtype != np.float32:
            raise ConvscopeError(
                f"dataset {self.name!r}: images must be float32 (N, C, H, W), got "
                f"{images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],) or labels.dtype != np.int64:
            raise ConvscopeError(
                f"dataset {self.name!r}: labels must be int64 ({images.shape[0]},), got "
                f"{labels.dtype} {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ConvscopeError(
                f"dataset {self.name!r}: labels span {labels.min()}..{labels.max()} but there "
                f"are {len(self.class_names)} class names"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``, which may exceed the labels present)."""
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArrayDataset:
        """Return the examples at ``indices`` (integer indices or a boolean mask), copied.

        Args:
            indices: Integer positions, in the order wanted, or a boolean mask of length N.

        Returns:
            A new dataset with the same class names, name and source.
        """
        idx = np.asarray(indices)
        if idx.dtype != np.bool_:
            idx = idx.astype(np.int64, copy=False)
        return ArrayDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            name=self.name,
            source=self.source,
        )

    def to_torch(self, device: str | torch.device | None = None) -> TensorDataset:
        """Wrap the arrays as a :class:`torch.utils.data.TensorDataset`.

        On the CPU the tensors share memory with the arrays (no copy).

        Args:
            device: Where to put the tensors; ``None`` keeps them on the CPU.

        Returns:
            A dataset of pairs (image float32 (C, H, W), label int64 scalar).
        """
        import torch
        from torch.utils.data import TensorDataset

        images = torch.from_numpy(np.ascontiguousarray(self.images))
        labels = torch.from_numpy(np.ascontiguousarray(self.labels))
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        return TensorDataset(images, labels)


def _check_split(split: str, allowed: tuple[str, ...] = ("train", "test", "all")) -> None:
    if split not in allowed:
        raise ConvscopeError(f"unknown split {split!r}; use one of {', '.join(allowed)}")


def stratified_split(
    labels: np.ndarray, n_test: int, seed: int = _SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices into train and test sets with the class proportions kept.

    Each class gives ``n_test * count / N`` test examples, rounded by largest remainder (ties
    to the lower label) so the test set has exactly ``n_test``. Within a class the test
    examples are the first of a random permutation; both index lists are then shuffled so
    that classes are interleaved. The generator is ``np.random.RandomState(seed)``, whose
    stream is frozen, so the result is the same on every NumPy version.

    Args:
        labels: Integer labels (N,).
        n_test: Size of the test set, ``0 <= n_test <= N``.
        seed: Seed of the random permutations.

    Returns:
        ``(train_idx, test_idx)``: int64 arrays of sizes N - n_test and n_test, disjoint,
        together covering ``0 .. N-1``.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 <= n_test <= n:
        raise ConvscopeError(f"n_test={n_test} must lie between 0 and the {n} examples")
    classes, counts = np.unique(labels, return_counts=True)
    quota = n_test * counts / max(n, 1)
    take = np.floor(quota).astype(np.int64)
    # Largest remainder; a stable sort on -remainder keeps ties in label order.
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n_test - int(take.sum())]] += 1
    # RandomState, not default_rng: its stream is frozen (NEP 19), so splits never drift.
    rng = np.random.RandomState(seed)
    train_parts, test_parts = [], []
    for cls, k in zip(classes, take, strict=True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test_parts.append(members[:k])
        train_parts.append(members[k:])
    train = rng.permutation(np.concatenate(train_parts)).astype(np.int64)
    test = rng.permutation(np.concatenate(test_parts)).astype(np.int64)
    return train, test


def _select(
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    split: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick a split; ``"all"`` is train followed by test, so its first rows are the train set."""
    if split == "train":
        idx = train_idx
    elif split == "test":
        idx = test_idx
    else:
        idx = np.concatenate([train_idx, test_idx])
    return images[idx], labels[idx]
