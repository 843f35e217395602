"""The ``python -m convscope.train`` command line (argparse; torchrun launches it too)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from convscope.errors import ConvscopeError
from convscope.train.config import OPTIMIZERS, PRESETS
from convscope.train.interrupt import TrainingInterrupted

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m convscope.train``."""
    from convscope.models.gfnn import FIRST_LAYER_MODES
    from convscope.models.zoo import ARCHITECTURES

    p = argparse.ArgumentParser(
        prog="python -m convscope.train",
        description=(
            "Train a convscope model and write metrics.json and checkpoint.pt into --out. "
            "For several processes or GPUs launch it with torchrun, e.g. "
            "torchrun --nproc_per_node=2 -m convscope.train --out runs/gfnn"
        ),
    )
    p.add_argument("--arch", default="gfnn", choices=sorted(ARCHITECTURES))
    p.add_argument(
        "--dataset",
        default="mnist-subset",
        choices=["digits", "mnist-subset", "toy"],
        help="toy: 256 synthetic 16x16 images (smoke runs)",
    )
    p.add_argument("--preset", default="gfnn-mnist", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--epochs", type=int, help="override the preset")
    p.add_argument("--batch-size", type=int, help="global mini-batch; override the preset")
    p.add_argument("--lr", type=float, help="override the preset")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="override the preset")
    p.add_argument("--seed", type=int, help="override the preset")
    p.add_argument("--device", help="auto, cpu, cuda ... (override the preset)")
    p.add_argument("--first-layer", default="fixed", choices=FIRST_LAYER_MODES, help="GFNN only")
    p.add_argument("--dropout", type=float, help="GFNN only (default 0.5)")
    p.add_argument("--limit", type=int, help="train on the first N training images only")
    p.add_argument("--save-last", action="store_true", help="write last.pt after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a finished run in --out (without it such a folder is refused)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry (``python -m convscope.train``).

    Args:
        argv: the arguments (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 for bad input, 130 on Ctrl-C (one line on
        stderr saying which files were kept).
    """
    # runs/ builds on train/: imported here, so importing convscope.train never loads it
    from convscope.runs.train import run as train

    args = _build_parser().parse_args(argv)
    try:
        history = train(
            out=args.out,
            arch=args.arch,
            dataset=args.dataset,
            preset=args.preset,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            seed=args.seed,
            device=args.device,
            first_layer=args.first_layer if args.arch == "gfnn" else None,
            dropout=args.dropout,
            limit=args.limit,
            seed_weights=True,
            seed_bank=False,
            progress=not args.no_progress,
            save_last=args.save_last,
            resume=args.resume,
            overwrite=args.overwrite,
        )
    except ConvscopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # TrainingInterrupted says what was kept; a bare one came before training started
        if int(os.environ.get("RANK", "0")) == 0:
            message = str(e) if isinstance(e, TrainingInterrupted) else ""
            print(message or "interrupted before training started", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        acc = f"; test accuracy {history.test_acc[-1]:.4f}" if history.test_acc else ""
        print(f"wrote {Path(args.out) / 'metrics.json'} and checkpoint.pt{acc}")
    return 0
