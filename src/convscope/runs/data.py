"""``--data``: a dataset named on the command line, made ready for the model.

Specs: ``mnist-subset`` (embedded), ``digits`` (sklearn), ``idx:DIR`` (MNIST/EMNIST IDX
files), ``imagefolder:DIR`` (one sub-folder per class; ``DIR/<split>`` when it exists), or
a glob / folder / file of images (labels unknown: -1), opened by :func:`open_data` as a
:class:`StreamData` that reads each image when its batch comes. The images are checked
against what the model takes (channels, size) before any work, and converted where the
options say so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from convscope.errors import ConvscopeError

__all__ = ["DATA_SPECS", "StreamData", "open_data"]

DATA_SPECS = ("mnist-subset", "digits", "idx:DIR", "imagefolder:DIR", "a glob of image files")


def _read(spec: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """A named dataset (mnist-subset, digits, idx:DIR) as arrays."""
    from convscope.data.datasets import load_dataset

    key = spec.strip()
    if key.startswith("idx:"):
        ds = load_dataset("mnist", split, key[4:])  # type: ignore[arg-type]
    else:
        ds = load_dataset(key.lower(), split)  # type: ignore[arg-type]
    return ds.images, ds.labels, list(ds.class_names)


class _Arrays:
    """Images already in memory (the named datasets): i -> ((C, H, W) float32, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def read(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])), int(self.labels[i])


class _Files:
    """Image files read when asked for: i -> ((C, H, W) float32, label)."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> tuple[torch.Tensor, int]:
        from convscope.data.images import load_image

        return load_image(self.paths[i])[0], int(self.labels[i])


def _image_folder(root: str, split: str) -> tuple[_Files, list[str], str]:
    """torchvision's ImageFolder listing of ``root/<split>`` (or of ``root`` itself when it
    has no split folders); the files are read later, one at a time."""
    from pathlib import Path

    base = Path(root)
    if not base.is_dir():
        raise ConvscopeError(f"--data imagefolder:{root}: folder not found")
    where = base / split
    if not where.is_dir():
        splits = [s for s in ("train", "val", "test") if (base / s).is_dir()]
        if splits:
            raise ConvscopeError(
                f"--data imagefolder:{root}: no {split}/ folder there (it has "
                f"{', '.join(splits)}); give --split {splits[0]}"
            )
        where = base
    try:
        from torchvision.datasets import ImageFolder
    except ImportError:
        raise ConvscopeError(
            "--data imagefolder: needs torchvision: pip install 'convscope[zoo]'"
        ) from None
    try:
        folder = ImageFolder(str(where), loader=lambda p: p)
    except (FileNotFoundError, RuntimeError) as e:
        raise ConvscopeError(f"--data imagefolder:{root}: {str(e).splitlines()[0]}") from None
    paths = [p for p, _ in folder.samples]
    labels = [t for _, t in folder.samples]
    return _Files(paths, labels), list(folder.classes), str(where)


def _across_classes(labels: list[int], limit: int) -> list[int]:
    """The first ``limit`` indices taking classes in turn (the listing is class by class)."""
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(labels):
        by_class.setdefault(t, []).append(i)
    order: list[int] = []
    queues = [list(reversed(v)) for _, v in sorted(by_class.items())]
    while len(order) < limit and any(queues):
        for q in queues:
            if q and len(order) < limit:
                order.append(q.pop())
    return sorted(order)


class StreamData(torch.utils.data.Dataset[tuple[int, torch.Tensor, int]]):
    """``--data`` read lazily: position ``j`` -> ``(index, image, label)``.

    ``index`` is the image's place in the whole split (what the per-image tables are keyed
    by), ``image`` is ``(C, H, W)`` as the model takes it, ``label`` is -1 where unknown.
    Only the files of the images asked for are read, so memory stays flat however large the
    folder (the named datasets are small and held as arrays).

    Attributes:
        spec, split: What was asked for.
        indices: The dataset indices kept (all of them, or ``--limit`` of them).
        class_names: Names of the labels, or ``None``.
        shape: ``(C, H, W)`` of the images as the model takes them.
        notes: What is done to each image (``"grey to RGB"`` ...).
        root: The folder read, for file datasets.
    """

    def __init__(
        self,
        source: _Arrays | _Files,
        indices: list[int],
        *,
        spec: str,
        split: str,
        class_names: list[str] | None,
        convert: Any,
        notes: list[str],
        root: str | None = None,
    ) -> None:
        self.source, self.indices, self.spec, self.split = source, indices, spec, split
        self.class_names, self._convert, self.notes, self.root = class_names, convert, notes, root
        first = self._convert(self.source.read(indices[0])[0], self.where(indices[0]))
        self.shape = (int(first.shape[0]), int(first.shape[1]), int(first.shape[2]))

    def __len__(self) -> int:
        return len(self.indices)

    def where(self, index: int) -> str:
        """How an image is named in messages: its file, or ``SPEC #index``."""
        return self.path(index) or f"{self.spec} #{index}"

    def path(self, index: int) -> str | None:
        """The file of a dataset index (``None`` for the named datasets)."""
        return self.source.paths[index] if isinstance(self.source, _Files) else None

    def __getitem__(self, j: int) -> tuple[int, torch.Tensor, int]:
        index = self.indices[j]
        x, label = self.source.read(index)
        return index, self._convert(x, self.where(index)), label

    def describe(self) -> dict[str, Any]:
        return {"data": self.spec, "split": self.split, "images": len(self),
                "shape": list(self.shape), "notes": self.notes}  # fmt: skip


