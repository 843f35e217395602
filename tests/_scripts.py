"""Import a script of ``experiments/`` as a module, for tests that rerun its own code."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as a module (the folder is on ``sys.path`` only meanwhile)."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS))
