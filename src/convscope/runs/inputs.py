"""What ``--image`` names, read the same way by every run.

``--image`` takes a file (PNG, JPEG, ... anything Pillow reads), ``sample:NAME`` (one of
scikit-image's bundled photos), a folder (its image files, sorted) or a glob
(``"photos/*.jpg"``). :func:`expand_images` turns it into a list of
:class:`ImageSource`; :func:`load_input` reads one as a ``(1, C, H, W)`` float tensor in
[0, 1] ready for a model:

- channels: ``channels`` (``--channels``) converts first; then an image whose channels
  differ from what the model takes is converted where there is one obvious way (grey to
  RGB by repeating, RGB to grey by ITU-R 601-2 luma, as Pillow does) and refused with one
  line saying what to pass otherwise;
- ``invert`` (``--invert``) gives ``1 - x`` (dark digits on light paper -> MNIST style);
- size: ``size`` (``--size H,W``), else the model's own input size, else the resize and
  centre crop of the weights' own transforms (torchvision's and timm's preprocessing),
  else the image's size.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convscope.errors import ConvscopeError

__all__ = ["ImageSource", "expand_images", "load_input", "parse_size"]


@dataclass(frozen=True)
class ImageSource:
    """One image ``--image`` names.

    Attributes:
        label: What to call it in titles and JSON (the file path or ``sample:NAME``).
        path: The file, or ``None`` for a sample photo.
        sample: The sample photo's name, or ``None`` for a file.
    """

    label: str
    path: Path | None = None
    sample: str | None = None

    @property
    def stem(self) -> str:
        """A file-name-safe short name (per-image sub-folders of several-image runs)."""
        base = self.sample if self.sample is not None else Path(self.label).stem
        return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base) or "image"


def _image_files(paths: list[Path]) -> list[Path]:
    from convscope.data import IMAGE_EXTENSIONS

    return sorted(
        p
        for p in paths
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def expand_images(spec: str | os.PathLike[str]) -> list[ImageSource]:
    """The images ``--image`` names, checked to exist (nothing is read yet).

    Args:
        spec: A file, ``sample:NAME``, a folder or a glob pattern.

    Returns:
        One :class:`ImageSource` per image, sorted by path for folders and globs.

    Raises:
        ConvscopeError: An unknown sample, a missing file, an empty folder or a glob
            matching no image file.
    """
    from convscope.data import SAMPLE_PHOTOS

    text = os.fspath(spec)
    if text.startswith("sample:"):
        name = text[len("sample:") :]
        if name not in SAMPLE_PHOTOS:
            raise ConvscopeError(
                f"--image {text}: unknown sample photo; choose one of {', '.join(SAMPLE_PHOTOS)}"
            )
        return [ImageSource(text, sample=name)]
    path = Path(text)
    if path.is_file():
        return [ImageSource(text, path=path)]
    if path.is_dir():
        files = _image_files(list(path.iterdir()))
        if not files:
            raise ConvscopeError(f"--image {text}: the folder holds no image files (PNG, JPEG ...)")
        return [ImageSource(str(f), path=f) for f in files]
    if glob.has_magic(text):
        files = _image_files([Path(p) for p in glob.glob(text, recursive=True)])
        if not files:
            raise ConvscopeError(f"--image {text}: the pattern matches no image files")
        return [ImageSource(str(f), path=f) for f in files]
    raise ConvscopeError(
        f"--image {text}: no such file or folder (or give sample:NAME, e.g. sample:chelsea)"
    )


def parse_size(size: str | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``"H,W"`` (or one number for a square) or a pair -> ``(H, W)``; ``None`` stays.

    Example: ``parse_size("224") == parse_size("224,224") == (224, 224)``.

    Raises:
        ConvscopeError: Anything but one or two positive integers.
    """
    if size is None:
        return None
    if isinstance(size, str):
        parts = size.replace(" ", "").split(",")
    else:
        parts = [str(v) for v in size]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConvscopeError(
            f"--size must be H,W (two positive integers, e.g. 224,224); got {size!r}"
        )
    return int(parts[0]), int(parts[1])


