"""convscope.evaluate: the method registry, the metrics, compare() and the evaluate run.

The peers' methods are checked against convscope's own independent implementations
(saliency, gradient x input) or a hand-computed Grad-CAM; the metrics against hand-built
curves and a random map (a real method must beat it on deletion and insertion); compare()
for determinism under its seed; the run for its files and its refusals before any work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("captum")
pytest.importorskip("quantus")

from convscope import attribution  # noqa: E402
from convscope.errors import ConvscopeError  # noqa: E402
from convscope.evaluate import (  # noqa: E402
    compare,
    get_method,
    get_metric,
    interval,
    list_methods,
    list_metrics,
    register_method,
    unregister_method,
)
from convscope.evaluate.metrics import insertion_curves  # noqa: E402

LENET = Path(__file__).resolve().parents[1] / "experiments/results/decoding/lenet_mnist.pt"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 5),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def lenet() -> tuple[nn.Module, torch.Tensor]:
    from convscope.data.datasets import load_dataset
    from convscope.models import load_model

    loaded = load_model(str(LENET))
    model = loaded[0] if isinstance(loaded, tuple) else loaded.model
    ds = load_dataset("mnist-subset", "test")
    return model.eval(), torch.from_numpy(ds.images[:8].copy())


# -- the registry ----------------------------------------------------------------------------


def test_registry_has_one_name_per_method_of_every_family() -> None:
    names = list_methods()
    assert len(names) == len(set(names)) == 15
    assert {"input_contribution", "pixel_discussion", "filter_score_map", "deconvnet"} <= set(
        list_methods(family="convscope")
    )
    assert set(list_methods(family="captum")) == {
        "saliency", "gradient_x_input", "integrated_gradients", "guided_backprop",
        "occlusion", "grad_cam",
    }  # fmt: skip
    assert list_methods(family="zennit") == [
        "lrp_epsilon_alpha2_beta1", "lrp_epsilon_gamma_box", "lrp_epsilon_plus"
    ]  # fmt: skip
    assert list_methods(family="grad-cam") == ["grad_cam_plus_plus"]


def test_a_duplicate_or_unknown_method_is_refused() -> None:
    with pytest.raises(ConvscopeError) as info:
        register_method("saliency", lambda m, x, t: x)
    assert str(info.value) == (
        "an explanation method named 'saliency' is already registered (captum); choose "
        "another name or unregister_method('saliency')"
    )
    with pytest.raises(ConvscopeError, match=r"^unknown explanation method 'salency'; choose "):
        get_method("salency")
    with pytest.raises(ConvscopeError, match=r"^unknown metric 'auc'; choose from deletion, "):
        get_metric("auc")
    assert list_metrics()[:2] == ["deletion", "insertion"]


def test_peer_methods_equal_independent_implementations() -> None:
    net = _net().double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 3, 4])
    sal = get_method("saliency").explain(net, x, t)
    assert torch.allclose(sal, attribution.saliency(net, x, t), atol=1e-14, rtol=0)
    gxi = get_method("gradient_x_input").explain(net, x, t)
    assert torch.allclose(gxi, attribution.gradient_x_input(net, x, t), atol=1e-14, rtol=0)
    assert sal.shape == gxi.shape == x.shape and sal.abs().sum() > 0


def test_grad_cam_is_the_hand_computed_one_at_the_last_spatial_convolution() -> None:
    net = _net().double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([1, 2])
    acts: list[torch.Tensor] = []
    h = net[3].register_forward_hook(lambda _m, _i, o: acts.append(o))
    try:
        out = net(x)
    finally:
        h.remove()
    grads = torch.autograd.grad(out.gather(1, t[:, None]).sum(), acts[0])[0]
    alpha = grads.mean((2, 3), keepdim=True)
    cam = torch.relu((alpha * acts[0]).sum(1, keepdim=True))
    up = nn.functional.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)
    got = get_method("grad_cam").explain(net, x, t)
    assert torch.allclose(got, up.detach(), atol=1e-12, rtol=0) and got.abs().sum() > 0


def test_grad_cam_refuses_a_model_without_a_spatial_convolution() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double()
    with pytest.raises(ConvscopeError) as info:
        get_method("grad_cam").explain(net, torch.rand(1, 1, 4, 4, dtype=torch.float64),
                                       torch.tensor([0]))  # fmt: skip
    assert str(info.value) == (
        "Grad-CAM needs a convolution with a spatial output; Sequential has none"
    )


# -- the metrics ----------------------------------------------------------------------------


def test_interval_is_students_t_by_hand() -> None:
    c = interval(np.array([1.0, 2.0, 3.0, 4.0, np.nan]))
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * sd / sqrt(4)
    assert c["n"] == 4 and c["mean"] == 2.5
    assert c["low"] == pytest.approx(2.5 - half, abs=1e-12)
    assert c["high"] == pytest.approx(2.5 + half, abs=1e-12)
    assert interval(np.array([np.nan]))["n"] == 0


class _PixelVote(nn.Module):
    """Two logits: the sum of the left half of the image, and 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., : x.shape[-1] // 2].flatten(1).sum(1)
        return torch.stack([left, torch.zeros_like(left)], 1)


