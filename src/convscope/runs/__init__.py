"""One module per command: a plain function ``run(...)`` that computes through the lenses,
writes its files into ``out`` and returns a :class:`RunResult`.

The command line (:mod:`convscope.cli`) only parses options and calls these; from Python
each is one call with the same options as keyword arguments::

    from convscope.runs import linear_contributions
    res = linear_contributions.run("resnet18", "photo.jpg", "out", target=207)
    res.metrics["residual_share"], res.result            # the JSON's numbers, the lens result

=====================================  ===========================================
command                                module
=====================================  ===========================================
``convscope demo``                     :mod:`convscope.runs.demo`
``convscope train``                    :mod:`convscope.runs.train`
``convscope explain``                  :mod:`convscope.runs.explain`
``convscope linear residual`` ...      :mod:`convscope.runs.linear_residual`,
                                       ``linear_contributions``, ``linear_votes``,
                                       ``linear_svd``, ``linear_rows``,
                                       ``linear_columns``, ``linear_explore``
``convscope decode``                   :mod:`convscope.runs.decode`
``convscope spectrum``                 :mod:`convscope.runs.spectrum`
``convscope kernels apply``            :mod:`convscope.runs.kernels_apply`
``convscope numpy-cnn walkthrough``    :mod:`convscope.runs.numpy_cnn_walkthrough`
=====================================  ===========================================

What they share is here once: the options (:mod:`~convscope.runs.options`), the model
from any source (:mod:`~convscope.runs.sources`), the images ``--image`` names
(:mod:`~convscope.runs.inputs`), the ``--out`` folder that is checked before any work and
never clobbered (:mod:`~convscope.runs.outputs`), and several images at once
(:mod:`~convscope.runs.result`).
"""

from __future__ import annotations

from convscope.runs.options import Options
from convscope.runs.outputs import RunInterrupted
from convscope.runs.result import RunResult
from convscope.runs.sources import LoadedModel, UntrainedModelWarning, resolve_model

__all__ = [
    "LoadedModel",
    "Options",
    "RunInterrupted",
    "RunResult",
    "UntrainedModelWarning",
    "resolve_model",
]
