"""Seed 003's LeNet: architecture, names, checkpoint, and the committed trained weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.fx
from torch import nn

import convscope as cs
from convscope.models import LENET_LAYER_NUMBERS, LeNet, build_model, load_checkpoint

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results" / "decoding"


def test_shapes_and_parameter_count() -> None:
    model = LeNet()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    # 20*25+20 + 50*20*25+50 + 500*50*16+500 + 10*500+10 (MatConvNet's net has the same)
    assert sum(p.numel() for p in model.parameters()) == 431_080


def test_layer_numbers_follow_the_paper() -> None:
    model = LeNet()
    modules = dict(model.named_modules())
    kinds = {1: nn.Conv2d, 2: nn.MaxPool2d, 3: nn.Conv2d, 4: nn.MaxPool2d, 5: nn.Conv2d}
    kinds |= {6: nn.ReLU, 7: nn.Conv2d}
    for name, number in LENET_LAYER_NUMBERS.items():
        assert isinstance(modules[name], kinds[number])
    shapes = {n: tuple(modules[n].weight.shape) for n, k in LENET_LAYER_NUMBERS.items() if k % 2}
    assert shapes == {
        "features.conv1": (20, 1, 5, 5),
        "features.conv2": (50, 20, 5, 5),
        "features.conv3": (500, 50, 4, 4),
        "features.conv4": (10, 500, 1, 1),
    }


def test_traceable_and_built_by_name(tmp_path: Path) -> None:
    torch.fx.symbolic_trace(LeNet())  # decoding walks the traced graph
    model = build_model("lenet", num_classes=4)
    cs.models.save_checkpoint(tmp_path / "m.pt", model)
    again, _ = load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(again(x), model.eval()(x))


def test_committed_checkpoint_matches_its_metrics() -> None:
    model, extra = load_checkpoint(RESULTS / "lenet_mnist.pt")
    metrics = json.loads((RESULTS / "lenet_mnist_metrics.json").read_text())
    test = cs.data.load_mnist_subset("test")
    with torch.no_grad():
        pred = model(torch.from_numpy(test.images)).argmax(1).numpy()
    acc = float((pred == test.labels).mean())
    assert abs(acc - metrics["history"]["test_acc"][-1]) < 1e-9
    assert extra["history"]["test_acc"][-1] == metrics["history"]["test_acc"][-1]
    assert acc > 0.96
