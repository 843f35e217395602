"""``--format png,svg,pdf``: every figure in every format asked for, valid, and the page shows one.

A report shows each figure in the first of PNG, SVG, PDF that the run wrote: under
``--format svg`` the page draws the SVGs (it used to refuse to write, its PNGs missing),
under ``--format pdf`` it links the PDFs.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from _cli import cli
from PIL import Image

from convscope.data.mnist import load_mnist_subset
from convscope.report.html import Figure, Section, write_report

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "experiments" / "results" / "decoding" / "lenet_mnist.pt"
WALK_FIGURES = ["line_probes", "1_vs_0_kernels", "1_vs_0_maps", "1_vs_0_seeds", "1_vs_0_training"]


def check_svg(path: Path) -> None:
    root = ET.parse(path).getroot()  # well-formed XML ...
    assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag  # ... and an SVG
    assert float(root.get("width", "0").rstrip("pt")) > 0
    assert float(root.get("height", "0").rstrip("pt")) > 0
    assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 0  # it draws something


def check_pdf(path: Path) -> None:
    blob = path.read_bytes()
    assert blob.startswith(b"%PDF-") and blob.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", blob)) == 1  # one page: the figure


def check_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"
    with Image.open(path) as im:
        assert min(im.size) > 50


def shown(page: Path) -> list[str]:
    html = page.read_text()
    return re.findall(r'<img src="([^"]+)"', html) + re.findall(
        r'<figure class="pdf"><a href="([^"]+)"', html
    )


@pytest.fixture(scope="module")
def digit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    png = tmp_path_factory.mktemp("digit") / "digit.png"
    img = np.rint(load_mnist_subset("test").images[0, 0] * 255).astype(np.uint8)
    Image.fromarray(img, mode="L").save(png)
    return png


def test_walkthrough_writes_svg_and_pdf_and_its_page_shows_the_svgs(tmp_path: Path) -> None:
    out = tmp_path / "walk"
    cli("numpy-cnn", "walkthrough", "--pairs", "1:0", "--epochs", "1", "--seeds", "1",
        "--out", str(out), "--format", "svg,pdf")  # fmt: skip
    for stem in WALK_FIGURES:
        check_svg(out / f"{stem}.svg")
        check_pdf(out / f"{stem}.pdf")
        assert not (out / f"{stem}.png").exists()  # only the formats asked for
    figures = shown(out / "report.html")
    assert figures and all(f.endswith(".svg") for f in figures)
    assert {Path(f).stem for f in figures} == set(WALK_FIGURES)
    # report.json keeps what the page shows, so `convscope report` renders the same page
    kept = json.loads((out / "report.json").read_text())
    assert {f["file"] for s in kept["sections"] for f in s["figures"]} == set(figures)
    (out / "report.html").unlink()
    cli("report", str(out))
    assert shown(out / "report.html") == figures


def test_walkthrough_default_is_png(tmp_path: Path) -> None:
    out = tmp_path / "walk"
    cli("numpy-cnn", "walkthrough", "--pairs", "1:0", "--epochs", "1", "--seeds", "1",
        "--out", str(out))  # fmt: skip
    for stem in WALK_FIGURES:
        check_png(out / f"{stem}.png")
        assert not (out / f"{stem}.svg").exists() and not (out / f"{stem}.pdf").exists()
    assert all(f.endswith(".png") for f in shown(out / "report.html"))


def test_explain_in_three_formats_and_pdf_only(tmp_path: Path, digit: Path) -> None:
    common = ("explain", "--model", str(LENET), "--image", str(digit), "--device", "cpu",
              "--no-progress")  # fmt: skip
    cli(*common, "--out", str(tmp_path / "all"), "--format", "png,svg,pdf")
    check_png(tmp_path / "all" / "attributions.png")
    check_svg(tmp_path / "all" / "attributions.svg")
    check_pdf(tmp_path / "all" / "attributions.pdf")
    assert shown(tmp_path / "all" / "report.html") == ["attributions.png"]
    cli(*common, "--out", str(tmp_path / "pdf"), "--format", "pdf")
    check_pdf(tmp_path / "pdf" / "attributions.pdf")
    assert shown(tmp_path / "pdf" / "report.html") == ["attributions.pdf"]  # a link


def test_a_figure_in_no_format_is_still_an_error(tmp_path: Path) -> None:
    from convscope.errors import ConvscopeError

    with pytest.raises(ConvscopeError, match="report figures missing .*: gone.png"):
        write_report(tmp_path, "t", [Section("s", figures=[Figure("gone.png")])])


def test_walkthrough_figures_are_drawn_in_the_package_style(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib as mpl

    from convscope.numpy_cnn import plots

    seen = []
    draw = plots.plot_line_probes

    def spy(*args: object, **kwargs: object) -> object:
        seen.append((mpl.rcParams["svg.fonttype"], mpl.rcParams["axes.labelsize"]))
        return draw(*args, **kwargs)

    monkeypatch.setattr(plots, "plot_line_probes", spy)
    cli("numpy-cnn", "walkthrough", "--pairs", "1:0", "--epochs", "1", "--seeds", "1",
        "--out", str(tmp_path / "walk"))  # fmt: skip
    assert seen == [("none", 8.0)]  # convscope.mplstyle's, not matplotlib's ("path", "medium")
    assert mpl.rcParams["svg.fonttype"] == "path"
