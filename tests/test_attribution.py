"""Saliency, gradient x input, gradient x activation and filter scores (seed 000)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convscope import attribution as A
from convscope import kernels as kb
from convscope.errors import ConvscopeError
from convscope.models import GFNN, KernelBank2d


def _grey(bias: bool = False, **kw: object) -> GFNN:
    torch.manual_seed(0)
    return GFNN(input_size=16, bias=bias, **kw).double().eval()  # type: ignore[arg-type]


def _colour() -> GFNN:
    torch.manual_seed(0)
    model = GFNN(in_channels=3, input_size=16, bias=False)
    # bias=False reaches the colour front-end's 1x1 conv too: it sits after L
    assert model.first.mix.bias is None
    return model.double().eval()


def _x(n: int, c: int = 1, side: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, side, side, generator=g, dtype=torch.float64)


def _no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


# -- filter scores: the definitions --------------------------------------------


@pytest.mark.parametrize("make, c", [(_grey, 1), (_colour, 3)], ids=["grey", "colour"])
def test_scores_add_up_to_the_target_logit(make, c) -> None:
    model, x = make(), _x(4, c)
    fs = A.filter_scores(model, x)
    logits = model(x)
    torch.testing.assert_close(fs.target, logits.argmax(1))
    torch.testing.assert_close(fs.logits, logits.gather(1, fs.target[:, None])[:, 0])
    torch.testing.assert_close(fs.scores.sum(1), fs.logits, rtol=1e-6, atol=0)
    torch.testing.assert_close(fs.normalized().sum(1), torch.ones(4, dtype=torch.float64))


def test_a_bias_after_the_fixed_layer_breaks_completeness() -> None:
    # Guards the test above against passing for a trivial reason.
    model, x = _grey(bias=True), _x(4)
    fs = A.filter_scores(model, x)
    assert not torch.allclose(fs.scores.sum(1), fs.logits, rtol=1e-6, atol=0)


@pytest.mark.parametrize("make, c", [(_grey, 1), (_colour, 3)], ids=["grey", "colour"])
def test_images_pixel_map_and_colour_scores_are_consistent(make, c) -> None:
    model, x = make(), _x(3, c)
    fs = A.filter_scores(model, x, target=2)
    k = model.first.num_kernels if c == 1 else model.first.bank.num_kernels
    assert fs.scores.shape == (3, k) and fs.images.shape == (3, k, 16, 16)
    assert fs.pixel_map.shape == (3, 16, 16) and len(fs.kernel_names) == k
    assert fs.layer_name == ("first" if c == 1 else "first.bank")
    assert torch.equal(fs.target, torch.full((3,), 2))
    torch.testing.assert_close(fs.images.sum(1), fs.pixel_map)
    torch.testing.assert_close(fs.images.sum((2, 3)), fs.scores)
    if c == 1:
        assert fs.color_scores is None
    else:
        assert fs.color_scores is not None and fs.color_scores.shape == (3, 3)
        torch.testing.assert_close(fs.color_scores.sum(1), fs.scores.sum(1))


@pytest.mark.parametrize("make, c", [(_grey, 1), (_colour, 3)], ids=["grey", "colour"])
def test_images_match_an_independent_vjp(make, c) -> None:
    model, x = make(), _x(2, c)
    target = torch.tensor([3, 7])
    bank = model.first if c == 1 else model.first.bank

    def after_bank(L: torch.Tensor) -> torch.Tensor:
        h = L if c == 1 else model.first.mix(L)
        return model.classifier(model.features(h))

    L = bank(x)
    y, vjp = torch.func.vjp(after_bank, L)
    (dL,) = vjp(nn.functional.one_hot(target, y.shape[1]).to(y.dtype))
    k = bank.num_kernels
    ref = (dL * L).reshape(2, c, k, 16, 16)
    fs = A.filter_scores(model, x, target)
    torch.testing.assert_close(fs.images, ref.sum(1), rtol=1e-10, atol=1e-14)
    if fs.color_scores is not None:
        torch.testing.assert_close(fs.color_scores, ref.sum((2, 3, 4)), rtol=1e-10, atol=1e-14)


def test_batch_equals_image_by_image() -> None:
    model, x = _grey(bias=True), _x(3)
    for target in (None, torch.tensor([1, 4, 9])):
        fs = A.filter_scores(model, x, target)
        for i in range(3):
            t_i = None if target is None else int(target[i])
            one = A.filter_scores(model, x[i : i + 1], t_i)
            torch.testing.assert_close(one.images[0], fs.images[i], rtol=1e-10, atol=1e-14)
            torch.testing.assert_close(one.scores[0], fs.scores[i], rtol=1e-10, atol=1e-14)


def test_works_under_no_grad_and_float32() -> None:
    model = GFNN(input_size=16).eval()
    x = _x(2).float()
    with torch.no_grad():
        fs = A.filter_scores(model, x)
        g = A.gradient_x_input(model, x)
    assert fs.scores.dtype == torch.float32 and torch.isfinite(fs.scores).all()
    assert g.shape == x.shape


# -- helpers ---------------------------------------------------------------------


def test_top_k_and_by_category() -> None:
    model, x = _grey(), _x(2)
    fs = A.filter_scores(model, x)
    values, idx = fs.top_k(3)
    assert values.shape == idx.shape == (2, 3)
    torch.testing.assert_close(values, fs.scores.gather(1, idx))
    assert (values[:, :-1] >= values[:, 1:]).all()
    assert (values[:, -1:] >= fs.scores.sort(1, descending=True).values[:, 3:]).all()
    with pytest.raises(ConvscopeError, match="top_k"):
        fs.top_k(41)
    cat, names = fs.by_category()
    assert names == list(kb.FIG4_CATEGORIES) and cat.shape == (2, 12)
    torch.testing.assert_close(cat.sum(1), fs.scores.sum(1))
    torch.testing.assert_close(cat[:, 0], fs.scores[:, :4].sum(1))  # E: kernels 0-3
    mean, _ = fs.by_category("mean")
    torch.testing.assert_close(mean[:, 0], fs.scores[:, :4].mean(1))
    torch.testing.assert_close(mean[:, -1], fs.scores[:, 38:40].mean(1))  # blur: 38, 39
    shares = fs.normalized(relative=False)
    torch.testing.assert_close(shares.abs().sum(1), torch.ones(2, dtype=torch.float64))


def test_by_category_with_first_order_and_random_banks() -> None:
    x = _x(1)
    fo = A.filter_scores(_grey(kernels=kb.gfnn_bank(first_order=True)), x)
    cat, names = fo.by_category()
    assert names == [*kb.FIG4_CATEGORIES, "first_derivative"]
    torch.testing.assert_close(cat[:, -1], fo.scores[:, 40:].sum(1))
    rnd = A.filter_scores(_grey(first_layer="random"), x)
    with pytest.raises(ConvscopeError, match="registry kernels"):
        rnd.by_category()


def test_class_averages() -> None:
    model = _grey()
    x = _x(6)
    labels = torch.tensor([0, 3, 0, 3, 3, 5])
    ca = A.class_average_filter_scores(model, (x, labels), batch_size=4)
    assert ca.scores.shape == (10, 40) and ca.counts.tolist() == [2, 0, 0, 3, 0, 1, 0, 0, 0, 0]
    fs = A.filter_scores(model, x, labels)
    torch.testing.assert_close(ca.scores[3], fs.scores[labels == 3].mean(0))
    torch.testing.assert_close(ca.logits[0], fs.logits[labels == 0].mean())
    assert torch.isnan(ca.scores[1]).all() and ca.color_scores is None
    rel = A.class_average_filter_scores(model, (x, labels), relative=True)
    share = fs.scores / fs.logits[:, None]
    torch.testing.assert_close(rel.scores[3], share[labels == 3].mean(0))
    loader = DataLoader(TensorDataset(x, labels), batch_size=5)
    ca2 = A.class_average_filter_scores(model, loader, target="pred")
    pred = model(x).argmax(1)
    assert ca2.counts.sum() == 6 and ca2.target == "pred"
    assert torch.equal(ca2.counts, torch.bincount(pred, minlength=10))
    with pytest.raises(ConvscopeError, match="'label' or 'pred'"):
        A.class_average_filter_scores(model, (x, labels), target="true")  # type: ignore[arg-type]


# -- agreement with Captum --------------------------------------------------------


def _resnet18() -> nn.Module:
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return tv.models.resnet18(weights=None, num_classes=10).eval()


@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")
@pytest.mark.parametrize("which", ["gfnn", "resnet18"])
def test_input_attributions_match_captum(which) -> None:
    attr = pytest.importorskip("captum.attr")
    if which == "gfnn":
        model, x = GFNN(input_size=16).eval(), _x(3).float()
    else:
        model, x = _resnet18(), _x(2, 3, 64).float()
    target = model(x).argmax(1)  # Captum needs an explicit target for many logits
    for absolute in (True, False):
        ours = A.saliency(model, x, abs=absolute)
        theirs = attr.Saliency(model).attribute(x, target=target, abs=absolute)
        torch.testing.assert_close(ours, theirs)
    ours = A.gradient_x_input(model, x)
    torch.testing.assert_close(ours, attr.InputXGradient(model).attribute(x, target=target))
    assert _no_hooks(model)


def test_layer_attribution_matches_captum() -> None:
    attr = pytest.importorskip("captum.attr")
    model, x = _colour(), _x(2, 3)
    bank = model.first.bank
    theirs = attr.LayerGradientXActivation(model, bank).attribute(x, target=4)
    torch.testing.assert_close(A.gradient_x_activation(model, x, "first.bank", 4), theirs)
    fs = A.filter_scores(model, x, 4)
    ref = theirs.reshape(2, 3, bank.num_kernels, 16, 16).sum(1)
    torch.testing.assert_close(fs.images, ref)


# -- errors, hooks, modes ---------------------------------------------------------


def test_model_without_a_bank_is_a_clear_error() -> None:
    model = GFNN(first_layer="learned", input_size=16).eval()
    with pytest.raises(ConvscopeError, match="no fixed-kernel layer"):
        A.filter_scores(model, _x(1).float())


def test_bad_targets_and_inputs() -> None:
    model, x = _grey(), _x(2)
    for bad in (10, -1, [0, 12]):
        with pytest.raises(ConvscopeError, match="out of range for 10 logits"):
            A.filter_scores(model, x, bad)
    with pytest.raises(ConvscopeError, match=r"one class per image, shape \(2,\)"):
        A.saliency(model, x, [1, 2, 3])
    with pytest.raises(ConvscopeError, match="integer class indices"):
        A.gradient_x_input(model, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ConvscopeError, match=r"\(N, C, H, W\)"):
        A.filter_scores(model, x[0])
    with pytest.raises(ConvscopeError, match="no sub-module"):
        A.gradient_x_activation(model, x, "nope")


def test_a_bank_called_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bank = KernelBank2d(["sobel_e"]).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.bank(x) + self.bank(x)).flatten(1)[:, :3]

    with pytest.raises(ConvscopeError, match="ran 2 times"):
        A.filter_scores(Twice(), _x(1, side=4))


class _Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_no_hooks_left_and_modes_restored() -> None:
    model = _grey()
    model.train()
    model.features[0].eval()  # a deliberately mixed mode must survive too
    flags = [m.training for m in model.modules()]
    x = _x(2)
    fs = A.filter_scores(model, x)
    assert _no_hooks(model) and [m.training for m in model.modules()] == flags
    model.eval()
    torch.testing.assert_close(A.filter_scores(model, x).scores, fs.scores)  # ran in eval
    model.train()
    model.features[0].eval()
    model.classifier[-1] = _Boom()  # raise from inside the forward, after the bank ran
    for f in (A.filter_scores, A.saliency, A.gradient_x_input):
        with pytest.raises(RuntimeError, match="boom"):
            f(model, x)
        assert _no_hooks(model) and [m.training for m in model.modules()] == flags


def test_eval_mode_false_keeps_the_callers_mode() -> None:
    model, x = _grey().train(), _x(2)
    torch.manual_seed(0)
    a = A.filter_scores(model, x, 1, eval_mode=False).scores
    b = A.filter_scores(model, x, 1, eval_mode=False).scores
    assert model.training and not torch.allclose(a, b)  # dropout was on
