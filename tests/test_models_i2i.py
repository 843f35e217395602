"""CycleGAN ResNet generator: layout of the original, shapes, float64, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.models import CycleGANGenerator, build_model, load_checkpoint, save_checkpoint
from convscope.models.i2i import ResnetBlock


@pytest.mark.parametrize("size", [(16, 16), (24, 32), (12, 20)])
def test_output_shape_equals_input_shape(size: tuple[int, int]) -> None:
    model = CycleGANGenerator(ngf=4, n_blocks=2)
    with torch.no_grad():
        y = model(torch.rand(2, 3, *size) * 2 - 1)
    assert y.shape == (2, 3, *size)
    assert float(y.abs().max()) < 1.0  # tanh output


def test_other_channel_counts_and_float64() -> None:
    model = CycleGANGenerator(in_channels=1, out_channels=3, ngf=4, n_blocks=1).double()
    x = torch.rand(1, 1, 16, 20, dtype=torch.float64)
    y = model(x)
    assert y.dtype == torch.float64 and y.shape == (1, 3, 16, 20)


def test_layout_of_the_original_resnet_9blocks() -> None:
    model = CycleGANGenerator()
    # The authors' code prints 11.378 M parameters for resnet_9blocks with ngf=64.
    assert sum(p.numel() for p in model.parameters()) == 11_378_179
    layers = list(model.model)
    assert len(layers) == 28
    assert isinstance(layers[0], nn.ReflectionPad2d) and layers[0].padding == (3, 3, 3, 3)
    assert isinstance(layers[1], nn.Conv2d) and layers[1].kernel_size == (7, 7)
    assert [layers[i].stride for i in (4, 7)] == [(2, 2), (2, 2)]
    assert all(isinstance(layers[i], ResnetBlock) for i in range(10, 19))
    for i in (19, 22):
        up = layers[i]
        assert isinstance(up, nn.ConvTranspose2d)
        assert (up.stride, up.padding, up.output_padding) == ((2, 2), (1, 1), (1, 1))
    assert isinstance(layers[25], nn.ReflectionPad2d) and isinstance(layers[27], nn.Tanh)
    keys = set(model.state_dict())
    # Names of the original's state dicts, so its latest_net_G.pth files load.
    assert {"model.1.weight", "model.10.conv_block.1.weight", "model.18.conv_block.5.bias"} <= keys
    assert {"model.19.weight", "model.22.bias", "model.26.weight"} <= keys


def test_instance_norm_as_in_the_original() -> None:
    model = CycleGANGenerator(ngf=4, n_blocks=3)
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 + 2 * 3 + 2
    assert all(not m.affine and not m.track_running_stats for m in norms)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    # No running statistics: train and eval mode give the same output.
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(model.train()(x), model.eval()(x))
    block = model.model[10].conv_block
    assert [type(m).__name__ for m in block] == [
        "ReflectionPad2d",
        "Conv2d",
        "InstanceNorm2d",
        "ReLU",
        "ReflectionPad2d",
        "Conv2d",
        "InstanceNorm2d",
    ]


def test_batch_and_no_norm() -> None:
    bn = CycleGANGenerator(ngf=4, n_blocks=1, norm="batch")
    convs = [m for m in bn.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    # Only the last conv (no norm after it) keeps a bias, as in the original.
    assert [m.bias is not None for m in convs] == [False] * (len(convs) - 1) + [True]
    plain = CycleGANGenerator(ngf=4, n_blocks=1, norm="none")
    assert not any(isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) for m in plain.modules())
    assert plain(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    drop = CycleGANGenerator(ngf=4, n_blocks=1, use_dropout=True)
    assert any(isinstance(m, nn.Dropout) for m in drop.modules())


def test_bad_arguments_and_inputs() -> None:
    with pytest.raises(ConvscopeError, match="norm"):
        CycleGANGenerator(norm="group")
    with pytest.raises(ConvscopeError, match="ngf"):
        CycleGANGenerator(ngf=0)
    with pytest.raises(ConvscopeError, match="n_blocks"):
        CycleGANGenerator(n_blocks=-1)
    model = CycleGANGenerator(ngf=4, n_blocks=1)
    with pytest.raises(ConvscopeError, match="multiples of 4"):
        model(torch.rand(1, 3, 18, 16))
    with pytest.raises(ConvscopeError, match=r"\(N, 3, H, W\)"):
        model(torch.rand(1, 1, 16, 16))


def test_load_original_state_dict_drops_old_instance_norm_stats() -> None:
    src = CycleGANGenerator(ngf=4, n_blocks=2)
    state = dict(src.state_dict())
    # What a PyTorch 0.3-era checkpoint of the original holds for its instance norms.
    state["model.2.running_mean"] = torch.zeros(4)
    state["model.2.running_var"] = torch.ones(4)
    state["model.10.conv_block.2.running_mean"] = torch.zeros(16)
    dst = CycleGANGenerator(ngf=4, n_blocks=2)
    dst.load_original_state_dict(state)
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(dst(x), src(x))
    with pytest.raises(ConvscopeError, match="does not fit"):
        CycleGANGenerator(ngf=8, n_blocks=2).load_original_state_dict(state)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model("cyclegan_generator", ngf=4, n_blocks=1, norm="instance")
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "g.pt", model))
    assert isinstance(loaded, CycleGANGenerator)
    x = torch.rand(1, 3, 12, 16)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