def _read(src: ImageSource) -> torch.Tensor:
    if src.sample is not None:
        from convscope.data import sample_photo

        rgb = sample_photo(src.sample)
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float() / 255
    from convscope.data import load_image

    assert src.path is not None
    return load_image(src.path)


def _to_channels(x: torch.Tensor, want: int, label: str, how: str) -> tuple[torch.Tensor, str]:
    c = x.shape[1]
    if c == want:
        return x, ""
    if c == 3 and want == 1:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * luma).sum(1, keepdim=True), "RGB -> grey (ITU-R 601-2 luma)"
    if c == 1 and want == 3:
        return x.repeat(1, 3, 1, 1), "grey -> RGB (repeated)"
    raise ConvscopeError(
        f"{label}: the image has {c} channels but {how} {want}; convert it to {want} "
        "channels first (only grey <-> RGB is converted here)"
    )


def _resize_crop(x: torch.Tensor, prep: Mapping[str, Any]) -> torch.Tensor:
    """Resize the shorter side to ``resize``, then centre-crop to ``crop`` (either optional)."""
    import torch.nn.functional as F

    mode = str(prep.get("interpolation") or "bilinear")
    mode = mode if mode in ("bilinear", "bicubic", "nearest") else "bilinear"
    h, w = x.shape[-2:]
    side = prep.get("resize")
    if side:
        side = int(side if not isinstance(side, (list, tuple)) else min(side))
        s = side / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size != (h, w):
            kw: dict[str, Any] = {"antialias": True} if mode != "nearest" else {}
            if mode != "nearest":
                kw["align_corners"] = False
            x = F.interpolate(x, size=size, mode=mode, **kw).clamp(0, 1)
    crop = prep.get("crop")
    if crop:
        ch, cw = (int(crop), int(crop)) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
        h, w = x.shape[-2:]
        if ch <= h and cw <= w:
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
    return x


def load_input(
    src: ImageSource,
    *,
    in_channels: int | None = None,
    input_size: tuple[int, int] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    channels: int | None = None,
    invert: bool = False,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Read one image for a model.

    Args:
        src: From :func:`expand_images`.
        in_channels: The channels the model takes (``None``: unknown, keep the image's).
        input_size: The model's fixed input size, if it has one.
        preprocess: The weights' own resize/crop (``{"resize": 256, "crop": [224, 224],
            "interpolation": "bilinear"}``), used when neither ``size`` nor
            ``input_size`` is given.
        channels: ``--channels``: convert to 1 or 3 channels first.
        invert: ``--invert``: ``1 - x``.
        size: ``--size``: resize to ``(H, W)``.

    Returns:
        ``(x, notes)``: ``x`` float32 ``(1, C, H, W)`` in [0, 1]; ``notes`` says what was
        done (``image``, ``original_shape``, ``converted``, ``inverted``, ``shape``).

    Raises:
        ConvscopeError: An unreadable image, ``channels`` not 1 or 3, or channels that
            neither match the model nor convert to it.
    """
    from convscope.data import _resize

    if channels not in (None, 1, 3):
        raise ConvscopeError(f"--channels must be 1 or 3; got {channels}")
    x = _read(src)
    notes: dict[str, Any] = {"image": src.label, "original_shape": list(x.shape[1:])}
    converted = []
    if channels is not None:
        x, how = _to_channels(x, channels, src.label, "--channels asks for")
        converted.append(how)
    if in_channels is not None and x.shape[1] != in_channels:
        if channels is not None:
            raise ConvscopeError(
                f"{src.label}: --channels {channels} but the model takes {in_channels} "
                f"channels; pass --channels {in_channels} or leave it out"
            )
        x, how = _to_channels(x, in_channels, src.label, "the model takes")
        converted.append(how)
    if invert:
        x = 1.0 - x
    hw = size or input_size
    if hw is not None:
        x = _resize(x, hw)
    elif preprocess:
        x = _resize_crop(x, preprocess)
    notes.update(
        converted="; ".join(c for c in converted if c) or None,
        inverted=bool(invert),
        shape=list(x.shape[1:]),
    )
    return x.contiguous(), notes
