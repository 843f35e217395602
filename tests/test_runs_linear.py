"""The linear runs called from Python: convscope.runs.linear_*.

The same properties as tests/test_linear_cli.py (files written, metrics equal to the
interpreter called directly, contributions summing to the score), without typer: paths
and pairs are Python objects, errors are ConvscopeError, and the returned metrics are
what each run's JSON file holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convscope.data import load_image, load_mnist_subset, sample_photo
from convscope.errors import ConvscopeError
from convscope.io import to_jsonable
from convscope.linear import LinearInterpreter
from convscope.models import build_model, save_checkpoint
from convscope.models.zoo import load_model
from convscope.runs import (
    linear_columns,
    linear_contributions,
    linear_explore,
    linear_residual,
    linear_rows,
    linear_svd,
    linear_votes,
)
from convscope.runs.inputs import expand_images
from convscope.runs.linear_filters import map_stats, parse_position
from convscope.runs.linear_setup import freeze
from convscope.runs.options import start


def _metrics(run: Any) -> Any:
    """A run that returns its metrics, as the tests below read them."""

    def call(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return run.run(*args, **kwargs).metrics

    return call


run_residual = _metrics(linear_residual)
run_contributions = _metrics(linear_contributions)
run_votes = _metrics(linear_votes)
run_svd = _metrics(linear_svd)
run_rows = _metrics(linear_rows)
run_columns = _metrics(linear_columns)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real MNIST digit, a 12x12 photo crop, a small GFNN and an ESPCN with non-zero biases."""
    d = tmp_path_factory.mktemp("linear_runs")
    ds = load_mnist_subset("test")
    digit = d / "digit.png"
    Image.fromarray((ds.images[5, 0] * 255).astype(np.uint8), mode="L").save(digit)
    small = d / "small.png"
    Image.fromarray(sample_photo("camera")[100:112, 220:232, 0], mode="L").save(small)
    torch.manual_seed(1)
    gfnn = build_model("gfnn", first_layer="learned", seed=1)
    espcn = build_model("espcn", features=(8, 8))
    with torch.no_grad():  # non-zero biases, so the residual and contributions mean something
        for net in (gfnn, espcn):
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                    m.bias.normal_(0, 0.05)
    names = [f"digit {i}" for i in range(10)]
    return {
        "digit": digit,
        "small": small,
        "gfnn": save_checkpoint(d / "gfnn.pt", gfnn, extra={"class_names": names}),
        "espcn": save_checkpoint(d / "espcn.pt", espcn),
    }


@pytest.fixture(scope="module")
def gfnn_li(files: dict[str, Path]) -> LinearInterpreter:
    model, _ = load_model(str(files["gfnn"]), False)
    return LinearInterpreter(model.double(), load_image(files["digit"]).double())


def _on_disk(out: Path, name: str) -> dict[str, Any]:
    """The figure is a PNG; return the JSON written beside it (same stem)."""
    assert (out / name).read_bytes()[:4] == b"\x89PNG"
    return json.loads((out / name.replace(".png", ".json")).read_text())


def _same(returned: dict[str, Any], on_disk: dict[str, Any]) -> None:
    """The returned metrics are what metrics.json holds (NaN written as null)."""
    assert json.loads(json.dumps(to_jsonable(returned))) == on_disk


def test_freeze_takes_paths_and_a_size_pair(files: dict[str, Path], tmp_path: Path) -> None:
    s = start("t", files["gfnn"], files["digit"], tmp_path, ["t.json"], {"size": (28, 28)},
              dtype=torch.float64)  # fmt: skip
    fr = freeze(s, expand_images(files["digit"])[0], "freeze")
    assert fr.x0.shape == (1, 1, 28, 28) and fr.x0.dtype == torch.float64
    assert fr.li.out_shape == (10,)
    assert fr.metrics["model"]["spec"] == str(files["gfnn"])
    assert fr.metrics["model"]["trained"] is True
    assert fr.metrics["input"]["image"] == str(files["digit"])
    assert fr.metrics["linear"]["bias_sources"] == len(fr.li.sources)
    assert s.model.class_names is not None and s.model.class_names[3] == "digit 3"
    assert parse_position("3, 4") == (3, 4) == parse_position((3, 4))


