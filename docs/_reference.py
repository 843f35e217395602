"""Write the generated reference pages the docs site is built with (``make docs``).

* ``docs/reference/cli.md``: every ``convscope`` command, its help and its options, read
  from the command line itself (the typer app, through click), so it cannot drift;
* ``docs/reference/api.md``: one section per public package, rendered by mkdocstrings from
  the docstrings; the public names are each package's ``__all__``.

The pages are generated, not committed (``docs/reference/`` is ignored by git).

    python docs/_reference.py     # then: mkdocs build --strict
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "reference"

# the public packages and modules, in the order a reader meets them
API = (
    "convscope",
    "convscope.kernels",
    "convscope.models",
    "convscope.data",
    "convscope.attribution",
    "convscope.linear",
    "convscope.decoding",
    "convscope.cross_lens",
    "convscope.spectral",
    "convscope.train",
    "convscope.evaluate",
    "convscope.interop",
    "convscope.numpy_cnn",
    "convscope.runs",
    "convscope.io",
    "convscope.errors",
)


def _command(cmd: Any, path: list[str], lines: list[str]) -> None:
    import typer._click as click  # typer carries its own copy of click

    # groups are told by their sub-commands
    if getattr(cmd, "commands", None):
        for name in sorted(cmd.commands):
            _command(cmd.commands[name], [*path, name], lines)
        return
    lines += [f"## `{' '.join(path)}`", ""]
    help_text = (cmd.help or "").strip()
    if help_text:
        lines += [help_text, ""]
    ctx = click.Context(cmd, info_name=path[-1])
    records = [p.get_help_record(ctx) for p in cmd.params]
    records = [r for r in records if r and r[0] != "--help"]
    if records:
        lines += ["| option | what it does |", "| --- | --- |"]
        for opts, text in records:
            cell = text.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{opts}` | {cell} |")
        lines.append("")


def cli_page() -> str:
    import typer

    from convscope.cli import app

    root = typer.main.get_command(app)
    lines = [
        "# Command-line reference",
        "",
        "Generated from the `convscope` command itself (`docs/_reference.py`). Every command "
        "also answers `--help`; bad input is one line on stderr and exit status 2.",
        "",
    ]
    _command(root, ["convscope"], lines)
    return "\n".join(lines) + "\n"


def api_page() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings (`docs/_reference.py`, mkdocstrings); each package "
        "lists the names of its `__all__`.",
        "",
    ]
    for mod in API:
        lines += [
            f"::: {mod}",
            "    options:",
            "      show_root_heading: true",
            "      show_submodules: false",
            "      members_order: source",
            "      filters: public",
            "",
        ]
        lines += [f"::: {path}\n    options:\n      show_root_heading: true\n"
                  for path in shadowed(mod)]  # fmt: skip
    return "\n".join(lines)


def shadowed(mod: str) -> list[str]:
    """Public names of ``mod`` that share their name with one of its sub-modules
    (``convscope.linear.contributions``, the function, beside the module of that name):
    mkdocstrings would show the module, so they get an entry of their own, by the path of
    the object they are."""
    import importlib
    import importlib.util
    import inspect

    m = importlib.import_module(mod)
    out = []
    for name in getattr(m, "__all__", []):
        obj = getattr(m, name, None)
        if obj is None or inspect.ismodule(obj) or not hasattr(m, "__path__"):
            continue
        if importlib.util.find_spec(f"{mod}.{name}") is not None:
            out.append(f"{obj.__module__}.{obj.__qualname__}")
    return out


def main() -> int:
    OUT.mkdir(exist_ok=True)
    (OUT / "cli.md").write_text(cli_page(), encoding="utf-8")
    (OUT / "api.md").write_text(api_page(), encoding="utf-8")
    print(f"wrote {OUT / 'cli.md'} and {OUT / 'api.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
