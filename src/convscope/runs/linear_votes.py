"""``convscope linear votes``: pixel discussions and votes of a classifier (seed 001 Fig. 3)."""

from __future__ import annotations

import os

from typing_extensions import Unpack

from convscope.errors import ConvscopeError
from convscope.report import linear_figures as lf
from convscope.runs.inputs import ImageSource
from convscope.runs.linear_setup import Output, check_mode, freeze, picture
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["OWNED", "run"]

OWNED = ("votes.json", "votes.png")


def run(
    model: ModelLike,
    image: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "freeze",
    output: Output = None,
    top: int = 10,
    **options: Unpack[Options],
) -> RunResult:
    """Pixel discussions and votes of a classifier, with the masked images (seed 001 Fig. 3).

    Writes ``votes.json`` and ``votes.png``.

    Args:
        model, image, out, mode, **options: As in
            :func:`convscope.runs.linear_residual.run`.
        top: Classes that take part in the vote (the largest scores).
        output: Models whose output is a dict, tuple or dataclass: the key, index or
            callable that picks the tensor to interpret (``"out"`` for segmentation).

    Returns:
        The :class:`~convscope.runs.RunResult`; ``result`` is the
        :class:`~convscope.linear.PixelVotes`. Its metrics hold ``targets`` (class
        indices, best first) and ``target_names``, ``vote_share`` (by class name; the
        shares sum to 1), ``top1``, ``most_voted``, ``top1_wins`` and ``votes`` (the
        (H, W) map of class indices).
    """
    import torch

    check_mode(mode)
    if top < 1:
        raise ConvscopeError(f"--top must be >= 1; got {top}")
    s = start("votes", model, image, out, OWNED, options, dtype=torch.float64)
    return s.plan.run(
        lambda src, o: _one(s, src, o, mode, output, top),
        progress=s.progress,
        row=lambda r: [r.metrics["target_names"][0],
                       f"{100 * r.metrics['vote_share'][r.metrics['target_names'][0]]:.1f}%",
                       s.model.class_name(r.metrics["most_voted"])],
        headers=["top-1", "its vote share", "most voted"],
        title=f"{s.model.name}: pixel votes",
    )  # fmt: skip


def _one(
    s: Started, src: ImageSource, o: Outputs, mode: str, output: Output, top: int
) -> RunResult:
    fr = freeze(s, src, mode, output)
    li, m, name = fr.li, fr.metrics, s.model.class_name
    if len(li.out_shape) != 1 or len(li.in_shape) != 3:
        raise ConvscopeError(
            f"votes need a classifier from images (C, H, W) to scores; this model maps "
            f"{tuple(li.in_shape)} to {tuple(li.out_shape)}"
        )
    pv = li.votes(top=top)
    targets = [int(c) for c in pv.targets]
    top1, winner = targets[0], pv.most_voted
    m.update(
        targets=targets,
        target_names=[name(c) for c in targets],
        vote_share={name(c): v for c, v in pv.shares.items()},
        top1=top1,
        most_voted=winner,
        top1_wins=winner == top1,
        votes=pv.votes.cpu().tolist(),
    )
    fig = lf.plot_pixel_votes(
        [picture(fr.x0)],
        [pv.votes.cpu().numpy()],
        [targets[: min(3, len(targets))]],
        s.model.class_names,
        discussions=[pv.discussions[0].cpu().numpy()],
        row_titles=[f"top-1 {name(top1)}"],
    )
    o.figure("votes.png", fig)
    o.json("votes.json", m)
    return RunResult(o.folder, list(o.written), m, result=pv)
