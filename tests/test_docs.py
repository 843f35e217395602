"""The docs site: it builds with no warning, its reference covers the code, its examples run.

``make docs`` is ``python docs/_reference.py`` (the CLI and API pages, generated from the
code) then ``mkdocs build --strict``; this test runs the same into a temporary folder.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "docs", work / "docs", ignore=shutil.ignore_patterns("reference"))
    shutil.copy(ROOT / "mkdocs.yml", work / "mkdocs.yml")
    (work / "src").symlink_to(ROOT / "src")
    for results in ("experiments", "benchmarks"):  # what docs/_results.py fills the pages from
        (work / results).symlink_to(ROOT / results)
    r = subprocess.run([sys.executable, str(work / "docs" / "_reference.py")], cwd=work,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q"], cwd=work,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr  # --strict: any warning fails
    return work / "site"


def test_every_guide_page_is_in_the_site(site: Path) -> None:
    for page in sorted((ROOT / "docs").glob("*.md")):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), page.name


def test_cli_reference_lists_every_command(site: Path) -> None:
    import typer

    from convscope.cli import app

    html = (site / "reference" / "cli" / "index.html").read_text()
    root = typer.main.get_command(app)

    def walk(cmd: object, path: list[str]) -> list[str]:
        subs = getattr(cmd, "commands", None)
        if subs:
            return [p for name in subs for p in walk(subs[name], [*path, name])]
        return [" ".join(path)]

    commands = walk(root, ["convscope"])
    assert len(commands) >= 15
    for c in commands:
        assert f"<code>{c}</code>" in html, c
    assert "--batch-size" in html and "per_image.parquet" in html


@pytest.mark.parametrize(
    "module",
    ["convscope.linear", "convscope.attribution", "convscope.spectral", "convscope.decoding",
     "convscope.evaluate", "convscope.kernels", "convscope.train", "convscope.models"],
)  # fmt: skip
def test_api_reference_lists_every_public_name(site: Path, module: str) -> None:
    html = (site / "reference" / "api" / "index.html").read_text()
    m = importlib.import_module(module)
    anchors = set(re.findall(r'id="([\w.]+)"', html))

    def documented(name: str) -> bool:
        obj = getattr(m, name)
        real = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
        return f"{module}.{name}" in anchors or real in anchors

    missing = [n for n in m.__all__ if not documented(n)]
    assert not missing, missing


def test_site_shows_the_committed_results(site: Path) -> None:
    # the hook filled every marked number (docs/_results.py) and left the markers out
    for page in sorted(site.glob("**/index.html")):
        html = page.read_text()
        assert "!-- result: " not in html and "!-- /result" not in html, page
    html = (site / "spectral" / "index.html").read_text()
    assert "21.8 dB at 2.6% test error" in html  # the committed LeNet, from toy_and_models.json


def test_the_readme_shows_a_committed_picture_of_each_lens() -> None:
    """The front door's pictures: every one a committed results file, one per lens."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    front = text[: text.index("## A short tour")]
    srcs = re.findall(r'<img src="([^"]+)"', front)
    tracked = set(
        subprocess.run(
            ["git", "ls-files", *srcs], cwd=root, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert srcs and set(srcs) == tracked  # each exists and is committed
    folders = {s.split("/")[2] for s in srcs}  # experiments/results/<lens>/...
    assert {"linear", "decoding", "spectral", "numpy_cnn", "evaluation"} <= folders
    assert any("filter_scores" in s for s in srcs)