def test_insertion_curve_by_hand() -> None:
    model = _PixelVote()
    x = np.zeros((1, 1, 2, 2), dtype=np.float32)
    x[0, 0, :, 0] = [1.0, 2.0]  # the left column counts
    a = np.zeros_like(x)
    a[0, 0, 1, 0], a[0, 0, 0, 0] = 3.0, 2.0  # most relevant: (1, 0) then (0, 0)
    curves = insertion_curves(model, x, np.array([0]), a, steps=1)

    def p(s: float) -> float:
        return 1 / (1 + math.exp(-s))  # softmax of [s, 0] at class 0

    assert curves.shape == (1, 5)
    assert np.allclose(curves[0], [p(0), p(2), p(3), p(3), p(3)], atol=1e-6)


def test_a_real_method_beats_a_random_map_on_deletion_and_insertion(
    lenet: tuple[nn.Module, torch.Tensor],
) -> None:
    model, x = lenet
    gen = torch.Generator().manual_seed(3)
    register_method("random_map", lambda m, xb, t: torch.rand(xb.shape, generator=gen))
    try:
        ev = compare(model, x, ["gradient_x_input", "random_map"], ["deletion", "insertion"],
                     batch_size=4)  # fmt: skip
    finally:
        unregister_method("random_map")
    d = {m: ev.table[m]["deletion"]["mean"] for m in ev.methods}
    ins = {m: ev.table[m]["insertion"]["mean"] for m in ev.methods}
    assert d["gradient_x_input"] < d["random_map"] - 0.1, d
    assert ins["gradient_x_input"] > ins["random_map"] + 0.1, ins
    assert ev.best("deletion") == "gradient_x_input"
    assert all(ev.table[m]["deletion"]["n"] == 8 for m in ev.methods)
    # the deletion curve starts at the model's softmax of the image itself
    with torch.no_grad():
        p0 = model(x).softmax(1).max(1).values.double().mean().item()
    assert ev.curves["gradient_x_input"]["deletion"][0] == pytest.approx(p0, abs=1e-6)


