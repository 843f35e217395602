"""Every HTML page the commands write, opened in headless Chromium.

A page fails on an image that did not load (a figure the report names but nobody wrote,
or a file the browser cannot decode: ``naturalWidth`` 0), on a console error, or on a
link to a local file that is not there. The pages come from the commands themselves, run
once per module with their cheapest settings on the committed LeNet checkpoint and on
the GFNN of the session's one ``demo --quick`` (the ``quick_demo`` fixture, whose pages
are checked too). The browser is the system Chromium (``make browser``, which ``make
test`` runs first); without it these tests skip and say how to install it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _browser
import numpy as np
import pytest
from _browser import chromium_or_skip
from _cli import cli
from conftest import QuickDemo
from PIL import Image

from convscope.data.mnist import load_mnist_subset

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "experiments" / "results" / "decoding" / "lenet_mnist.pt"

# page (relative to the fixture's folder) -> what it is; every one must be written
PAGES = {
    "demo/report.html": "convscope demo",
    "demo/numpy_cnn/report.html": "the NumPy CNN walkthrough (the demo's page of it)",
    "demo/linear_gfnn/report.html": "linear contributions --data (the demo's, GFNN)",
    "demo/linear_regular_cnn/report.html": "linear contributions --data (the demo's, CNN)",
    "explain/report.html": "explain --image, filter scores",
    "explain_lenet/explain_index.html": "explain on two images: the index page",
    "explain_lenet/digit_0/report.html": "explain --image, gradients (no kernel bank)",
    "explain_data/report.html": "explain --data",
    "explain_svg/report.html": "explain --format svg,pdf: the page draws the SVGs",
    "decode/report.html": "decode (LeNet's conv4: 1 x 1 responses)",
    "spectrum_data/report.html": "spectrum --data",
    "spectrum/spectrum_index.html": "spectrum on two images: the index page",
    "evaluate/report.html": "evaluate",
    "explore/explorer.html": "linear explore (the explorer)",
    "walkthrough/report.html": "numpy-cnn walkthrough",
}
READY = {"explore/explorer.html"}  # pages that say when they have drawn (data-ready)

# Every local link and image of the page, for the checks the browser cannot make alone.
_LOCAL_LINKS_JS = """
return Array.from(document.querySelectorAll('a[href]'))
  .map(a => a.getAttribute('href'))
  .filter(h => !h.startsWith('#') && !/^[a-z]+:/i.test(h));
"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, quick_demo: QuickDemo) -> dict[str, Path]:
    """Page name (as in PAGES) -> its file, for every HTML file the commands wrote."""
    out = tmp_path_factory.mktemp("pages")
    digits = out / "digits"
    digits.mkdir()
    test = load_mnist_subset("test")
    for i in (0, 1):
        img = np.rint(test.images[i, 0] * 255).astype(np.uint8)
        Image.fromarray(img, mode="L").save(digits / f"digit_{i}.png")
    one = str(digits / "digit_0.png")
    quiet = "--no-progress"
    lenet = ("--model", str(LENET), "--device", "cpu")
    timings: dict[str, float] = {}

    def timed(name: str, *args: str) -> None:
        t = time.perf_counter()
        cli(*args)
        timings[name] = time.perf_counter() - t

    gfnn = ("--model", str(quick_demo.out / "gfnn.pt"), "--device", "cpu")
    timed("explain", "explain", *gfnn, "--image", one, "--out", str(out / "explain"), quiet)
    timed("explain_lenet", "explain", *lenet, "--image", str(digits),
          "--out", str(out / "explain_lenet"), quiet)  # fmt: skip
    timed("explain_svg", "explain", *lenet, "--image", one, "--format", "svg,pdf",
          "--out", str(out / "explain_svg"), quiet)  # fmt: skip
    timed("explain_data", "explain", *gfnn, "--data", "mnist-subset", "--limit", "16",
          "--out", str(out / "explain_data"), quiet)  # fmt: skip
    timed("decode", "decode", *lenet, "--layer", "features.conv4", "--images", "16",
          "--out", str(out / "decode"), quiet)  # fmt: skip
    timed("spectrum_data", "spectrum", *gfnn, "--data", "mnist-subset", "--limit", "16",
          "--out", str(out / "spectrum_data"), quiet)  # fmt: skip
    timed("spectrum", "spectrum", *gfnn, "--image", str(digits), "--out", str(out / "spectrum"),
          quiet)  # fmt: skip
    timed("evaluate", "evaluate", *lenet, "--limit", "4", "--batch-size", "4",
          "--methods", "saliency,gradient_x_input", "--metrics", "deletion,sparseness",
          "--out", str(out / "evaluate"), quiet)  # fmt: skip
    timed("explore", "linear", "explore", *lenet, "--image", one, "--max-pixels", "16",
          "--k-svd", "1", "--out", str(out / "explore"), quiet)  # fmt: skip
    timed("walkthrough", "numpy-cnn", "walkthrough", "--pairs", "1:0", "--epochs", "2",
          "--seeds", "1", "--out", str(out / "walkthrough"))  # fmt: skip
    print("page generation (s):", {k: round(v, 1) for k, v in timings.items()})
    found = {f"demo/{p.relative_to(quick_demo.out).as_posix()}": p
             for p in quick_demo.out.rglob("*.html")}  # fmt: skip
    found |= {p.relative_to(out).as_posix(): p for p in out.rglob("*.html")}
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from chromium_or_skip()


def test_every_command_wrote_its_page(pages: dict[str, Path]) -> None:
    missing = [p for p in PAGES if p not in pages]
    assert not missing, missing
    # the SVG page's figures are SVGs (the browser test below checks they draw)
    assert 'src="attributions.svg"' in pages["explain_svg/report.html"].read_text()


def test_every_page_loads_clean_in_chromium(browser: Any, pages: dict[str, Path]) -> None:
    # every page the commands wrote is checked, not only the ones named in PAGES
    assert set(PAGES) <= set(pages)
    problems: dict[str, Any] = {}
    for rel, page in sorted(pages.items()):
        _browser.load(browser, page, ready=rel in READY)
        broken = _browser.broken_images(browser)
        errors = _browser.console_errors(browser)
        dead = [h for h in browser.execute_script(_LOCAL_LINKS_JS)
                if not (page.parent / h.split("#")[0]).exists()]  # fmt: skip
        shown = browser.execute_script(
            "return Array.from(document.images).filter(im => im.naturalWidth > 0 &&"
            " im.getBoundingClientRect().width > 0).length"
        )
        if broken or errors or dead:
            problems[rel] = {"broken images": broken, "console errors": errors, "dead links": dead}
        elif rel not in READY and rel.endswith("report.html") and not shown:
            problems[rel] = "no figure on the page"
    assert not problems, problems


def test_the_check_catches_a_missing_figure_and_a_console_error(
    browser: Any, tmp_path: Path
) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(good)
    (tmp_path / "not_a_png.png").write_bytes(b"not an image")
    page = tmp_path / "bad.html"
    page.write_text(
        "<!doctype html><html><body><img src='good.png'><img src='gone.png'>"
        "<img src='not_a_png.png'><script>console.error('boom')</script></body></html>"
    )
    _browser.load(browser, page)
    assert sorted(_browser.broken_images(browser)) == ["gone.png", "not_a_png.png"]
    errors = _browser.console_errors(browser)
    assert any("boom" in e for e in errors) and any("gone.png" in e for e in errors)
    with pytest.raises(AssertionError, match="did not load"):
        _browser.open_page(browser, page)
