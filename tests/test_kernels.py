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
