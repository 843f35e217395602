"""convscope.spectral, function by function, against values computed another way.

NumPy's FFT and window, autograd on hand-built models, hand-computed ring means and
second differences, the least-squares slope from numpy.polyfit, and the exact text of
every error.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from convscope import spectral as sp
from convscope.errors import ConvscopeError


def _err(text: str) -> str:
    return "^" + re.escape(text) + "$"


# -- impulse_image ---------------------------------------------------------------------


def test_impulse_image_values_and_preprocessing() -> None:
    x = sp.impulse_image((2, 5, 6))
    assert x.shape == (1, 2, 5, 6) and x.dtype == torch.float32
    ref = np.zeros((1, 2, 5, 6), dtype=np.float32)
    ref[0, :, 2, 3] = 1.0  # 255 at the centre (H // 2, W // 2), times 1/255
    np.testing.assert_array_equal(x.numpy(), ref)
    # (1, C, H, W) is accepted; value, scale, mean and std each do what they say
    y = sp.impulse_image(
        (1, 2, 4, 4), value=10.0, scale=0.5, mean=[0.1, 0.2], std=[0.3, 0.7],
        dtype=torch.float64,
    )  # fmt: skip
    assert y.dtype == torch.float64
    raw = np.zeros((2, 4, 4))
    raw[:, 2, 2] = 10.0
    want = (raw * 0.5 - np.array([0.1, 0.2])[:, None, None]) / np.array([0.3, 0.7])[:, None, None]
    np.testing.assert_allclose(y[0].numpy(), want, rtol=1e-15, atol=1e-15)  # float64 throughout
    assert sp.impulse_image((1, 3, 3), device="meta").device.type == "meta"
    assert sp.impulse_image((1, 1, 1))[0, 0, 0, 0] == 1.0  # a 1x1 image is its own centre
    for bad in ((3, 4), (2, 0, 4), (2, 2, 3, 4), (1, 1, 3, 4, 5)):
        with pytest.raises(
            ConvscopeError, match=_err(f"impulse_image needs a shape (C, H, W), got {bad}")
        ):
            sp.impulse_image(bad)


# -- hann_window2d and spectrum_db ------------------------------------------------------


def test_hann_window2d_dtype_device_and_degenerate_sides() -> None:
    assert sp.hann_window2d(4, 5).dtype == torch.float64
    w = sp.hann_window2d(4, 1, dtype=torch.float32)
    assert w.dtype == torch.float32 and w.shape == (4, 1)
    np.testing.assert_allclose(w[:, 0].numpy(), np.hanning(4), atol=1e-7)
    one = sp.hann_window2d(1, 1)
    assert one.dtype == torch.float64 and torch.equal(one, torch.ones(1, 1, dtype=torch.float64))
    # two samples: the symmetric window is zero at both ends, so all of it
    two = np.outer(np.hanning(2), np.hanning(3))
    np.testing.assert_array_equal(sp.hann_window2d(2, 3).numpy(), two)
    np.testing.assert_array_equal(sp.hann_window2d(3, 2).numpy(), np.zeros((3, 2)))
    assert sp.hann_window2d(3, 3, device="meta").device.type == "meta"


def test_spectrum_db_against_numpy_without_window_and_its_floor() -> None:
    d = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 5, 4)))
    ref = 20 * np.log10(np.abs(np.fft.fftshift(np.fft.fft2(d.numpy()), axes=(-2, -1))))
    got = sp.spectrum_db(d, None)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-9)
    # float32 input is computed in float64
    np.testing.assert_allclose(sp.spectrum_db(d.float(), None).numpy(), ref, atol=1e-4)
    # DC sits at (H // 2, W // 2) after the shift: a constant map is all DC
    c = sp.spectrum_db(torch.full((4, 6), 2.0), None)
    assert c[2, 3] == pytest.approx(20 * math.log10(2.0 * 24)) and c.argmax() == 2 * 6 + 3
    zero = sp.spectrum_db(torch.zeros(3, 3), None)
    tiny = 20 * math.log10(torch.finfo(torch.float64).tiny)
    assert torch.equal(zero, torch.full((3, 3), tiny, dtype=torch.float64))
    with pytest.raises(ConvscopeError, match=_err("window must be 'hann' or None, got 'hamming'")):
        sp.spectrum_db(d, "hamming")  # type: ignore[arg-type]
    # the default window is Hann
    torch.testing.assert_close(sp.spectrum_db(d), sp.spectrum_db(d, "hann"), rtol=0, atol=0)


# -- data_derivative, transfer_function, maximum_gain ----------------------------------


class _Linear(nn.Module):
    """logits = W x (flattened), so every derivative is known in closed form."""

    def __init__(self, c: int = 2, h: int = 3, w: int = 4, classes: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(
            torch.randn(classes, c * h * w, generator=g, dtype=torch.float64)
        )
        self.in_channels, self.input_size = c, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


def test_data_derivative_on_logits_targets_and_projection() -> None:
    m = _Linear()
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    rows = m.weight.detach().view(3, 2, 3, 4)
    # on the logits with p_i = 1, the derivative is the target's row of W
    d = sp.data_derivative(m, x, target=[2, 0, 1], on="logit")
    torch.testing.assert_close(d, rows[[2, 0, 1]], rtol=0, atol=0)
    # one target for the whole batch, as an int or a tensor
    torch.testing.assert_close(sp.data_derivative(m, x, target=1, on="logit"), rows[[1, 1, 1]])
    torch.testing.assert_close(
        sp.data_derivative(m, x, target=torch.tensor([1]), on="logit"), rows[[1, 1, 1]]
    )
    # no target: each image's winning class
    win = m(x).argmax(1)
    torch.testing.assert_close(sp.data_derivative(m, x, on="logit"), rows[win])
    # a (C, H, W) image is a batch of one
    assert sp.data_derivative(m, x[0], target=0, on="logit").shape == (1, 2, 3, 4)
    # a projection weights the raw outputs: shaped like one output, or like the batch's
    p = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    want = torch.einsum("k,kchw->chw", p, rows).expand(3, -1, -1, -1)
    torch.testing.assert_close(sp.data_derivative(m, x, projection=p), want)
    pb = torch.randn(3, 3, dtype=torch.float64)
    torch.testing.assert_close(sp.data_derivative(m, x, projection=pb),
                               torch.einsum("nk,kchw->nchw", pb, rows))  # fmt: skip
    # the input is not changed and its gradient is not touched
    x0 = x.clone()
    sp.data_derivative(m, x, target=0)
    assert torch.equal(x, x0) and x.grad is None and not x.requires_grad


def test_data_derivative_softmax_against_autograd() -> None:
    m = _Linear()
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    probs = torch.softmax(m(xg), 1)
    for n, t in enumerate((2, 0)):
        (g,) = torch.autograd.grad(probs[n, t], xg, retain_graph=True)
        want = g[n] / probs[n, t].detach()  # p_i = 1 / score_i: the log-softmax's gradient
        got = sp.data_derivative(m, x, target=[2, 0])[n]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        (glog,) = torch.autograd.grad(torch.log_softmax(m(xg), 1)[n, t], xg)
        torch.testing.assert_close(got, glog[n], rtol=1e-12, atol=1e-14)


def test_data_derivative_errors() -> None:
    m = _Linear()
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    with pytest.raises(ConvscopeError, match=_err("on must be 'softmax' or 'logit', got 'probs'")):
        sp.data_derivative(m, x, on="probs")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match=_err(
            "projection has shape (4,) but the output is (2, 3)")):  # fmt: skip
        sp.data_derivative(m, x, projection=torch.ones(4))
    for target in (3, -1, [0, 1, 2]):
        with pytest.raises(ConvscopeError, match=_err(
                f"target {target} does not fit 2 images and 3 classes")):  # fmt: skip
            sp.data_derivative(m, x, target=target)
    flat = nn.Sequential(nn.Flatten(0)).double()
    with pytest.raises(ConvscopeError, match=_err(
            "the model returns (48,), not (N, classes): pass a projection")):  # fmt: skip
        sp.data_derivative(flat, x)
    with pytest.raises(ConvscopeError, match=_err(
            "expected an image (C, H, W) or a batch (N, C, H, W), got (3, 4)")):  # fmt: skip
        sp.data_derivative(m, torch.zeros(3, 4))


def test_transfer_function_and_maximum_gain_by_hand() -> None:
    m = _Linear(c=2, h=4, w=4)
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    rows = m.weight.detach().view(3, 2, 4, 4)
    spec, d = sp.transfer_function(m, x, target=1, channel=1, window=None, on="logit")
    torch.testing.assert_close(d, rows[1, 1])
    ref = 20 * np.log10(np.abs(np.fft.fftshift(np.fft.fft2(rows[1, 1].numpy()))))
    np.testing.assert_allclose(spec.numpy(), ref, rtol=1e-12)
    # the defaults: channel 0, Hann window, softmax
    spec0, d0 = sp.transfer_function(m, x, target=1)
    torch.testing.assert_close(d0, sp.data_derivative(m, x, target=1)[0, 0])
    torch.testing.assert_close(spec0, sp.spectrum_db(d0, "hann"))
    for ch in (-1, 2):
        with pytest.raises(ConvscopeError, match=_err(
                f"channel {ch} does not exist: the image has 2")):  # fmt: skip
            sp.transfer_function(m, x, channel=ch)
    with pytest.raises(ConvscopeError, match=_err(
            "transfer_function takes one image; use data_derivative for batches")):  # fmt: skip
        sp.transfer_function(m, torch.zeros(2, 2, 4, 4, dtype=torch.float64))
    # maximum_gain: the peak of each channel's spectrum, at the impulse image by default
    imp = sp.impulse_image((2, 4, 4), dtype=torch.float64)
    want = [float(sp.spectrum_db(sp.data_derivative(m, imp)[0, c]).max()) for c in range(2)]
    assert sp.maximum_gain(m) == pytest.approx(want, rel=1e-12)  # shape from in_channels/size
    d_logit = sp.data_derivative(m, x, target=2, on="logit")[0]
    assert sp.maximum_gain(m, x, target=2, window=None, on="logit") == pytest.approx(
        [float(sp.spectrum_db(d_logit[c], None).max()) for c in range(2)], rel=1e-12
    )
    proj = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    dp = sp.data_derivative(m, x, projection=proj)[0]
    assert sp.maximum_gain(m, x, projection=proj) == pytest.approx(
        [float(sp.spectrum_db(dp[c]).max()) for c in range(2)], rel=1e-12
    )
    with pytest.raises(ConvscopeError, match=_err("maximum_gain takes one image")):
        sp.maximum_gain(m, torch.zeros(2, 2, 4, 4, dtype=torch.float64))


def test_maximum_gain_impulse_follows_the_model_dtype_and_shape() -> None:
    m = _Linear(c=1, h=4, w=4).float()
    seen = []
    m.register_forward_pre_hook(lambda _m, a: seen.append((a[0].dtype, tuple(a[0].shape))))
    sp.maximum_gain(m, shape=(1, 4, 4))
    assert seen == [(torch.float32, (1, 1, 4, 4))]

    class NoParams(nn.Module):
        input_shape = (1, 2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x.sum((1, 2, 3)), 2 * x.sum((1, 2, 3))], 1)

    gains = sp.maximum_gain(NoParams(), window=None, on="logit")  # float32 impulse, no params
    d = torch.ones(2, 2)  # the winning logit is 2 * sum: derivative 2 everywhere
    assert gains == pytest.approx([20 * math.log10(2 * 4)], rel=1e-6)
    assert float(sp.spectrum_db(2 * d, None).max()) == pytest.approx(gains[0], rel=1e-6)


def test_model_input_shape() -> None:
    assert sp.model_input_shape(SimpleNamespace(input_shape=[3, 8, 9])) == (3, 8, 9)  # type: ignore[arg-type]
    assert sp.model_input_shape(SimpleNamespace(in_channels=1, input_size=28)) == (1, 28, 28)  # type: ignore[arg-type]
    for obj in (SimpleNamespace(in_channels=1), SimpleNamespace(input_size=28), nn.Identity()):
        with pytest.raises(ConvscopeError, match=_err(
                f"cannot tell the input shape of {type(obj).__name__}: pass shape=(C, H, W) "
                "(on the command line: --shape C,H,W)")):  # fmt: skip
            sp.model_input_shape(obj)  # type: ignore[arg-type]


# -- radial_profile -------------------------------------------------------------------


def test_radial_profile_against_a_loop() -> None:
    rng = np.random.default_rng(2)
    # (2, 14, 7) and (5, 10, 3): frequencies that land on a ring's edge, where float32 ones would
    # put them in another ring
    for h, w, bins in ((8, 8, None), (7, 10, 3), (6, 9, 1), (5, 5, 6), (2, 14, 7), (5, 10, 3)):
        spec = rng.standard_normal((2, h, w))
        prof, centres = sp.radial_profile(torch.from_numpy(spec), bins)
        n = bins if bins is not None else min(h, w) // 2
        fy = np.fft.fftshift(np.fft.fftfreq(h))
        fx = np.fft.fftshift(np.fft.fftfreq(w))
        sums, counts = np.zeros((2, n)), np.zeros(n)
        for i in range(h):
            for j in range(w):
                r = math.hypot(fy[i], fx[j])
                if r > 0.5:
                    continue
                k = min(int(r / 0.5 * n), n - 1)
                sums[:, k] += spec[:, i, j]
                counts[k] += 1
        with np.errstate(invalid="ignore"):
            want = sums / counts
        assert prof.shape == (2, n) and prof.dtype == torch.float64
        np.testing.assert_allclose(prof.numpy(), want, rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(centres.numpy(), (np.arange(n) + 0.5) * 0.5 / n, rtol=1e-15)
    # a map of its own radius: each ring's mean lies inside the ring
    prof, centres = sp.radial_profile(torch.ones(16, 16))
    assert torch.equal(prof, torch.ones(8, dtype=torch.float64))
    with pytest.raises(ConvscopeError, match=_err("bins must be at least 1; got 0")):
        sp.radial_profile(torch.ones(4, 4), bins=0)
    assert sp.radial_profile(torch.ones(1, 1))[0].shape == (1,)  # min(H, W) // 2 = 0: one ring


# -- variability, diagnose ---------------------------------------------------------------


def _trimmed_mean_d2(v: list[float]) -> float:
    d2 = np.sort(np.abs(np.diff(np.asarray(v, dtype=float), 2)))
    return float(d2[: len(d2) - len(d2) // 8].mean())


def test_variability_by_hand() -> None:
    assert sp.variability([1.0, 5.0]) == 0.0 and sp.variability([]) == 0.0
    assert sp.variability([0.0, 1.0, 0.0]) == 2.0  # |1 - 0 - 2 * 1| ... one second difference
    assert sp.variability([0, 1, 2, 3, 4, 5]) == 0.0  # a steady rise is smooth
    rng = np.random.default_rng(3)
    for n in (3, 8, 9, 17, 20):
        v = list(rng.standard_normal(n) * 3)
        assert sp.variability(v) == pytest.approx(_trimmed_mean_d2(v), rel=1e-12)
    # with 9 second differences the largest one is dropped: the knee
    v = [0.0] * 5 + [10.0] + [10.0] * 5  # d2: 0 0 0 10 -10 0 0 0 0  (sorted |.|: 7 zeros, 10, 10)
    assert sp.variability(v) == pytest.approx(10 / 8)
    # None and non-finite epochs are left out before differencing
    assert sp.variability([0.0, None, 1.0, math.nan, 0.0, math.inf]) == 2.0  # type: ignore[list-item]


def _slope(tail: list[float]) -> float:
    return float(np.polyfit(np.arange(len(tail)), tail, 1)[0])


def test_diagnose_numbers_and_thresholds() -> None:
    curve = [-30, -29, -27.5, -26, -25, -24.8, -23.5, -22, -21.9, -21, -20, -19.7]
    d = sp.diagnose(curve)
    assert d.variability == pytest.approx(sp.variability(curve))
    assert d.early_variability == pytest.approx(sp.variability(curve[:6]))
    assert d.late_variability == pytest.approx(sp.variability(curve[6:]))
    assert d.late_slope == pytest.approx(_slope(curve[-4:]), rel=1e-12)  # the last third
    assert d.pattern == "too low or keep training" and d.advice == sp.ADVICE[d.pattern]
    # the thresholds move the answer exactly at their values
    assert sp.diagnose(curve, slope=d.late_slope * 1.001).pattern == "converging"
    assert sp.diagnose(curve, slope=d.late_slope * 0.999).pattern == "too low or keep training"
    v = d.variability
    assert sp.diagnose(curve, high=v * 0.999).pattern == "rate too high"
    assert sp.diagnose(curve, high=v).pattern != "rate too high"  # strictly above
    # overfitting: the late half above high, the early half at most high / 2
    late = [1, 1, 1, 1, 1, 1, 1, 4, 0, 4, 0, 4, 0, 4]
    od = sp.diagnose(late, high=1.0)
    assert (
        od.early_variability == 0 and od.late_variability > 1 and od.pattern == "overfitting - stop"
    )
    e = od.late_variability  # early <= high / 2 holds at equality, not above it
    bumpy = [1, 1.25, 1, 1.25, 1, 1.25, 1, 4, 0, 4, 0, 4, 0, 4]
    bd = sp.diagnose(bumpy, high=2 * sp.variability(bumpy[:7]))
    assert bd.late_variability > 2 * bd.early_variability
    assert bd.pattern == "overfitting - stop"
    assert sp.diagnose(bumpy, high=2 * sp.variability(bumpy[:7]) * 0.999).pattern != (
        "overfitting - stop"
    )
    assert sp.diagnose(late, high=e).pattern != "overfitting - stop"  # late must exceed high
    # an 8-epoch curve: the slope over max(3, 8 // 3) = 3 epochs
    eight = [0, 1, 2, 2.5, 2.8, 3.0, 3.3, 3.9]
    assert sp.diagnose(eight).late_slope == pytest.approx(_slope(eight[-3:]), rel=1e-12)


def test_diagnose_reads_every_history_shape() -> None:
    curve = [float(v) for v in range(10)]
    want = sp.diagnose(curve)
    forms = [
        {"max_gain": curve},
        {"extra": {"max_gain": curve}},
        {"history": {"extra": {"max_gain": curve}}},
        {"history": {"max_gain": curve}},
        SimpleNamespace(extra={"max_gain": curve}),
        [None, *curve],  # a missing epoch is skipped
    ]
    for h in forms:
        assert sp.diagnose(h) == want, h
    assert sp.diagnose({"loss_mg": curve}, key="loss_mg") == want
    for h in ({"train_loss": curve}, {"extra": {"other": curve}}, SimpleNamespace(extra={})):
        with pytest.raises(ConvscopeError, match=_err(
                "no 'max_gain' series in the history; train with "
                "convscope.train.MaxGainCallback")):  # fmt: skip
            sp.diagnose(h)


def test_diagnose_names_a_diverged_run_whatever_its_length() -> None:
    from convscope.train import History

    smooth = [float(v) for v in range(12)]
    for curve, epoch in (([1.0, 2.0, math.nan, math.nan], 3), ([*smooth, math.inf], 13)):
        d = sp.diagnose(curve)
        assert d.pattern == "rate too high", d
        assert d.advice == (
            f"the training diverged at epoch {epoch} (its loss or Maximum Gain is no longer "
            "finite): lower the learning rate"
        )
    # metrics.json writes a NaN loss as None; the gain's None cells stay "not measured"
    blown = {"train_loss": [2.0, 1.0, None, None], "extra": {"max_gain": [1.0, 2.0, None, None]}}
    assert sp.diagnose(blown).advice.startswith("the training diverged at epoch 3 ")
    assert sp.diagnose({"history": blown}).pattern == "rate too high"
    h = History(train_loss=[2.0, math.nan] + [1.0] * 10, extra={"max_gain": smooth})
    assert sp.diagnose(h).advice.startswith("the training diverged at epoch 2 ")
    fine = {"train_loss": [1.0] * 12, "extra": {"max_gain": [None, *smooth[1:]]}}
    assert sp.diagnose(fine) == sp.diagnose(smooth[1:])  # a missing gain is skipped


def test_diagnose_short_and_diverged_answers_carry_their_numbers() -> None:
    for curve in ([0.0, 3.0, 1.0, 4.0, 0.5, 5.0], [0.0, 3.0, 1.0, 4.0, math.nan]):
        finite = [v for v in curve if math.isfinite(v)]
        d = sp.diagnose(curve)
        half = len(finite) // 2
        assert d.variability == sp.variability(finite)
        assert d.early_variability == sp.variability(finite[:half])
        assert d.late_variability == sp.variability(finite[half:])
        tail = finite[-3:]
        assert d.late_slope == pytest.approx(_slope(tail), rel=1e-12)
    # a slope exactly at the threshold is not "still rising"
    curve = [-30, -29, -27.5, -26, -25, -24.8, -23.5, -22, -21.9, -21, -20, -19.7]
    s = sp.diagnose(curve).late_slope
    assert sp.diagnose(curve, slope=s).pattern == "converging"
    # a top-level training loss is read before a nested history
    mixed = {"train_loss": [1.0, None], "history": {"train_loss": [1.0, 1.0]},
             "max_gain": [float(v) for v in range(10)]}  # fmt: skip
    assert sp.diagnose(mixed).pattern == "rate too high"


def test_radial_profile_of_a_single_row() -> None:
    # one row: no frequency beyond 0.5, so no ring is dropped and bincount must still
    # give every ring a count
    spec = torch.arange(8.0, dtype=torch.float64).reshape(1, 8)
    prof, centres = sp.radial_profile(spec, bins=4)
    fx = np.abs(np.fft.fftshift(np.fft.fftfreq(8)))
    ring = np.minimum((fx / 0.5 * 4).astype(int), 3)
    want = [spec[0].numpy()[ring == k].mean() for k in range(4)]
    np.testing.assert_allclose(prof.numpy(), want, rtol=1e-12)
    # three samples in four rings: rings with no frequency are NaN, not an error
    odd, _ = sp.radial_profile(torch.ones(1, 3, dtype=torch.float64), bins=4)
    np.testing.assert_array_equal(np.isnan(odd.numpy()), [False, True, False, True])


def test_diverged_gain_with_a_finite_loss() -> None:
    h = {"train_loss": [1.0] * 12, "max_gain": [0.0, 1.0, math.nan] + [2.0] * 9}
    assert sp.diagnose(h).advice.startswith("the training diverged at epoch 3 ")
