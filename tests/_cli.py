"""Run the ``convscope`` command in the test process and insist that it succeeded."""

from __future__ import annotations

from typing import Any

from convscope.cli import main


def cli(*args: str) -> None:
    """``convscope *args``; fails the test with the command line if it exits non-zero."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 0, f"convscope {' '.join(args)} exited with {code}"


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """``convscope *args`` in-process (a subprocess per case would mostly import torch):
    the exit code and what it wrote to stdout and stderr."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
