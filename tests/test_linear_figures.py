"""Figures of the linear interpreter's analyses, and the FGSM helper (seed 001 Fig. 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear.attacks import fgsm
from convscope.report import linear_figures as lf
from convscope.report.figures import save_figure

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead


def _saved(fig: Figure, tmp_path: Path, name: str) -> None:
    path = save_figure(fig, tmp_path / name)
    assert path.read_bytes()[:4] == b"\x89PNG"


# -- figures -------------------------------------------------------------------------------------


def test_masked_image_keeps_only_the_voting_pixels() -> None:
    img = np.linspace(0, 1, 12).reshape(3, 4)
    votes = np.array([[1, 2, 1, 1], [2, 2, 2, 1], [1, 1, 1, 1]])
    m = lf.masked_image(img, votes, 2)
    assert m.shape == (3, 4, 3)
    voting = votes == 2
    assert np.allclose(m[voting], np.repeat(img[voting][:, None], 3, 1))
    assert np.allclose(m[~voting], [0.85, 0.85, 0.87])
    with pytest.raises(ConvscopeError, match="differ in size"):
        lf.masked_image(img, votes[:2], 2)


def test_pixel_votes_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((8, 8)), rng.random((8, 8, 3))]
    votes = [rng.integers(0, 4, (8, 8)), rng.integers(2, 6, (8, 8))]
    fig = lf.plot_pixel_votes(
        images, votes, [[1, 2], [3]], [f"c{i}" for i in range(6)],
        discussions=[rng.standard_normal((8, 8)), rng.standard_normal((8, 8))],
        row_titles=["a", "b"],
    )  # fmt: skip
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 * 5
    assert len(fig.axes) - len(panels) == 2  # each signed discussion map has its colour bar
    titles = [ax.get_title() for ax in panels]
    share = 100 * float((votes[0] == 1).mean())
    assert f"votes for c1: {share:.0f}%" in titles
    assert "discussion: c3" in titles
    _saved(fig, tmp_path, "votes.png")
    with pytest.raises(ConvscopeError):
        lf.plot_pixel_votes(images, votes[:1], [[1]])


def test_abstaining_pixels_are_grey_and_in_the_legend(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.random((6, 6))
    votes = rng.integers(0, 3, (6, 6))
    votes[:2] = -1  # 12 of 36 pixels have no say
    fig = lf.plot_pixel_votes([img], [votes], [[0, 1]], [f"c{i}" for i in range(3)])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["c0", "c1", "c2", "no say (tied)"]  # -1 is no class of the legend
    (vote_map,) = [ax for ax in fig.axes if ax.get_title() == "votes"]
    im = vote_map.images[0]
    rgba = im.cmap(im.norm(np.asarray(im.get_array())))
    assert np.allclose(rgba[:2, :, :3], to_rgb(lf._NO_SAY))
    assert not np.isclose(rgba[2:, :, :3], to_rgb(lf._NO_SAY)).all(-1).any()
    titles = [ax.get_title() for ax in fig.axes]
    assert f"votes for c0: {100 * float((votes == 0).mean()):.0f}%" in titles
    _saved(fig, tmp_path, "abstain.png")
    # no abstaining pixel: no legend entry for them
    fig = lf.plot_pixel_votes([img], [np.abs(votes)], [[0]], [f"c{i}" for i in range(3)])
    assert "no say (tied)" not in [t.get_text() for t in fig.legends[0].get_texts()]
    # the attack figure too
    fig = lf.plot_attack(img, img, votes, np.abs(votes), (0, 1), ["input", "fc"],
                         np.array([0.5, 0.5]), np.array([0.4, 0.6]))  # fmt: skip
    labels = [t.get_text() for t in fig.legends[-1].get_texts()]
    assert "no say (tied)" in labels and "-1" not in labels
    _saved(fig, tmp_path, "attack_abstain.png")


def test_contribution_histogram_and_residual_figures(tmp_path: Path) -> None:
    names = ["input", "features.2", "classifier.1"]
    series = {
        "clean": (np.array([0.5, 0.2, 0.3]), np.array([0.1, 0.05, 0.1])),
        "FGSM": (np.array([0.1, 0.6, 0.3]), np.array([0.3, 0.4, 0.2])),
    }
    fig = lf.plot_contribution_histogram(
        names, series, residual={"clean": (0.5, 0.1), "FGSM": (0.9, 0.3)}, title="t"
    )
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][-1].startswith("residual")
    assert len(ax.patches) == 2 * 3 + 2
    _saved(fig, tmp_path, "hist.png")
    with pytest.raises(ConvscopeError, match="2 values for 3 names"):
        lf.plot_contribution_histogram(names, {"x": (np.zeros(2), np.zeros(2))})
    fig = lf.plot_residual_shares({"GFNN": np.array([0.4, 0.5]), "LeNet": np.array([0.1])})
    _saved(fig, tmp_path, "shares.png")
    fig = lf.plot_score_split(["3", "5"], np.array([1.0, 0.5]), np.array([2.0, -0.2]),
                              image=np.zeros((5, 5)))  # fmt: skip
    _saved(fig, tmp_path, "split.png")


def test_filter_maps_svd_and_attack_figures(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.random((6, 6))
    cols = rng.standard_normal((2, 1, 24, 24))
    fig = lf.plot_filter_maps(img, cols, [(1, 2), (4, 4)], window=9, kind="column")
    assert "column 1 at (4, 4)" in [ax.get_title() for ax in fig.axes]
    _saved(fig, tmp_path, "cols.png")
    # a crop around the border is zero-padded, not shifted
    crop = lf._crop(np.ones((4, 4)), (0, 0), 3)
    assert crop.tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]
    S = np.array([3.0, 2.0])
    U, V = rng.standard_normal((2, 1, 24, 24)), rng.standard_normal((2, 1, 6, 6))
    fig = lf.plot_svd_pairs(S, U, V, image=img)
    _saved(fig, tmp_path, "svd.png")
    fig = lf.plot_svd_pairs(S, rng.standard_normal((2, 10)), rng.standard_normal((2, 3, 6, 6)))
    _saved(fig, tmp_path, "svd_classifier.png")
    fig = lf.plot_attack(
        img, img * 0.9, rng.integers(0, 3, (6, 6)), rng.integers(0, 3, (6, 6)), (1, 2),
        ["input", "a", "b"], np.array([0.5, 0.3, 0.2]), np.array([-1.0, 1.5, 0.5]),
    )  # fmt: skip
    _saved(fig, tmp_path, "attack.png")
    fig = lf.plot_signed_maps([rng.standard_normal((6, 6)), rng.standard_normal(4)], ["m", "v"])
    _saved(fig, tmp_path, "maps.png")


# -- FGSM ----------------------------------------------------------------------------------------


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)
    ).double()


def test_fgsm_increases_the_loss_within_eps_and_the_clamp() -> None:
    model = _classifier()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = model(x).argmax(1)
        before = F.cross_entropy(model(x), pred, reduction="none")
    for eps in (0.01, 0.1):
        adv = fgsm(model, x, eps=eps)
        assert adv.dtype == x.dtype and not adv.requires_grad
        assert float((adv - x).abs().max()) <= eps + 1e-12
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        with torch.no_grad():
            after = F.cross_entropy(model(adv), pred, reduction="none")
        assert bool((after > before).all()), (before, after)
    # the untargeted step is exactly eps * sign(grad) where the clamp does not bite
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(model(xg), pred, reduction="sum").backward()
    assert xg.grad is not None
    free = fgsm(model, x, eps=0.05, clamp=None)
    assert torch.equal(free, x + 0.05 * xg.grad.sign())
    # targeted: the loss of the target falls
    target = (pred + 1) % 5
    with torch.no_grad():
        t_before = F.cross_entropy(model(x), target, reduction="none")
        t_after = F.cross_entropy(model(fgsm(model, x, target, 0.05, targeted=True)), target,
                                  reduction="none")  # fmt: skip
    assert bool((t_after < t_before).all())


def test_fgsm_leaves_the_model_alone_and_checks_its_arguments() -> None:
    model = _classifier()
    model.train()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    fgsm(model, x, target=[0, 1], eps=0.1, clamp=(0.2, 0.8))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert float(fgsm(model, x, 1, eps=0.0, clamp=(0.2, 0.8)).min()) >= 0.2
    for kwargs, msg in (
        ({"eps": -1.0}, "eps"),
        ({"clamp": (1.0, 0.0)}, "clamp"),
        ({"target": [0, 1, 2]}, "3 targets"),
        ({"target": 7}, r"\[0, 5\)"),
    ):
        with pytest.raises(ConvscopeError, match=msg):
            fgsm(model, x, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match="logits"):
        fgsm(nn.Identity(), x)
