"""Training loop with callbacks, metrics and checkpoints; several processes via torchrun.

:func:`fit` trains any image classifier (logits out, cross-entropy loss) on any
map-style dataset of ``(image, label)`` pairs. It seeds every random generator
from the config, so two runs with the same seed on the CPU end with bitwise
identical weights, evaluates after every epoch, and with ``out_dir`` writes
``metrics.json`` after every epoch and, at the end, ``checkpoint.pt`` and then the
final ``metrics.json`` that marks the run finished. Ctrl-C leaves only whole files
and becomes :class:`TrainingInterrupted`, whose message says what was kept.

Several processes or GPUs go through torch.distributed, launched by torchrun::

    torchrun --nproc_per_node=2 -m convscope train --arch gfnn --out runs/gfnn

(``convscope train`` is the command line, in :mod:`convscope.cli`; ``python -m
convscope.train`` is kept as its alias.)

Under torchrun, :func:`fit` joins the process group (NCCL on CUDA, Gloo on the
CPU), wraps the model in ``DistributedDataParallel`` and shards the data with a
``DistributedSampler``; ``batch_size`` stays the *global* mini-batch, split evenly
between processes, so the same config means the same optimisation on one or many
processes. Metrics are summed over processes; only rank 0 writes files and shows
progress.

The package, one module per part:

* :mod:`~convscope.train.config`: :class:`TrainConfig`, :data:`PRESETS`, optimiser and schedule;
* :mod:`~convscope.train.history`: :class:`History`, the per-epoch metrics;
* :mod:`~convscope.train.callbacks`: :class:`Callback`, :class:`EarlyStopping`;
* :mod:`~convscope.train.max_gain`: :class:`MaxGainCallback`, :func:`lightning_callback`,
  :func:`log_max_gain` (the Maximum Gain of :mod:`convscope.spectral` as a training diagnostic);
* :mod:`~convscope.train.tensorboard`: :class:`TensorBoardCallback` (curves and figures to
  TensorBoard, an optional extra);
* :mod:`~convscope.train.loop`: :func:`fit`, :func:`evaluate`, :func:`predict`;
* :mod:`~convscope.train.checkpoints`: the ``last.pt`` resume file;
* :mod:`~convscope.train.interrupt`: :class:`TrainingInterrupted` (Ctrl-C, and what was kept);
* :mod:`~convscope.train.distributed`: joining the torchrun process group;
* :mod:`~convscope.train.datasets`: :func:`as_dataset`, :func:`toy_dataset`;
* :mod:`~convscope.train.common`: seeding, devices, :func:`parameter_digest`;
* ``__main__``: ``python -m convscope.train``, an alias of ``convscope train``.
"""

from convscope.train.callbacks import Callback, EarlyStopping
from convscope.train.checkpoints import LAST_FORMAT
from convscope.train.common import parameter_digest, resolve_device, seed_everything
from convscope.train.config import (
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    TrainConfig,
    build_optimizer,
    build_scheduler,
)
from convscope.train.datasets import as_dataset, toy_dataset
from convscope.train.history import History
from convscope.train.interrupt import TrainingInterrupted
from convscope.train.loop import METRICS_FORMAT, evaluate, fit, predict
from convscope.train.max_gain import MaxGainCallback, lightning_callback, log_max_gain
from convscope.train.tensorboard import TensorBoardCallback

__all__ = [
    "OPTIMIZERS",
    "PRESETS",
    "SCHEDULES",
    "Callback",
    "EarlyStopping",
    "History",
    "MaxGainCallback",
    "TensorBoardCallback",
    "TrainConfig",
    "TrainingInterrupted",
    "as_dataset",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "lightning_callback",
    "log_max_gain",
    "parameter_digest",
    "predict",
    "resolve_device",
    "seed_everything",
    "toy_dataset",
]

# the file-format tags stay reachable as convscope.train.LAST_FORMAT / METRICS_FORMAT
_FORMATS = (LAST_FORMAT, METRICS_FORMAT)
