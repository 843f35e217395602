"""convscope: open up convolutional networks for images.

Sub-modules are imported on first use, so ``import convscope`` stays cheap and
``convscope.numpy_cnn`` never pulls in torch.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

__all__ = [
    "ConvscopeError",
    "__version__",
    "attribution",
    "cross_lens",
    "data",
    "decoding",
    "kernels",
    "linear",
    "models",
    "numpy_cnn",
    "report",
    "runs",
    "spectral",
    "train",
]

# every lower-case public name is a sub-module, loaded on first use
_SUBMODULES = {n for n in __all__ if n.islower() and not n.startswith("_")}

from convscope.errors import ConvscopeError  # noqa: E402


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        module = importlib.import_module(f"convscope.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'convscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES)
