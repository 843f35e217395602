"""Loading a dataset by name: :data:`DATASETS` and :func:`load_dataset`."""

from __future__ import annotations

import os
from pathlib import Path

from convscope.data.digits import load_digits
from convscope.data.images import load_image_folder
from convscope.data.mnist import load_mnist_idx, load_mnist_subset
from convscope.data.record import ArrayDataset, Split, _check_split
from convscope.errors import ConvscopeError

DATASETS: tuple[str, ...] = ("mnist-subset", "digits", "mnist", "folder")
"""Names accepted by :func:`load_dataset`; the first is the default."""


def load_dataset(
    name: str = "mnist-subset",
    split: Split = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
) -> ArrayDataset:
    """Load a dataset by name.

    Args:
        name: One of :data:`DATASETS`: ``"mnist-subset"`` (embedded), ``"digits"``,
            ``"mnist"`` (IDX files in ``data_dir``) or ``"folder"`` (class sub-folders).
        split: ``"train"``, ``"test"`` or ``"all"``. For ``"folder"``: ``data_dir/<split>``
            when that folder exists, otherwise the whole of ``data_dir`` for ``"train"`` and
            ``"all"`` (a ``"test"`` split then needs ``data_dir/test``).
        data_dir: Folder for ``"mnist"`` and ``"folder"``; ignored by the others.
        channels: For ``"folder"`` only, see :func:`load_image_folder`.
        size: For ``"folder"`` only, see :func:`load_image_folder`.

    Returns:
        The dataset.

    Raises:
        ConvscopeError: For an unknown name or split, a missing ``data_dir``, or any loading
            error of the chosen dataset.
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ConvscopeError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    _check_split(split)
    if key != "folder" and (channels is not None or size is not None):
        raise ConvscopeError(f"dataset {key!r}: channels and size apply to 'folder' only")
    if key == "mnist-subset":
        return load_mnist_subset(split)
    if key == "digits":
        return load_digits(split)
    if data_dir is None:
        where = "the MNIST IDX files" if key == "mnist" else "one sub-folder per class"
        raise ConvscopeError(f"dataset {key!r} needs data_dir: the folder holding {where}")
    if key == "mnist":
        return load_mnist_idx(data_dir, split)
    root = Path(data_dir)
    if (root / split).is_dir():
        return load_image_folder(root / split, channels=channels, size=size)
    if split == "test":
        raise ConvscopeError(
            f"{root / 'test'}: folder not found; a test split needs {root}/test/<class>/..."
        )
    return load_image_folder(root, channels=channels, size=size)