def test_compare_is_deterministic_under_its_seed(lenet: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = lenet
    kw = {"methods": ["saliency"], "metrics": ["faithfulness_correlation", "max_sensitivity"]}
    a = compare(model, x[:4], seed=5, **kw)  # type: ignore[arg-type]
    b = compare(model, x[:4], seed=5, **kw)  # type: ignore[arg-type]
    c = compare(model, x[:4], seed=6, **kw)  # type: ignore[arg-type]
    for k in kw["metrics"]:
        assert np.array_equal(a.scores["saliency"][k], b.scores["saliency"][k])
        assert a.scores["saliency"][k].shape == (4,)
    assert not np.array_equal(
        a.scores["saliency"]["faithfulness_correlation"],
        c.scores["saliency"]["faithfulness_correlation"],
    )


def test_compare_refuses_unknown_names_and_bad_data_before_work() -> None:
    net = _net()
    with pytest.raises(ConvscopeError, match="^unknown metric 'nope'"):
        compare(net, torch.rand(2, 1, 8, 8), ["saliency"], ["nope"])
    with pytest.raises(ConvscopeError, match="^the method 'filter_score_map' needs a fixed"):
        compare(net, torch.rand(2, 1, 8, 8), ["filter_score_map"], ["sparseness"])
    with pytest.raises(ConvscopeError, match=r"^data must be a torch Dataset, a convscope"):
        compare(net, [1, 2, 3], ["saliency"], ["sparseness"])  # type: ignore[arg-type]
    assert all(not m.training for m in net.modules())


# -- the run and the command ---------------------------------------------------------------


def test_evaluate_run_writes_the_table_figures_and_page(tmp_path: Path) -> None:
    from convscope.data.mnist import load_mnist_subset
    from convscope.runs.evaluate import run
    from convscope.runs.sources import resolve_model

    methods, metrics = ["gradient_x_input", "occlusion"], ["deletion", "sparseness"]
    r = run(str(LENET), tmp_path / "ev", data="mnist-subset", limit=6, batch_size=4,
            methods=",".join(methods), metrics=",".join(metrics))  # fmt: skip
    names = sorted(p.name for p in r.written)
    assert names == sorted(["per_image.parquet", "evaluation.json", "evaluation.md",
                            "curves.png", "scores.png", "examples.png", "report.html",
                            "report.json"])  # fmt: skip
    blob = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert blob["images"] == 6 and blob["methods"] == methods
    cell = blob["table"]["occlusion"]["deletion"]
    assert cell["n"] == 6 and cell["low"] <= cell["mean"] <= cell["high"]
    # the per-image rows, merged, give what compare() gives on the same batches
    net = resolve_model(str(LENET), warn=False).module
    x = torch.from_numpy(load_mnist_subset("test").images[:6].copy())
    ref = compare(net, x, methods, metrics, batch_size=4, examples=2)
    for m in methods:
        for k in metrics:
            np.testing.assert_allclose(r.result.scores[m][k], ref.scores[m][k], rtol=1e-6)
            assert blob["table"][m][k]["mean"] == pytest.approx(ref.table[m][k]["mean"], rel=1e-6)
    np.testing.assert_allclose(blob["curves"]["occlusion"]["deletion"],
                               ref.curves["occlusion"]["deletion"], rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(r.result.examples["maps"]["occlusion"][:2],
                               ref.examples["maps"]["occlusion"], rtol=1e-5, atol=1e-7)  # fmt: skip
    md = (tmp_path / "ev" / "evaluation.md").read_text()
    assert "| gradient_x_input |" in md and "deletion ↓" in md
    with pytest.raises(ConvscopeError, match=r"holds another run \(its methods is \["):
        run(str(LENET), tmp_path / "ev", data="mnist-subset", limit=6, batch_size=4,
            methods="saliency", metrics=",".join(metrics))  # fmt: skip
    again = run(str(LENET), tmp_path / "ev", data="mnist-subset", limit=6, batch_size=4,
                methods=",".join(methods), metrics=",".join(metrics))  # fmt: skip
    assert (again.computed, again.resumed) == (0, 6)  # the same command resumes
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["table"] == blob["table"]


def test_evaluate_command_refuses_bad_input_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from convscope.cli import main

    for args, message in (
        (["--metrics", "nope"], "error: unknown metric 'nope'; choose from deletion"),
        (["--limit", "0"], "error: --limit must be at least 1; got 0"),
        (["--data", "nowhere/*.png"], "error: --data nowhere/*.png: not a dataset name"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["evaluate", "--model", str(LENET), "--out", str(tmp_path / "x"), *args])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / "x" / "evaluation.json").exists()


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_explains_a_small_gfnn_shaped_like_its_input(name: str) -> None:
    from convscope.models import GFNN

    torch.manual_seed(1)
    net = GFNN(num_classes=4, input_size=8, dropout=0.0).eval()
    x = torch.rand(2, 1, 8, 8)
    t = torch.tensor([1, 3])
    a = get_method(name).explain(net, x, t)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert bool(torch.isfinite(a).all()) and a.abs().sum() > 0, name
    assert all(not m.training for m in net.modules())
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())


def test_deletion_steps_divide_the_image_as_quantus_needs() -> None:
    from convscope.evaluate.metrics import deletion_steps

    assert deletion_steps((1, 28, 28)) == 28  # 28 steps on MNIST
    assert deletion_steps((3, 32, 32)) == 32  # 36 would not divide 1024
    assert deletion_steps((3, 8, 8)) == 2
    for shape in ((1, 28, 28), (3, 32, 32), (3, 7, 9), (1, 5, 5)):
        per = deletion_steps(shape)
        assert (shape[1] * shape[2]) % per == 0 and shape[1] * shape[2] // per >= 25


def test_spearman_rows_by_hand_and_nan_for_a_constant_row() -> None:
    from scipy.stats import spearmanr

    from convscope.evaluate.metrics import spearman_rows

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 10)), rng.normal(size=(3, 10))
    b[1] = a[1] ** 3  # same order: 1
    a[2] = 5.0  # constant: undefined, where Quantus's own helper fails for the whole batch
    r = spearman_rows(a, b)
    assert r[0] == pytest.approx(spearmanr(a[0], b[0])[0], abs=1e-12)
    assert r[1] == pytest.approx(1.0, abs=1e-12) and math.isnan(r[2])


def test_road_is_not_scored_on_colour_images_and_says_why() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 64, 3)).eval()  # fmt: skip
    ev = compare(net, torch.rand(3, 3, 8, 8), ["gradient_x_input"], ["road", "sparseness"])
    assert ev.table["gradient_x_input"]["road"]["n"] == 0
    assert ev.table["gradient_x_input"]["sparseness"]["n"] == 3
    assert ev.notes["road"].startswith("Quantus's implementation indexes the pixels")
