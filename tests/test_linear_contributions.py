"""Bias contributions, pixel discussions and votes (seed 001 Theorem 1, eq. 18, Fig. 3/4).

The reference is a small network whose frozen system is written out by hand as
matrices: every contribution and every pixel discussion is computed from those
matrices, independently of the interpreter. On torchvision models the
contributions must add up to the output in both modes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _linear_helpers import rel_err, torchvision_model
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear import (
    LinearInterpreter,
    contribution_histogram,
    group_contributions,
)
from convscope.linear.contributions import _batched_contributions


@pytest.fixture(autouse=True)
def _float64() -> object:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Hand(nn.Module):
    """conv 3x3 (1 -> 2, bias) -> BN (eval) -> ReLU -> 2x2 max-pool -> linear (8 -> 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.flatten(1))


def hand_system(net: Hand, x0: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen system of :class:`Hand` from loops: conv matrix C, batch-norm scale S
    and shift t, ReLU mask D, pool selection P, linear W (all on flat vectors)."""
    w, b = net.conv.weight.detach(), net.conv.bias.detach()
    C = torch.zeros(32, 16)
    for o in range(2):
        for i in range(4):
            for j in range(4):
                for di in range(3):
                    for dj in range(3):
                        ii, jj = i + di - 1, j + dj - 1
                        if 0 <= ii < 4 and 0 <= jj < 4:
                            C[o * 16 + i * 4 + j, ii * 4 + jj] = w[o, 0, di, dj]
    bn = net.bn
    scale = bn.weight.detach() / (bn.running_var + bn.eps).sqrt()
    shift = bn.bias.detach() - bn.running_mean * scale
    S = torch.diag(scale.repeat_interleave(16))
    b_conv = b.repeat_interleave(16)
    t = shift.repeat_interleave(16)
    z0 = S @ (C @ x0.reshape(16) + b_conv) + t
    D = torch.diag((z0 > 0).double())
    a0 = D @ z0
    P = torch.zeros(8, 32)
    for o in range(2):
        for p in range(2):
            for q in range(2):
                window = [o * 16 + (2 * p + u) * 4 + 2 * q + v for u in range(2) for v in range(2)]
                best = max(window, key=lambda k: (a0[k].item(), -k))
                P[o * 4 + p * 2 + q, best] = 1
    W = net.fc.weight.detach()
    return {"C": C, "S": S, "D": D, "P": P, "W": W, "b_conv": b_conv, "t": t, "b_fc": net.fc.bias}


@pytest.fixture
def hand() -> tuple[Hand, torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(11)
    net = Hand()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
        net.conv.bias.uniform_(-0.5, 0.5)
    net.eval()
    x0 = torch.randn(1, 1, 4, 4)
    return net, x0, {k: v.detach() for k, v in hand_system(net, x0).items()}


def test_each_contribution_equals_its_hand_computed_forward_projection(
    hand: tuple[Hand, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    net, x0, M = hand
    WPD = M["W"] @ M["P"] @ M["D"]
    expected = {
        "input": WPD @ M["S"] @ M["C"] @ x0.reshape(16),
        "conv": WPD @ M["S"] @ M["b_conv"],  # only the conv bias on, input 0
        "bn": WPD @ M["t"],  # only the batch-norm shift (incl. running mean)
        "fc": M["b_fc"],
    }
    li = LinearInterpreter(net, x0)
    assert [s.name for s in li.sources] == ["conv", "bn", "fc"]
    assert [s.op for s in li.sources] == ["conv2d bias", "batch_norm shift", "linear bias"]
    got = li.contributions()
    assert list(got) == list(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name][0], value, rtol=1e-12, atol=1e-12)
    total = sum(got.values())
    torch.testing.assert_close(total, net(x0).detach(), rtol=1e-12, atol=1e-12)
    for c in range(3):
        shares = li.contributions(target=c, batch_size=2)
        assert all(v.ndim == 0 for v in shares.values())
        for name, value in expected.items():
            assert float(shares[name]) == pytest.approx(float(value[c]), abs=1e-12)
    # the residual is the sum of the bias contributions
    torch.testing.assert_close(li.residual, total - got["input"], rtol=1e-12, atol=1e-12)
    c = int(net(x0).argmax())
    assert li.residual_share() == pytest.approx(float(li.residual[0, c] / li.output[0, c]))


def assert_same_shares(li: LinearInterpreter, c: int) -> None:
    """One forward + one backward pass (``target=c``) against one probe per source:
    equal to 1e-10 relative, in the same order, and summing to ``y_c``."""
    fast = li.contributions(target=c)
    slow = _batched_contributions(li, c, 64)
    assert list(fast) == list(slow) == ["input", *(s.name for s in li.sources)]
    a, b = torch.stack(list(fast.values())), torch.stack(list(slow.values()))
    assert a.shape == (len(li.sources) + 1,)
    assert float((a - b).abs().max()) <= 1e-10 * float(b.abs().max())
    y = float(li.output.reshape(-1)[c])
    assert float(a.sum()) == pytest.approx(y, rel=1e-6, abs=1e-12)


class SmallBN(nn.Module):
    """conv -> BN -> SiLU -> conv -> BN -> ReLU -> max-pool -> conv + skip, global pool,
    linear: batch-norm shifts, a taylor constant (SiLU), a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.c3 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.b1(self.c1(x)))
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        x = x + self.c3(x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("mode", ["freeze", "taylor"])
def test_scalar_contributions_equal_the_per_source_probes_on_a_small_cnn(mode: str) -> None:
    torch.manual_seed(13)
    net = SmallBN()
    with torch.no_grad():
        for bn in (net.b1, net.b2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    net.eval()
    li = LinearInterpreter(net, torch.randn(1, 3, 8, 8), mode=mode)  # type: ignore[arg-type]
    assert len(li.sources) >= (6 if mode == "taylor" else 5)
    for c in range(4):
        assert_same_shares(li, c)


def test_scalar_contributions_leave_the_model_as_it_was_after_an_error(
    hand: tuple[Hand, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    net, x0, _ = hand
    li = LinearInterpreter(net, x0)
    flags = [p.requires_grad for p in net.parameters()]

    def boom(module: nn.Module, args: object, output: object) -> None:
        raise RuntimeError("boom")

    handle = net.fc.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            li.contributions(target=0)
    finally:
        handle.remove()
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert torch.is_grad_enabled()
    assert_same_shares(li, 1)  # and it still works


def test_pixel_discussion_matches_the_hand_computed_back_projection(
    hand: tuple[Hand, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    net, x0, M = hand
    WPD = M["W"] @ M["P"] @ M["D"]
    F_ = WPD @ M["S"] @ M["C"]
    li = LinearInterpreter(net, x0)
    targets = [2, 0]
    raw = li.pixel_discussion(targets, normalize=False)
    assert raw.shape == (2, 4, 4)
    for k, c in enumerate(targets):
        e = torch.zeros(3)
        e[c] = 1
        term_input = x0.reshape(16) * (F_.T @ e)
        # each source: weight its bias map by Q^T e_c, back-project with F_k^T
        conv = M["C"].T @ (M["b_conv"] * (M["S"] @ WPD.T @ e))
        bn = (M["S"] @ M["C"]).T @ (M["t"] * (WPD.T @ e))
        fc = F_.T @ (M["b_fc"] * e)
        expected = (term_input + conv + bn + fc).reshape(4, 4)
        torch.testing.assert_close(raw[k], expected, rtol=1e-12, atol=1e-12)
        # the input term alone keeps its sum: (F x0)_c
        assert float(term_input.sum()) == pytest.approx(float((F_ @ x0.reshape(16))[c]))
    pd = li.pixel_discussion(targets)
    scores = net(x0)[0, targets].detach()
    torch.testing.assert_close(pd.flatten(1).sum(1), scores, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pd, raw * (scores / raw.flatten(1).sum(1)).view(2, 1, 1))


def test_pixel_votes_pick_the_largest_discussion(
    hand: tuple[Hand, torch.Tensor, dict[str, torch.Tensor]],
) -> None:
    net, x0, _ = hand
    li = LinearInterpreter(net, x0)
    votes = li.pixel_votes()  # top-10 of 3 outputs: all three
    pd = li.pixel_discussion([0, 1, 2])
    order = li.output[0].topk(3).indices
    assert votes.shape == (4, 4)
    assert votes.dtype == torch.long
    torch.testing.assert_close(votes, order[li.pixel_discussion(order).argmax(0)])
    torch.testing.assert_close(votes, pd.argmax(0))
    assert set(li.pixel_votes([1, 2]).unique().tolist()) <= {1, 2}


# A bias-free linear model on a 4x4 image of ones: pixel p's discussion of class c is
# W[c, p] exactly (integer weights, so the scaling to the score is exactly 1). Columns
# 0-5 are 0 for every class (pixels with no say), 6 and 7 tie for the largest between
# two classes; the rest have a strict maximum (8 with a tie below it).
_TIE_W = [
    # pixel: 0  1  2  3  4  5  6  7  8  9  10  11 12 13 14 15
    [0, 0, 0, 0, 0, 0, 2, 1, 5, 0, -1, 3, 0, 1, 2, 0],  # class 0, score 13
    [0, 0, 0, 0, 0, 0, 2, 3, 1, 5, -1, 0, 0, 2, 1, 1],  # class 1, score 14: the top-1
    [0, 0, 0, 0, 0, 0, 1, 3, 1, 0, 0, 0, 2, 0, 0, 2],  # class 2, score 9
]
_TIE_VOTES = [-1] * 8 + [0, 1, 2, 0, 2, 1, 0, 2]


def _tie_model() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(_TIE_W, dtype=torch.float64))
    return net.eval()


def test_tied_pixels_abstain() -> None:
    li = LinearInterpreter(_tie_model(), torch.ones(1, 1, 4, 4))
    pv = li.votes()  # top-10 of 3 outputs: all three, best first
    assert pv.targets.tolist() == [1, 0, 2]
    assert torch.equal(pv.discussions, torch.tensor(_TIE_W).double()[[1, 0, 2]].view(3, 4, 4))
    expected = torch.tensor(_TIE_VOTES).view(4, 4)
    assert torch.equal(pv.votes, expected)
    assert torch.equal(li.pixel_votes(), expected)
    # the abstaining pixels are exactly those whose largest discussion is attained twice
    d = pv.discussions
    tied = (d == d.amax(0)).sum(0) > 1
    assert torch.equal(pv.votes == -1, tied)
    assert pv.abstained == 0.5
    assert pv.shares == {1: 2 / 16, 0: 3 / 16, 2: 3 / 16}
    assert sum(pv.shares.values()) + pv.abstained == pytest.approx(1.0, abs=1e-15)
    # abstentions are nobody's votes: argmax alone would give these 8 pixels to the top-1
    # class (10 of 16 votes); class 0 and 2 lead with 3 each, 0 first in target order
    assert pv.most_voted == 0
    # a strict maximum is a vote for that target, whatever its rank among the scores
    for p, c in ((8, 0), (9, 1), (10, 2), (12, 2)):
        assert int(pv.votes.reshape(-1)[p]) == c
        assert int(d.reshape(3, -1)[:, p].argmax()) == [1, 0, 2].index(c)
    # among two targets, pixel 6 (2 vs 2) still ties; 7 (3 vs 1) no longer does
    two = li.pixel_votes([0, 1]).reshape(-1)
    assert int(two[6]) == -1 and int(two[7]) == 1 and int(two[0]) == -1
    # one target: no tie is possible, every pixel votes for it
    assert torch.equal(li.pixel_votes([2]), torch.full((4, 4), 2))


def test_no_votes_at_all() -> None:
    # x0 = 0 on a bias-free model: every discussion is 0, every pixel abstains
    pv = LinearInterpreter(_tie_model(), torch.zeros(1, 1, 4, 4)).votes(top=2)
    assert torch.equal(pv.votes, torch.full((4, 4), -1))
    assert pv.abstained == 1.0 and set(pv.shares.values()) == {0.0}
    assert pv.most_voted == -1


def test_taylor_sources_include_the_constants_of_smooth_units() -> None:
    torch.manual_seed(12)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Conv2d(4, 2, 1, bias=False))
    x0 = torch.randn(1, 3, 5, 5)
    taylor = LinearInterpreter(net, x0, mode="taylor")
    assert [(s.name, s.op) for s in taylor.sources] == [("0", "conv2d bias"), ("1", "silu c(x0)")]
    freeze = LinearInterpreter(net, x0, mode="freeze")
    assert [s.name for s in freeze.sources] == ["0"]  # the ratio rule adds no constant
    for li in (taylor, freeze):
        total = sum(li.contributions().values())
        torch.testing.assert_close(total, net(x0).detach(), rtol=1e-12, atol=1e-12)


def test_repeated_module_calls_are_separate_sources() -> None:
    conv = nn.Conv2d(2, 2, 1)
    net = nn.Sequential(conv, nn.ReLU(), conv)
    li = LinearInterpreter(net, torch.randn(1, 2, 3, 3))
    assert [s.name for s in li.sources] == ["0", "0#2"]
    grouped = group_contributions(li.contributions())
    assert list(grouped) == ["input", "0"]
    torch.testing.assert_close(sum(grouped.values()), li.output)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("resnet18", "freeze"),
        ("resnet18", "taylor"),
        ("densenet121", "freeze"),
        ("mobilenet_v3_small", "freeze"),
        ("mobilenet_v3_small", "taylor"),
        ("efficientnet_b0", "taylor"),
    ],
)
def test_contributions_add_up_on_torchvision_models(name: str, mode: str) -> None:
    model, x = torchvision_model(name)
    li = LinearInterpreter(model, x[:1], mode=mode)  # type: ignore[arg-type]
    contribs = li.contributions()
    assert len(contribs) == len(li.sources) + 1 > 10
    total = sum(contribs.values())
    assert rel_err(total, li.output) < 1e-6
    assert rel_err(total - contribs["input"], li.residual) < 1e-6
    # the biases carry a real part of the score: not a trivially zero residual
    assert float(li.residual.abs().max()) > 1e-3 * float(li.output.abs().max())
    c = int(li.output.argmax())
    shares = {k: float(v[0, c]) for k, v in contribs.items()}
    assert sum(shares.values()) == pytest.approx(float(li.output[0, c]), rel=1e-6, abs=1e-9)
    if name in ("resnet18", "mobilenet_v3_small"):
        assert_same_shares(li, c)
        assert_same_shares(li, int(li.output.argmin()))
    grouped = group_contributions(contribs, depth=2)
    assert rel_err(sum(grouped.values()), li.output) < 1e-6
    assert len(grouped) < len(contribs)


def test_pixel_votes_on_resnet18() -> None:
    model, x = torchvision_model("resnet18")
    li = LinearInterpreter(model, x[:1])
    targets = li.output[0].topk(4).indices
    pd = li.pixel_discussion(targets)
    assert pd.shape == (4, 32, 32)
    torch.testing.assert_close(pd.flatten(1).sum(1), li.output[0, targets], rtol=1e-9, atol=1e-9)
    votes = li.pixel_votes(targets)
    torch.testing.assert_close(votes, targets[pd.argmax(0)])
    assert votes.unique().numel() > 1  # pixels disagree: it is a vote, not a constant map


def test_grouping_and_histogram() -> None:
    one = {
        "input": torch.tensor(1.0),
        "features.0": torch.tensor(2.0),
        "features.1": torch.tensor(-1.0),
        "features.1#2": torch.tensor(0.5),
        "classifier.0": torch.tensor(1.5),
    }
    assert {k: float(v) for k, v in group_contributions(one).items()} == {
        "input": 1.0,
        "features.0": 2.0,
        "features.1": -0.5,
        "classifier.0": 1.5,
    }
    by_block = group_contributions(one, depth=1)
    assert {k: float(v) for k, v in by_block.items()} == {
        "input": 1.0,
        "features": 1.5,
        "classifier": 1.5,
    }
    other = {"input": torch.tensor(2.0), "features": torch.tensor(2.0)}
    hist = contribution_histogram([by_block, other])
    assert hist.names == ["input", "features", "classifier"]
    assert hist.count == 2
    # shares of score 4: (1/4, 1.5/4, 1.5/4) and (2/4, 2/4, 0)
    torch.testing.assert_close(hist.mean, torch.tensor([0.375, 0.4375, 0.1875]))
    assert float(hist.mean.sum()) == pytest.approx(1.0)
    assert hist.std.shape == (3,)
    with pytest.raises(ConvscopeError):
        contribution_histogram([])
    with pytest.raises(ConvscopeError):
        group_contributions(one, depth=0)


def test_bad_targets(hand: tuple[Hand, torch.Tensor, dict[str, torch.Tensor]]) -> None:
    net, x0, _ = hand
    li = LinearInterpreter(net, x0)
    with pytest.raises(ConvscopeError, match="out of range"):
        li.contributions(target=3)
    with pytest.raises(ConvscopeError, match="targets"):
        li.pixel_discussion([5])
    with pytest.raises(ConvscopeError, match="targets"):
        li.pixel_discussion([])
    with pytest.raises(ConvscopeError, match="top"):
        li.pixel_votes(top=0)


def test_contribution_histogram_by_hand() -> None:
    """Shares are each image's contributions over its own score; the spread is the sample
    standard deviation (n - 1), as seed 001 Fig. 4's error bars are."""
    from convscope.linear import contribution_histogram

    d = torch.float64
    images = [
        {"input": torch.tensor(3.0, dtype=d), "conv": torch.tensor(1.0, dtype=d)},  # score 4
        {"input": torch.tensor(1.0, dtype=d), "conv": torch.tensor(1.0, dtype=d)},  # score 2
        {"input": torch.tensor(2.0, dtype=d), "fc": torch.tensor(-1.0, dtype=d)},  # score 1
    ]
    h = contribution_histogram(images)
    assert h.names == ["input", "conv", "fc"] and h.count == 3
    table = np.array([[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [2.0, 0.0, -1.0]])
    np.testing.assert_allclose(h.mean.numpy(), table.mean(0), rtol=1e-15)
    np.testing.assert_allclose(h.std.numpy(), table.std(0, ddof=1), rtol=1e-15)
    one = contribution_histogram(images[:1])
    assert one.std.tolist() == [0.0, 0.0] and one.names == ["input", "conv"]
