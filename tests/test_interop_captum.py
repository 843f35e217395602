"""convscope's methods as Captum attributions (convscope.interop.captum).

Every value is checked against an independent reference: Captum's own methods
(InputXGradient, Deconvolution, LayerGradientXActivation), a hand-written seed 001
eq. 18, the linear interpreter's contributions, or the logits.
"""

from __future__ import annotations

import copy
import importlib
import sys
import warnings

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

matplotlib.use("Agg")

captum_attr = pytest.importorskip("captum.attr")
import captum.metrics  # noqa: E402
from captum.attr import visualization as captum_viz  # noqa: E402

from convscope.attribution import filter_scores  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.interop.captum import (  # noqa: E402
    Deconvnet,
    FilterScoreMap,
    InputContribution,
    PixelDiscussion,
)
from convscope.linear import LinearInterpreter  # noqa: E402
from convscope.models import GFNN  # noqa: E402
from convscope.models.gfnn import find_kernel_bank  # noqa: E402

D = torch.float64
TARGETS = [1, 4, 0]  # a different class per image, none of them the default 0 for all


@pytest.fixture(autouse=True)
def _quiet_captum():
    # Captum warns that it set requires_grad on the inputs and hooks the ReLUs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _relu_net(bias: bool, seed: int = 0) -> nn.Sequential:
    """3 -> 5 classes on 8x8: conv, ReLU, max-pool, conv, in-place ReLU, dense."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, bias=bias),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5, bias=bias),
    )
    if bias:  # clearly non-zero biases, so that they carry a visible share of each score
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.uniform_(m.bias, 0.2, 0.6)
    return net.to(D).eval()


def _images(n: int = 3, c: int = 3, side: int = 8, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(n, c, side, side, dtype=D)


def _gfnn(in_channels: int) -> GFNN:
    torch.manual_seed(0)
    model = GFNN(num_classes=10, in_channels=in_channels, input_size=8, bias=False)
    return model.to(D).eval()


def _state(model: nn.Module) -> list:
    """Everything a call must leave as it was: flags, hooks and parameter values."""
    out: list = []
    for name, m in model.named_modules():
        hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)
        out.append((name, m.training, tuple(len(h) for h in hooks)))
    for name, p in model.named_parameters():
        out.append((name, p.requires_grad, p.grad is None, p.detach().clone()))
    return out


def _same_state(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if len(x) != len(y):
            return False
        for u, v in zip(x, y, strict=True):
            if isinstance(u, torch.Tensor):
                if not torch.equal(u, v):
                    return False
            elif u != v:
                return False
    return True


# -- InputContribution ------------------------------------------------------------


@pytest.mark.parametrize(("mode", "as_tensor"), [("freeze", False), ("taylor", True)])
def test_input_contribution_is_input_x_gradient_on_a_bias_free_relu_net(mode, as_tensor):
    model, x = _relu_net(bias=False), _images()
    target = torch.tensor(TARGETS) if as_tensor else TARGETS
    got = InputContribution(model, mode=mode).attribute(x, target=target)
    ref = captum_attr.InputXGradient(model).attribute(x.clone(), target=TARGETS)
    assert got.shape == x.shape and got.dtype == x.dtype and got.device == x.device
    assert torch.allclose(got, ref, rtol=0, atol=1e-10)
    # the per-image targets matter: the same class for all gives something else
    assert not torch.allclose(got, InputContribution(model, mode=mode).attribute(x, target=0))


def _tanh_net() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 8 * 8, 5)
    ).to(D)


def test_input_contribution_modes_differ_on_a_smooth_net():
    """freeze: tanh frozen to the ratio tanh(z0)/z0; taylor: the Jacobian (gradient x input)."""
    model, x = _tanh_net().eval(), _images()
    conv, lin = model[0], model[3]
    xr = x.clone().requires_grad_(True)
    z = conv(xr)
    y = lin((z * (torch.tanh(z) / z).detach()).flatten(1))
    (g,) = torch.autograd.grad(y.gather(1, torch.tensor(TARGETS)[:, None]).sum(), xr)
    freeze = InputContribution(model, mode="freeze").attribute(x, target=TARGETS)
    taylor = InputContribution(model, mode="taylor").attribute(x, target=TARGETS)
    assert torch.allclose(freeze, x * g, rtol=0, atol=1e-10)
    ixg = captum_attr.InputXGradient(model).attribute(x.clone(), target=TARGETS)
    assert torch.allclose(taylor, ixg, rtol=0, atol=1e-10)
    assert (freeze - taylor).abs().max() > 1e-3


def test_input_contribution_sums_to_the_input_share_and_pixel_discussion_to_the_logit():
    model, x = _relu_net(bias=True), _images()
    ic = InputContribution(model, mode="freeze").attribute(x, target=TARGETS)
    pd = PixelDiscussion(model).attribute(x, target=TARGETS)
    ixg = captum_attr.InputXGradient(model).attribute(x.clone(), target=TARGETS)
    logits = model(x).detach()[torch.arange(3), TARGETS]
    for i, t in enumerate(TARGETS):
        li = LinearInterpreter(model, x[i : i + 1])
        share = li.contributions(target=t)
        assert abs(float(ic[i].sum()) - float(share["input"])) < 1e-10
        # the biases carry a visible part of the score, so "input" is not the logit
        assert abs(float(share["input"]) - float(logits[i])) > 1e-2
    assert pd.shape == x.shape
    assert torch.allclose(pd.sum(dim=(1, 2, 3)), logits, rtol=0, atol=1e-10)
    assert (ixg.sum(dim=(1, 2, 3)) - logits).abs().min() > 1e-2


def test_pixel_discussion_is_seed_001_eq_18_by_hand():
    """conv(+b1) -> ReLU -> dense(+b2): the input part, b1 back-projected through the conv
    and b2 through the whole frozen map, scaled to the logit; per colour channel."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1).to(D)
    lin = nn.Linear(4 * 8 * 8, 5).to(D)
    for b in (conv.bias, lin.bias):
        nn.init.uniform_(b, 0.1, 0.5)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin).eval()
    x = _images(n=2, seed=4)
    targets = [3, 1]
    got = PixelDiscussion(model).attribute(x, target=targets)
    for i, t in enumerate(targets):
        xi = x[i : i + 1].clone().requires_grad_(True)
        z = conv(xi)
        y = lin(F.relu(z).flatten(1))[0, t]
        gx, gz = torch.autograd.grad(y, [xi, z])
        v = xi.detach().clone().requires_grad_(True)
        bias_map = conv.bias.detach().view(1, -1, 1, 1) * gz
        (back_b1,) = torch.autograd.grad((F.conv2d(v, conv.weight, padding=1) * bias_map).sum(), v)
        raw = xi.detach() * gx + back_b1 + lin.bias[t].detach() * gx
        ref = raw * (y.detach() / raw.sum())
        assert torch.allclose(got[i : i + 1], ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("normalize", [True, False])
def test_pixel_discussion_channels_sum_to_the_default(normalize):
    model, x = _relu_net(bias=True), _images(n=1)
    li = LinearInterpreter(model, x)
    targets = [4, 0, 2]
    per_channel = li.pixel_discussion(targets, channels=True, normalize=normalize, batch_size=2)
    summed = li.pixel_discussion(targets, normalize=normalize, batch_size=2)
    assert per_channel.shape == (3, 3, 8, 8) and summed.shape == (3, 8, 8)
    assert torch.allclose(per_channel.sum(1), summed, rtol=0, atol=1e-12)


# -- Deconvnet ------------------------------------------------------------------


def test_deconvnet_equals_captum_deconvolution():
    model, x = _relu_net(bias=True), _images()
    got = Deconvnet(model).attribute(x, target=TARGETS)
    ref = captum_attr.Deconvolution(model).attribute(x.clone(), target=TARGETS)
    assert got.shape == x.shape
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    # the backward signal is rectified: not the plain gradient
    grad = captum_attr.Saliency(model).attribute(x.clone(), target=TARGETS, abs=False)
    assert (got - grad).abs().max() > 1e-3


class _FunctionalBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class _FunctionalNet(nn.Module):
    def __init__(self, method: bool) -> None:
        super().__init__()
        self.block = _FunctionalBlock() if not method else nn.Conv2d(3, 2, 3, padding=1)
        self.method = method
        self.head = nn.Linear(2 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        if self.method:
            h = h.relu()
        return self.head(h.flatten(1))


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (False, "Deconvnet needs nn.ReLU modules; found function call relu inside block"),
        (
            True,
            "Deconvnet needs nn.ReLU modules; found function call Tensor.relu inside "
            "_FunctionalNet.forward",
        ),
    ],
)
def test_deconvnet_refuses_a_functional_relu(method, message):
    model = _FunctionalNet(method).to(D).eval()
    before = _state(model)
    with pytest.raises(ConvscopeError) as err:
        Deconvnet(model).attribute(_images(n=2), target=[0, 1])
    assert str(err.value) == message
    assert _same_state(before, _state(model))


