"""Adapters to the peers researchers already use: Captum, Zennit and Quantus.

Each peer is an optional extra (``pip install 'convscope[interop]'``) imported only when its
adapter module is: ``convscope.interop.captum`` (convscope's methods as Captum
``Attribution`` classes), ``convscope.interop.zennit`` (LRP through Zennit's composites,
down to the fixed kernel layer), ``convscope.interop.quantus`` (an ``explain_func`` that
Quantus metrics call for any method of :mod:`convscope.evaluate.methods`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from convscope.errors import ConvscopeError

__all__ = ["require"]

# the module a peer is imported as -> the name pip knows it by
_DISTRIBUTIONS = {
    "captum": "captum",
    "zennit": "zennit",
    "quantus": "quantus",
    "pytorch_grad_cam": "grad-cam",
    "tensorboard": "tensorboard",
}


def require(module: str, what: str | None = None) -> ModuleType:
    """Import an optional peer, or raise one line naming the extra that brings it.

    Args:
        module: The import name (``"captum"``, ``"zennit"``, ``"quantus"``,
            ``"pytorch_grad_cam"``, ``"tensorboard"``, or a sub-module of one).
        what: What needs it, for the message (default: the module).

    Raises:
        ConvscopeError: ``"<what> needs <dist>, which is not installed: pip install
            'convscope[interop]' (or pip install <dist>)"``.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the peer is there but one of its own imports failed: show that
        dist = _DISTRIBUTIONS.get(top, top)
        raise ConvscopeError(
            f"{what or module} needs {dist}, which is not installed: "
            f"pip install 'convscope[interop]' (or pip install {dist})"
        ) from None
