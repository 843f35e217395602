"""Data flows one way: cli -> runs -> lenses -> result -> report (DESIGN.md, Layout).

Checked on the source of every module (imports inside functions count, imports made only
for type checking do not): lenses never import runs, report or cli; report never imports
torch or a lens; nothing imports cli; contributions.py does not import the interpreter
(the circle between them is gone).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "convscope"
LENSES = (
    "attribution",
    "cross_lens",
    "data",
    "decoding",
    "kernels",
    "linear",
    "models",
    "spectral",
    "train",
)


def _modules(part: str) -> list[Path]:
    path = SRC / part
    return sorted(path.rglob("*.py")) if path.is_dir() else [SRC / f"{part}.py"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",):
            typing_only.update(id(n) for b in node.body for n in ast.walk(b))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("lens", LENSES)
def test_lenses_never_import_runs_report_or_cli(lens: str) -> None:
    for path in _modules(lens):
        if path.name == "__main__.py":
            # an entry point (python -m convscope.train, the alias of `convscope train`) is
            # the command line's, not the lens's: it only starts the cli, and nothing
            # imports it (test_nothing_imports_the_cli exempts it for the same reason)
            continue
        bad = {
            m
            for m in _imports(path)
            if m.startswith(("convscope.runs", "convscope.report", "convscope.cli"))
        }
        assert not bad, (path.relative_to(SRC), bad)


def test_report_only_draws() -> None:
    for path in _modules("report"):
        lens_imports = {
            m
            for m in _imports(path)
            if m.split(".")[0] == "torch"
            or m.startswith(tuple(f"convscope.{p}" for p in (*LENSES, "runs")))
        }
        assert not lens_imports, (path.relative_to(SRC), lens_imports)


def test_nothing_imports_the_cli() -> None:
    for path in SRC.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        assert not any(m.startswith("convscope.cli") for m in _imports(path)), path


def test_no_circle_between_contributions_and_the_interpreter() -> None:
    imports = _imports(SRC / "linear" / "contributions.py")
    assert not any(m.startswith("convscope.linear.interpreter") for m in imports)
    assert "convscope.linear.contributions" in _imports(SRC / "linear" / "interpreter.py")


def test_no_circle_between_spectral_and_train() -> None:
    assert not any(m.startswith("convscope.train") for m in _imports(SRC / "spectral.py"))
