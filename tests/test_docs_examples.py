"""Every ```python block of the guide pages runs, and every quoted result is the committed one.

The blocks of one page run in order in one namespace (they build on each other), in a
temporary folder where ``experiments`` points at the repository's committed results. A block
that cannot run here (a download, a GPU, torchrun, hours) is preceded by
``<!-- not-run: reason -->``; the reason is required and the count is fixed below, so a new
skip is a decision made in this file, not in a page.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"(?:<!-- not-run: (?P<why>.*?) -->\s*\n)?```python\n(?P<code>.*?)```", re.S)
NOT_RUN = {"spectral.md": 1}  # page -> blocks marked not-run


def blocks(page: Path) -> list[tuple[str | None, str]]:
    return [(m["why"], m["code"]) for m in BLOCK.finditer(page.read_text())]


def test_every_python_block_is_found() -> None:
    # a block the pattern misses (say ```py or an indented fence) would silently never run
    for page in PAGES:
        text = page.read_text()
        assert text.count("```python") == len(blocks(page)), page.name
        assert not re.search(r"```(py|python3|pycon)\n", text), page.name


def test_not_run_blocks_say_why() -> None:
    counted = {}
    for page in PAGES:
        whys = [why for why, _ in blocks(page) if why is not None]
        assert all(why.strip() for why in whys), page.name
        if whys:
            counted[page.name] = len(whys)
    assert counted == NOT_RUN


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.name)
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    import convscope.linear as L

    before = set(L.registered_rules("user"))
    dtype = torch.get_default_dtype()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # untrained-model warnings are part of the examples
            for i, (why, code) in enumerate(blocks(page)):
                if why is None:
                    exec(compile(code, f"{page.name} block {i + 1}", "exec"), namespace)  # noqa: S102
    finally:  # a page's rules (linear.md registers one) must not leak into later tests
        for key in set(L.registered_rules("user")) - before:
            L.unregister_rule(key)
        torch.set_default_dtype(dtype)


def test_quoted_results_are_the_committed_ones() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "_results.py"), "--check"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    # a marker the pattern cannot read (say, "|" instead of "::") would never be checked
    for page in PAGES:
        text = page.read_text()
        assert text.count("<!-- result:") == len(
            re.findall(r"<!-- result: .+? :: .+? :: .*? -->.*?<!-- /result -->", text, flags=re.S)
        ), page.name


def test_a_typed_number_that_differs_is_reported() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_results", ROOT / "docs" / "_results.py")
    assert spec and spec.loader
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    f = "experiments/results/spectral/toy_and_models.json"
    good = f'<!-- result: {f} :: d["models"][0]["maximum_gain_db"] :: .1f -->21.8<!-- /result -->'
    assert results.fill(good, "p.md") == (good, [])
    text, stale = results.fill(good.replace("21.8", "5.1"), "p.md")
    assert text == good and len(stale) == 1 and "'5.1' -> '21.8'" in stale[0]
    with pytest.raises(results.StaleError, match="p.md:1: .*KeyError"):
        results.fill(good.replace('["models"]', '["nope"]'), "p.md")
    with pytest.raises(results.StaleError, match="no results file"):
        results.fill(good.replace("toy_and_models", "missing"), "p.md")
