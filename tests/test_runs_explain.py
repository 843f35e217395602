"""convscope.runs.explain on a colour GF-ResNet checkpoint: an RGB photo, colour scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from convscope import attribution as attr
from convscope.cli import main
from convscope.models import build_model, load_checkpoint, save_checkpoint
from convscope.runs import explain
from convscope.runs.inputs import expand_images, load_input


@pytest.fixture(scope="module")
def gf_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_model("gf_resnet50", num_classes=4, width=8)
    names = ["cat", "dog", "bird", "fish"]
    return save_checkpoint(tmp_path_factory.mktemp("gfr") / "gfr.pt", net,
                           extra={"class_names": names})  # fmt: skip


def test_rgb_photo_gets_colour_scores(gf_resnet: Path, tmp_path: Path) -> None:
    res = explain.run(gf_resnet, "sample:chelsea", tmp_path, size=(32, 32))
    m = res.metrics
    assert m["input"]["shape"] == [3, 32, 32] and m["input"]["converted"] is None
    assert m["target_name"] in ("cat", "dog", "bird", "fish")
    # the same numbers from the library: colour score = filter scores summed per channel
    fs = res.result  # the FilterScores the run computed
    net, _ = load_checkpoint(gf_resnet)
    x, _ = load_input(expand_images("sample:chelsea")[0], in_channels=3, size=(32, 32))
    direct = attr.filter_scores(net, x, target=m["target"])
    colours = direct.color_scores[0].detach().numpy()
    assert list(m["color_scores"]) == ["red", "green", "blue"]
    np.testing.assert_allclose(list(m["color_scores"].values()), colours, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fs.scores.detach().numpy(), direct.scores.detach().numpy(),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    # conservation: the colour scores split the filter scores, nothing lost or added
    assert sum(m["color_scores"].values()) == pytest.approx(sum(m["filter_scores"].values()))
    assert len(m["filter_scores"]) == 32  # the 32 compass edge kernels of GF-ResNet
    html = (tmp_path / "report.html").read_text()
    assert "colour score" in html and "blue" in html


def test_the_cli_prints_the_colour_scores(
    gf_resnet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["explain", "--model", str(gf_resnet), "--image", "sample:coffee", "--size", "24",
              "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert not e.value.code
    out = capsys.readouterr().out
    assert "colour scores: red " in out and ", blue " in out
