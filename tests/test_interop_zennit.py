"""LRP through Zennit's composites (convscope.interop.zennit), down to the fixed kernel layer."""

from __future__ import annotations

import copy
import importlib
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("zennit")
pytest.importorskip("captum")

from captum.attr import InputXGradient  # noqa: E402
from zennit import composites as zc  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402

from convscope import attribution as A  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.interop import zennit as Z  # noqa: E402
from convscope.models import GFNN, KernelBank2d  # noqa: E402

# LRP-0: the Epsilon rule with an epsilon far below every |z| in float64, so z + eps == z
# wherever z != 0 (the default 1e-6 would move the results by far more than 1e-10)
LRP0 = {"composite": "epsilon", "epsilon": 1e-20}
TARGETS = torch.tensor([2, 0, 1])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the models are tiny: on a busy machine, thread hand-offs cost 10-20x the arithmetic
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _x(n: int = 3, c: int = 1, side: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, side, side, generator=g, dtype=torch.float64)


def _gfnn(bias: bool = False, in_channels: int = 1) -> GFNN:
    torch.manual_seed(0)
    return GFNN(input_size=8, in_channels=in_channels, bias=bias).double().eval()


def _small_cnn(bias: bool) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3, bias=bias),
    ).double()
    if bias:
        for layer in (model[0], model[4]):
            nn.init.uniform_(layer.bias, -0.5, 0.5)
    return model.eval()


def _bn_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        bn,
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).double()
    with torch.no_grad():  # statistics far from the identity, so the merge matters
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _target_logits(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, t[:, None])[:, 0]


