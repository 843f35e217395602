"""scikit-learn's 8x8 handwritten digits with a fixed stratified split."""

from __future__ import annotations

import numpy as np

from convscope.data.record import (
    _DIGIT_NAMES,
    ArrayDataset,
    Split,
    _check_split,
    _select,
    stratified_split,
)

_DIGITS_TEST_SIZE = 360

_DIGITS_SOURCE = (
    "UCI Optical Recognition of Handwritten Digits (E. Alpaydin, C. Kaynak) via "
    "sklearn.datasets.load_digits; CC BY 4.0"
)


def load_digits(split: Split = "train") -> ArrayDataset:
    """Load scikit-learn's 1,797 8x8 handwritten digits.

    The split is 1,437 train / 360 test, stratified, from :func:`stratified_split` with seed 0
    (the same on every call and machine). ``"all"`` is train followed by test.

    Args:
        split: ``"train"``, ``"test"`` or ``"all"``.

    Returns:
        A dataset with images (N, 1, 8, 8), the original 0..16 values divided by 16.
    """
    _check_split(split)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, _DIGITS_TEST_SIZE)
    x, y = _select(images, labels, train_idx, test_idx, split)
    return ArrayDataset(
        images=np.ascontiguousarray(x[:, None]),
        labels=y,
        class_names=list(_DIGIT_NAMES),
        name=f"digits/{split}",
        source=_DIGITS_SOURCE + "; fixed stratified 1,437/360 split (seed 0)",
    )