def test_eval_mode_false_runs_the_model_as_it_is():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(256, 5)
    ).to(D)
    model.train()
    x = _images()
    as_is = Deconvnet(copy.deepcopy(model), eval_mode=False).attribute(x, target=TARGETS)
    ref_train = captum_attr.Deconvolution(copy.deepcopy(model)).attribute(x.clone(), TARGETS)
    in_eval = Deconvnet(model).attribute(x, target=TARGETS)
    ref_eval = captum_attr.Deconvolution(copy.deepcopy(model).eval()).attribute(x.clone(), TARGETS)
    assert torch.allclose(as_is, ref_train, rtol=0, atol=1e-12)
    assert torch.allclose(in_eval, ref_eval, rtol=0, atol=1e-12)
    assert (as_is - in_eval).abs().max() > 1e-3
    assert all(m.training for m in model.modules())


# -- FilterScoreMap -------------------------------------------------------------


@pytest.mark.parametrize("in_channels", [1, 3])
def test_filter_score_map_equals_captum_layer_gradient_x_activation(in_channels):
    model = _gfnn(in_channels)
    x = _images(n=2, c=in_channels, seed=6).abs()
    targets = torch.tensor([7, 2])
    got = FilterScoreMap(model).attribute(x, target=targets)
    _, bank = find_kernel_bank(model)
    lgxa = captum_attr.LayerGradientXActivation(model, bank).attribute(x.clone(), target=targets)
    k = bank.num_kernels
    per_map = lgxa.reshape(2, in_channels, k, 8, 8)
    fs = filter_scores(model, x, targets)
    assert got.shape == x.shape
    assert torch.allclose(got, per_map.sum(dim=2), rtol=0, atol=1e-10)
    assert torch.allclose(fs.scores, per_map.sum(dim=(1, 3, 4)), rtol=0, atol=1e-10)
    assert torch.allclose(got.sum(dim=1), fs.pixel_map, rtol=0, atol=1e-10)
    # no bias after the bank: the map adds up to the target logit
    logits = model(x).detach().gather(1, targets[:, None])[:, 0]
    assert torch.allclose(got.sum(dim=(1, 2, 3)), logits, rtol=0, atol=1e-10)