def _seed(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The documented output relevance: the target logit on the target class, 0 elsewhere."""
    with torch.no_grad():
        logits = model(x)
    return torch.zeros_like(logits).scatter(1, t[:, None], logits.gather(1, t[:, None]))


def _input_x_grad(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, t[:, None]).sum(), xg)
    return x * g


def _conv_twin(model: GFNN) -> GFNN:
    """A copy of ``model`` whose kernel bank is a real grouped ``nn.Conv2d`` with its weights."""
    twin = copy.deepcopy(model)
    owner, name = (twin, "first") if isinstance(twin.first, KernelBank2d) else (twin.first, "bank")
    bank = getattr(owner, name)
    c, k = bank.in_channels, bank.num_kernels
    conv = nn.Conv2d(c, c * k, 3, padding=1, groups=c, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(bank.weight.repeat(c, 1, 1, 1))
    setattr(owner, name, conv)
    return twin


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "params": {k: v.clone() for k, v in model.state_dict().items()},
        "grad_flags": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "modules": {k: id(m) for k, m in model.named_modules()},
    }


def _assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    """No hook left, same modules, flags and (bit for bit) parameters and buffers."""
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    after = _state(model)
    for key in ("modules", "grad_flags", "training"):
        assert after[key] == before[key], key
    assert after["params"].keys() == before["params"].keys()
    for k, v in before["params"].items():
        assert torch.equal(after["params"][k], v), k


# -- LRP-0 against gradient x input ---------------------------------------------


def test_lrp0_is_gradient_x_input_and_conserves_the_logit_without_biases() -> None:
    model, x = _small_cnn(bias=False), _x()
    r = Z.lrp(model, x, TARGETS, **LRP0)
    reference = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=TARGETS)
    assert r.shape == x.shape and r.dtype == torch.float64
    torch.testing.assert_close(r, reference, atol=1e-10, rtol=0)
    y = _target_logits(model, x, TARGETS)
    torch.testing.assert_close(r.sum((1, 2, 3)), y, atol=1e-10, rtol=0)
    # per-image targets really differ: another target gives another map
    other = Z.lrp(model, x, torch.tensor([0, 1, 2]), **LRP0)
    assert (other - r).abs().max() > 1e-3


def test_with_biases_lrp0_loses_exactly_the_bias_share() -> None:
    model, x = _small_cnn(bias=True), _x()
    r = Z.lrp(model, x, TARGETS, **LRP0)
    torch.testing.assert_close(r, _input_x_grad(model, x, TARGETS), atol=1e-10, rtol=0)
    # a piecewise-linear net is y = sum_i x_i dy/dx_i + sum_layers sum_j b_j dy/dz_j locally,
    # so what the input misses is each bias times the gradient at its pre-activation
    z1 = model[0](x)
    y = model[1:](z1).gather(1, TARGETS[:, None])[:, 0]
    (g1,) = torch.autograd.grad(y.sum(), z1)
    expected_gap = (model[0].bias[None, :, None, None] * g1).sum((1, 2, 3)) + model[4].bias[TARGETS]
    gap = y.detach() - r.sum((1, 2, 3))
    torch.testing.assert_close(gap, expected_gap.detach(), atol=1e-10, rtol=0)
    assert gap.abs().min() > 1e-3


def test_batch_norm_is_merged_only_when_canonize_is_on() -> None:
    model, x = _bn_cnn(), _x()
    before = _state(model)
    merged = Z.lrp(model, x, TARGETS, canonize=True, **LRP0)
    # merged into the conv, batch norm is gone and LRP-0 is gradient x input again
    torch.testing.assert_close(merged, _input_x_grad(model, x, TARGETS), atol=1e-10, rtol=0)
    unmerged = Z.lrp(model, x, TARGETS, canonize=False, **LRP0)
    assert (unmerged - merged).abs().max() > 1e-3  # Pass rule: relevance skips the rescaling
    _assert_untouched(model, before)
    assert model[0].bias is None  # the merge gave the conv a bias; undoing it took it back


# -- the kernel bank gets the composite's rules ----------------------------------

_ZENNIT = {
    "epsilon_plus": (zc.EpsilonPlus, {"epsilon": 1e-3, "stabilizer": 1e-8}),
    "epsilon_plus_flat": (zc.EpsilonPlusFlat, {"epsilon": 1e-3, "stabilizer": 1e-8}),
    "epsilon_alpha2_beta1": (zc.EpsilonAlpha2Beta1, {"epsilon": 1e-3, "stabilizer": 1e-8}),
    "epsilon_gamma_box": (
        zc.EpsilonGammaBox,
        {"low": -0.5, "high": 1.5, "gamma": 0.5, "epsilon": 1e-3, "stabilizer": 1e-8},
    ),
}


@pytest.mark.parametrize("c", [1, 3], ids=["grey", "colour"])
@pytest.mark.parametrize("name", sorted(_ZENNIT))
def test_the_kernel_bank_gets_the_rules_of_an_equal_conv2d(name: str, c: int) -> None:
    cls, options = _ZENNIT[name]
    model, x = _gfnn(bias=True, in_channels=c), _x(c=c)
    r = Z.lrp(model, x, TARGETS, composite=name, **options)
    assert r.shape == x.shape and torch.isfinite(r).all()
    # Zennit itself on a twin whose bank is a real nn.Conv2d, same output relevance
    twin = _conv_twin(model)
    seed = _seed(model, x, TARGETS)
    _, reference = Gradient(twin, cls(**options))(x.clone().requires_grad_(True), seed)
    torch.testing.assert_close(r, reference, atol=1e-10, rtol=0)
    # Zennit alone on the GFNN sees no convolution in the bank, so the bank gets no rule
    _, unseen = Gradient(model, cls(**options))(x.clone().requires_grad_(True), seed)
    assert (unseen - r).abs().max() > 1e-4


def _zbox_by_hand(
    x: torch.Tensor, r_out: torch.Tensor, weight: torch.Tensor, low: float, high: float, eps: float
) -> torch.Tensor:
    """ZBox (Montavon et al. 2017) on one bias-free conv with pad 1, written out."""
    xs = x.clone().requires_grad_(True)
    lo = torch.full_like(x, low).requires_grad_(True)
    hi = torch.full_like(x, high).requires_grad_(True)
    z = (
        F.conv2d(xs, weight, padding=1)
        - F.conv2d(lo, weight.clamp(min=0), padding=1)
        - F.conv2d(hi, weight.clamp(max=0), padding=1)
    )
    s = (r_out / (z + eps * torch.where(z >= 0, 1.0, -1.0))).detach()
    gx, gl, gh = torch.autograd.grad((z * s).sum(), (xs, lo, hi))
    return xs.detach() * gx + lo.detach() * gl + hi.detach() * gh


@pytest.mark.parametrize("box", [None, (-1.0, 2.0)], ids=["batch-range", "given-range"])
def test_zbox_on_the_kernel_bank_matches_a_hand_computation(
    box: tuple[float, float] | None,
) -> None:
    model, x = _gfnn(), _x()
    options: dict[str, object] = {"gamma": 0.5, "epsilon": 1e-9, "stabilizer": 1e-9}
    if box is not None:
        options.update(low=box[0], high=box[1])
    low, high = box if box is not None else (float(x.min()), float(x.max()))
    fr = Z.filter_relevance(model, x, TARGETS, composite="epsilon_gamma_box", **options)
    r = Z.lrp(model, x, TARGETS, composite="epsilon_gamma_box", **options)
    r_bank = fr.images  # grey bank: the relevance at the bank's output, map k = kernel k
    weight = model.first.weight
    torch.testing.assert_close(
        r, _zbox_by_hand(x, r_bank, weight, low, high, 1e-9), atol=1e-12, rtol=0
    )
    # ZBox conserves what reached the bank; the bias-free net conserves the logit above it
    torch.testing.assert_close(r.sum((1, 2, 3)), r_bank.sum((1, 2, 3)), atol=1e-7, rtol=0)
    torch.testing.assert_close(fr.scores.sum(1), fr.logits, atol=0, rtol=1e-5)
    # neither the plain gradient (no rule at the bank) nor Epsilon at the bank gives this
    xs = x.clone().requires_grad_(True)
    z = F.conv2d(xs, weight, padding=1)
    (plain,) = torch.autograd.grad((z * r_bank).sum(), xs, retain_graph=True)
    (eps_grad,) = torch.autograd.grad((z * (r_bank / z).detach()).sum(), xs)
    assert (r - plain).abs().max() > 1e-4 and (r - x * eps_grad).abs().max() > 1e-4


def test_the_box_defaults_to_the_batch_range() -> None:
    model, x = _gfnn(), _x()
    default = Z.lrp(model, x, TARGETS, composite="epsilon_gamma_box")
    given = Z.lrp(model, x, TARGETS, composite="epsilon_gamma_box", low=x.min(), high=x.max())
    torch.testing.assert_close(default, given, atol=0, rtol=0)
    wider = Z.lrp(model, x, TARGETS, composite="epsilon_gamma_box", low=-1.0, high=2.0)
    assert (wider - default).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["epsilon_plus", "epsilon_gamma_box"])
def test_conserving_composites_conserve_the_logit_on_a_bias_free_gfnn(name: str) -> None:
    model, x = _gfnn(bias=False), _x()
    r = Z.lrp(model, x, TARGETS, composite=name, epsilon=1e-9, stabilizer=1e-9)
    assert torch.isfinite(r).all()
    torch.testing.assert_close(
        r.sum((1, 2, 3)), _target_logits(model, x, TARGETS), atol=0, rtol=1e-5
    )


# -- filter relevance ------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True], ids=["bias-free", "biased"])
@pytest.mark.parametrize("c", [1, 3], ids=["grey", "colour"])
def test_filter_relevance_under_lrp0_is_the_filter_scores(c: int, bias: bool) -> None:
    model, x = _gfnn(bias=bias, in_channels=c), _x(c=c)
    fr = Z.filter_relevance(model, x, TARGETS, **LRP0)
    fs = A.filter_scores(model, x, TARGETS)
    torch.testing.assert_close(fr.scores, fs.scores, atol=1e-10, rtol=0)
    torch.testing.assert_close(fr.images, fs.images, atol=1e-10, rtol=0)
    torch.testing.assert_close(fr.images.sum((2, 3)), fr.scores, atol=1e-12, rtol=0)
    assert torch.equal(fr.targets, TARGETS)
    torch.testing.assert_close(fr.logits, fs.logits, atol=0, rtol=0)
    assert fr.kernel_names == fs.kernel_names and fr.layer_name == fs.layer_name
    assert fr.composite == "epsilon"
    if c == 1:
        assert fr.color_scores is None
    else:
        assert fr.color_scores is not None and fr.color_scores.shape == (3, 3)
        assert fs.color_scores is not None
        torch.testing.assert_close(fr.color_scores, fs.color_scores, atol=1e-10, rtol=0)
        torch.testing.assert_close(fr.color_scores.sum(1), fr.scores.sum(1), atol=1e-12, rtol=0)
    if not bias:
        torch.testing.assert_close(fr.scores.sum(1), fr.logits, atol=1e-10, rtol=0)


def test_filter_relevance_under_epsilon_plus_differs_from_filter_scores_but_conserves() -> None:
    model, x = _gfnn(), _x()
    fr = Z.filter_relevance(model, x, TARGETS, composite="epsilon_plus", epsilon=1e-9)
    fs = A.filter_scores(model, x, TARGETS)
    torch.testing.assert_close(fr.scores.sum(1), fr.logits, atol=0, rtol=1e-6)
    assert (fr.scores - fs.scores).abs().max() > 1e-4
    assert fr.composite == "epsilon_plus"


# -- refusals and a model left as it came in -------------------------------------


def test_a_model_without_kernel_bank_is_refused() -> None:
    model = _small_cnn(bias=True)
    before = _state(model)
    with pytest.raises(ConvscopeError) as e:
        Z.filter_relevance(model, _x(), TARGETS)
    assert str(e.value) == (
        "filter_relevance needs a model with a convscope kernel bank (KernelBank2d), "
        "e.g. a GFNN; Sequential has none - use lrp for input relevance"
    )
    _assert_untouched(model, before)


def test_unknown_composites_and_options_are_refused() -> None:
    model = _gfnn()
    assert Z.list_composites() == [
        "epsilon",
        "epsilon_alpha2_beta1",
        "epsilon_gamma_box",
        "epsilon_plus",
        "epsilon_plus_flat",
    ]
    with pytest.raises(ConvscopeError) as e:
        Z.lrp(model, _x(), composite="lrp0")
    assert str(e.value) == (
        "unknown composite 'lrp0'; choose one of: epsilon, epsilon_alpha2_beta1, "
        "epsilon_gamma_box, epsilon_plus, epsilon_plus_flat"
    )
    with pytest.raises(ConvscopeError) as e:
        Z.filter_relevance(model, _x(), composite="epsilon_plus", gamma=0.5)
    assert str(e.value) == (
        "composite 'epsilon_plus' takes no option 'gamma'; it takes: epsilon, stabilizer, "
        "zero_params"
    )


class _TwiceBank(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bank = KernelBank2d(["sobel_e", "sobel_n"])
        self.head = nn.Linear(2 * 8 * 8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.bank(x) + self.bank(x.flip(-1))).flatten(1))


@pytest.mark.parametrize("call", [Z.lrp, Z.filter_relevance], ids=["lrp", "filter_relevance"])
def test_a_layer_with_a_rule_that_runs_twice_is_refused(call) -> None:
    # Zennit's rules keep the input of a module's last run only: the relevance of the
    # first run would be silently wrong, so the pass is refused
    torch.manual_seed(0)
    model = _TwiceBank().double().eval()
    before = _state(model)
    with pytest.raises(ConvscopeError) as e:
        call(model, _x(), TARGETS, **LRP0)
    assert str(e.value) == (
        "layer 'bank' ran 2 times in one forward pass; LRP rules need every layer with a "
        "rule to run once - give each use its own module"
    )
    _assert_untouched(model, before)


@pytest.mark.parametrize("make", [lambda: _gfnn(in_channels=3), _bn_cnn], ids=["gfnn", "bn"])
def test_the_model_comes_out_untouched_after_calls_and_failures(make) -> None:
    model = make()
    model.train()
    next(iter(model.children())).eval()  # modes set per module must come back per module
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)
    c = 3 if isinstance(model, GFNN) else 1
    x = _x(c=c)
    before, rng = _state(model), torch.random.get_rng_state()
    Z.lrp(model, x, TARGETS, composite="epsilon_gamma_box", gamma=0.5)
    if isinstance(model, GFNN):
        Z.filter_relevance(model, x, TARGETS, composite="epsilon_plus_flat", epsilon=1e-3)
    _assert_untouched(model, before)
    # a bad target is found only after the forward pass, with every hook and swap in place
    with pytest.raises(ConvscopeError, match="target class 99 is out of range"):
        Z.lrp(model, x, 99, composite="epsilon_plus")
    with pytest.raises(RuntimeError):  # the model's own error, raised mid-forward
        Z.lrp(model, _x(c=c + 1), composite="epsilon")
    _assert_untouched(model, before)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert frozen.requires_grad is False


def test_the_canonizer_swaps_the_bank_and_puts_it_back() -> None:
    model, x = _gfnn(in_channels=3), _x(c=3)
    bank = model.first.bank
    canonizer = Z.KernelBankCanonizer()
    handles = canonizer.apply(model)
    try:
        conv = canonizer.convs[bank]
        assert model.first.bank is conv and isinstance(conv, nn.Conv2d)
        torch.testing.assert_close(conv(x), bank(x), atol=0, rtol=0)
    finally:
        for h in handles:
            h.remove()
    assert model.first.bank is bank


def test_without_zennit_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zennit", None)
    monkeypatch.delitem(sys.modules, "convscope.interop.zennit")
    with pytest.raises(ConvscopeError) as e:
        importlib.import_module("convscope.interop.zennit")
    assert str(e.value) == (
        "convscope.interop.zennit needs zennit, which is not installed: "
        "pip install 'convscope[interop]' (or pip install zennit)"
    )
