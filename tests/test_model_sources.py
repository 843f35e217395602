"""load_model for every source: factories, exported programs, torchvision, timm, state dicts."""

from __future__ import annotations

import re
import sys
import textwrap
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.models import build_model, imagenet_normalized, load_model, save_checkpoint

INFO_KEYS = {
    "spec",
    "source",
    "description",
    "trained",
    "weights",
    "class_names",
    "in_channels",
    "input_size",
    "normalization",
    "preprocess",
}

# A small but real CNN: conv, batch norm, SiLU, a residual add, max and average pooling,
# a linear head; it imports a neighbour module, as a user's models.py would.
NETS_PY = """
import torch
import torch.nn.functional as F
from torch import nn

from {helper} import WIDTH

NOT_A_FACTORY = 3


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(x + self.bn(self.conv(x)))


class SmallNet(nn.Module):
    class_names = ["cat", "dog", "bird"]
    input_size = (20, 24)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, WIDTH, 3, padding=1), nn.BatchNorm2d(WIDTH), nn.SiLU()
        )
        self.block = Block(WIDTH)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, x):
        x = self.block(F.max_pool2d(self.stem(x), 2))
        return self.head(self.pool(x).flatten(1))


def make_net():
    return SmallNet()


def broken():
    raise ValueError("bad width\\nsecond line")


def not_a_model():
    return {{"weights": torch.zeros(2)}}
"""


def _write_nets(folder: Path, stem: str = "nets") -> Path:
    """``folder/<stem>.py`` with the CNN, and its helper module beside it."""
    helper = f"helper_{stem}_{abs(hash(str(folder))) % 10**8}"
    (folder / f"{helper}.py").write_text("WIDTH = 8\n")
    path = folder / f"{stem}.py"
    path.write_text(textwrap.dedent(NETS_PY.format(helper=helper)))
    return path


