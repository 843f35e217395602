"""Run the ``convscope`` command in the test process and insist that it succeeded."""

from __future__ import annotations

from convscope.cli import main


def cli(*args: str) -> None:
    """``convscope *args``; fails the test with the command line if it exits non-zero."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    assert code == 0, f"convscope {' '.join(args)} exited with {code}"
