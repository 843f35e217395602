"""Super-resolution models: bicubic upscaler, ESPCN, EDSR-baseline, helpers, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

from convscope.data import prepare_for_model, sample_photo
from convscope.errors import ConvscopeError
from convscope.models import (
    ESPCN,
    BicubicUpscaler,
    EDSRBaseline,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from convscope.models.sr import DIV2K_RGB_MEAN, bicubic_phase_weights, downscale, psnr

TRAINED = Path(__file__).resolve().parents[1] / "experiments" / "results" / "espcn" / "espcn_x4.pt"


def _photo(name: str, top: int, left: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """A (1, 3, size, size) crop of a sample photo in [0, 1]."""
    arr = sample_photo(name)[top : top + size, left : left + size]
    return torch.from_numpy(arr.astype(np.float64) / 255.0).permute(2, 0, 1)[None].to(dtype)


# --------------------------------------------------------------------------------------------
# Bicubic upscaler


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_equals_interpolate_on_a_photo(scale: int) -> None:
    x = _photo("astronaut", 100, 150, 40, torch.float64)
    ours = BicubicUpscaler(scale, channels=3)(x)
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert ours.shape == ref.shape == (1, 3, 40 * scale, 40 * scale)
    diff = (ours - ref).abs()
    # Borders (where PyTorch clamps indices) and interior checked separately.
    b = 3 * scale
    interior = diff[..., b:-b, b:-b]
    border = diff.clone()
    border[..., b:-b, b:-b] = 0
    assert interior.max() < 1e-12
    assert border.max() < 1e-12


def test_bicubic_grey_photo_and_float32() -> None:
    x = prepare_for_model(_photo("camera", 0, 0, 33, torch.float32), 1)  # odd size, a corner
    ours = BicubicUpscaler(4, 1)(x)
    ref = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    x64 = x.double()
    ref64 = F.interpolate(x64, scale_factor=4, mode="bicubic", align_corners=False)
    assert (BicubicUpscaler(4, 1)(x64) - ref64).abs().max() < 1e-12


def test_bicubic_phase_weights() -> None:
    for scale in (2, 3, 4):
        w, pad = bicubic_phase_weights(scale)
        assert w.shape == (scale, 2 * pad + 1)
        torch.testing.assert_close(w.sum(1), torch.ones(scale, dtype=torch.float64))
    w, _ = bicubic_phase_weights(4)
    # Phase 0 samples at offset -0.375: Keys' weights at distances 1.625, 0.625, 0.375, 1.375.
    a = -0.75
    cubic1 = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # noqa: E731
    cubic2 = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # noqa: E731
    expected = [cubic2(1.625), cubic1(0.625), cubic1(0.375), cubic2(1.375), 0.0]
    torch.testing.assert_close(w[0], torch.tensor(expected, dtype=torch.float64))


def test_bicubic_is_fixed_with_zero_residual() -> None:
    model = BicubicUpscaler(4, 1)
    assert list(model.parameters()) == []
    assert "weight" in dict(model.named_buffers())
    zero = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    assert torch.equal(model(zero), torch.zeros(1, 1, 48, 48, dtype=torch.float64))


def test_bicubic_jacobian_is_space_invariant_inside() -> None:
    model = BicubicUpscaler(4, 1)
    x0 = torch.rand(1, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jac = jacrev(model)(x0).reshape(48, 48, 12, 12)
    # Linear with no residual: the Jacobian reproduces the output exactly.
    torch.testing.assert_close(
        torch.einsum("abij,ij->ab", jac, x0[0, 0]), model(x0)[0, 0], atol=1e-14, rtol=0
    )

    # A column (projective filter) lives in the 20x20 window 4 (i - 2) .. 4 (i + 2) + 3 and is
    # the same kernel for every input pixel not on the border row/column (which PyTorch
    # clamps: they also absorb the weights of the missing neighbours).
    def window(i: int, j: int) -> torch.Tensor:
        col = jac[:, :, i, j]
        lo_i, lo_j = max(4 * i - 8, 0), max(4 * j - 8, 0)
        inside = col[lo_i : 4 * i + 12, lo_j : 4 * j + 12]
        assert float(inside.abs().sum()) == pytest.approx(float(col.abs().sum()), abs=1e-15)
        return inside

    ref = window(5, 5)
    assert ref.shape == (20, 20)
    assert float(ref.sum()) == pytest.approx(16.0, abs=1e-12)  # 4x4 outputs per input pixel
    for i, j in [(2, 2), (2, 9), (9, 2), (7, 4), (9, 9)]:
        assert torch.equal(window(i, j), ref)
    assert not torch.allclose(window(0, 5), ref[8:])
    # Rows (receptive filters) of interior outputs of the same phase are equal too.
    rows = jac.reshape(48, 48, 144)
    r1 = rows[20, 21].reshape(12, 12)
    r2 = rows[28, 33].reshape(12, 12)  # same phase, two pixels down, three right
    assert torch.equal(torch.roll(r1, (2, 3), (0, 1)), r2)


def test_bicubic_bad_arguments() -> None:
    with pytest.raises(ConvscopeError, match="scale"):
        BicubicUpscaler(5)
    with pytest.raises(ConvscopeError, match="scale"):
        BicubicUpscaler(2.0)  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="channels"):
        BicubicUpscaler(4, 0)
    with pytest.raises(ConvscopeError, match=r"\(N, 1, H, W\)"):
        BicubicUpscaler(4, 1)(torch.rand(1, 3, 8, 8))


# --------------------------------------------------------------------------------------------
# ESPCN and EDSR


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_espcn_shapes(scale: int, channels: int) -> None:
    model = ESPCN(scale, channels, features=(8, 8, 4))
    assert model(torch.rand(2, channels, 7, 9)).shape == (2, channels, 7 * scale, 9 * scale)


def test_espcn_is_the_4_layer_pytorch_example() -> None:
    model = ESPCN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 64, (5, 5)),
        (64, 64, (3, 3)),
        (64, 32, (3, 3)),
        (32, 16, (3, 3)),
    ]
    assert sum(p.numel() for p in model.parameters()) == 61_680
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 3
    shi = ESPCN(features=(64, 32), activation="tanh")
    assert sum(isinstance(m, torch.nn.Tanh) for m in shi.modules()) == 2
    assert sum(isinstance(m, torch.nn.Conv2d) for m in shi.modules()) == 3
    with pytest.raises(ConvscopeError, match="activation"):
        ESPCN(activation="gelu")
    with pytest.raises(ConvscopeError, match="scale"):
        ESPCN(scale=8)
    with pytest.raises(ConvscopeError, match="features"):
        ESPCN(features=())


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_edsr_shapes(scale: int) -> None:
    model = EDSRBaseline(scale, channels=3, n_resblocks=2, n_feats=8)
    assert model(torch.rand(1, 3, 6, 5)).shape == (1, 3, 6 * scale, 5 * scale)
    grey = EDSRBaseline(scale, channels=1, n_resblocks=1, n_feats=4)
    assert grey(torch.rand(2, 1, 4, 4)).shape == (2, 1, 4 * scale, 4 * scale)


def test_edsr_baseline_layout_and_mean_shift() -> None:
    model = EDSRBaseline()
    # EDSR-baseline x4 has about 1.5 M parameters (Lim et al. 2017, Table 1).
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_517_571
    assert sum(isinstance(m, torch.nn.PixelShuffle) for m in model.modules()) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model.sub_mean.bias is not None and not model.sub_mean.bias.requires_grad
    torch.testing.assert_close(model.sub_mean.bias, -torch.tensor(DIV2K_RGB_MEAN))
    # With every learned weight zero, the head sees x - mean and outputs 0, so all that is
    # left is the mean added back at the end: the shift is a constant, not a learned layer.
    small = EDSRBaseline(2, n_resblocks=1, n_feats=4)
    for p in small.parameters():
        if p.requires_grad:
            torch.nn.init.zeros_(p)
    out = small(torch.rand(1, 3, 3, 3))
    torch.testing.assert_close(
        out, torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1).expand(1, 3, 6, 6)
    )
    assert isinstance(
        EDSRBaseline(channels=1, n_resblocks=0, n_feats=4).sub_mean, torch.nn.Identity
    )
    with pytest.raises(ConvscopeError, match="rgb_mean"):
        EDSRBaseline(channels=1, rgb_mean=(0.1, 0.2))
    with pytest.raises(ConvscopeError, match="scale"):
        EDSRBaseline(scale=1)
    with pytest.raises(ConvscopeError, match=r"\(N, 3, H, W\)"):
        EDSRBaseline(n_resblocks=0, n_feats=4)(torch.rand(1, 1, 4, 4))


def test_float64() -> None:
    x = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    assert ESPCN(features=(4, 4)).double()(x).dtype == torch.float64
    y = EDSRBaseline(channels=1, n_resblocks=1, n_feats=4).double()(x)
    assert y.dtype == torch.float64 and y.shape == (1, 1, 20, 24)


# --------------------------------------------------------------------------------------------
# Helpers and checkpoints


def test_downscale_and_psnr() -> None:
    hr = _photo("chelsea", 40, 80, 64, torch.float32)
    lr = downscale(hr, 4)
    assert lr.shape == (1, 3, 16, 16) and 0.0 <= float(lr.min()) and float(lr.max()) <= 1.0
    with pytest.raises(ConvscopeError, match="multiples of 4"):
        downscale(hr[..., :63], 4)
    assert psnr(hr, hr) == float("inf")
    grey = torch.full_like(hr, 0.5)
    assert psnr(grey + 0.1, grey) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    # pred is clamped to [0, 1] first, as a stored SR output would be.
    assert psnr(grey + 2.0, grey) == pytest.approx(psnr(torch.ones_like(hr), grey))
    assert psnr(grey + 0.1, grey, shave=4) == pytest.approx(20.0, abs=1e-4)
    with pytest.raises(ConvscopeError, match="shapes differ"):
        psnr(hr, lr)


@pytest.mark.parametrize(
    ("arch", "kwargs", "shape"),
    [
        ("bicubic", {"scale": 3, "channels": 2}, (1, 2, 5, 6)),
        ("espcn", {"scale": 2, "features": [6, 4]}, (1, 1, 5, 6)),
        ("edsr_baseline", {"scale": 4, "n_resblocks": 1, "n_feats": 4}, (1, 3, 5, 6)),
    ],
)
def test_checkpoint_round_trip(
    tmp_path: Path, arch: str, kwargs: dict, shape: tuple[int, ...]
) -> None:
    model = build_model(arch, **kwargs)
    path = save_checkpoint(tmp_path / f"{arch}.pt", model, extra={"note": "x"})
    loaded, extra = load_checkpoint(path)
    assert type(loaded) is type(model) and extra == {"note": "x"}
    x = torch.rand(*shape)
    torch.testing.assert_close(loaded(x), model.eval()(x), atol=0, rtol=0)


def test_trained_espcn_beats_bicubic_on_a_held_out_crop() -> None:
    if not TRAINED.is_file():
        pytest.skip(f"{TRAINED} not found: run experiments/train_sr.py")
    model, extra = load_checkpoint(TRAINED)
    assert isinstance(model, ESPCN) and model.scale == 4
    assert "astronaut" in extra["test_photos"]  # held out from training
    hr = prepare_for_model(_photo("astronaut", 64, 192, 64, torch.float32), 1)
    lr = downscale(hr, 4)
    with torch.no_grad():
        ours = psnr(model(lr), hr, shave=4)
        ref = psnr(BicubicUpscaler(4, 1)(lr), hr, shave=4)
    assert ours > ref