def test_filter_score_map_refusals():
    model = _relu_net(bias=False)
    with pytest.raises(ConvscopeError) as err:
        FilterScoreMap(model)
    assert str(err.value) == (
        "Sequential has no fixed-kernel layer (KernelBank2d); filter scores need a GFNN-style "
        "model - use saliency or gradient_x_input for other models"
    )
    grey = _gfnn(1)
    with pytest.raises(ConvscopeError) as err:
        FilterScoreMap(grey).attribute(_images(n=1, c=3), target=0)
    assert str(err.value) == "the kernel bank 'first' filters 1 colour channel(s); inputs have 3"


# -- Captum's visualisation and metrics ------------------------------------------


def _all_methods() -> list:
    relu = _relu_net(bias=True)
    return [
        InputContribution(relu, mode="taylor"),
        PixelDiscussion(relu, mode="freeze"),
        Deconvnet(relu),
        FilterScoreMap(_gfnn(3)),
    ]


def _perturb(inputs: torch.Tensor):
    noise = 0.05 * torch.randn_like(inputs)
    return noise, inputs - noise


def test_methods_work_with_captum_visualisation_and_metrics():
    from matplotlib.figure import Figure

    for method in _all_methods():
        model = method.forward_func
        x = _images(n=2, c=3, seed=7)
        targets = [2, 4]
        attr = method.attribute(x, target=targets)
        fig, _ = captum_viz.visualize_image_attr(
            attr[0].permute(1, 2, 0).numpy(),
            x[0].permute(1, 2, 0).abs().clamp(max=1).numpy(),
            method="blended_heat_map",
            sign="all",
            use_pyplot=False,
        )
        assert isinstance(fig, Figure)
        torch.manual_seed(0)
        infid = captum.metrics.infidelity(
            model, _perturb, x, attr, target=targets, n_perturb_samples=3
        )
        sens = captum.metrics.sensitivity_max(
            method.attribute, x, target=targets, n_perturb_samples=2, perturb_radius=0.01
        )
        for value in (infid, sens):
            assert value.shape == (2,) and bool(torch.isfinite(value).all())


def test_infidelity_of_taylor_input_contribution_is_that_of_input_x_gradient():
    model, x = _relu_net(bias=False), _images()
    ours = InputContribution(model, mode="taylor").attribute(x, target=TARGETS)
    theirs = captum_attr.InputXGradient(model).attribute(x.clone(), target=TARGETS)
    values = []
    for attr in (ours, theirs):
        torch.manual_seed(11)
        values.append(
            captum.metrics.infidelity(model, _perturb, x, attr, target=TARGETS, n_perturb_samples=4)
        )
    assert values[0].shape == (3,)
    assert torch.allclose(values[0], values[1], rtol=0, atol=1e-8)