def _direct(path: Path, seed: int = 0) -> nn.Module:
    """The factory called by hand, as a user would, under ``seed``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"direct_{path.stem}_{seed}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
        torch.manual_seed(seed)
        return module.make_net().eval()
    finally:
        sys.path.remove(str(path.parent))


def _perturb_bn(model: nn.Module, seed: int) -> None:
    # running statistics of 0 and 1 would let a loader that drops buffers pass
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    return _write_nets(tmp_path)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))


# -- factories -----------------------------------------------------------------------------------


def test_factory_from_file_is_the_factory_under_seed_0(nets: Path, x: torch.Tensor) -> None:
    path_before = list(sys.path)
    rng_before = torch.get_rng_state()
    model, info = load_model(f"{nets}:make_net")
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert sys.path == path_before  # the file's folder was on sys.path only while loading
    assert set(info) >= INFO_KEYS
    assert info["source"] == "factory" and info["spec"] == f"{nets}:make_net"
    assert info["description"] == "factory nets.py:make_net (seed 0)"
    assert info["trained"] is None and info["weights"] is None
    assert info["class_names"] == ["cat", "dog", "bird"]
    assert info["in_channels"] == 3 and info["input_size"] == (20, 24)
    assert info["normalization"] is None and info["preprocess"] is None
    assert not any(m.training for m in model.modules())
    ref = _direct(nets, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
        # a different seed gives different weights, so the equality above means something
        assert not torch.allclose(model(x), _direct(nets, seed=1)(x))
    again, _ = load_model(Path(f"{nets}:make_net"))  # os.PathLike specs work too
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_factory_state_dict_round_trip(nets: Path, tmp_path: Path, x: torch.Tensor) -> None:
    trained = _direct(nets, seed=7)
    _perturb_bn(trained, seed=3)
    sd = tmp_path / "net.pt"
    torch.save(trained.state_dict(), sd)
    model, info = load_model(f"{nets}:make_net", state_dict=sd)
    assert info["trained"] is True
    assert info["description"] == "factory nets.py:make_net (state dict net.pt)"
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)
    # wrapped forms: a training script's checkpoint dict, and a DDP "module." prefix
    wrapped = tmp_path / "ckpt.pt"
    torch.save(
        {"epoch": 3, "model": {f"module.{k}": v for k, v in trained.state_dict().items()}}, wrapped
    )
    model2, _ = load_model(f"{nets}:make_net", state_dict=wrapped)
    with torch.no_grad():
        assert torch.equal(model2(x), trained(x))


def test_state_dict_that_does_not_fit_names_the_file_and_the_keys(
    nets: Path, tmp_path: Path
) -> None:
    good = _direct(nets).state_dict()
    bad = dict(good)
    del bad["stem.0.weight"], bad["stem.0.bias"]
    bad["extra.weight"] = torch.zeros(1)
    bad["head.weight"] = torch.zeros(4, 8)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(ConvscopeError) as e:
        load_model(f"{nets}:make_net", state_dict=path)
    msg = str(e.value)
    assert msg == (
        "state dict bad.pt does not fit factory nets.py:make_net: 2 missing keys "
        "(first: stem.0.weight), 1 unexpected (first: extra.weight), 1 with another shape "
        "(first: head.weight is (4, 8) in the file, (3, 8) in the model)"
    )
    with pytest.raises(ConvscopeError, match=r"state dict .*missing\.pt does not exist"):
        load_model(f"{nets}:make_net", state_dict=tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a torch file")
    with pytest.raises(ConvscopeError, match=r"cannot read state dict .*garbage\.pt"):
        load_model(f"{nets}:make_net", state_dict=garbage)
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ConvscopeError, match=r"list\.pt holds no state dict"):
        load_model(f"{nets}:make_net", state_dict=listing)


def test_package_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = f"cs_test_pkg_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    nets = _write_nets(tmp_path / pkg, stem="nets")
    # the helper is imported by its bare name, so its folder must be importable too
    monkeypatch.syspath_prepend(str(tmp_path / pkg))
    monkeypatch.syspath_prepend(str(tmp_path))
    model, info = load_model(f"{pkg}.nets:make_net")
    assert info["source"] == "factory"
    assert info["description"] == f"factory {pkg}.nets:make_net (seed 0)"
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(model(x), _direct(nets)(x))
    with pytest.raises(ConvscopeError, match=rf"{pkg}.nets has no attribute 'nope'"):
        load_model(f"{pkg}.nets:nope")


@pytest.mark.parametrize(
    ("attr", "needle"),
    [
        ("nope", r"nets\.py has no attribute 'nope'; callables there: .*make_net"),
        ("NOT_A_FACTORY", r"nets\.py:NOT_A_FACTORY is a int, not a callable that returns a model"),
        ("broken", r"factory .*nets\.py:broken raised ValueError: bad width$"),
        ("not_a_model", r"nets\.py:not_a_model returned dict .*, not a torch\.nn\.Module"),
        ("SmallNet.nope", r"nets\.py:SmallNet has no attribute 'nope'"),
    ],
)
def test_bad_factories(nets: Path, attr: str, needle: str) -> None:
    with pytest.raises(ConvscopeError, match=needle) as e:
        load_model(f"{nets}:{attr}")
    assert "\n" not in str(e.value)


def test_factory_files_that_do_not_import(tmp_path: Path) -> None:
    with pytest.raises(ConvscopeError, match=r"factory file .*missing\.py does not exist"):
        load_model(f"{tmp_path / 'missing.py'}:make_net")
    boom = tmp_path / "boom.py"
    boom.write_text("raise RuntimeError('boom at import\\nmore detail')\n")
    with pytest.raises(
        ConvscopeError, match=r"cannot import .*boom\.py: RuntimeError: boom at import$"
    ):
        load_model(f"{boom}:f")
    assert not any("boom" in name for name in sys.modules)  # the failed module was dropped
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def f(:\n")
    with pytest.raises(ConvscopeError, match=r"cannot import .*syntax\.py: SyntaxError"):
        load_model(f"{syntax}:f")
    with pytest.raises(
        ConvscopeError,
        match=r"cannot import module no_such_pkg_xyz\.mod: ModuleNotFoundError: "
        r"No module named 'no_such_pkg_xyz'",
    ):
        load_model("no_such_pkg_xyz.mod:make")
    with pytest.raises(ConvscopeError, match=r"must look like file\.py:function"):
        load_model(f"{tmp_path / 'x.py'}:not-a-name")


# -- exported programs ---------------------------------------------------------------------------


def test_exported_program_round_trip(nets: Path, tmp_path: Path, x: torch.Tensor) -> None:
    eager = _direct(nets, seed=4)
    _perturb_bn(eager, seed=5)
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(eager, (x,)), path)
    model, info = load_model(str(path))
    assert set(info) >= INFO_KEYS
    assert info["source"] == "exported" and info["description"] == "exported program net.pt2"
    assert info["trained"] is None and info["weights"] is None and info["class_names"] is None
    assert info["in_channels"] == 3 and info["input_size"] == (20, 24)
    assert model.eval() is model and not model.training  # callers may put it in eval mode
    # the module hierarchy is back, so analyses can name layers by their paths
    assert {n for n, _ in eager.named_modules()} <= {n for n, _ in model.named_modules()}
    with torch.no_grad():
        torch.testing.assert_close(model(x), eager(x), rtol=0, atol=1e-6)
    with pytest.raises(ConvscopeError, match="weights .* are for torchvision and timm names"):
        load_model(path, weights=True)
    with pytest.raises(ConvscopeError, match="state dict .* is for factories"):
        load_model(path, state_dict=tmp_path / "any.pt")


def test_bad_exported_programs(
    nets: Path, tmp_path: Path, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConvscopeError, match=r"exported program .*missing\.pt2 does not exist"):
        load_model(tmp_path / "missing.pt2")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(ConvscopeError, match=r"cannot read exported program .*garbage\.pt2") as e:
        load_model(garbage)
    assert "\n" not in str(e.value)
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(_direct(nets), (x,)), good)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConvscopeError, match=r"cannot read exported program .*truncated\.pt2"):
        load_model(truncated)

    def refuse(*args: Any, **kwargs: Any) -> nn.Module:
        raise RuntimeError("cannot unlift this graph\nmore")

    monkeypatch.setattr(torch.export, "unflatten", refuse)
    with pytest.raises(
        ConvscopeError,
        match=r"cannot turn exported program .*good\.pt2 into a module: cannot unlift this graph$",
    ):
        load_model(good)


# -- checkpoints and convscope architectures -----------------------------------------------------


def test_checkpoint_and_architecture_info(tmp_path: Path) -> None:
    ckpt = save_checkpoint(
        tmp_path / "g.pt", build_model("lenet"), extra={"class_names": list("0123456789")}
    )
    model, info = load_model(ckpt)
    assert set(info) >= INFO_KEYS
    assert info["source"] == "checkpoint" and info["description"] == "checkpoint g.pt (lenet)"
    assert info["trained"] is True and info["class_names"] == list("0123456789")
    with pytest.raises(ConvscopeError, match=r"weights \(--weights\) are for torchvision and timm"):
        load_model(ckpt, weights="DEFAULT")
    with pytest.raises(ConvscopeError, match=r"state dict \(--state-dict\) is for factories"):
        load_model(ckpt, state_dict=ckpt)

    model, info = load_model("gfnn")
    assert info["source"] == "convscope" and info["trained"] is False
    assert info["description"] == "convscope gfnn (untrained, seed 0)"
    with pytest.raises(ConvscopeError, match=r"gfnn is a convscope architecture .*--state-dict"):
        load_model("gfnn", weights=True)
    # a state dict (here a convscope checkpoint, which wraps one) into the architecture
    with torch.random.fork_rng():
        torch.manual_seed(9)
        other = build_model("gfnn")
    save_checkpoint(tmp_path / "other.pt", other)
    loaded, info = load_model("gfnn", state_dict=tmp_path / "other.pt")
    assert info["trained"] is True and info["description"] == "convscope gfnn (state dict other.pt)"
    xx = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(xx), other.eval()(xx))
        assert not torch.allclose(model(xx), loaded(xx))


def test_unknown_specs_are_one_line() -> None:
    with pytest.raises(ConvscopeError) as e:
        load_model("resnet1000")
    msg = str(e.value)
    assert msg.startswith("unknown model 'resnet1000': give a convscope checkpoint (.pt)")
    for kind in (
        ".pt2",
        "file.py:factory",
        "package.module:factory",
        "gfnn",
        "torchvision",
        "timm/NAME",
    ):
        assert kind in msg
    assert "\n" not in msg
    with pytest.raises(ConvscopeError, match=r"model file missing/net\.ckpt does not exist"):
        load_model("missing/net.ckpt")
    with pytest.raises(ConvscopeError, match=r"checkpoint missing/net\.pt does not exist"):
        load_model("missing/net.pt")
    with pytest.raises(ConvscopeError, match="weights must be None, True"):
        load_model("resnet18", weights=" ")


# -- torchvision ---------------------------------------------------------------------------------


def test_torchvision_untrained_and_state_dict(tmp_path: Path) -> None:
    tv = pytest.importorskip("torchvision")
    model, info = load_model("resnet18")
    assert info["source"] == "torchvision" and info["trained"] is False
    assert info["description"] == "torchvision resnet18 (untrained, seed 0)"
    assert info["normalization"] == "imagenet" and info["preprocess"] is None
    assert [n for n, _ in model.named_children()] == ["normalize", "net"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = tv.models.resnet18().eval()
        torch.manual_seed(11)
        other = tv.models.resnet18().eval()
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.net.state_dict().values(), ref.state_dict().values(), strict=True)
    )
    # a state dict saved from load_model's own (wrapped) model names tensors "net.*"
    path = tmp_path / "tv.pt"
    torch.save(imagenet_normalized(other).state_dict(), path)
    loaded, info = load_model("resnet18", state_dict=path)
    assert info["trained"] is True and info["weights"] is None
    for k, v in other.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v), k
    with pytest.raises(ConvscopeError, match="give weights or a state dict for resnet18, not both"):
        load_model("resnet18", weights=True, state_dict=path)
    with pytest.raises(
        ConvscopeError,
        match=r"torchvision resnet18 has no weights 'IMAGENET9K'; "
        r"choose DEFAULT or one of IMAGENET1K_V1",
    ):
        load_model("resnet18", weights="IMAGENET9K")


def _no_download(*args: Any, **kwargs: Any) -> None:
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_torchvision_cached_weights_load_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tv = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)  # never the network
    enum = tv.models.ResNet18_Weights.DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    assert cache == tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    with torch.random.fork_rng():
        torch.manual_seed(21)
        stand_in = tv.models.resnet18()
    _perturb_bn(stand_in, seed=2)
    torch.save(stand_in.state_dict(), cache / enum.url.rsplit("/", 1)[-1])
    for weights in ("DEFAULT", True, "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        model, info = load_model("resnet18", weights=weights)
        got = model.net.state_dict()
        for k, v in stand_in.state_dict().items():
            assert torch.equal(got[k], v), k
        assert info["trained"] is True and info["weights"] == "IMAGENET1K_V1"
        assert info["description"] == "torchvision resnet18 (weights: IMAGENET1K_V1)"
        assert len(info["class_names"]) == 1000 and info["class_names"][0] == "tench"
        assert info["input_size"] == (224, 224) and info["in_channels"] == 3
        assert info["preprocess"] == {
            "resize": 256,
            "crop": [224, 224],
            "interpolation": "bilinear",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }


def test_torchvision_offline_names_the_url_and_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tv = pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(ConvscopeError) as e:
        load_model("resnet18", weights=True)
    msg = str(e.value)
    url = tv.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert "\n" not in msg
    assert msg.startswith(f"cannot download torchvision resnet18 weights IMAGENET1K_V1 from {url}")
    assert "URLError" in msg and "Name or service not known" in msg
    assert f"not in the local cache {tmp_path / 'hub' / 'checkpoints'}" in msg


# -- timm ----------------------------------------------------------------------------------------


def test_timm_by_name_untrained() -> None:
    timm = pytest.importorskip("timm")
    name = "tf_mobilenetv3_small_minimal_100"  # a timm-only CNN whose mean/std are not ImageNet's
    model, info = load_model(f"timm/{name}")
    assert set(info) >= INFO_KEYS
    assert info["source"] == "timm" and info["trained"] is False and info["weights"] is None
    assert info["description"] == f"timm {name} (untrained, seed 0)"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        ref = timm.create_model(name).eval()
    cfg = timm.data.resolve_model_data_config(ref)
    assert info["normalization"] == {"mean": list(cfg["mean"]), "std": list(cfg["std"])}
    assert info["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert info["input_size"] == tuple(cfg["input_size"][1:]) and info["in_channels"] == 3
    assert info["preprocess"] is None and info["class_names"] is None
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 1000)
        # the normalisation is inside the model: it reads [0, 1] pixels
        torch.testing.assert_close(y, ref((x - 0.5) / 0.5), rtol=0, atol=0)
    # a bare name timm knows and torchvision does not
    model, info = load_model("resnet10t")
    assert info["source"] == "timm" and info["input_size"] == (176, 176)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_timm_pretrained_through_timm_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timm = pytest.importorskip("timm")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    import timm.models._hub as hub

    with torch.random.fork_rng():
        torch.manual_seed(31)
        stand_in = timm.create_model("resnet10t")
    _perturb_bn(stand_in, seed=4)
    file = tmp_path / "model.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in stand_in.state_dict().items()}, file)
    asked: list[str] = []

    def cached(repo_id: str, filename: str, **kwargs: Any) -> str:
        asked.append(f"{repo_id}/{filename}")
        return str(file)  # what the hub returns for a file already in its cache

    monkeypatch.setattr(hub, "hf_hub_download", cached)
    model, info = load_model("timm/resnet10t", weights="DEFAULT")
    assert asked == ["timm/resnet10t.c3_in1k/model.safetensors"]
    got = model.net.state_dict()
    for k, v in stand_in.state_dict().items():
        assert torch.equal(got[k], v), k
    assert info["trained"] is True and info["weights"] == "c3_in1k"
    assert info["description"] == "timm resnet10t (weights: c3_in1k)"
    assert len(info["class_names"]) == 1000 and info["class_names"][0] == "tench"
    pre = info["preprocess"]
    assert pre["crop"] == [176, 176] and pre["resize"] == 201  # floor(176 / 0.875)
    assert pre["interpolation"] == "bicubic" and pre["mean"] == [0.485, 0.456, 0.406]
    model2, info2 = load_model("resnet10t", weights="c3_in1k")
    assert info2["weights"] == "c3_in1k"
    with pytest.raises(
        ConvscopeError, match=r"timm resnet10t has no pretrained weights nope; its weights: c3_in1k"
    ):
        load_model("resnet10t", weights="nope")


@pytest.mark.parametrize("error", ["url", "hub"])
def test_timm_offline_names_the_hub_and_cache(monkeypatch: pytest.MonkeyPatch, error: str) -> None:
    pytest.importorskip("timm")
    import huggingface_hub
    import timm.models._hub as hub

    def offline(*args: Any, **kwargs: Any) -> str:
        if error == "url":
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        # what huggingface_hub raises after its retries when it is offline
        raise huggingface_hub.errors.LocalEntryNotFoundError("An error happened while trying")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(ConvscopeError) as e:
        load_model("timm/resnet10t", weights=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        "cannot download timm resnet10t weights c3_in1k from https://huggingface.co/timm/resnet10t.c3_in1k"
    )
    assert f"not in the local cache {huggingface_hub.constants.HF_HUB_CACHE}" in msg


def test_timm_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "timm", None)  # type: ignore[arg-type]
    with pytest.raises(
        ConvscopeError, match=re.escape("timm models need timm: pip install 'convscope[zoo]'")
    ):
        load_model("timm/resnet10t")
    with pytest.raises(
        ConvscopeError, match=re.escape("(timm names need timm: pip install 'convscope[zoo]')")
    ):
        load_model("resnet10t")


def test_a_callers_module_is_not_cast_in_place() -> None:
    from convscope.runs.sources import resolve_model

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loaded = resolve_model(net, device="cpu", dtype=torch.float64, warn=False)
    assert next(loaded.module.parameters()).dtype == torch.float64
    assert loaded.module is not net  # a cast copy, the caller's module untouched
    assert all(p.dtype == torch.float32 for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded.module(x.double()), net(x).double(), rtol=1e-5, atol=1e-6)
    # already in the asked dtype and device: used as it is, no copy
    same = resolve_model(net, device="cpu", dtype=torch.float32, warn=False)
    assert same.module is net


def test_linear_votes_leaves_the_callers_module_in_float32(tmp_path: Path) -> None:
    from PIL import Image

    from convscope.runs import linear_votes

    torch.manual_seed(0)
    net = build_model("lenet").eval()
    img = tmp_path / "digit.png"
    Image.fromarray((torch.rand(28, 28) * 255).byte().numpy()).save(img)
    x = torch.rand(1, 1, 28, 28)
    ref = net(x)
    linear_votes.run(net, img, tmp_path / "out")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(net(x), ref, rtol=0, atol=0)
