"""Fill the numbers the guide pages quote about our results from the committed results files.

A number in a ``docs/*.md`` page that quotes one of our results sits between two markers::

    <!-- result: FILE :: EXPR :: FMT -->21.8<!-- /result -->

for example ``experiments/results/spectral/toy_and_models.json :: d["models"][0]["maximum_gain_db"]
:: .1f`` (``::``, not ``|``, which would split a table's cells). ``FILE`` is a results
file relative to the repository root (``.json``, or ``.parquet``, read with pyarrow into a dict of
columns; a glob
gives a dict from each matching path to its contents), ``EXPR`` a Python expression over the
file's contents ``d`` (``min``, ``max``, ``abs``, ``len``, ``sum``, ``sorted``, ``round``,
``format`` and ``mean`` are available) and ``FMT`` a format spec (``.1f``, ``.1%``, ``,d``,
``.0e`` ...; ``%`` multiplies by 100). The text between the markers is what GitHub shows; what
the site shows is always computed from the file:

* ``python docs/_results.py`` rewrites every marked number in ``docs/*.md`` from the files;
* ``python docs/_results.py --check`` changes nothing and exits 1 listing every stale number
  (``tests/test_docs_examples.py`` runs it, so a stale number fails the tests);
* as a MkDocs hook (``hooks:`` in ``mkdocs.yml``) it fills each page while the site is built.

A marker whose file, key or format is wrong fails all three, naming the page and line.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = re.compile(
    r"<!-- result: (?P<file>.+?) :: (?P<expr>.+?) :: (?P<fmt>.*?) -->"
    r"(?P<value>.*?)<!-- /result -->",
    re.S,
)
_NAMES = {
    "min": min, "max": max, "abs": abs, "len": len, "sum": sum, "sorted": sorted,
    "round": round, "mean": statistics.fmean, "format": format,
}  # fmt: skip
_cache: dict[Path, Any] = {}


class StaleError(RuntimeError):
    """A marker that cannot be filled: a missing file, a key it does not have, a bad format."""


def load(path: str, root: Path = ROOT) -> Any:
    """The contents of one results file (cached): JSON as parsed, parquet as a dict of columns."""
    if any(c in path for c in "*?["):  # a glob: {path relative to the root: its contents}
        hits = sorted(root.glob(path.strip()))
        if not hits:
            raise StaleError(f"no results file matches {path.strip()}")
        return {
            h.relative_to(root).as_posix(): load(h.relative_to(root).as_posix(), root) for h in hits
        }
    p = (root / path.strip()).resolve()
    if p not in _cache:
        if not p.is_file():
            raise StaleError(f"no results file {path.strip()}")
        if p.suffix == ".json":
            _cache[p] = json.loads(p.read_text())
        elif p.suffix == ".parquet":
            import pyarrow.parquet as pq

            _cache[p] = pq.read_table(p).to_pydict()
        else:
            raise StaleError(f"{path.strip()}: only .json and .parquet results are read")
    return _cache[p]


def value(file: str, expr: str, fmt: str, root: Path = ROOT) -> str:
    """The text of one marked number, computed from its results file."""
    d = load(file, root)
    try:
        v = eval(expr, {"__builtins__": {}, **_NAMES, "d": d})  # noqa: S307 (our own pages)
    except Exception as e:  # noqa: BLE001
        raise StaleError(f"{file.strip()}: {expr}: {type(e).__name__}: {e}") from e
    try:
        return format(v, fmt.strip())
    except (TypeError, ValueError) as e:
        raise StaleError(f"{file.strip()}: {expr}: cannot format {v!r} as {fmt!r}") from e


def fill(text: str, page: str = "", root: Path = ROOT) -> tuple[str, list[str]]:
    """``text`` with every marked number recomputed, and one line per number that changed."""
    stale: list[str] = []

    def sub(m: re.Match[str]) -> str:
        line = text.count("\n", 0, m.start()) + 1
        try:
            new = value(m["file"], m["expr"], m["fmt"], root)
        except StaleError as e:
            raise StaleError(f"{page}:{line}: {e}") from e
        if new != m["value"]:
            stale.append(
                f"{page}:{line}: {m['value']!r} -> {new!r} ({m['file'].strip()}: {m['expr']})"
            )
        return m.group(0).replace(f"-->{m['value']}<!--", f"-->{new}<!--", 1)

    return MARKER.sub(sub, text), stale


def count(text: str) -> int:
    """How many marked numbers a page has."""
    return len(MARKER.findall(text))


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """MkDocs hook: every marked number as the results files say it, the markers left out."""
    filled = fill(markdown, getattr(page.file, "src_uri", ""))[0]
    return MARKER.sub(lambda m: m["value"], filled)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale: list[str] = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        try:
            new, changed = fill(text, f"docs/{page.name}")
        except StaleError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        stale += changed
        if changed and not check:
            page.write_text(new)
    for line in stale:
        print(("stale: " if check else "updated: ") + line)
    if check and stale:
        print(f"{len(stale)} stale number(s): run python docs/_results.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
