"""Bring your own model and images: a user's model file through every command, in-process.

A small CNN with SiLU, batch norm (non-trivial running statistics and affine values) and a
residual add is written to a .py file as a user would, named as ``file.py:factory`` and
run through ``convscope linear contributions``, ``linear votes``, ``explain`` (a variant
with convscope's kernel bank in front) and ``spectrum``; each JSON file must hold the
numbers the Python API gives for the same model and image. Then the same model saved with
``torch.export.save``, a timm model by name, several images at once, outputs that never
clobber, bad specs and bad ``--out`` refused before any computation, and Ctrl-C.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import convscope.runs.linear_setup as linear_setup
from convscope import attribution as attr
from convscope import spectral as sp
from convscope.cli import main
from convscope.data import load_mnist_subset
from convscope.linear import LinearInterpreter
from convscope.models import load_model
from convscope.runs import linear_contributions, linear_votes
from convscope.runs.inputs import expand_images, load_input

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    from convscope.models import KernelBank2d


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.bn = nn.BatchNorm2d(c)

        def forward(self, x):
            return x + nn.functional.silu(self.bn(self.conv(x)))


    class Net(nn.Module):
        class_names = ["zero", "one", "two", "three", "four"]
        input_size = 16

        def __init__(self, bank=False):
            super().__init__()
            self.first = KernelBank2d(in_channels=1) if bank else nn.Conv2d(1, 40, 3, padding=1)
            self.stem = nn.Sequential(nn.BatchNorm2d(40), nn.SiLU(), nn.Conv2d(40, 8, 1))
            self.block = Block(8)
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Linear(8 * 8 * 8, 5)

        def forward(self, x):
            h = self.pool(self.block(self.stem(self.first(x))))
            return self.head(h.flatten(1))


    def _calibrated(net):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    n = m.num_features
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                    m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
        return net.eval()


    def make_net():
        return _calibrated(Net())


    def make_bank_net():
        return _calibrated(Net(bank=True))


    def not_a_module():
        return 42
    """
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("byo")
    (d / "user_models.py").write_text(FACTORY)
    ds = load_mnist_subset("test")
    pics = d / "pics"
    pics.mkdir()
    for i in (0, 1):  # two real digits, 28x28: the model takes 16x16 (resized for it)
        Image.fromarray((ds.images[i, 0] * 255).astype(np.uint8), mode="L").save(pics / f"d{i}.png")
    return {"dir": d, "spec": f"{d / 'user_models.py'}:make_net", "image": pics / "d0.png",
            "pics": pics, "bank": f"{d / 'user_models.py'}:make_bank_net"}  # fmt: skip


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main([*args, "--no-progress"] if args[0] not in ("kernels",) else list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code: int, err: str, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]


