"""Fixtures shared across test files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class QuickDemo:
    """What one ``convscope demo --quick`` wrote: its folder, its result, its log lines."""

    out: Path
    result: Any
    lines: list[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> QuickDemo:
    """``convscope.runs.demo.run(out, quick=True)``, once per test session.

    The demo is the slowest thing the suite runs; every test that only reads what it
    writes shares this one (tests/test_pages_browser.py opens its pages). Read it, do
    not write into it.
    """
    from convscope.runs import demo

    out = tmp_path_factory.mktemp("quick_demo")
    lines: list[str] = []
    res = demo.run(out, quick=True, log=lines.append, progress=False)
    return QuickDemo(out, res, lines)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, the caller's count back afterwards.

    For files of many tiny convolutions and products (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): on a busy 2-core machine, OpenMP threads
    spinning for each op cost far more than the arithmetic.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