def test_residual_splits_the_top_score(
    files: dict[str, Path], gfnn_li: LinearInterpreter, tmp_path: Path
) -> None:
    m = run_residual(files["gfnn"], files["digit"], tmp_path, top=3)
    _same(m, _on_disk(tmp_path, "residual.png"))
    c = int(gfnn_li.output.argmax())
    assert m["target"] == c and m["class_name"] == f"digit {c}"
    assert m["score"] == pytest.approx(float(gfnn_li.output[0, c]), rel=1e-12)
    assert m["input_part"] + m["residual"] == pytest.approx(m["score"], rel=1e-12)
    assert m["residual_share"] == pytest.approx(gfnn_li.residual_share(), rel=1e-9, abs=1e-12)
    assert [t["index"] for t in m["top"]] == gfnn_li.output[0].topk(3).indices.tolist()


def test_contributions_sum_to_the_score(
    files: dict[str, Path], gfnn_li: LinearInterpreter, tmp_path: Path
) -> None:
    m = run_contributions(files["gfnn"], files["digit"], tmp_path, target=6)
    _same(m, _on_disk(tmp_path, "contributions.png"))
    direct = gfnn_li.contributions(target=6)
    assert m["contributions"] == pytest.approx({k: float(v) for k, v in direct.items()})
    assert m["score"] == pytest.approx(float(gfnn_li.output[0, 6]), rel=1e-12)
    assert m["sum"] == pytest.approx(m["score"], rel=1e-9)  # seed 001 Theorem 1
    assert sum(m["groups"].values()) == pytest.approx(m["score"], rel=1e-9)
    assert sum(m["shares"].values()) == pytest.approx(1.0, rel=1e-9)
    assert [s["name"] for s in m["sources"]] == [s.name for s in gfnn_li.sources]


def test_votes_are_the_interpreters(
    files: dict[str, Path], gfnn_li: LinearInterpreter, tmp_path: Path
) -> None:
    m = run_votes(files["gfnn"], files["digit"], tmp_path, top=3)
    _same(m, _on_disk(tmp_path, "votes.png"))
    assert torch.equal(torch.tensor(m["votes"]), gfnn_li.pixel_votes(top=3))
    assert m["targets"] == gfnn_li.output[0].topk(3).indices.tolist()
    assert m["target_names"] == [f"digit {c}" for c in m["targets"]]
    assert m["abstained"] == pytest.approx(float((torch.tensor(m["votes"]) == -1).double().mean()))
    assert sum(m["vote_share"].values()) + m["abstained"] == pytest.approx(1.0)
    assert m["top1_wins"] == (m["most_voted"] == m["top1"])


def test_svd_and_a_classifier_row(
    files: dict[str, Path], gfnn_li: LinearInterpreter, tmp_path: Path
) -> None:
    m = run_svd(files["gfnn"], files["digit"], tmp_path / "svd", k=2, steps=30)
    _same(m, _on_disk(tmp_path / "svd", "svd.png"))
    assert m["singular_values"] == pytest.approx(gfnn_li.svd(k=2, steps=30).S.tolist(), rel=1e-9)
    assert m["steps"] == 30 and len(m["converged"]) == 2

    m = run_rows(files["gfnn"], files["digit"], tmp_path / "row", target=2)
    _same(m, _on_disk(tmp_path / "row", "rows.png"))
    row = gfnn_li.rows([2])[0]
    assert m["flat_indices"] == [2] and m["class_name"] == "digit 2"
    assert m["maps"][0]["sum"] == pytest.approx(float(row.sum()), rel=1e-9, abs=1e-12)


def test_sr_columns_rows_and_contributions_at_python_pairs(
    files: dict[str, Path], tmp_path: Path
) -> None:
    model, _ = load_model(str(files["espcn"]), False)
    li = LinearInterpreter(model.double(), load_image(files["small"]).double())
    m = run_columns(files["espcn"], files["small"], tmp_path / "col", at=[(3, 4), "8,1"])
    _same(m, _on_disk(tmp_path / "col", "columns.png"))
    assert m["at"] == [[3, 4], [8, 1]] and m["flat_indices"] == [[3 * 12 + 4], [8 * 12 + 1]]
    cols = li.columns([3 * 12 + 4, 8 * 12 + 1])
    assert [s["sum"] for s in m["maps"]] == pytest.approx(cols.sum((1, 2, 3)).tolist(), rel=1e-9)
    for got, want in zip(m["maps"], map_stats(cols, [(13.5, 17.5), (33.5, 5.5)]), strict=True):
        assert got["peak"] == want["peak"]
        for key in ("max_abs", "centroid", "centroid_shift", "spread"):
            assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12)

    m = run_rows(files["espcn"], files["small"], tmp_path / "row", at=[(20, 30)], channel=0)
    assert m["flat_indices"] == [[20 * 48 + 30]]
    row = li.rows([20 * 48 + 30])[0]
    assert m["maps"][0]["sum"] == pytest.approx(float(row.sum()), rel=1e-9, abs=1e-12)

    m = run_contributions(files["espcn"], files["small"], tmp_path / "con")
    total = sum(v["sum"] for v in m["contributions"].values())
    assert total == pytest.approx(m["output"]["sum"], rel=1e-9)
    assert m["output"]["sum"] == pytest.approx(float(li.output.sum()), rel=1e-12)