# -- the Captum convention: inputs, targets, flags ------------------------------


def _builders():
    relu = _relu_net(bias=True)
    return [
        ("InputContribution", lambda m: InputContribution(m), relu, 3),
        ("PixelDiscussion", lambda m: PixelDiscussion(m), relu, 3),
        ("Deconvnet", lambda m: Deconvnet(m), relu, 3),
        ("FilterScoreMap", lambda m: FilterScoreMap(m), _gfnn(1), 1),
    ]


@pytest.mark.parametrize("index", range(4))
def test_targets_inputs_and_an_untouched_model(index):
    name, build, model, c = _builders()[index]
    model.train()  # eval for the call, then every module's own flag back
    list(model.children())[-1].eval()
    x = _images(n=3, c=c, seed=8)
    before = _state(model)
    method = build(model)
    assert isinstance(method, captum_attr.Attribution)
    assert method.has_convergence_delta() is False
    assert method.multiplies_by_inputs is (name != "Deconvnet")

    with torch.no_grad():  # Captum's metrics call attribute() under no_grad
        pred = copy.deepcopy(model).eval()(x).argmax(1)
        default = method.attribute(x)
    assert _same_state(before, _state(model))
    assert torch.allclose(default, method.attribute(x, target=pred), rtol=0, atol=1e-12)
    classes = model(x).shape[1]
    other = (pred + 1) % classes
    assert (default - method.attribute(x, target=other)).abs().max() > 1e-6

    as_tuple = method.attribute((x,), target=pred)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.allclose(as_tuple[0], default, rtol=0, atol=1e-12)

    refusals = [
        ({"target": classes}, f"target class {classes} is out of range for {classes} logits"),
        ({"target": [0, -1, 2]}, f"target class -1 is out of range for {classes} logits"),
        ({"target": [0, 1]}, "target must hold one class per image, shape (3,); got (2,)"),
        (
            {"target": torch.tensor([0.0, 1.0, 2.0], dtype=D)},
            "target must hold integer class indices; got dtype torch.float64",
        ),
        (
            {"additional_forward_args": (1,)},
            "additional_forward_args is not supported by convscope's Captum methods: the model "
            "is called with the images alone; wrap extra arguments into the model",
        ),
    ]
    for kwargs, message in refusals:
        with pytest.raises(ConvscopeError) as err:
            method.attribute(x, **kwargs)
        assert str(err.value) == message
        assert _same_state(before, _state(model))


def test_input_checks():
    model = _relu_net(bias=False)
    method = Deconvnet(model)
    x = _images(n=2)
    cases = [
        (x[0], "inputs must be an image batch (N, C, H, W); got (3, 8, 8)"),
        ([x], "inputs must be an image batch (N, C, H, W); got list"),
        ((x, x), "inputs must be one image batch (a tensor or a 1-tuple); got a tuple of 2 values"),
        (x.long(), "inputs must be a floating-point tensor; got dtype torch.int64"),
        (x[:0], "inputs holds no images: (0, C, H, W)"),
    ]
    for inputs, message in cases:
        with pytest.raises(ConvscopeError) as err:
            method.attribute(inputs, target=0)
        assert str(err.value) == message
    with pytest.raises(ConvscopeError, match=r"^mode must be one of \['freeze', 'taylor'\]"):
        InputContribution(model, mode="frozen")
    with pytest.raises(ConvscopeError, match=r"^batch_size must be an integer >= 1; got 0$"):
        PixelDiscussion(model, batch_size=0)
    with pytest.raises(ConvscopeError, match=r"^Deconvnet needs the model as an nn.Module"):
        Deconvnet(lambda t: t)
    # dtype and device follow the inputs: a float32 model and batch give float32
    model32 = _relu_net(bias=True).float()
    out = InputContribution(model32, batch_size=1).attribute(x.float(), target=TARGETS[:2])
    ref = captum_attr.InputXGradient(model32).attribute(x.float(), target=TARGETS[:2])
    assert out.dtype == torch.float32 and out.device == x.device
    assert torch.allclose(out, ref, rtol=0, atol=1e-5)


def test_import_without_captum_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    monkeypatch.delitem(sys.modules, "convscope.interop.captum")
    with pytest.raises(ConvscopeError) as err:
        importlib.import_module("convscope.interop.captum")
    assert str(err.value) == (
        "convscope.interop.captum needs captum, which is not installed: "
        "pip install 'convscope[interop]' (or pip install captum)"
    )
