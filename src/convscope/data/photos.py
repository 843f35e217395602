"""scikit-image's bundled photographs and its Labeled Faces in the Wild subset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from convscope.data.record import ArrayDataset
from convscope.errors import ConvscopeError
from convscope.io import save_png

_LFW_SOURCE = (
    "Labeled Faces in the Wild subset (G. B. Huang et al.) via skimage.data.lfw_subset: "
    "100 faces then 100 background patches, 25x25"
)

# Photos that skimage ships inside its wheel (no download). Grey ones are stacked to RGB.
SAMPLE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
"""Names accepted by :func:`sample_photo` (functions of ``skimage.data``)."""


def sample_photo(name: str) -> np.ndarray:
    """Return one of scikit-image's bundled photographs as RGB.

    Args:
        name: One of :data:`SAMPLE_PHOTOS` (e.g. ``"astronaut"``, ``"chelsea"``, ``"camera"``).

    Returns:
        uint8 array (H, W, 3); grey photos have the grey value in all three channels.

    Raises:
        ConvscopeError: For an unknown name, listing the valid ones.
    """
    if name not in SAMPLE_PHOTOS:
        raise ConvscopeError(
            f"unknown sample photo {name!r}; choose one of {', '.join(SAMPLE_PHOTOS)}"
        )
    import skimage.data

    try:
        arr = np.asarray(getattr(skimage.data, name)())
    except Exception as exc:  # pooch/network errors if a skimage build lacks the file
        raise ConvscopeError(
            f"skimage.data.{name}: cannot load the photo ({type(exc).__name__}: {exc})"
        ) from exc
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[:, :, :3], dtype=np.uint8)


def save_sample_photo(name: str, path: str | os.PathLike[str]) -> Path:
    """Write :func:`sample_photo` ``(name)`` to ``path`` as PNG, atomically.

    Args:
        name: One of :data:`SAMPLE_PHOTOS`.
        path: The destination file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return save_png(path, sample_photo(name))


def lfw_faces() -> ArrayDataset:
    """Load scikit-image's Labeled Faces in the Wild subset: 100 faces, then 100 non-faces.

    Returns:
        A dataset with images (200, 1, 25, 25) in [0, 1], labels 0 (the first 100) and 1, and
        class names ``["face", "non-face"]``.
    """
    import skimage.data

    raw = np.asarray(skimage.data.lfw_subset())
    # skimage documents uint8 but ships floats in [0, 1]; accept both.
    images = raw / 255.0 if np.issubdtype(raw.dtype, np.integer) else raw
    labels = np.repeat(np.arange(2, dtype=np.int64), raw.shape[0] // 2)
    return ArrayDataset(
        images=images.astype(np.float32)[:, None],
        labels=labels,
        class_names=["face", "non-face"],
        name="lfw-faces",
        source=_LFW_SOURCE,
    )
