"""Fixed-kernel layer, GFNN and its baselines, GF-ResNet, checkpoints."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convscope as cs
from convscope import kernels as kb
from convscope.errors import ConvscopeError
from convscope.models import GFNN, KernelBank2d, build_model, load_checkpoint, save_checkpoint


def test_bank_is_a_buffer_and_never_trained() -> None:
    layer = KernelBank2d()
    assert [n for n, _ in layer.named_parameters()] == []
    assert "weight" in dict(layer.named_buffers())
    model = GFNN()
    before = model.first.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    assert all(p is not model.first.weight for g in opt.param_groups for p in g["params"])
    x = torch.rand(4, 1, 28, 28)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert torch.equal(model.first.weight, before)


def test_bank_matches_numpy_reference() -> None:
    bank = kb.gfnn_bank()
    layer = KernelBank2d(bank).double()
    img = np.random.default_rng(0).random((10, 12))
    out = layer(torch.from_numpy(img)[None, None])[0].numpy()
    for k, kern in enumerate(bank):
        np.testing.assert_allclose(out[k], kb.correlate2d(img, kern.weight, padding=1), atol=1e-12)


def test_colour_maps_are_ordered_by_channel() -> None:
    layer = KernelBank2d(["sobel_e", "box_blur"], in_channels=3).double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (2, 6, 6, 6)
    for c in range(3):
        for k, name in enumerate(["sobel_e", "box_blur"]):
            w = kb.get(name).tensor(dtype=torch.float64)[None, None]
            ref = F.conv2d(x[:, c : c + 1], w, padding=1)[:, 0]
            torch.testing.assert_close(y[:, c * 2 + k], ref)


def test_function_equals_module() -> None:
    layer = KernelBank2d(in_channels=3)
    x = torch.rand(1, 3, 9, 9)
    torch.testing.assert_close(layer(x), cs.models.kernel_bank_conv2d(x, layer.weight))


def test_gradcheck_float64() -> None:
    layer = KernelBank2d(["kirsch_n", "emboss"], in_channels=2).double()
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


@pytest.mark.parametrize("mode", ["fixed", "init", "random", "learned"])
def test_gfnn_modes(mode: str) -> None:
    model = GFNN(first_layer=mode)  # type: ignore[arg-type]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    first = model.first
    bank32 = kb.bank_array(kb.gfnn_bank()).astype(np.float32)
    if mode == "fixed":
        np.testing.assert_array_equal(first.weight[:, 0].numpy(), bank32)
    if mode == "init":
        assert isinstance(first.weight, torch.nn.Parameter)
        np.testing.assert_array_equal(first.weight[:, 0].detach().numpy(), bank32)
    if mode == "random":
        w = first.weight[:, 0].numpy().reshape(40, -1)
        bank = kb.bank_array(kb.gfnn_bank()).reshape(40, -1)
        np.testing.assert_allclose(
            np.linalg.norm(w, axis=1), np.linalg.norm(bank, axis=1), rtol=1e-5
        )
        assert not isinstance(first.weight, torch.nn.Parameter)
    if mode == "learned":
        assert isinstance(first, torch.nn.Conv2d) and first.weight.requires_grad


def test_gfnn_shapes_and_subsets() -> None:
    assert GFNN(input_size=8)(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert GFNN(in_channels=3, input_size=32, num_classes=4)(torch.rand(2, 3, 32, 32)).shape == (
        2,
        4,
    )
    for n in (32, 24, 16, 8, 4):
        m = GFNN(kernels=kb.gfnn_bank(n_edges=n))
        assert m.first.num_kernels == n + 8
        assert m(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    no_bias = GFNN(bias=False)
    assert all("bias" not in n for n, _ in no_bias.named_parameters())


def test_errors() -> None:
    with pytest.raises(ConvscopeError, match="first_layer"):
        GFNN(first_layer="frozen")  # type: ignore[arg-type]
    with pytest.raises(ConvscopeError, match=r"expects \(N, 1, H, W\)"):
        GFNN()(torch.rand(1, 3, 28, 28))
    with pytest.raises(ConvscopeError, match="input_size"):
        GFNN(input_size=4)
    with pytest.raises(ConvscopeError, match="unknown architecture"):
        build_model("vgg99")


def test_gf_resnet50() -> None:
    net = cs.models.gf_resnet50(num_classes=5)
    bank = net.conv1.bank
    assert bank.num_kernels == 32 and bank.out_channels == 96 and bank.stride == 1
    assert net.conv1.mix.stride == (2, 2)
    x = torch.rand(1, 3, 64, 64)
    # conv1 still halves the resolution, so the rest of ResNet sees the usual shapes
    assert net.conv1(x).shape == (1, 64, 32, 32)
    assert net(x).shape == (1, 5)
    assert cs.models.gf_resnet50(num_classes=5, width=32)(x).shape == (1, 5)
    assert isinstance(cs.models.gf_resnet50(first_layer="learned").conv1, torch.nn.Conv2d)


def test_gf_resnet_small() -> None:
    torch.manual_seed(0)
    net = build_model("gf_resnet_small", num_classes=6, widths=(8, 12, 20))
    front = net[0]
    assert isinstance(front, cs.models.ColorFrontEnd)
    assert front.bank.num_kernels == 32 and front.bank.out_channels == 96
    assert front.mix.out_channels == 8 and front.mix.bias is None
    assert not any(p.requires_grad for p in front.bank.parameters())
    assert [b.conv2.out_channels for b in net[3:6]] == [8, 12, 20]
    assert [b.stride for b in net[3:6]] == [1, 2, 2]
    x = torch.rand(2, 3, 32, 32)
    assert net(x).shape == (2, 6)
    feats = net[:6](x)
    assert feats.shape == (2, 20, 8, 8)  # two stride-2 blocks: 32 -> 8
    learned = cs.models.gf_resnet_small(num_classes=6, first_layer="learned")
    assert isinstance(learned[0], torch.nn.Conv2d) and learned[0].out_channels == 16
    with pytest.raises(ConvscopeError, match=r"widths must be one or more positive ints; got \(\)"):
        cs.models.gf_resnet_small(widths=())
    with pytest.raises(ConvscopeError, match="first_layer must be one of"):
        cs.models.gf_resnet_small(first_layer="frozen")  # type: ignore[arg-type]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model("gfnn", first_layer="random", kernels=kb.edge_subset(8), seed=3)
    path = save_checkpoint(tmp_path / "m.pt", model, extra={"test_acc": 0.5})
    loaded, extra = load_checkpoint(path)
    assert extra == {"test_acc": 0.5}
    assert not loaded.training
    for (n1, t1), (n2, t2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(t1, t2)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_bad_checkpoints(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConvscopeError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(ConvscopeError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ConvscopeError, match="not a convscope checkpoint"):
        load_checkpoint(foreign)
    good = save_checkpoint(tmp_path / "good.pt", build_model("gfnn"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ConvscopeError, match="cannot read checkpoint"):
        load_checkpoint(truncated)


def test_torchvision_weights_absent_is_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:  # weights download through torch.hub
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConvscopeError, match="not in the local cache"):
        cs.models.torchvision_model("resnet18", weights="DEFAULT")
    assert cs.models.torchvision_model("resnet18").fc.out_features == 1000
    with pytest.raises(ConvscopeError, match="unknown torchvision model"):
        cs.models.torchvision_model("resnet9000")
