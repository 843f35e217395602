"""``convscope linear votes``: pixel discussions and votes of a classifier (seed 001 Fig. 3)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from typing_extensions import Unpack

from convscope.errors import ConvscopeError
from convscope.report import linear_figures as lf
from convscope.runs.inputs import ImageSource
from convscope.runs.linear_setup import Output, check_mode, freeze, picture
from convscope.runs.options import Options, Started, start
from convscope.runs.outputs import Outputs
from convscope.runs.result import RunResult
from convscope.runs.sources import ModelLike

__all__ = ["DATA_OWNED", "OWNED", "run", "run_data", "summarise_votes", "vote_frequency"]

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
        indices, best first) and ``target_names``, ``vote_share`` (by class name, each a
        fraction of all pixels), ``abstained`` (the fraction of pixels with no say: their
        largest discussion is tied; the shares and it sum to 1), ``top1``,
        ``most_voted`` (abstentions do not count; -1 when no pixel votes),
        ``top1_wins`` and ``votes`` (the (H, W) map of class indices, -1 where a pixel
        abstains).
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
                       f"{100 * r.metrics['abstained']:.1f}%",
                       _most_voted(s.model.class_name, r.metrics["most_voted"])],
        headers=["top-1", "its vote share", "no say", "most voted"],
        title=f"{s.model.short_name}: pixel votes",
    )  # fmt: skip


def _most_voted(name: Any, c: int) -> str:
    return "none (every pixel abstains)" if c < 0 else str(name(c))


def _check_classifier(li: Any) -> None:
    if len(li.out_shape) != 1 or len(li.in_shape) != 3:
        raise ConvscopeError(
            f"votes need a classifier from images (C, H, W) to scores; this model maps "
            f"{tuple(li.in_shape)} to {tuple(li.out_shape)}"
        )


def _one(
    s: Started, src: ImageSource, o: Outputs, mode: str, output: Output, top: int
) -> RunResult:
    fr = freeze(s, src, mode, output)
    li, m, name = fr.li, fr.metrics, s.model.class_name
    _check_classifier(li)
    pv = li.votes(top=top)
    targets = [int(c) for c in pv.targets]
    top1, winner = targets[0], pv.most_voted
    m.update(
        targets=targets,
        target_names=[name(c) for c in targets],
        vote_share={name(c): v for c, v in pv.shares.items()},
        abstained=pv.abstained,
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


# -- over a dataset: --data ------------------------------------------------------------------

DATA_OWNED = ("vote_frequency.png", "vote_shares.png", "report.html", "report.json")


def run_data(
    model: ModelLike,
    data: str,
    out: str | os.PathLike[str],
    *,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    mode: str = "freeze",
    output: Output = None,
    top: int = 10,
    **options: Unpack[Options],
) -> Any:
    """Pixel votes of every image of ``data``: how often the pixels vote for the prediction.

    Each image is frozen on its own (float64) and its pixels vote among the ``top``
    classes (seed 001 Fig. 3). Writes ``per_image.parquet`` (index, label, path, top-1
    class, its vote share, the most voted class, whether the top-1 class wins the vote,
    the label's vote share, the share of pixels that abstain (``abstained``: their largest
    discussion is tied, e.g. all 0), and the map of pixels voting for the top-1 class,
    bit-packed row-major as ``top1_mask``); vote shares are fractions of all pixels.
    ``summary.json`` holds vote share statistics and histogram, how often the top-1
    class wins, the abstained share's statistics, a per-class table, and the per-pixel
    frequency of voting for the top-1 class; then ``vote_frequency.png``,
    ``vote_shares.png`` and ``report.html``. Resumes and shards like every dataset run
    (:mod:`convscope.runs.dataset_run`); a folder written before tied pixels abstained
    holds another run and is not resumed.

    Args:
        model, out, mode, output, top, **options: As in :func:`run`.
        data, split, limit, batch_size, workers: As in
            :func:`convscope.runs.linear_contributions.run_data`.
    """
    import torch

    from convscope.runs.dataset_run import DatasetAnalysis, prepare, run_over

    check_mode(mode)
    if top < 1:
        raise ConvscopeError(f"--top must be >= 1; got {top}")
    p = prepare(model, data, split=split, limit=limit, options=dict(options),
                dtype=torch.float64)  # fmt: skip
    try:
        names, device, module = p.class_names, p.process.device, p.model.module
        kwargs: dict[str, Any] = {} if output is None else {"output": output}

        def rows(indices: list[int], x: Any, labels: Any) -> list[dict[str, Any]]:
            return [_vote_row(module, x[i : i + 1].to(device, torch.float64), int(labels[i]),
                              mode, kwargs, top) for i in range(len(indices))]  # fmt: skip

        shown = output if output is None or isinstance(output, (str, int)) else repr(output)
        head = {"model": p.model.metadata(), "data": p.data.describe(), "mode": mode,
                "top": top, "image_shape": list(p.data.shape[1:])}  # fmt: skip
        analysis = DatasetAnalysis(
            command="linear votes",
            config={**p.config, "mode": mode, "top": top, "output": shown, "ties": "abstain"},
            rows=rows,
            summarise=lambda table: {**head, **summarise_votes(table, names, p.data.shape[1:])},
            report=lambda o, summary: _data_report(o, summary, p.model.name, data, split),
            owned=DATA_OWNED,
        )
        return run_over(analysis, p.data, out, p.process, batch_size=batch_size,
                        workers=workers, overwrite=p.options["overwrite"],
                        formats=p.options["formats"], progress=p.options["progress"])  # fmt: skip
    finally:
        p.process.leave()


def _vote_row(
    module: Any, x0: Any, label: int, mode: str, kwargs: dict[str, Any], top: int
) -> dict[str, Any]:
    from convscope.linear import LinearInterpreter

    li = LinearInterpreter(module, x0, mode=mode, **kwargs)  # type: ignore[arg-type]
    _check_classifier(li)
    pv = li.votes(top=top)
    targets = [int(c) for c in pv.targets]
    top1 = targets[0]
    mask = (pv.votes == top1).cpu().numpy()
    return {
        "top1": top1,
        "top1_vote_share": pv.share(top1),
        "most_voted": pv.most_voted,
        "top1_wins": pv.most_voted == top1,
        "label_vote_share": pv.share(label) if label in targets else 0.0,
        "abstained": pv.abstained,
        "top1_mask": np.packbits(mask.reshape(-1)).tobytes(),
    }


def vote_frequency(table: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The fraction of images in which each pixel votes for the image's top-1 class."""
    n = int(np.prod(shape))
    total = np.zeros(n, dtype=np.int64)
    for blob in table.column("top1_mask").to_pylist():
        total += np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=n)
    return (total / max(table.num_rows, 1)).reshape(shape)