def open_data(
    spec: str,
    *,
    split: str = "test",
    limit: int | None = None,
    info: dict[str, Any] | None = None,
    channels: int | None = None,
    invert: bool = False,
    size: tuple[int, int] | None = None,
) -> StreamData:
    """Open ``--data`` for streaming (see :class:`StreamData`); the first image is read and
    checked against the model's facts, so a wrong dataset is refused before any work.

    ``limit`` keeps the first ``limit`` images of a named dataset or of a glob, and takes
    the classes of an image folder in turn (its listing is class by class).

    Raises:
        ConvscopeError: an unknown spec, a bad limit, or images the model cannot take.
    """
    if limit is not None and limit < 1:
        raise ConvscopeError(f"--limit must be at least 1; got {limit}")
    key = spec.strip()
    root: str | None = None
    source: _Arrays | _Files
    names: list[str] | None
    if key.startswith("imagefolder:"):
        source, names, root = _image_folder(key[len("imagefolder:") :], split)
    elif key.lower() in ("mnist-subset", "digits") or key.startswith("idx:"):
        images, labels, names = _read(key, split)
        source = _Arrays(images, labels)
    else:
        from convscope.runs.inputs import expand_images

        try:
            found = expand_images(key)
        except ConvscopeError as e:
            raise ConvscopeError(
                f"--data {spec}: not a dataset name and no images there ({e}); choose "
                f"{', '.join(DATA_SPECS)}"
            ) from None
        if any(s.path is None for s in found):
            raise ConvscopeError(f"--data {spec}: sample photos are not a dataset; use --image")
        source, names = _Files([str(s.path) for s in found], [-1] * len(found)), None
    n = len(source)
    if n == 0:
        raise ConvscopeError(f"--data {spec}: no images in the {split} split")
    if limit is None or limit >= n:
        indices = list(range(n))
    elif isinstance(source, _Files) and root is not None:
        indices = _across_classes(source.labels, limit)
    else:
        indices = list(range(limit))
    convert, notes = _converter(spec, info or {}, channels, invert, size, source.read(0)[0])
    return StreamData(source, indices, spec=spec, split=split, class_names=names,
                      convert=convert, notes=notes, root=root)  # fmt: skip


def _converter(
    spec: str,
    info: dict[str, Any],
    channels: int | None,
    invert: bool,
    size: tuple[int, int] | None,
    first: torch.Tensor,
) -> tuple[Any, list[str]]:
    """One image -> what the model takes, and the notes saying what that does."""
    want_c = channels or info.get("in_channels")
    want_hw = size or info.get("input_size")
    notes: list[str] = []
    if want_c is not None and first.shape[0] != want_c:
        if {int(first.shape[0]), int(want_c)} != {1, 3}:
            raise ConvscopeError(
                f"--data {spec}: images have {first.shape[0]} channels, the model takes {want_c}"
            )
        notes.append("grey to RGB" if want_c == 3 else "RGB to grey")
    if want_hw is not None and tuple(first.shape[-2:]) != tuple(want_hw) and size is None:
        raise ConvscopeError(
            f"--data {spec}: images are {first.shape[-2]}x{first.shape[-1]}, the model takes "
            f"{want_hw[0]}x{want_hw[1]}; give --size {want_hw[0]},{want_hw[1]} to resize"
        )
    if size is not None:
        notes.append(f"resized to {size[0]}x{size[1]}")
    prep = info.get("preprocess") if size is None and want_hw is None else None
    if prep:
        from convscope.runs.inputs import _resize_crop

        notes.append(f"the weights' own resize {prep.get('resize')} and centre crop "
                     f"{prep.get('crop')}")  # fmt: skip
        want_hw = tuple(_resize_crop(first[None], prep).shape[-2:])
    elif want_hw is None:
        want_hw = tuple(first.shape[-2:])  # one batch needs one size: the first image's
    if invert:
        notes.append("inverted")

    def convert(x: torch.Tensor, label: str) -> torch.Tensor:
        if want_c is not None and x.shape[0] != want_c:
            if x.shape[0] == 1 and want_c == 3:
                x = x.expand(3, -1, -1)
            elif x.shape[0] == 3 and want_c == 1:
                x = x.mean(0, keepdim=True)
            else:
                raise ConvscopeError(f"{label}: {x.shape[0]} channels, the model takes {want_c}")
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = torch.nn.functional.interpolate(x[None], size=tuple(size), mode="bilinear",
                                                antialias=True, align_corners=False)[0]  # fmt: skip
        elif prep:
            from convscope.runs.inputs import _resize_crop

            x = _resize_crop(x[None], prep)[0]
        if want_hw is not None and tuple(x.shape[-2:]) != tuple(want_hw):
            raise ConvscopeError(
                f"{label}: {x.shape[-2]}x{x.shape[-1]}, not {want_hw[0]}x{want_hw[1]} as the "
                f"model or the first image; give --size {want_hw[0]},{want_hw[1]}"
            )
        return (1 - x if invert else x).contiguous()

    return convert, notes
