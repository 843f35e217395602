"""``--data``: a dataset named on the command line, made ready for the model.

Specs: ``mnist-subset`` (embedded), ``digits`` (sklearn), ``idx:DIR`` (MNIST/EMNIST IDX
files), ``imagefolder:DIR`` (one sub-folder per class; ``DIR/<split>`` when it exists), or
a glob / folder / file of images (labels unknown: -1). The images are checked against what
the model takes (channels, size) before any work, and converted where the options say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from convscope.errors import ConvscopeError

__all__ = ["DATA_SPECS", "LoadedData", "load_data"]

DATA_SPECS = ("mnist-subset", "digits", "idx:DIR", "imagefolder:DIR", "a glob of image files")


@dataclass
class LoadedData:
    """A dataset ready for a model.

    Attributes:
        dataset: ``(image (C, H, W), label)`` pairs, as the model takes them.
        spec: The ``--data`` text.
        split: The split read.
        class_names: Names of the labels, or ``None`` (images without labels).
        shape: ``(C, H, W)`` of one image.
        notes: What was done to the images (``"grey to RGB"``, ``"resized to 32x32"``).
    """

    dataset: TensorDataset
    spec: str
    split: str
    class_names: list[str] | None
    shape: tuple[int, int, int]
    notes: list[str]

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self) -> dict[str, Any]:
        return {"data": self.spec, "split": self.split, "images": len(self),
                "shape": list(self.shape), "notes": self.notes}  # fmt: skip


def _read(spec: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    from convscope.data.datasets import load_dataset

    key = spec.strip()
    if key.lower() in ("mnist-subset", "digits"):
        ds = load_dataset(key.lower(), split)  # type: ignore[arg-type]
    elif key.startswith("idx:"):
        ds = load_dataset("mnist", split, key[4:])  # type: ignore[arg-type]
    elif key.startswith("imagefolder:"):
        ds = load_dataset("folder", split, key[len("imagefolder:") :])  # type: ignore[arg-type]
    else:
        return (*_read_images(key), None)
    return ds.images, ds.labels, list(ds.class_names)


def _read_images(spec: str) -> tuple[np.ndarray, np.ndarray]:
    from convscope.data.images import load_image
    from convscope.runs.inputs import expand_images

    try:
        sources = expand_images(spec)
    except ConvscopeError as e:
        raise ConvscopeError(
            f"--data {spec}: not a dataset name and no images there ({e}); choose "
            f"{', '.join(DATA_SPECS)}"
        ) from None
    arrays = []
    for src in sources:
        if src.path is None:
            raise ConvscopeError(f"--data {spec}: sample photos are not a dataset; use --image")
        arrays.append(load_image(src.path)[0].numpy())
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ConvscopeError(
            f"--data {spec}: the images differ in shape ({', '.join(map(str, sorted(shapes)))});"
            " give --size H,W and --channels"
        )
    return np.stack(arrays).astype(np.float32), np.full(len(arrays), -1, dtype=np.int64)


def load_data(
    spec: str,
    *,
    split: str = "test",
    limit: int | None = None,
    info: dict[str, Any] | None = None,
    channels: int | None = None,
    invert: bool = False,
    size: tuple[int, int] | None = None,
) -> LoadedData:
    """Read ``--data`` and make its images what the model takes.

    Args:
        spec: See the module docstring.
        split: ``"train"``, ``"test"`` or ``"all"`` (named datasets only).
        limit: Keep the first ``limit`` images.
        info: The model's facts (``in_channels``, ``input_size``); checked against.
        channels: Convert to 1 or 3 channels (grey <-> RGB) first.
        invert: ``1 - x`` (dark digits on light paper).
        size: Resize to ``(H, W)`` first (bilinear, antialiased).

    Raises:
        ConvscopeError: an unknown spec, a bad limit, or images the model cannot take.
    """
    if limit is not None and limit < 1:
        raise ConvscopeError(f"--limit must be at least 1; got {limit}")
    images, labels, names = _read(spec, split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if len(images) == 0:
        raise ConvscopeError(f"--data {spec}: no images in the {split} split")
    x = torch.from_numpy(np.ascontiguousarray(images))
    notes: list[str] = []
    info = info or {}
    want_c = channels or info.get("in_channels")
    if want_c is not None and x.shape[1] != want_c:
        if x.shape[1] == 1 and want_c == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
            notes.append("grey to RGB")
        elif x.shape[1] == 3 and want_c == 1:
            x = x.mean(1, keepdim=True)
            notes.append("RGB to grey")
        else:
            raise ConvscopeError(
                f"--data {spec}: images have {x.shape[1]} channels, the model takes {want_c}"
            )
    want_hw = size or info.get("input_size")
    if want_hw is not None and tuple(x.shape[-2:]) != tuple(want_hw):
        if size is None:
            raise ConvscopeError(
                f"--data {spec}: images are {x.shape[-2]}x{x.shape[-1]}, the model takes "
                f"{want_hw[0]}x{want_hw[1]}; give --size {want_hw[0]},{want_hw[1]} to resize"
            )
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear",
                                            antialias=True, align_corners=False)  # fmt: skip
        notes.append(f"resized to {size[0]}x{size[1]}")
    if invert:
        x = 1 - x
        notes.append("inverted")
    shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    dataset = TensorDataset(x, torch.from_numpy(labels))
    return LoadedData(dataset, spec, split, names, shape, notes)