def frozen(spec: str, image: Path, **kw: Any) -> tuple[LinearInterpreter, torch.Tensor]:
    """The Python API on its own: the model, the image as the runs read it, the interpreter."""
    net, info = load_model(spec)
    x, _ = load_input(expand_images(image)[0], in_channels=info["in_channels"],
                      input_size=info["input_size"], preprocess=info["preprocess"])  # fmt: skip
    x0 = x.double()
    return LinearInterpreter(net.double(), x0, **kw), x0


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_user_factory_through_linear_contributions(
    user: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "linear", "contributions", "--model", user["spec"],
                         "--image", str(user["image"]), "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    assert "warning" not in err  # a factory's training cannot be told: no warning
    m = read(tmp_path / "contributions.json")
    li, x0 = frozen(user["spec"], user["image"])
    c = int(li.output.argmax())
    direct = li.contributions(target=c)
    assert m["target"] == c and m["class_name"] == ["zero", "one", "two", "three", "four"][c]
    assert m["class_name"] in out
    assert m["contributions"] == pytest.approx({k: float(v) for k, v in direct.items()}, rel=1e-9)
    # exactness: F x0 + r == f(x0), and every source sums to the score (Theorem 1)
    assert m["sum"] == pytest.approx(float(li.output[0, c]), rel=1e-10)
    assert m["contributions"]["input"] + float(li.residual[0, c]) == pytest.approx(m["score"])
    names = {s["name"] for s in m["sources"]}
    assert {"stem.0", "block.bn", "head"} <= names  # batch-norm shifts and biases by path
    assert m["input"]["shape"] == [1, 16, 16] and m["input"]["original_shape"] == [1, 28, 28]
    assert m["model"]["source"] == "factory" and m["model"]["trained"] is None
    # the same run from Python returns what the file holds
    again = linear_contributions.run(user["spec"], user["image"], tmp_path / "py")
    assert again.metrics["contributions"] == pytest.approx(m["contributions"], rel=1e-12)
    assert again.result.total == pytest.approx(again.result.score, rel=1e-10)


def test_user_factory_through_linear_votes(
    user: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "linear", "votes", "--model", user["spec"], "--image",
                       str(user["image"]), "--top", "3", "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    m = read(tmp_path / "votes.json")
    li, _ = frozen(user["spec"], user["image"])
    assert torch.equal(torch.tensor(m["votes"]), li.pixel_votes(top=3))
    assert m["targets"] == li.output[0].topk(3).indices.tolist()
    assert sum(m["vote_share"].values()) + m["abstained"] == pytest.approx(1.0)
    pv = linear_votes.run(user["spec"], user["image"], tmp_path / "py", top=3).result
    # each discussion sums to its score (seed 001 eq. 18, scaled)
    sums = pv.discussions.flatten(1).sum(1)
    assert torch.allclose(sums, li.output[0, pv.targets], rtol=1e-9)


def test_user_kernel_bank_model_through_explain(
    user: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "explain", "--model", user["bank"], "--image",
                         str(user["image"]), "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    m = read(tmp_path / "metrics.json")
    net, info = load_model(user["bank"])
    x, _ = load_input(expand_images(user["image"])[0], in_channels=1, input_size=(16, 16))
    fs = attr.filter_scores(net, x, target=m["target"])
    got = np.array(list(m["filter_scores"].values()))
    assert list(m["filter_scores"]) == fs.kernel_names
    np.testing.assert_allclose(got, fs.scores[0].detach().numpy(), rtol=1e-5, atol=1e-7)
    assert m["top_kernels"][0] == fs.kernel_names[int(fs.scores[0].argmax())]
    assert (tmp_path / "report.html").is_file() and "top kernels" in out


def test_user_factory_through_spectrum(
    user: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "spectrum", "--model", user["spec"], "--out", str(tmp_path))
    assert code == 0, err
    m = read(tmp_path / "spectrum.json")
    net, _ = load_model(user["spec"])
    want = sp.maximum_gain(net, sp.impulse_image((1, 16, 16)))
    assert m["maximum_gain_db"] == pytest.approx(want, rel=1e-6)
    assert m["operating_point"] == "impulse image" and "dB" in out


def test_exported_program_gives_the_same_numbers(
    user: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net, _ = load_model(user["spec"])
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(net.double(), (torch.rand(2, 1, 16, 16, dtype=torch.float64),),
                             dynamic_shapes={"x": {0: batch}})  # fmt: skip
    pt2 = tmp_path / "net.pt2"
    torch.export.save(ep, pt2)
    out = tmp_path / "o"
    code, _, err = cli(capsys, "linear", "contributions", "--model", str(pt2), "--image",
                       str(user["image"]), "--size", "16,16", "--out", str(out))  # fmt: skip
    assert code == 0, err
    m = read(tmp_path / "o" / "contributions.json")
    li, _ = frozen(user["spec"], user["image"])
    c = int(li.output.argmax())
    assert m["target"] == c and m["model"]["source"] == "exported"
    assert m["score"] == pytest.approx(float(li.output[0, c]), rel=1e-10)
    assert m["contributions"]["input"] == pytest.approx(
        float(li.contributions(target=c)["input"]), rel=1e-9
    )
    assert m["sum"] == pytest.approx(m["score"], rel=1e-10)
    # unflattened, the program keeps its module paths: the same bias sources as the eager model
    assert [s["name"] for s in m["sources"]] == [s.name for s in li.sources]


def test_a_timm_model_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("timm")
    code, _, err = cli(capsys, "linear", "contributions", "--model", "resnet10t", "--image",
                       "sample:chelsea", "--size", "48,48", "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "random weights (untrained)" in warnings[0]
    m = read(tmp_path / "contributions.json")
    assert m["model"]["source"] == "timm" and m["model"]["trained"] is False
    assert m["model"]["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert m["sources"][0]["name"] == "normalize"  # the mean shift is a bias source
    assert m["sum"] == pytest.approx(m["score"], rel=1e-8)
    assert m["linear"]["output_shape"] == [1000]


def test_several_images_and_results_that_never_clobber(
    user: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    base = ["--model", user["spec"], "--image", str(user["pics"]), "--out", str(out)]
    assert cli(capsys, "linear", "contributions", *base)[0] == 0
    assert cli(capsys, "linear", "residual", *base)[0] == 0
    for name in ("d0", "d1"):  # both results kept side by side, one folder per image
        assert (out / name / "contributions.json").is_file()
        assert (out / name / "residual.json").is_file()
    index = read(out / "residual.json")
    assert [i["image"] for i in index["images"]] == [
        str(user["pics"] / f"d{i}.png") for i in (0, 1)
    ]
    assert 'href="d1/' in (out / "contributions_index.html").read_text()
    shares = [i["metrics"]["residual_share"] for i in index["images"]]
    for i, share in enumerate(shares):
        li, _ = frozen(user["spec"], user["pics"] / f"d{i}.png")
        assert share == pytest.approx(li.residual_share(), rel=1e-9, abs=1e-12)
    before = (out / "d0" / "residual.json").read_bytes()
    code, _, err = cli(capsys, "linear", "residual", *base)
    one_error_line(code, err, "already holds")
    assert "--overwrite" in err and (out / "d0" / "residual.json").read_bytes() == before
    assert cli(capsys, "linear", "residual", *base, "--overwrite")[0] == 0


def _no_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("computation started before the input was checked")

    monkeypatch.setattr(linear_setup, "LinearInterpreter", refuse)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("{d}/missing.py:make_net", "missing.py"),
        ("{d}/user_models.py:nope", "nope"),
        ("{d}/user_models.py:not_a_module", "returned int 42, not a torch.nn.Module"),
        ("{d}/corrupt.pt2", "corrupt.pt2"),
        ("no_such_model_anywhere", "unknown model"),
    ],
)
def test_bad_model_specs_are_one_line_before_any_computation(
    user: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    spec: str,
    needle: str,
) -> None:
    (user["dir"] / "corrupt.pt2").write_bytes(b"PK\x03\x04 this is not a zip archive")
    _no_computation(monkeypatch)
    code, _, err = cli(capsys, "linear", "contributions", "--model", spec.format(d=user["dir"]),
                       "--image", str(user["image"]), "--out", str(tmp_path))  # fmt: skip
    one_error_line(code, err, needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["file", "inside a file", "unwritable"])
def test_bad_out_is_one_line_before_any_computation(
    user: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    f = tmp_path / "taken"
    f.write_text("precious")
    out = {"file": f, "inside a file": f / "sub", "unwritable": Path("/proc/convscope-out")}[case]
    _no_computation(monkeypatch)
    code, _, err = cli(capsys, "linear", "votes", "--model", user["spec"], "--image",
                       str(user["image"]), "--out", str(out))  # fmt: skip
    needle = {"file": "is a file", "inside a file": "inside the file", "unwritable": "cannot be"}
    one_error_line(code, err, needle[case])
    assert f.read_text() == "precious"


def test_ctrl_c_is_one_line_saying_what_was_kept(
    user: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = LinearInterpreter.contributions
    calls = {"n": 0}

    def second_image_interrupted(self: LinearInterpreter, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(LinearInterpreter, "contributions", second_image_interrupted)
    code, _, err = cli(capsys, "linear", "contributions", "--model", user["spec"], "--image",
                       str(user["pics"]), "--out", str(tmp_path))  # fmt: skip
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 130 and len(lines) == 1, err
    assert lines[0].startswith("interrupted: kept d0/contributions.png, d0/contributions.json")
    assert sorted(p.name for p in (tmp_path / "d1").iterdir()) == []  # nothing half-written
    assert not (tmp_path / "contributions.json").exists()  # no index for an unfinished set
    assert read(tmp_path / "d0" / "contributions.json")["sum"] == pytest.approx(
        read(tmp_path / "d0" / "contributions.json")["score"], rel=1e-10
    )


def test_progress_and_formats(
    user: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        main(["linear", "svd", "--model", user["spec"], "--image", str(user["image"]), "--k", "2",
              "--steps", "5", "--format", "png,svg", "--out", str(tmp_path)])  # fmt: skip
    except SystemExit as e:
        assert not e.code
    err = capsys.readouterr().err
    assert "power svd" in err  # tqdm on stderr while it works
    assert (tmp_path / "svd.svg").read_text().lstrip().startswith("<?xml")
    m = read(tmp_path / "svd.json")
    assert len(m["singular_values"]) == 2 and all(math.isfinite(s) for s in m["singular_values"])
