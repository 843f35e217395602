"""The demo end to end (quick mode) on the embedded MNIST subset."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QuickDemo

from convscope.cli import main
from convscope.data import load_mnist_subset
from convscope.errors import ConvscopeError
from convscope.models import load_checkpoint
from convscope.runs import demo


def test_quick_demo_writes_a_complete_report(quick_demo: QuickDemo) -> None:
    # the session's one quick demo (tests/conftest.py), shared with the browser test
    tmp_path, res, lines = quick_demo.out, quick_demo.result, quick_demo.lines
    m = res.metrics
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == m and res.out == tmp_path
    assert on_disk["models"].keys() == {"gfnn", "regular_cnn"}
    # two epochs on 2,000 images already learn something real
    assert on_disk["models"]["gfnn"]["test_acc"] > 0.8
    assert on_disk["models"]["regular_cnn"]["first_layer"] == "learned"
    fs = on_disk["filter_scores"]
    assert len(fs["kernel_names"]) == 40 and np.array(fs["class_average_share"]).shape == (10, 40)
    assert {e["label"] for e in fs["examples"]} == set(range(10))
    html = (tmp_path / "report.html").read_text()
    for needle in ("GFNN", "regular CNN", "class_filter_scores.png", "top_filters.png",
                   "attribution_comparison.png", "training_curves.png"):  # fmt: skip
        assert needle in html
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the run reports every file it wrote, and they are all there
    names = {p.relative_to(tmp_path).as_posix() for p in res.files}
    assert set(demo.OWNED) <= names and all(p.is_file() for p in res.files)
    # the linear interpreter's section: f(x0) = F x0 + r, and the residual share over the
    # test split, each equal to what the library computes
    lin = on_disk["linear"]
    assert lin.keys() == {"gfnn", "regular_cnn"}
    import pyarrow.parquet as pq

    from convscope.linear import LinearInterpreter
    from convscope.runs.sources import resolve_model

    for key, v in lin.items():
        assert v["images"] == 50 and len(v["checks"]) == 3
        net = resolve_model(str(tmp_path / f"{key}.pt"), dtype=torch.float64, warn=False).module
        x0 = torch.from_numpy(load_mnist_subset("test").images[:1].copy()).double()
        with torch.no_grad():
            f = net(x0)[0]
        c = v["checks"][0]
        assert c["class"] == int(f.argmax()) and c["f_x0"] == pytest.approx(float(f[c["class"]]))
        assert c["error"] < 1e-10 and abs(c["r"]) > 0  # exact, and the biases do contribute
        li = LinearInterpreter(net, x0)
        assert c["r"] == pytest.approx(float(li.residual[0, c["class"]]), rel=1e-9)
        table = pq.read_table(tmp_path / v["folder"] / "per_image.parquet")
        rs = table.column("residual_share").to_numpy()
        assert v["residual_share"]["mean"] == pytest.approx(rs.mean(), rel=1e-12)
        assert table.column("residual_share")[0].as_py() == pytest.approx(
            li.contributions(target=c["class"]).residual_share, rel=1e-9, abs=1e-12
        )
        assert f"{v['folder']}/contributions.png" in html
        assert (tmp_path / v["folder"] / "contributions.png").is_file()
        # the first digit's pixel votes and the top singular pair of its F
        d, pv = v["digit"], li.votes(top=demo.VOTE_TOP)
        assert d["targets"] == [int(t) for t in pv.targets] and d["top1"] == c["class"]
        assert d["most_voted"] == pv.most_voted
        assert d["vote_share"] == pytest.approx({str(k): s for k, s in pv.shares.items()})
        # pixels whose discussion is the same for every class (0 on the black background)
        # abstain instead of counting for the top-1 class
        dd = pv.discussions
        tied = ((dd == dd.amax(0)).sum(0) > 1).numpy()
        assert np.array_equal(pv.votes.numpy() == -1, tied)
        assert d["abstained"] == pytest.approx(tied.mean())
        assert sum(d["vote_share"].values()) + d["abstained"] == pytest.approx(1.0)
        u, s, _ = torch.linalg.svd(li.rows(range(10)).reshape(10, -1), full_matrices=False)
        assert d["s1"] == pytest.approx(float(s[0]), rel=1e-9)  # F is 10 x 784: exact SVD
        assert abs(float(torch.tensor(d["u1"], dtype=torch.float64) @ u[:, 0])) == pytest.approx(
            1.0, abs=1e-9
        )
    assert "F x0 + r" in html
    for png in ("linear_votes.png", "linear_svd.png"):
        assert f'src="{png}"' in html
    # the spectral section: one Maximum Gain per epoch, the last one the trained model's
    from convscope import spectral as sp

    for key in ("gfnn", "regular_cnn"):
        info = on_disk["models"][key]
        assert len(info["max_gain_db"]) == info["epochs"] == 2
        net = load_checkpoint(tmp_path / f"{key}.pt")[0].eval()
        assert info["max_gain_db"][-1] == pytest.approx(sp.maximum_gain(net, shape=(1, 28, 28))[0],
                                                        abs=1e-4)  # fmt: skip
        # two epochs: the diagnostic says it cannot judge
        assert info["diagnosis"]["pattern"] == "not enough epochs"
        assert info["diagnosis"]["advice"] == (
            "2 epochs of max_gain: the curve needs at least 8 before its pattern can be read; "
            "train longer"
        )
    assert "max_gain.png" in html and "transfer_function.png" in html
    # the NumPy CNN: its walkthrough page, linked, and its numbers from its own metrics.json
    walk = json.loads((tmp_path / "numpy_cnn" / "metrics.json").read_text())
    for tag, v in on_disk["numpy_cnn"]["test_accuracy"].items():
        assert v["learned"] == walk["pairs"][tag]["learned"]["test"]["accuracy"]
    assert 'href="numpy_cnn/report.html"' in html
    assert (tmp_path / "numpy_cnn" / "report.html").is_file()
    assert (tmp_path / "numpy_cnn" / "1_vs_0_kernels.png").is_file()
    # filter decoding: the committed LeNet's layer 5, its error equal to the library's
    from convscope.decoding import decode, reconstruction_error

    dec = on_disk["decoding"]
    lenet = load_checkpoint(demo.LENET)[0].eval()
    assert dec["n_images"] == 100 and dec["layer"] == demo.DECODE_LAYER == "features.conv3"
    assert dec["filters_shape"] == list(decode(lenet, demo.DECODE_LAYER).filters.shape)
    test_x = torch.from_numpy(load_mnist_subset("test").images[:100].copy())
    for mode in ("nearest", "adjoint"):
        e = reconstruction_error(lenet, demo.DECODE_LAYER, test_x, mode)
        assert dec["reconstruction_error"][mode]["mean"] == pytest.approx(e.mean, rel=1e-6)
        assert dec["reconstruction_error"][mode]["std"] == pytest.approx(e.std, rel=1e-6)
    assert 0.005 < dec["reconstruction_error"]["nearest"]["mean"] < 0.03  # seed 003: 0.012
    assert dec["shown"] == demo.DECODE_SHOWN and 'src="decoded_filters.png"' in html
    assert dec["command"].startswith("convscope decode --model experiments/results/decoding/")
    # faithfulness: the evaluate table of both models, recomputed for convscope's and
    # Zennit's maps from the library
    from convscope.evaluate import interval, score_batch

    for key, f in on_disk["faithfulness"].items():
        assert f["images"] == 4 and f["metrics"] == list(demo.EVALUATE_METRICS)
        assert ("filter_score_map" in f["methods"]) == (key == "gfnn")  # needs the bank
        assert {f["families"][m] for m in f["methods"]} == {"convscope", "captum", "zennit"}
        net = load_checkpoint(tmp_path / f"{key}.pt")[0].eval()
        with torch.no_grad():
            t = net(test_x[:4]).argmax(1)
        again = ["input_contribution", "lrp_epsilon_plus"]
        b = score_batch(net, test_x[:4], t, again, f["metrics"], f["seed"])
        for meth in again:
            for k in f["metrics"]:
                want = interval(b.scores[meth][k])
                assert f["table"][meth][k] == pytest.approx(want, rel=1e-6), (key, meth, k)
        assert f'src="{f["folder"]}/examples.png"' in html
    # the contents: one link per lens, each to the section of that lens
    report = json.loads((tmp_path / "report.json").read_text())
    sections = report["sections"]
    tour = sections[0]
    assert tour["title"] == "A tour of five lenses" and len(tour["links"]) == 1 + len(demo._TOUR)
    for link, (prefix, _) in zip(tour["links"][1:], demo._TOUR, strict=True):
        assert sections[int(link["href"].removeprefix("#s")) - 1]["title"].startswith(prefix)
    assert 'href="#s2"' in html and sections[1]["title"] == "Accuracy"
    assert set(on_disk["phase_seconds"]) >= {"training", "linear", "decoding", "faithfulness"}
    model, extra = load_checkpoint(tmp_path / "gfnn.pt")
    assert extra["test_acc"] == m["models"]["gfnn"]["test_acc"]
    assert any("test accuracy" in ln for ln in lines)
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave nothing behind
    # a second demo into the same folder is refused before any training
    with pytest.raises(ConvscopeError, match="already holds metrics.json") as e:
        demo.run(tmp_path, quick=True, log=lines.append, progress=False)
    assert "--overwrite" in str(e.value)


@pytest.mark.slow
def test_full_demo_reaches_97_percent(tmp_path: Path) -> None:
    # The acceptance bar of the demo's default settings (the whole demo: about 4.5 min on
    # one busy core).
    m = demo.run(tmp_path, progress=False, log=lambda s: None).metrics
    assert m["models"]["gfnn"]["test_acc"] >= 0.97
    assert m["models"]["regular_cnn"]["test_acc"] >= 0.95
    assert all(v["images"] == 300 for v in m["linear"].values())
    assert all(v["images"] == 64 for v in m["faithfulness"].values())
    # at full size the decoding error is the committed experiment's (seed 003 Table 1 setup)
    table = json.loads((demo.LENET.parent / "table.json").read_text())
    committed = table["tables"]["offset"][demo.DECODE_LAYER]
    assert m["decoding"]["n_images"] == table["n_images"] == 1000
    for mode, e in m["decoding"]["reconstruction_error"].items():
        assert e["mean"] == pytest.approx(committed[mode]["mean"], rel=1e-6), mode


def test_decoding_without_the_committed_lenet_says_so_and_how(tmp_path: Path) -> None:
    # convscope installed without the repository: the section names the file and the fix
    lines: list[str] = []
    o = demo._claim(tmp_path, ("png",), overwrite=False)
    d = demo._decoding(o, tmp_path / "lenet_mnist.pt", True, lines.append)
    assert "lenet_mnist.pt not found" in d["missing"] and "train_lenet.py" in d["missing"]
    section = demo._decoding_section(d)
    assert not section.figures and any("Not shown" in p for p in section.paragraphs)
    assert any("convscope decode" in p for p in section.paragraphs)
    assert any("skipped" in ln for ln in lines) and not list(tmp_path.iterdir())


# -- --format: the demo's figures in the formats asked for, and the report shows them ----------


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_refuses_a_bad_format_in_one_line_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object) -> None:
        raise AssertionError("the demo started before its --format was checked")

    monkeypatch.setattr(demo, "_demo", no_training)
    out = tmp_path / "demo"
    code, _, err = _cli(capsys, "demo", "--quick", "--out", str(out), "--format", "png,gif")
    assert code == 2
    assert err == "error: --format takes png, svg, pdf (comma-separated); got 'png,gif'\n"
    assert not out.exists()  # nothing claimed, nothing written


def test_demo_format_reaches_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def fake(o: object, quick: bool, *args: object) -> dict[str, object]:
        seen.update(formats=o.formats, folder=o.folder, quick=quick)  # type: ignore[attr-defined]
        return {"models": {"gfnn": {"test_acc": 0.5}, "regular_cnn": {"test_acc": 0.25}}}

    monkeypatch.setattr(demo, "_demo", fake)
    out = tmp_path / "demo"
    code, said, err = _cli(capsys, "demo", "--quick", "--no-progress", "--out", str(out),
                           "--format", "SVG,pdf")  # fmt: skip
    assert (code, err) == (0, "")
    assert seen == {"formats": ("svg", "pdf"), "folder": out, "quick": True}
    assert said.splitlines()[:2] == [
        "GFNN         test accuracy: 50.00%",
        "regular CNN  test accuracy: 25.00%",
    ]
    # and the default is PNG, as before
    seen.clear()
    code, _, _ = _cli(capsys, "demo", "--no-progress", "--overwrite", "--out", str(out))
    assert code == 0 and seen["formats"] == ("png",)


def _svg_ok(path: Path) -> None:
    root = ET.parse(path).getroot()  # well-formed XML, an SVG that draws something
    assert root.tag == "{http://www.w3.org/2000/svg}svg", (path, root.tag)
    assert float(root.get("width", "0").rstrip("pt")) > 0
    assert root.findall(".//{http://www.w3.org/2000/svg}path")


def test_demo_figures_in_svg_and_the_report_shows_them(
    tmp_path: Path, quick_demo: QuickDemo
) -> None:
    # the demo's own figure writing (its claimed --out) and its own report, under --format
    # svg, on the numbers of the session's quick demo: no second demo is trained
    from matplotlib import pyplot as plt

    from convscope.report.demo_figures import plot_top_singular_pairs
    from convscope.report.figures import save_figure

    before = json.loads((quick_demo.out / "report.json").read_text())
    files = [f["file"] for s in before["sections"] for f in s["figures"]]
    assert len(files) >= 14 and all(f.endswith(".png") for f in files)
    top = [f for f in files if "/" not in f]
    assert set(top) == {n for n in demo.OWNED if n.endswith(".png")}

    o = demo._claim(tmp_path, ("svg",), overwrite=False)
    assert o.formats == ("svg",) and not [n for n in o.owned if n.endswith(".png")]
    rng = np.random.default_rng(0)
    for f in files:
        if f == "linear_svd.png":  # the demo's own figure function
            pair = (1.5, rng.normal(size=3), rng.normal(size=(6, 6)))
            fig = plot_top_singular_pairs(rng.random((6, 6)), {"net": pair}, ["a", "b", "c"])
        else:
            fig, ax = plt.subplots()
            ax.plot([0, 1], [1, 0])
        if "/" in f:  # a sub-run's figure (their own --format is tested with them)
            save_figure(fig, tmp_path / f"{f[:-4]}.svg")
        else:
            assert o.figure(f, fig) == [tmp_path / f"{f[:-4]}.svg"]
    assert o.written == [tmp_path / f"{f[:-4]}.svg" for f in top]

    test = load_mnist_subset("test")
    page = demo._write_report(tmp_path, quick_demo.result.metrics, test.class_names,
                              load_mnist_subset("train").name)  # fmt: skip
    assert page == tmp_path / "report.html"
    shown = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert shown == [f"{f[:-4]}.svg" for f in files]  # every figure, in the demo's order
    for f in shown:
        _svg_ok(tmp_path / f)
    assert not list(tmp_path.rglob("*.png"))
    # the same report as the PNG demo's, its figures named .svg
    after = json.loads((tmp_path / "report.json").read_text())
    for s in before["sections"]:
        for f in s["figures"]:
            f["file"] = f"{f['file'][:-4]}.svg"
    assert after["sections"] == before["sections"] and after["meta"] == before["meta"]