def test_bicubic_residual_is_zero(files: dict[str, Path], tmp_path: Path) -> None:
    m = run_residual("bicubic", files["small"], tmp_path)
    assert m["residual_norm"] == 0.0 and m["relative_residual"] == 0.0
    assert m["linear"]["output_shape"] == [1, 48, 48]


def test_explore_writes_the_page(files: dict[str, Path], tmp_path: Path) -> None:
    res = linear_explore.run("bicubic", files["small"], tmp_path, size=(8, 10), k_svd=1)
    page = Path(res.metrics["page"])
    assert page == tmp_path / "explorer.html" and page.is_file() and res.metrics["shape"] == [8, 10]
    index = json.loads((tmp_path / "explorer.json").read_text())
    assert index["input"]["shape"] == [1, 8, 10]


@pytest.mark.parametrize(
    ("run", "kwargs", "needle"),
    [
        (run_residual, {"mode": "exact"}, "--mode must be freeze or taylor"),
        (run_residual, {"size": (0, 5)}, "--size must be H,W (two positive integers"),
        (run_residual, {"target": 10}, "--target 10 is out of range for 10 outputs"),
        (run_svd, {"k": 0}, "--k must be >= 1"),
        (run_svd, {"k": 11}, "--k must lie in [1, 10]"),
        (run_svd, {"method": "lanczos"}, "--method must be power or randomized"),
        (run_votes, {"top": 0}, "--top must be >= 1"),
        (run_rows, {"at": [(3, 4)]}, "rows take --target"),
        (run_columns, {"at": [(30, 4)]}, "outside the input"),
        (run_columns, {"channel": 1}, "--channel 1 is out of range for 1 channels"),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    files: dict[str, Path], tmp_path: Path, run: Any, kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConvscopeError) as e:
        run(files["gfnn"], files["digit"], tmp_path / "out", **kwargs)
    assert needle in str(e.value)
    # refused before anything was written (the folder may have been checked and made)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


class _DictOut(nn.Module):
    """A segmentation-style model: a dict of two dense outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.aux = nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": torch.relu(self.conv(x)), "aux": self.aux(x)}


def test_output_picks_the_tensor_of_a_dict_output(files: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _DictOut().double().eval()
    x0 = load_image(files["small"]).double()
    m = linear_contributions.run(net, files["small"], tmp_path / "a", output="out").metrics
    li = LinearInterpreter(net, x0, output="out")
    assert m["linear"]["output"] == "out" and m["linear"]["output_shape"] == [3, 12, 12]
    assert m["output"]["sum"] == pytest.approx(float(li.output.sum()), rel=1e-12)
    total = sum(v["sum"] for v in m["contributions"].values())
    with torch.no_grad():
        want = float(net(x0)["out"].sum())
    assert total == pytest.approx(want, rel=1e-10)
    aux = linear_residual.run(net, files["small"], tmp_path / "b", output="aux").metrics
    assert aux["linear"]["output_shape"] == [2, 12, 12]
    with pytest.raises(ConvscopeError, match="output="):
        linear_residual.run(net, files["small"], tmp_path / "c")


def test_titles_name_a_checkpoint_by_its_file_not_its_path() -> None:
    from convscope.runs.sources import LoadedModel

    def named(spec: str) -> str:
        return LoadedModel(torch.nn.Identity(), {"spec": spec}).short_name

    assert named("/home/me/runs/gfnn/checkpoint.pt") == "checkpoint.pt"
    assert named("experiments/results/decoding/lenet_mnist.pt") == "lenet_mnist.pt"
    assert named("resnet18") == "resnet18" and named("timm/resnet18") == "timm/resnet18"
    assert named("models/net.py:make") == "net.py"
    assert named("mypkg.nets:make_net") == "mypkg.nets:make_net"
