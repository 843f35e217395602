"""One training run from plain options: data, model and config built here, then ``fit``.

``convscope train`` calls :func:`run` (so do ``python -m convscope.train``, its alias, and
torchrun launching either). ``seed_weights`` and ``seed_bank`` keep the choices the old
separate argparse command made available to Python callers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from convscope.errors import ConvscopeError
from convscope.train import (
    PRESETS,
    Callback,
    History,
    MaxGainCallback,
    TensorBoardCallback,
    fit,
    seed_everything,
    toy_dataset,
)
from convscope.train.datasets import _num_classes, _unpack, as_dataset

__all__ = ["load_train_test", "run"]


def load_train_test(
    dataset: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> tuple[Dataset[Any], Dataset[Any], int, tuple[int, int, int]]:
    """Training and test sets of a named dataset, with what a model needs to know of them.

    Args:
        dataset: ``"toy"`` (256 synthetic 16x16 images, :func:`convscope.train.toy_dataset`;
            test set 128 more) or a name :func:`convscope.data.load_dataset` knows
            (``"mnist-subset"``, ``"digits"``, ``"mnist"``, ``"folder"``).
        data_dir: for ``"mnist"`` (IDX files) and ``"folder"`` (class sub-folders).
        limit: keep only the first ``limit`` training images (``"toy"``: make that many).

    Returns:
        ``(train, test, num_classes, (C, H, W))``: map-style torch datasets of
        ``(image, label)`` pairs, the number of classes and the image shape.

    Raises:
        ConvscopeError: unknown dataset or missing files.
    """
    if dataset == "toy":
        train_set: Dataset[Any] = toy_dataset(256 if limit is None else limit, seed=0)
        test_set: Dataset[Any] = toy_dataset(128, seed=1)
        num_classes = _num_classes(train_set)
    else:
        from convscope.data import load_dataset

        train_arrays = load_dataset(dataset, "train", data_dir=data_dir)
        num_classes = int(train_arrays.num_classes)
        train_set = as_dataset(train_arrays)
        test_set = as_dataset(load_dataset(dataset, "test", data_dir=data_dir))
        if limit is not None:
            train_set = Subset(train_set, range(min(limit, len(train_set))))  # type: ignore[arg-type]
    x0, _ = _unpack(train_set[0])
    c, h, w = (int(n) for n in x0.shape)
    return train_set, test_set, num_classes, (c, h, w)


def _finished_run(out: Path) -> Path | None:
    """The file in ``out`` that shows a finished run there, or ``None``.

    ``checkpoint.pt`` is only written at the end of a run; ``metrics.json`` counts
    when it says ``"finished": true``.
    """
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        return checkpoint
    metrics = out / "metrics.json"
    if metrics.is_file():
        try:
            finished = bool(json.loads(metrics.read_text()).get("finished"))
        except (OSError, ValueError, AttributeError):
            finished = False  # not a metrics file of ours: nothing finished to protect
        if finished:
            return metrics
    return None


def _tensorboard_callback(
    log_dir: str | os.PathLike[str] | None, figures: bool
) -> TensorBoardCallback | None:
    """The TensorBoard callback of ``--tensorboard``, checked before any work (or ``None``)."""
    if log_dir is None:
        if figures:
            raise ConvscopeError("--tensorboard-figures needs --tensorboard DIR")
        return None
    return TensorBoardCallback(log_dir, figures=figures)


def run(
    *,
    out: str | os.PathLike[str],
    arch: str = "gfnn",
    dataset: str = "mnist-subset",
    data_dir: str | os.PathLike[str] | None = None,
    preset: str = "gfnn-mnist",
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    first_layer: str | None = None,
    n_edges: int | None = None,
    dropout: float | None = None,
    limit: int | None = None,
    max_gain: bool = False,
    tensorboard: str | os.PathLike[str] | None = None,
    tensorboard_figures: bool = False,
    seed_weights: bool = True,
    seed_bank: bool = True,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    save_last: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> History:
    """Build the data, the model and the config from plain options, then :func:`fit`.

    Writes ``metrics.json`` and ``checkpoint.pt`` into ``out`` (and ``last.pt``
    with ``save_last``). Under torchrun every process calls this; only rank 0
    writes files.

    Args:
        out: output folder.
        arch: a name of :data:`convscope.models.zoo.ARCHITECTURES` (``gfnn``, ``lenet`` ...).
        dataset: see :func:`load_train_test`.
        data_dir: see :func:`load_train_test`.
        preset: a key of :data:`convscope.train.PRESETS`; the options below override
            its fields.
        epochs, lr, batch_size, optimizer, seed, device: override the preset when
            not ``None`` (``batch_size`` is the global mini-batch).
        first_layer: ``fixed``, ``init``, ``random`` or ``learned``, for ``gfnn`` and
            ``gf_resnet50`` (``None``: the architecture's default).
        n_edges: ``gfnn`` only: use :func:`convscope.kernels.gfnn_bank` with this
            many edge kernels (32/24/16/8/4); ``None``: the model's default bank.
        dropout: ``gfnn`` only (``None``: the model's default, 0.5).
        limit: train on the first ``limit`` training images only.
        max_gain: log the impulse-image Maximum Gain (dB) after every epoch into
            ``history.extra["max_gain"]`` (:class:`convscope.train.MaxGainCallback`).
        tensorboard: write TensorBoard event files into this folder
            (:class:`convscope.train.TensorBoardCallback`; ``metrics.json`` records it).
        tensorboard_figures: with ``tensorboard``, also the spectrum and, for models with
            a kernel bank, the filter-score map of the first test image, every epoch.
        seed_weights: seed every generator with the config's seed before the model
            is built, so the same seed gives the same initial weights.
        seed_bank: pass the config's seed to ``gfnn`` as the seed of its random kernel
            bank (``first_layer="random"``); otherwise the model's default seed (0).
        callbacks: more :class:`convscope.train.Callback` objects, called after the
            Maximum Gain one (the TensorBoard one comes last, so it sees their numbers).
        progress: progress bars (rank 0 only).
        save_last: write ``out/last.pt`` after every epoch.
        resume: continue from ``out/last.pt`` when it exists.
        overwrite: replace a finished run in ``out``. Without it (and without
            ``resume``) a folder holding ``checkpoint.pt``, or a ``metrics.json``
            that says the run finished, is refused before any work.

    Returns:
        The :class:`convscope.train.History` of the run.

    Raises:
        ConvscopeError: ``out`` holds a finished run (see ``overwrite``); unknown
            preset, dataset or architecture, bad config values, non-square images for
            ``gfnn``, a bad resume file; ``tensorboard`` is a file or TensorBoard is not
            installed, or ``tensorboard_figures`` without ``tensorboard``.
        TrainingInterrupted: Ctrl-C; the message says which files were kept.
    """
    if not (overwrite or resume):
        done = _finished_run(Path(out))
        if done is not None:
            raise ConvscopeError(
                f"{done} holds a finished run; to replace it pass --overwrite (overwrite=True), "
                "to continue it --resume (resume=True), or choose another output folder"
            )
    if preset not in PRESETS:
        raise ConvscopeError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    board = _tensorboard_callback(tensorboard, tensorboard_figures)
    overrides = {
        k: v
        for k, v in {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": optimizer,
            "seed": seed,
            "device": device,
        }.items()
        if v is not None
    }
    config = PRESETS[preset].replace(**overrides)
    train_set, test_set, num_classes, (c, h, w) = load_train_test(
        dataset, data_dir=data_dir, limit=limit
    )
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if arch in ("gfnn", "gf_resnet50") and first_layer is not None:
        kwargs["first_layer"] = first_layer
    if arch == "gfnn":
        if h != w:
            raise ConvscopeError(f"gfnn needs square images; {dataset} has {h}x{w}")
        kwargs.update(in_channels=c, input_size=h)
        if n_edges is not None:
            from convscope.kernels import gfnn_bank

            kwargs["kernels"] = [k.name for k in gfnn_bank(n_edges=n_edges)]
        if seed_bank:
            kwargs["seed"] = config.seed
        if dropout is not None:
            kwargs["dropout"] = dropout
    if seed_weights:
        # weights are drawn when the model is built: the same seed gives the same start
        seed_everything(config.seed)
    from convscope.models.zoo import build_model

    model = build_model(arch, **kwargs)
    all_callbacks: list[Callback] = []
    if max_gain:
        all_callbacks.append(MaxGainCallback(shape=(c, h, w)))
    all_callbacks.extend(callbacks)
    if board is not None:
        if tensorboard_figures:
            board.image, _ = _unpack(test_set[0])  # the same image every epoch
        all_callbacks.append(board)
    return fit(
        model,
        train_set,
        test_set,
        config,
        callbacks=all_callbacks,
        out_dir=out,
        progress=progress,
        save_last=save_last,
        resume=resume,
    )
