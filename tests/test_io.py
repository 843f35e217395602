"""Tests for convscope.io: atomic writes, JSON conversion, PNG saving."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.errors import ConvscopeError
from convscope.io import atomic_path, atomic_write_bytes, save_png, to_jsonable, write_json


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    dst = tmp_path / "out.txt"
    dst.write_text("old")
    with atomic_path(dst) as tmp:
        assert tmp.parent == dst.parent
        assert tmp.suffix == ".txt"  # writers that choose the format by suffix keep working
        assert tmp.exists() and tmp != dst
        tmp.write_text("new")
        assert dst.read_text() == "old"  # nothing visible until the block ends
    assert dst.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_keeps_original_and_cleans_up(tmp_path: Path) -> None:
    dst = tmp_path / "metrics.json"
    dst.write_text('{"ok": true}')
    with pytest.raises(RuntimeError, match="boom"), atomic_path(dst) as tmp:
        tmp.write_text('{"half": ')
        raise RuntimeError("boom")
    assert dst.read_text() == '{"ok": true}'
    assert _leftovers(tmp_path) == []


def test_atomic_path_failure_without_original_leaves_nothing(tmp_path: Path) -> None:
    dst = tmp_path / "new.bin"
    with pytest.raises(KeyError), atomic_path(dst) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyError("x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_creates_parents_and_uses_umask_permissions(tmp_path: Path) -> None:
    dst = tmp_path / "a" / "b" / "c.bin"
    atomic_write_bytes(dst, b"\x00\x01")
    assert dst.read_bytes() == b"\x00\x01"
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert dst.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_path_works_with_numpy_savez(tmp_path: Path) -> None:
    dst = tmp_path / "w.npz"
    with atomic_path(dst) as tmp:
        np.savez(tmp, w=np.arange(3))
    with np.load(dst) as npz:
        np.testing.assert_array_equal(npz["w"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.npz"]


@dataclasses.dataclass
class _Result:
    name: str
    scores: torch.Tensor


def test_write_json_converts_numpy_torch_and_more(tmp_path: Path) -> None:
    obj = {
        "acc": np.float32(0.5),
        "n": np.int64(7),
        "flag": np.bool_(True),
        "arr": np.arange(4).reshape(2, 2),
        "tensor": torch.tensor([1.5, 2.5]),
        "nan": float("nan"),
        "inf": np.float64(np.inf),
        "path": tmp_path / "x.png",
        "tuple": (1, 2),
        np.int64(3): "int key",
        "result": _Result("r", torch.ones(2)),
    }
    path = write_json(tmp_path / "m.json", obj)
    text = path.read_text()
    assert text.endswith("\n") and '\n  "acc": 0.5' in text  # indent=2
    back = json.loads(text)
    assert back["acc"] == 0.5 and back["n"] == 7 and back["flag"] is True
    assert back["arr"] == [[0, 1], [2, 3]]
    assert back["tensor"] == [1.5, 2.5]
    assert back["nan"] is None and back["inf"] is None
    assert back["path"] == str(tmp_path / "x.png")
    assert back["tuple"] == [1, 2]
    assert back["3"] == "int key"
    assert back["result"] == {"name": "r", "scores": [1.0, 1.0]}


def test_write_json_rejects_unknown_types_and_writes_nothing(tmp_path: Path) -> None:
    dst = tmp_path / "m.json"
    with pytest.raises(ConvscopeError, match=r"m\.json.*\['model'\].*object"):
        write_json(dst, {"model": object()})
    assert not dst.exists()
    assert _leftovers(tmp_path) == []


def test_to_jsonable_plain_values_unchanged() -> None:
    value = {"a": [1, 2.5, "s", None, True]}
    assert to_jsonable(value) == value


@pytest.mark.parametrize(
    ("image", "mode", "expected"),
    [
        (np.array([[0.0, 1.0], [0.5, 1.2]], dtype=np.float32), "L", [[0, 255], [128, 255]]),
        (np.array([[0, 255], [7, 9]], dtype=np.uint8), "L", [[0, 255], [7, 9]]),
        (np.array([[True, False]]), "L", [[255, 0]]),
        (np.zeros((2, 3, 1)), "L", np.zeros((2, 3))),
        (np.full((2, 2, 3), 0.2), "RGB", np.full((2, 2, 3), 51)),
        (np.zeros((2, 2, 4), dtype=np.uint8), "RGBA", np.zeros((2, 2, 4))),
        (torch.ones(3, 2), "L", np.full((3, 2), 255)),
    ],
)
def test_save_png_round_trip(tmp_path: Path, image: object, mode: str, expected: object) -> None:
    path = save_png(tmp_path / "img.png", image)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == mode
        np.testing.assert_array_equal(np.asarray(img), np.asarray(expected))
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((3, 4, 5)), "shaped"),
        (np.zeros(4), "shaped"),
        (np.array([[0, 300]]), "0..255"),
        (np.array([[np.nan]]), "NaN"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_save_png_rejects_bad_arrays(tmp_path: Path, image: np.ndarray, message: str) -> None:
    with pytest.raises(ConvscopeError, match=message) as err:
        save_png(tmp_path / "bad.png", image)
    assert "bad.png" in str(err.value)
    assert list(tmp_path.iterdir()) == []
