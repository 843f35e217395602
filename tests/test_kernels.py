"""Kernel bank: the textbook's worked examples, the paper's index order, ring rotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convscope import kernels as kb
from convscope.errors import ConvscopeError

IMG = np.array([[94, 50, 221], [98, 109, 50], [49, 213, 91]])
FILT = np.array([[2, 2, 1], [1, 0, -2], [-2, 2, 2]])


def test_correlation_and_convolution_worked_example() -> None:
    # seed 002, section 11.2.1: correlation 1017, convolution 357
    assert kb.correlate2d(IMG, FILT).item() == 1017
    assert kb.convolve2d(IMG, FILT).item() == 357


def test_cross_detector_example() -> None:
    cross = kb.get("cross").weight
    i1 = np.array([[0.7, 0.2, 0.3], [0.2, 0.4, 0.1], [0.5, 0.3, 0.8]])
    i2 = np.array([[0.1, 0.9, 0.2], [0.7, 0.9, 0.8], [0.2, 0.8, 0.1]])
    # the cross is symmetric, so correlation and convolution agree
    for f in (kb.correlate2d, kb.convolve2d):
        assert f(i1, cross).item() == pytest.approx(1.2)
        assert f(i2, cross).item() == pytest.approx(4.1)


def test_rgb_patch_with_bias() -> None:
    # seed 002 Fig. 11.2.2: cross filter on each channel, bias -3 -> 2.9 + 2.4 + 1.9 - 3 = 4.2
    r = [[0.1, 0.1, 0.2], [0.7, 0.6, 0.7], [0.8, 0.8, 0.8]]
    g = [[0, 0.3, 0.9], [1, 0.3, 0.7], [0.2, 0.1, 0]]
    b = [[0.2, 0.2, 0.7], [0.3, 0.5, 0.4], [0.5, 0.5, 0.7]]
    patch = np.stack([r, g, b], axis=-1)
    per_channel = [kb.correlate2d(patch[..., c], kb.get("cross").weight).item() for c in range(3)]
    assert per_channel == pytest.approx([2.9, 2.4, 1.9])
    assert kb.correlate2d(patch, kb.get("cross").weight, bias=-3).item() == pytest.approx(4.2)


def test_output_sizes() -> None:
    # 224x224x3 with 64 filters of 3x3x3, padding 1 -> 224x224x64
    assert kb.output_size(224, 3, padding=1, stride=1) == 224
    img = np.random.default_rng(0).random((224, 224, 3))
    assert kb.correlate2d(img, np.ones((3, 3, 3)), padding=1).shape == (224, 224)
    # pooling: pool 2, stride 2 on a 4x4 input -> 2 (eq. 11.3.1)
    assert kb.output_size(4, 2, padding=0, stride=2) == 2
    assert kb.output_size(7, 3, padding=0, stride=2) == 3
    with pytest.raises(ConvscopeError, match="does not fit"):
        kb.output_size(2, 5)
    with pytest.raises(ConvscopeError, match="stride"):
        kb.output_size(5, 3, stride=0)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (3, 2), (2, 0)])
def test_correlate_matches_torch(stride: int, padding: int) -> None:
    rng = np.random.default_rng(1)
    img = rng.standard_normal((11, 9, 3))
    k = rng.standard_normal((3, 3, 3))
    ours = kb.correlate2d(img, k, stride=stride, padding=padding)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    w = torch.from_numpy(k).permute(2, 0, 1)[None]
    ref = F.conv2d(x, w, stride=stride, padding=padding)[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_convolution_is_correlation_with_flipped_kernel() -> None:
    rng = np.random.default_rng(2)
    img, k = rng.standard_normal((8, 8)), rng.standard_normal((3, 3))
    np.testing.assert_allclose(kb.convolve2d(img, k), kb.correlate2d(img, np.rot90(k, 2)))


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(ConvscopeError, match="channels"):
        kb.correlate2d(np.zeros((5, 5, 3)), np.zeros((3, 3, 2)))
    with pytest.raises(ConvscopeError, match="image must be"):
        kb.correlate2d(np.zeros(5), np.zeros((3, 3)))
    with pytest.raises(ConvscopeError, match="unknown kernel 'nope'"):
        kb.get("nope")


def test_gfnn_bank_order_and_size() -> None:
    bank = kb.gfnn_bank()
    assert len(bank) == 40 and len(kb.gfnn_bank(first_order=True)) == 48
    assert [k.index for k in kb.gfnn_bank(first_order=True)] == list(range(48))
    # Table 1: indices 4d..4d+3 are direction d, families in the paper's order
    for k in bank[:32]:
        assert k.direction == kb.DIRECTIONS[k.index // 4]
        assert k.family == kb.EDGE_FAMILIES[k.index % 4]
    groups = [k.group for k in bank[32:]]
    assert groups == ["second_derivative"] * 2 + ["sharpen"] * 3 + ["emboss"] + ["blur"] * 2
    assert {k.group for k in kb.gfnn_bank(first_order=True)[40:]} == {"first_derivative"}


def test_compass_kernels_are_ring_rotations_and_sum_to_zero() -> None:
    for fam in kb.EDGE_FAMILIES:
        base = kb.get(f"{fam}_e").weight
        for step, d in enumerate(kb.DIRECTIONS):
            w = kb.get(f"{fam}_{d.lower()}").weight
            np.testing.assert_array_equal(w, kb.rotate_ring(base, step))
            assert w.sum() == 0
            assert w[1, 1] == base[1, 1]  # the centre never moves
        np.testing.assert_array_equal(kb.rotate_ring(base, 8), base)


def test_directions_follow_the_darker_side() -> None:
    # Intensity falling toward the west (dark on the left): the west kernels answer
    # positively, their east twins negatively.
    ramp = np.tile(np.arange(5, dtype=float), (5, 1))  # bright on the right
    for fam in kb.EDGE_FAMILIES:
        assert kb.correlate2d(ramp, kb.get(f"{fam}_w").weight)[1, 1] > 0
        assert kb.correlate2d(ramp, kb.get(f"{fam}_e").weight)[1, 1] < 0
    # The appendix's west kernels, literally.
    np.testing.assert_array_equal(kb.get("kirsch_w").weight, [[-3, -3, 5], [-3, 0, 5], [-3, -3, 5]])
    np.testing.assert_array_equal(
        kb.get("prewitt_compass_w").weight, [[-1, 1, 1], [-1, -2, 1], [-1, 1, 1]]
    )
    np.testing.assert_array_equal(
        kb.get("kirsch_sw").weight, [[-3, 5, 5], [-3, 0, 5], [-3, -3, -3]]
    )


def test_textbook_kernels_and_aliases() -> None:
    assert kb.get("sobel_vertical").name == "sobel_w"
    np.testing.assert_array_equal(
        kb.get("sobel_vertical").weight, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    )
    np.testing.assert_array_equal(
        kb.get("prewitt_horizontal").weight, [[-1, -1, -1], [0, 0, 0], [1, 1, 1]]
    )
    np.testing.assert_array_equal(
        kb.get("laplacian_5").weight, [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]
    )
    # smoothing kernels sum to one; sigma = 1 Gaussian matches the chapter's 0.07511 / 0.20418
    for name in ("box_blur", "gaussian_blur", "gaussian_5x5", "gaussian_sigma1"):
        assert kb.get(name).weight.sum() == pytest.approx(1.0)
    g = kb.get("gaussian_sigma1").weight
    assert g[0, 0] == pytest.approx(0.07511, abs=1e-5) and g[1, 1] == pytest.approx(
        0.20418, abs=1e-5
    )
    assert len(kb.names("line_probe")) == 8
    assert set(kb.names()) >= {"identity", "cross", "first_order", "laplacian_4", "laplacian_8"}


def test_weights_are_read_only() -> None:
    with pytest.raises(ValueError):
        kb.get("sobel_e").weight[0, 0] = 99


def test_edge_subsets() -> None:
    for n in (32, 24, 16, 8, 4):
        names = kb.edge_subset(n)
        assert len(names) == n == len(set(names))
        assert len(kb.gfnn_bank(n_edges=n)) == n + 8
    # 8 edge kernels still cover all 8 directions; 4 cover only the axes
    assert {kb.get(n).direction for n in kb.edge_subset(8)} == set(kb.DIRECTIONS)
    assert {kb.get(n).direction for n in kb.edge_subset(4)} == {"E", "N", "W", "S"}
    with pytest.raises(ConvscopeError, match="n_edges"):
        kb.edge_subset(12)


def test_bank_tensor_dtype_device() -> None:
    t = kb.bank_tensor(kb.gfnn_bank(), dtype=torch.float64)
    assert t.shape == (40, 1, 3, 3) and t.dtype == torch.float64
    assert kb.get("kirsch_n").tensor().dtype == torch.float32


# -- values against independent references (each builder called directly, so a change
# -- to the code that builds the registry at import time is caught too) ---------------

# seed 000 Table 1 / the textbook's appendix, typed out: the east kernel of each family
EAST = {
    "prewitt_compass": [[1, 1, -1], [1, -2, -1], [1, 1, -1]],
    "kirsch": [[5, -3, -3], [5, 0, -3], [5, -3, -3]],
    "prewitt": [[1, 0, -1], [1, 0, -1], [1, 0, -1]],
    "sobel": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
}
TAIL = {  # indices 32-47, typed out
    "laplacian_4": [[0, -1, 0], [-1, 4, -1], [0, -1, 0]],
    "laplacian_8": [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],
    "sharpen_4": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
    "sharpen_8": [[-1, -1, -1], [-1, 9, -1], [-1, -1, -1]],
    "sharpen_diagonal": [[1, -2, 1], [-2, 5, -2], [1, -2, 1]],
    "emboss": [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]],
    "box_blur": np.full((3, 3), 1 / 9),
    "gaussian_blur": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16,
    "roberts_1": [[0, 0, -1], [0, 1, 0], [0, 0, 0]],
    "roberts_2": [[-1, 0, 0], [0, 1, 0], [0, 0, 0]],
    "prewitt_x": [[1, 0, -1], [1, 0, -1], [1, 0, -1]],
    "prewitt_y": [[-1, -1, -1], [0, 0, 0], [1, 1, 1]],
    "sobel_x": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    "sobel_y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "frei_chen_x": [[1, 0, -1], [2**0.5, 0, -(2**0.5)], [1, 0, -1]],
    "frei_chen_y": [[-1, -(2**0.5), -1], [0, 0, 0], [1, 2**0.5, 1]],
}


def test_rotate_ring_against_rot90_and_by_hand() -> None:
    k = np.arange(9.0).reshape(3, 3) + 1  # every value distinct
    before = k.copy()
    # two 45-degree steps counter-clockwise are np.rot90's quarter turn
    np.testing.assert_array_equal(kb.rotate_ring(k, 2), np.rot90(k, 1))
    np.testing.assert_array_equal(kb.rotate_ring(k, 4), np.rot90(k, 2))
    np.testing.assert_array_equal(kb.rotate_ring(k, -2), np.rot90(k, -1))
    # one step, by hand: the ring 1 2 3 6 9 8 7 4 moves one place counter-clockwise
    np.testing.assert_array_equal(kb.rotate_ring(k), [[2, 3, 6], [1, 5, 9], [4, 7, 8]])
    np.testing.assert_array_equal(kb.rotate_ring(k, 1), kb.rotate_ring(k))
    np.testing.assert_array_equal(kb.rotate_ring(k, 0), k)
    np.testing.assert_array_equal(kb.rotate_ring(k, 9), kb.rotate_ring(k, 1))
    np.testing.assert_array_equal(k, before)  # the input is not touched
    ints = kb.rotate_ring(np.ones((3, 3), dtype=np.int64))
    assert ints.dtype == np.float64
    with pytest.raises(
        ConvscopeError, match=r"^rotate_ring needs a 3x3 kernel, got shape \(2, 2\)$"
    ):
        kb.rotate_ring(np.zeros((2, 2)))


def test_compass_builds_each_direction() -> None:
    for east in EAST.values():
        e = np.array(east, dtype=float)
        ks = kb.compass(e)
        assert len(ks) == 8
        np.testing.assert_array_equal(ks[0], e)
        for quarter, d in ((1, "N"), (2, "W"), (3, "S")):  # E, N, W, S are quarter turns
            np.testing.assert_array_equal(ks[kb.DIRECTIONS.index(d)], np.rot90(e, quarter))
    np.testing.assert_array_equal(
        kb.compass(np.array(EAST["kirsch"], dtype=float))[5], [[-3, 5, 5], [-3, 0, 5], [-3, -3, -3]]
    )


def test_gaussian_kernel_against_scipy() -> None:
    from scipy.signal.windows import gaussian

    for size, sigma in ((3, 1.0), (5, 0.7), (7, 2.5), (1, 0.3)):
        g1 = gaussian(size, std=sigma)
        ref = np.outer(g1, g1) / np.outer(g1, g1).sum()
        np.testing.assert_allclose(kb.gaussian_kernel(size, sigma), ref, rtol=1e-13)
    np.testing.assert_allclose(kb.gaussian_kernel(), kb.gaussian_kernel(3, 1.0), rtol=0)
    assert kb.gaussian_kernel(5, 0.7).shape == (5, 5)
    for size in (0, -3, 2, 4):
        with pytest.raises(
            ConvscopeError,
            match=rf"^gaussian_kernel size must be a positive odd number, got {size}$",
        ):
            kb.gaussian_kernel(size, 1.0)
    for sigma in (0.0, -1.0):
        with pytest.raises(
            ConvscopeError, match=rf"^gaussian_kernel sigma must be > 0, got {sigma}$"
        ):
            kb.gaussian_kernel(3, sigma)


def test_registry_rebuilt_matches_the_typed_out_table() -> None:
    reg = kb._build_registry()
    assert list(reg) == kb.names()
    for d, direction in enumerate(kb.DIRECTIONS):
        for f, fam in enumerate(kb.EDGE_FAMILIES):
            k = reg[f"{fam}_{direction.lower()}"]
            assert (k.group, k.family, k.direction, k.index) == ("edge", fam, direction, 4 * d + f)
            np.testing.assert_array_equal(k.weight, kb.rotate_ring(np.array(EAST[fam]), d))
    assert reg["kirsch_ne"].description == "Kirsch edge, darker side NE"
    assert reg["prewitt_compass_s"].description == "Prewitt compass edge, darker side S"
    for i, (name, w) in enumerate(TAIL.items()):
        assert reg[name].index == 32 + i
        assert reg[name].direction is None
        np.testing.assert_allclose(reg[name].weight, w, rtol=1e-15)
    assert reg["laplacian_4"].description == "Laplacian, 4-neighbour"
    assert (reg["emboss"].group, reg["emboss"].family) == ("emboss", "emboss")
    assert (reg["cross"].group, reg["cross"].family) == ("detector", "cross")
    assert (reg["gaussian_5x5"].group, reg["gaussian_5x5"].family) == ("blur", "gaussian")
    textbook = {n: k for n, k in reg.items() if k.index is None}
    assert len(textbook) == 13 and {k.direction for k in textbook.values()} == {None}
    np.testing.assert_array_equal(reg["identity"].weight, np.eye(3)[1][:, None] * np.eye(3)[1])
    np.testing.assert_allclose(reg["gaussian_sigma1"].weight, kb.gaussian_kernel(3, 1.0))
    for k in reg.values():
        assert k.weight.dtype == np.float64 and not k.weight.flags.writeable
        assert k.name in reg and reg[k.name] is k and k.description


def test_kernel_category_and_tensor() -> None:
    assert kb.get("sobel_ne").category == "NE"
    assert kb.get("laplacian_8").category == "second_derivative"
    assert kb.get("cross").category == "detector"
    k = kb.get("frei_chen_x")
    t64 = k.tensor(dtype=torch.float64)
    assert t64.dtype == torch.float64
    np.testing.assert_array_equal(t64.numpy(), k.weight)  # every digit of sqrt(2) kept
    t64[0, 0] = 99  # a copy: the registry's weight is untouched
    assert k.weight[0, 0] == 1
    assert k.tensor(device="meta").device.type == "meta"
    assert k.tensor().dtype == torch.float32 and k.tensor().device.type == "cpu"


def test_bank_array_and_tensor_values_and_errors() -> None:
    arr = kb.bank_array(["sobel_e", kb.get("box_blur")])
    assert arr.dtype == np.float64 and arr.shape == (2, 3, 3)
    np.testing.assert_array_equal(arr[0], EAST["sobel"])
    np.testing.assert_allclose(arr[1], TAIL["box_blur"], rtol=1e-15)
    with pytest.raises(ConvscopeError, match=r"^the kernel list is empty$"):
        kb.bank_array([])
    with pytest.raises(
        ConvscopeError,
        match=r"^kernels of different sizes cannot be stacked: \[\(3, 3\), \(5, 5\)\]$",
    ):
        kb.bank_array(["gaussian_5x5", "sobel_e"])
    t = kb.bank_tensor(["frei_chen_y", "sobel_e"], dtype=torch.float64)
    assert t.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(t[:, 0].numpy(), kb.bank_array(["frei_chen_y", "sobel_e"]))
    assert kb.bank_tensor(["sobel_e"]).dtype == torch.float32
    assert kb.bank_tensor(["sobel_e"], device="meta").device.type == "meta"


def test_edge_subsets_by_name() -> None:
    by_dir = [d.lower() for d in kb.DIRECTIONS]
    assert kb.edge_subset(8) == [f"sobel_{d}" for d in by_dir]
    assert kb.edge_subset(16) == [f"{f}_{d}" for d in by_dir for f in ("kirsch", "sobel")]
    assert kb.edge_subset(24) == [
        f"{f}_{d}" for d in by_dir for f in ("kirsch", "prewitt", "sobel")
    ]
    assert kb.edge_subset(32) == [f"{f}_{d}" for d in by_dir for f in kb.EDGE_FAMILIES]
    assert kb.edge_subset(4) == ["sobel_e", "sobel_n", "sobel_w", "sobel_s"]
    with pytest.raises(ConvscopeError, match=r"^n_edges must be one of 32, 24, 16, 8, 4; got 12$"):
        kb.edge_subset(12)
    assert [k.name for k in kb.gfnn_bank()] == kb.edge_subset(32) + list(TAIL)[:8]
    small = kb.gfnn_bank(first_order=True, n_edges=4)
    assert [k.name for k in small] == kb.edge_subset(4) + list(TAIL)
    assert kb.names("blur") == ["box_blur", "gaussian_blur", "gaussian_5x5", "gaussian_sigma1"]
    assert kb.names(None) == kb.names() and len(kb.names()) == 48 + 13


def test_get_aliases_and_unknown_names() -> None:
    assert kb.get("laplacian_9") is kb.get("sharpen_8")
    assert kb.get("gaussian_3x3") is kb.get("gaussian_blur")
    assert kb.get("box").name == "box_blur"
    with pytest.raises(
        ConvscopeError,
        match=r"^unknown kernel 'sobel'; `convscope kernels list` prints the names$",
    ) as err:
        kb.get("sobel")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_output_size_edges_and_errors() -> None:
    assert kb.output_size(5, 5) == 1  # the window exactly fills the input
    assert kb.output_size(3, 5, padding=1) == 1
    assert kb.output_size(10, 3, 1, 3) == 4  # floor((10 + 2 - 3) / 3) + 1
    n = kb.output_size(8, 3, 0, 2)  # floor(5 / 2) + 1: the floor matters
    assert n == 3 and isinstance(n, int)
    assert kb.output_size(6, 1) == 6
    with pytest.raises(ConvscopeError, match=r"^stride must be >= 1, got 0$"):
        kb.output_size(5, 3, stride=0)
    with pytest.raises(ConvscopeError, match=r"^padding must be >= 0, got -1$"):
        kb.output_size(5, 3, padding=-1)
    with pytest.raises(
        ConvscopeError, match=r"^window of size 0 does not fit an input of size 5 with padding 0$"
    ):
        kb.output_size(5, 0)
    with pytest.raises(ConvscopeError, match=r"with padding 1$"):
        kb.output_size(2, 5, padding=1)


def test_correlate_and_convolve_defaults_bias_and_channels() -> None:
    rng = np.random.default_rng(3)
    img = rng.standard_normal((7, 6, 2))
    k2 = rng.standard_normal((3, 3))
    # a 2-D kernel on a 2-channel image: the same kernel on each channel, summed
    ref = sum(kb.correlate2d(img[..., c], k2) for c in range(2))
    np.testing.assert_allclose(kb.correlate2d(img, k2), ref, rtol=1e-12)
    np.testing.assert_allclose(kb.correlate2d(img, k2, bias=0.5), ref + 0.5, rtol=1e-12)
    # convolve passes stride, padding and bias on (against torch, with the kernel flipped)
    x = torch.from_numpy(img[..., 0])[None, None]
    w = torch.from_numpy(k2[::-1, ::-1].copy())[None, None]
    ref = F.conv2d(x, w, stride=2, padding=1)[0, 0].numpy() - 1.5
    got = kb.convolve2d(img[..., 0], k2, stride=2, padding=1, bias=-1.5)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # a 5x5 kernel with padding 2 keeps the size
    assert kb.correlate2d(img[..., 0], np.ones((5, 5)), padding=2).shape == (7, 6)
    with pytest.raises(
        ConvscopeError, match=r"^kernel must be \(f, f\) or \(f, f, C\), got shape \(3, 2\)$"
    ):
        kb.correlate2d(img[..., 0], np.ones((3, 2)))
    with pytest.raises(
        ConvscopeError, match=r"^kernel must be \(f, f\) or \(f, f, C\), got shape \(3,\)$"
    ):
        kb.convolve2d(img[..., 0], np.ones(3))
    with pytest.raises(ConvscopeError, match=r"^kernel has 2 channels but the image has 3$"):
        kb.correlate2d(np.zeros((5, 5, 3)), np.zeros((3, 3, 2)))
    with pytest.raises(
        ConvscopeError, match=r"^image must be \(H, W\) or \(H, W, C\), got shape \(5,\)$"
    ):
        kb.correlate2d(np.zeros(5), np.zeros((3, 3)))


def test_filter_image_against_scipy() -> None:
    from scipy.ndimage import correlate

    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (9, 8, 3)).astype(np.uint8)
    w = kb.get("sharpen_8").weight
    ref = np.stack(
        [correlate(rgb[..., c].astype(float), w, mode="constant") for c in range(3)], axis=-1
    )
    raw = kb.filter_image(rgb, "sharpen_8", clip=False)
    assert raw.dtype == np.float64 and raw.shape == rgb.shape
    np.testing.assert_allclose(raw, ref, rtol=1e-12, atol=1e-9)
    assert raw.min() < 0 and raw.max() > 255  # so the clipping below is exercised
    shown = kb.filter_image(rgb, kb.get("sharpen_8"))
    assert shown.dtype == np.uint8
    np.testing.assert_array_equal(shown, np.clip(np.rint(ref), 0, 255))
    gray = rgb[..., 0]
    out = kb.filter_image(gray, np.ones((3, 3)) / 9, clip=False)
    assert out.shape == gray.shape
    np.testing.assert_allclose(out, correlate(gray.astype(float), np.ones((3, 3)) / 9,
                                              mode="constant"), rtol=1e-12)  # fmt: skip
    # rounding, not truncation: 1.6 shows as 2
    assert kb.filter_image(np.full((3, 3), 16), np.full((1, 1), 0.1))[1, 1] == 2
    # a 5x5 kernel keeps the size too (padding f // 2 = 2)
    five = kb.filter_image(gray, "gaussian_5x5", clip=False)
    assert five.shape == gray.shape
    np.testing.assert_allclose(
        five,
        correlate(gray.astype(float), kb.get("gaussian_5x5").weight, mode="constant"),
        rtol=1e-12,
    )


def test_convolve_a_multichannel_kernel_and_bad_strides() -> None:
    rng = np.random.default_rng(5)
    img, k = rng.standard_normal((6, 7, 3)), rng.standard_normal((3, 3, 3))
    np.testing.assert_allclose(
        kb.convolve2d(img, k, stride=2), kb.correlate2d(img, k[::-1, ::-1], stride=2), rtol=1e-12
    )
    for f in (kb.correlate2d, kb.convolve2d):
        with pytest.raises(ConvscopeError, match=r"^stride must be >= 1, got 0$"):
            f(img, k, stride=0)
        with pytest.raises(ConvscopeError, match=r"^padding must be >= 0, got -1$"):
            f(img, k, padding=-1)
    # every output size of the sliding window, against torch, for strides 1-4
    x = torch.from_numpy(img[..., 0])[None, None]
    for stride in range(1, 5):
        for padding in range(3):
            ref = F.conv2d(x, torch.from_numpy(k[..., :1].transpose(2, 0, 1).copy())[None],
                           stride=stride, padding=padding)[0, 0].numpy()  # fmt: skip
            got = kb.correlate2d(img[..., 0], k[..., 0], stride=stride, padding=padding)
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
