"""The decision cache (issue 14): passes of the probes alone, the same answers.

With ``cache="on"`` every pass after the first runs on the probes alone, each rule
given back what it read from ``x0`` in the first pass; with ``cache="off"`` every pass
carries ``x0`` as row 0. Every query of the interpreter must agree between the two, in
float64, on models that exercise every kind of rule (masks, selections, statistics of
``x0`` in train-mode norms, ratios, slopes, gates, train-mode dropout, attention), and
the model must really see batches without ``x0``. Each rule alone is checked in
tests/test_linear_rules_fuzz.py (``test_rule_gives_the_probes_the_same_from_the_decision_cache``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _linear_helpers import photos, rel_err, torchvision_model
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear import LinearInterpreter, use_rule

TOL = 1e-12


class Everything(nn.Module):
    """One of each kind of rule: ReLU, leaky ReLU, hardtanh (a clamp with a constant),
    SiLU and sigmoid (ratios / slopes), a squeeze-excitation product, max-pool with
    indices, train-mode batch and group norm, layer norm after a transpose, softmax
    attention over the pixels, a max over a dimension, top-k and train-mode dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.gn = nn.GroupNorm(2, 6)
        self.se = nn.Conv2d(6, 6, 1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.ln = nn.LayerNorm(8)
        self.qkv = nn.Linear(8, 24)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8 + 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.bn(self.conv1(x)), 0.1)
        x = F.silu(self.gn(x))
        x = x * torch.sigmoid(self.se(F.adaptive_avg_pool2d(x, 1)))
        x, _ = F.max_pool2d(x, 2, return_indices=True)
        x = F.hardtanh(self.conv2(x), -0.5, 0.8)
        tokens = self.ln(x.flatten(2).transpose(1, 2))  # (N, L, 8)
        q, k, v = self.qkv(tokens).chunk(3, -1)
        att = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, -1)
        y = F.relu(self.drop(att @ v))  # (N, L, 8)
        top = torch.topk(y.amax(2), 4, dim=1).values
        return self.fc(torch.cat([y.max(1).values, top], 1))


def _everything(train: bool) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(3)
    net = Everything().double()
    with torch.no_grad():
        for m in (net.bn, net.gn, net.ln):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.3, 0.3)
    net.train(train)
    if train:  # batch and group norm on x0's statistics, one dropout mask
        net.bn.track_running_stats = False
    return net, photos(8)


def _pair(
    model: nn.Module, x0: torch.Tensor, mode: str
) -> tuple[LinearInterpreter, LinearInterpreter]:
    on = LinearInterpreter(model, x0, mode=mode, cache="on", batch_size=4)  # type: ignore[arg-type]
    off = LinearInterpreter(model, x0, mode=mode, cache="off", batch_size=4)  # type: ignore[arg-type]
    return on, off


def _batch_sizes(model: nn.Module, query: Callable[[], object]) -> list[int]:
    """The leading sizes of the batches ``model`` is called on during ``query()``."""
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        query()
    finally:
        handle.remove()
    return seen


