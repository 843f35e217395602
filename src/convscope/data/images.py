"""Image files: single images, converting a batch for a model, and class folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convscope.data.record import ArrayDataset
from convscope.errors import ConvscopeError

if TYPE_CHECKING:
    import torch
    from PIL import Image

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
