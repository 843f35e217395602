"""Writing files so that a crash never leaves half of one behind.

Every writer here goes through :func:`atomic_path`: the bytes land in a temporary file in the
destination's own folder and are moved over the destination with :func:`os.replace`, which is
atomic on POSIX and Windows when both names are on the same file system. A reader therefore sees
either the old file or the complete new one.

This module imports neither torch nor Pillow at import time, so it is safe to use from
``convscope.numpy_cnn``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convscope.errors import ConvscopeError

__all__ = ["atomic_path", "atomic_write_bytes", "save_png", "to_jsonable", "write_json"]


def _create_temp(path: Path) -> Path:
    """Create an empty, unique temporary file next to ``path`` and return its name.

    The name keeps ``path``'s suffix last because several writers pick the format from it
    (Pillow, matplotlib) or append one when it is missing (``np.savez``). The file is created
    with ``os.open(..., 0o666)`` rather than ``tempfile.mkstemp`` so the process umask applies
    and the final file gets ordinary permissions instead of mkstemp's 0600.
    """
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise ConvscopeError(f"{path}: could not create a temporary file next to it; check the folder")


def _fsync(path: Path) -> None:
    # Without this a power cut after os.replace can leave a zero-length file on some file
    # systems; it is best-effort because not every platform allows fsync on every file.
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` in one step.

    Missing parent folders are created. If the body raises, the temporary file is removed,
    ``path`` is left exactly as it was and the exception propagates.

    Args:
        path: The destination file.

    Yields:
        A path in the same folder as ``path``, with the same suffix; the file exists and is
        empty, and the body may overwrite or reopen it freely.

    Example:
        >>> with atomic_path("out/weights.npz") as tmp:  # doctest: +SKIP
        ...     np.savez(tmp, w=w)
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(dst)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: The destination file.
        data: The complete contents.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    dst = Path(path)
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)
    return dst


def to_jsonable(obj: Any, *, where: str = "value") -> Any:
    """Convert ``obj`` into plain Python values that :func:`json.dumps` accepts.

    NumPy scalars become Python numbers, arrays and tensors nested lists, paths strings,
    dataclasses dicts of their fields, tuples and sets lists. NaN and infinities become
    ``None`` because JSON has no spelling for them and browsers reject the ``NaN`` that Python
    would write.

    Args:
        obj: The value to convert.
        where: The position of ``obj`` inside the outer value, used in error messages.

    Returns:
        The converted value.

    Raises:
        ConvscopeError: If some part has a type with no JSON form.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), where=where)
    # Checked by name so this module never has to import torch.
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):
        return to_jsonable(obj.detach().cpu().tolist(), where=where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(key, np.generic):
                key = key.item()
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConvscopeError(
                    f"{where}: dictionary key {key!r} of type {type(key).__name__} cannot be "
                    "written to JSON; use string keys"
                )
            name = key if isinstance(key, str) else json.dumps(key)
            out[name] = to_jsonable(value, where=f"{where}[{name!r}]")
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v, where=f"{where}[{i}]") for i, v in enumerate(items)]
    raise ConvscopeError(
        f"{where} has type {type(obj).__name__}, which cannot be written to JSON; "
        "convert it to a number, string, list or dict first"
    )


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (``indent=2``, trailing newline), atomically.

    NumPy and torch values are converted by :func:`to_jsonable`.

    Args:
        path: The destination file, usually ending in ``.json``.
        obj: A JSON-like value: dicts, lists, numbers, strings, arrays, tensors, dataclasses.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConvscopeError: If some part of ``obj`` has no JSON form; nothing is written then.
    """
    dst = Path(path)
    text = json.dumps(to_jsonable(obj, where=str(dst)), indent=2, allow_nan=False)
    return atomic_write_bytes(dst, (text + "\n").encode("utf-8"))


def _to_uint8_image(array: Any, where: str) -> np.ndarray:
    """Return an (H, W) or (H, W, C) uint8 array, C in {3, 4}, for Pillow."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ConvscopeError(
            f"{where}: cannot save an array shaped {arr.shape} as PNG; pass (H, W), (H, W, 1), "
            "(H, W, 3) or (H, W, 4), channels last"
        )
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ConvscopeError(f"{where}: the image contains NaN or infinite values")
        # Values a rounding error outside [0, 1] are common after arithmetic; clip them.
        return np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ConvscopeError(
                f"{where}: integer image values must lie in 0..255, got "
                f"{arr.min()}..{arr.max()}; scale it to floats in [0, 1] first"
            )
        return arr.astype(np.uint8)
    raise ConvscopeError(f"{where}: cannot save an array of dtype {arr.dtype} as PNG")


def save_png(path: str | os.PathLike[str], image: Any) -> Path:
    """Save an image as PNG, atomically.

    Args:
        path: The destination file.
        image: An array or tensor, channels last: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
            Floats are read as [0, 1] (clipped, then scaled to 0..255); integers as 0..255;
            booleans as black and white.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConvscopeError: For an unsupported shape or dtype, or values out of range.
    """
    from PIL import Image

    dst = Path(path)
    pixels = _to_uint8_image(image, str(dst))
    with atomic_path(dst) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG")
    return dst