def _agree(
    on: LinearInterpreter, off: LinearInterpreter, x: torch.Tensor, contributions: bool = True
) -> None:
    x1 = x[1:]
    n_in, n_out = x1[0].numel(), on.output.numel()
    cols = list(range(n_in // 16, n_in, n_in // 8))[:8]  # 8 columns, 8 rows: two passes
    rows = list(range(0, n_out, max(1, n_out // 8)))[:8]
    for name, a, b in [
        ("li(x1)", on(x1), off(x1)),
        ("li.linear", on.linear(x1), off.linear(x1)),
        ("columns", on.columns(cols), off.columns(cols)),
        ("rows", on.rows(rows), off.rows(rows)),
        ("transpose", on.transpose(on.output * 2), off.transpose(off.output * 2)),
    ]:
        assert a.shape == b.shape, name
        assert float(b.abs().max()) > 1e-3, f"{name}: the signal vanished"
        assert rel_err(a, b) < TOL, (name, rel_err(a, b))
    if not contributions:
        return
    ca, cb = on.contributions(), off.contributions()
    assert list(ca) == list(cb)
    for key in ca:
        assert rel_err(ca[key], cb[key]) < TOL or float((ca[key] - cb[key]).abs().max()) < 1e-13


@pytest.mark.parametrize("mode", ["freeze", "taylor"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_every_query_agrees_with_and_without_the_cache(mode: str, train: bool) -> None:
    model, x = _everything(train)
    on, off = _pair(model, x[:1], mode)
    assert on.cache_off_because is None and on.cache_bytes > 0
    assert off.cache_off_because == "cache='off'" and off.cache_bytes == 0
    torch.testing.assert_close(on.output, off.output, rtol=0, atol=0)  # the same first pass
    _agree(on, off, x)
    # the cached interpreter's passes really leave x0 out: 4 probes, batches of 4
    assert _batch_sizes(model, lambda: on(x[1:])) == [4]
    assert _batch_sizes(model, lambda: off(x[1:])) == [5]
    # and li(x0) is still f(x0), from the probes-only pass
    assert rel_err(on(x[:1]), off.output) < 1e-10


def test_train_mode_keeps_the_first_passes_dropout_mask() -> None:
    """The cached pass draws no random numbers: its mask is the one the first pass drew,
    the one every uncached pass draws again from the interpreter's seed."""
    model, x = _everything(True)
    on = LinearInterpreter(model, x[:1], cache="on", seed=5)
    off = LinearInterpreter(model, x[:1], cache="off", seed=5)
    other = LinearInterpreter(model, x[:1], cache="off", seed=6)
    assert rel_err(on.linear(x[1:]), off.linear(x[1:])) < TOL
    assert rel_err(other.linear(x[1:]), off.linear(x[1:])) > 1e-3  # the seed matters


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_torchvision_models_agree_with_and_without_the_cache(name: str) -> None:
    model, x = torchvision_model(name)
    on, off = _pair(model, x[:1], "freeze")
    _agree(on, off, x[:3], contributions=name == "resnet18")
    # masks are kept as bool: a ReLU network's cache is mostly one byte per value
    if name == "resnet18":
        values = on._cache.values  # type: ignore[union-attr]
        flat = [t for v in values for t in (v if isinstance(v, tuple) else (v,))]
        kinds = {t.dtype for t in flat if isinstance(t, torch.Tensor)}
        assert torch.bool in kinds and torch.int64 in kinds  # ReLU masks, max-pool indices


def test_a_vision_transformer_agrees_with_and_without_the_cache() -> None:
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.VisionTransformer(
        image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision starts it at zero
    model = model.double().eval()
    x = photos(16)[:3]
    for mode in ("freeze", "taylor"):
        on, off = _pair(model, x[:1], mode)
        assert on.cache_off_because is None
        _agree(on, off, x)


def test_the_svd_is_the_same_with_and_without_the_cache() -> None:
    model, x = torchvision_model("resnet18")
    on, off = _pair(model, x[:1], "freeze")
    sa = on.svd(2, method="randomized", power_iters=2, seed=0)
    sb = off.svd(2, method="randomized", power_iters=2, seed=0)
    assert rel_err(sa.S, sb.S) < 1e-10
    assert rel_err(sa.V.abs(), sb.V.abs()) < 1e-8


# -- when the cache is not used -------------------------------------------------------------


class _Round(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def,override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
        return grad


class _Rounding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Round.apply(F.relu(self.conv(x)) * 4).flatten(1)


def _round_rule(ctx, func, args, kwargs):  # type: ignore[no-untyped-def]
    x = args[0]
    return ctx.add_constant(x, torch.round(x[:1]) - x[:1], "round c(x0)")


def test_a_user_rule_turns_the_cache_off_and_cache_on_says_why() -> None:
    torch.manual_seed(0)
    model, x = _Rounding().double().eval(), photos(8)[:3]
    with use_rule(_Round, _round_rule):
        auto = LinearInterpreter(model, x[:1])
        assert auto.cache_bytes == 0
        assert auto.cache_off_because is not None and "_Round" in auto.cache_off_because
        off = LinearInterpreter(model, x[:1], cache="off")
        assert rel_err(auto(x[1:]), off(x[1:])) == 0  # x0 rides along, as without a cache
        assert _batch_sizes(model, lambda: auto(x[1:])) == [3]
        with pytest.raises(
            ConvscopeError, match=r"cache='on' cannot be honoured: the user rule for .*_Round"
        ):
            LinearInterpreter(model, x[:1], cache="on")


def _round_rule_frozen(ctx, func, args, kwargs):  # type: ignore[no-untyped-def]
    x = args[0]
    c = ctx.frozen(lambda: torch.round(x[:1]) - x[:1])
    return ctx.add_constant(x, c, "round c(x0)")


def test_a_cacheable_user_rule_keeps_the_cache_and_gives_the_same_answers() -> None:
    torch.manual_seed(0)
    model, x = _Rounding().double().eval(), photos(8)[:4]
    with use_rule(_Round, _round_rule):
        off = LinearInterpreter(model, x[:1], cache="off")
        want, want_r = off(x[1:]), off.residual
    with use_rule(_Round, _round_rule_frozen, cacheable=True):
        on = LinearInterpreter(model, x[:1], cache="on")
        assert on.cache_off_because is None and on.cache_bytes > 0
        assert _batch_sizes(model, lambda: on(x[1:])) == [3]  # probes alone
        assert rel_err(on(x[1:]), want) < TOL and rel_err(on.residual, want_r) < TOL
        # the constant is really the rounding error at x0 (not zero), so a wrong recall shows
        assert float((on(x[1:]) - on.linear(x[1:]) - on.residual).abs().max()) < 1e-12
        assert float(on.residual.abs().max()) > 1e-3


def test_a_cache_over_its_budget_is_dropped() -> None:
    model, x = torchvision_model("resnet18")
    small = LinearInterpreter(model, x[:1], cache_budget=1000)
    assert small.cache_bytes == 0
    assert small.cache_off_because == (
        "x0's decisions need more than the cache budget of 1,000 bytes"
    )
    assert _batch_sizes(model, lambda: small(x[1:3])) == [3]
    with pytest.raises(ConvscopeError, match="cache budget of 1,000 bytes"):
        LinearInterpreter(model, x[:1], cache="on", cache_budget=1000)
    big = LinearInterpreter(model, x[:1], cache="on", cache_budget=1 << 30)
    assert 0 < big.cache_bytes <= 1 << 30
    assert rel_err(big(x[1:3]), small(x[1:3])) < TOL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cache": "yes"}, "cache must be one of ['auto', 'on', 'off']; got 'yes'"),
        ({"cache": True}, "cache must be one of ['auto', 'on', 'off']; got True"),
        ({"cache_budget": -1}, "cache_budget must be a number of bytes >= 0"),
        ({"cache_budget": 1.5}, "cache_budget must be a number of bytes >= 0"),
    ],
)
def test_bad_cache_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).double()
    with pytest.raises(ConvscopeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        LinearInterpreter(model, photos(8)[:1], **kwargs)  # type: ignore[arg-type]


class _InPlaceInput(nn.Module):
    """Works in place on its own input, as some preprocessing layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.5).relu_()
        return self.conv(x).flatten(1)


def test_a_model_that_writes_into_its_input_leaves_the_probes_alone() -> None:
    torch.manual_seed(0)
    model, x = _InPlaceInput().double().eval(), photos(8)
    on, off = _pair(model, x[:1].clone(), "freeze")
    probes = x[1:].clone()
    out = on(probes)
    assert torch.equal(probes, x[1:])  # the caller's probes are as they were
    assert rel_err(out, off(x[1:])) < TOL
    assert rel_err(on.rows([0, 5]), off.rows([0, 5])) < TOL  # a probe batch that needs grad


# -- probes per pass from a memory budget ------------------------------------------------------


def test_auto_batch_size_fits_the_memory_budget() -> None:
    model, x = _everything(False)
    probe = LinearInterpreter(model, x[:1])
    per = probe.bytes_per_probe
    # every input-dependent tensor of a probe counts: at least its input and its output
    assert per >= x[0].numel() * 8 + probe.output.numel() * 8
    li = LinearInterpreter(model, x[:1], batch_size="auto", memory_budget=3 * per + per // 2)
    assert li.batch_size == 3
    assert _batch_sizes(model, lambda: li.linear(x[1:])) == [3, 2]  # 4 probes: 3, then 1 + x0
    fixed = LinearInterpreter(model, x[:1], batch_size=32)
    assert rel_err(li.linear(x[1:]), fixed.linear(x[1:])) < TOL
    assert rel_err(li.rows([0, 1, 2, 3]), fixed.rows([0, 1, 2, 3])) < TOL
    assert LinearInterpreter(model, x[:1], batch_size="auto", memory_budget=1).batch_size == 1
    default = LinearInterpreter(model, x[:1], batch_size="auto")
    assert 1 <= default.batch_size <= 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": "big"}, "batch_size must be an integer >= 1; got 'big'"),
        (
            {"batch_size": "auto", "memory_budget": 0},
            "memory_budget must be a number of bytes >= 1",
        ),
        ({"memory_budget": 2.5}, "memory_budget must be a number of bytes >= 1"),
    ],
)
def test_bad_batch_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()).double()
    with pytest.raises(ConvscopeError, match=message):
        LinearInterpreter(model, photos(8)[:1], **kwargs)  # type: ignore[arg-type]