def summarise_votes(table: Any, names: list[str] | None, shape: tuple[int, ...]) -> dict[str, Any]:
    """``summary.json`` of a votes run from its per-image table."""
    from convscope.runs.summaries import column, histogram, per_class, stats

    share = column(table, "top1_vote_share")
    wins = column(table, "top1_wins")
    label = column(table, "label").astype(np.int64)
    top1 = column(table, "top1").astype(np.int64)
    known = label >= 0
    return {
        "images": int(table.num_rows),
        "accuracy": float((top1[known] == label[known]).mean()) if known.any() else None,
        "top1_vote_share": stats(share),
        "top1_vote_share_histogram": histogram(share),
        "top1_wins": float(wins.mean()),
        "label_vote_share": stats(column(table, "label_vote_share")[known]),
        "abstained": stats(column(table, "abstained")),
        "per_class": per_class(top1, {"top1_vote_share": share, "top1_wins": wins}, names),
        "vote_frequency": vote_frequency(table, shape).tolist(),
    }


def _data_report(o: Outputs, s: dict[str, Any], model: str, data: str, split: str) -> None:
    from convscope.report.html import Figure, Section, Table, write_report

    name = os.path.basename(model)
    share = s["top1_vote_share"]
    o.figure("vote_frequency.png", lf.plot_vote_frequency(
        np.asarray(s["vote_frequency"]),
        title=f"{name}: pixels voting for the top-1 class, {s['images']} images"))  # fmt: skip
    h = s["top1_vote_share_histogram"]
    o.figure("vote_shares.png", lf.plot_histogram(
        h["edges"], h["counts"], xlabel="pixels voting for the top-1 class",
        mean=share["mean"], title=f"{name}: top-1 vote share per image"))  # fmt: skip
    fmt = "png" if "png" in o.formats else o.formats[0]
    rows = [
        [k, str(v["images"]), f"{100 * v['top1_vote_share']['mean']:.1f}%",
         f"{100 * v['top1_wins']['mean']:.1f}%"]
        for k, v in s["per_class"].items()
    ]  # fmt: skip
    sections = [
        Section("How often the pixels vote for the prediction", [
            f"{s['images']} images of {data} ({split}); each pixel votes for the class, among "
            f"the top {s['top']}, its pixel discussion favours most; a pixel where several "
            "classes tie for the largest discussion (all 0, say) has no say and abstains. "
            f"On average {100 * share['mean']:.1f}% of an image's pixels vote for its "
            f"top-1 class (median {100 * share['median']:.1f}%) and "
            f"{100 * s['abstained']['mean']:.1f}% abstain; the top-1 class wins the vote "
            f"in {100 * s['top1_wins']:.1f}% of the images.",
            "The map: for each pixel, the fraction of images in which it votes for the "
            "image's top-1 class. One row per image is in per_image.parquet."],
            figures=[Figure(f"vote_frequency.{fmt}"), Figure(f"vote_shares.{fmt}")]),
        Section("Per predicted class", tables=[Table(
            ["class", "images", "mean top-1 vote share", "top-1 wins"], rows)]),
    ]  # fmt: skip
    write_report(o.folder, f"convscope linear votes: {name} on {data}", sections)
    o.file("report.html")
    o.file("report.json")
