"""The runs behind ``convscope linear residual|contributions|votes|svd|explore``.

Each run loads a model and an image, freezes the model at the image with
:class:`convscope.linear.LinearInterpreter` (float64), writes one figure and
``metrics.json`` into a folder and returns the metrics. The numbers come from
:mod:`convscope.linear`, the pictures from :mod:`convscope.report.linear_figures`;
this module only chooses what to compute and show. Rows and columns are in
:mod:`convscope.report.linear_filter_runs`.

Error messages name the command-line options (``--size``, ``--k`` ...), whose
keyword arguments here carry the same names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from convscope.errors import ConvscopeError
from convscope.io import write_json
from convscope.linear import LinearInterpreter, group_contributions
from convscope.report import linear_figures as lf
from convscope.report.figures import save_figure

__all__ = [
    "LinearSetup",
    "parse_pair",
    "prepare_linear",
    "run_contributions",
    "run_explore",
    "run_residual",
    "run_svd",
    "run_votes",
]

PathLike = str | os.PathLike[str]
Pair = tuple[int, int] | str


@dataclass
class LinearSetup:
    """A model frozen at one image: what every run starts from.

    Attributes:
        interpreter: The interpreter of the model at ``x0`` (float64).
        x0: The image, (1, C, H, W) float64 in [0, 1].
        info: What :func:`convscope.models.zoo.load_model` says about the model
            (``source``, ``class_names``, ``input_size``, ``in_channels`` ...).
        metrics: The head every run's ``metrics.json`` starts with (model, image,
            mode, shapes, number of bias sources).
    """

    interpreter: LinearInterpreter
    x0: torch.Tensor
    info: dict[str, Any]
    metrics: dict[str, Any]


def parse_pair(text: Pair, what: str, example: str) -> tuple[int, int]:
    """Two integers from ``"a,b"`` (spaces allowed) or a pair given as such.

    Args:
        text: ``"12,30"`` or ``(12, 30)``.
        what: The option named in the error, e.g. ``"--size"``.
        example: A valid value shown in the error, e.g. ``"224,224"``.

    Returns:
        The two integers.

    Raises:
        ConvscopeError: When ``text`` is not two integers.
    """
    if not isinstance(text, str):
        pair = tuple(text)
        if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
            raise ConvscopeError(f"{what} must look like {example}; got {text!r}")
        return int(pair[0]), int(pair[1])
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ConvscopeError(f"{what} must look like {example}; got {text!r}")
    return int(parts[0]), int(parts[1])


def _load(spec: str, weights: bool) -> tuple[nn.Module, dict[str, Any]]:
    from convscope.models.zoo import load_model

    return load_model(spec, weights)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _load_image(image: str, channels: int | None) -> torch.Tensor:
    """(1, C, H, W) float32 in [0, 1] from a file or ``sample:NAME``."""
    from convscope.data import load_image, sample_photo

    if not image.startswith("sample:"):
        return load_image(image, channels=channels)
    rgb = torch.from_numpy(sample_photo(image[len("sample:") :])).permute(2, 0, 1)
    x = rgb[None].float() / 255.0
    if channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif channels not in (None, 3):
        raise ConvscopeError(f"--channels must be 1 or 3; got {channels}")
    return x


def prepare_linear(
    model: PathLike,
    image: PathLike,
    *,
    mode: str = "freeze",
    weights: bool = False,
    channels: int | None = None,
    size: Pair | None = None,
) -> LinearSetup:
    """Load a model and an image and freeze the model at the image (float64).

    Args:
        model: A convscope checkpoint (.pt), a convscope architecture name
            (``bicubic``, ``espcn`` ...; ``espcn`` without ``weights`` is the trained x4
            ESPCN kept in the repository) or a torchvision model name.
        image: A PNG/JPEG file, or ``"sample:NAME"`` for a scikit-image photo.
        mode: ``"freeze"`` (the paper's frozen decisions) or ``"taylor"``.
        weights: torchvision models: pretrained weights from the local cache.
        channels: Convert the image to 1 or 3 channels.
        size: Resize the image to (H, W) (or ``"H,W"``) first; default: the size the
            model asks for, if any.

    Returns:
        The interpreter, the image, the model's info and the metrics head.

    Raises:
        ConvscopeError: On a bad mode, size or channel count, a model or image that
            cannot be read, or a model that refuses the image.
    """
    from convscope.data import _resize

    spec, image = str(model), str(image)
    if mode not in ("freeze", "taylor"):
        raise ConvscopeError(f"--mode must be freeze or taylor; got {mode!r}")
    hw = parse_pair(size, "--size", "224,224") if size else None
    if hw is not None and min(hw) < 1:
        raise ConvscopeError(f"--size must be positive; got {size!r}")
    if spec == "espcn" and not weights:  # the trained one, as in `linear explore`
        from convscope.report.explorer import trained_espcn_checkpoint

        net, info = _load(str(trained_espcn_checkpoint()), False)
    else:
        net, info = _load(spec, weights)
    x = _load_image(image, channels)
    hw = hw or info["input_size"]
    if hw is not None:
        x = _resize(x, hw)
    want = info["in_channels"]
    if want is not None and x.shape[1] != want:
        hint = f"; pass --channels {want}" if want in (1, 3) else ""
        raise ConvscopeError(
            f"{image}: the image has {x.shape[1]} channels but the model expects {want}{hint}"
        )
    net = net.double()
    x0 = x.double()
    try:
        li = LinearInterpreter(net, x0, mode=mode)  # type: ignore[arg-type]
    except RuntimeError as e:
        raise ConvscopeError(
            f"{spec} cannot run on {image} of shape {tuple(x0.shape)}: {_first_line(e)} "
            "(try --size)"
        ) from None
    meta: dict[str, Any] = {
        "model": spec,
        "model_source": info["source"],
        "image": image,
        "mode": mode,
        "dtype": "float64",
        "input_shape": list(li.in_shape),
        "output_shape": list(li.out_shape),
        "bias_sources": len(li.sources),
    }
    if "normalization" in info:
        meta["normalization"] = info["normalization"]
    return LinearSetup(li, x0, info, meta)


def _class_name(info: Mapping[str, Any], c: int) -> str:
    names = info.get("class_names")
    return str(names[c]) if names and 0 <= c < len(names) else str(c)


def _picture(x0: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) tensor -> (H, W) or (H, W, 3) array in [0, 1] for the figures."""
    a = x0[0].detach().float().clamp(0, 1).numpy()
    return a[0] if a.shape[0] != 3 else a.transpose(1, 2, 0)


def _flat_target(li: LinearInterpreter, target: int | None) -> int:
    n = math.prod(li.out_shape)
    if target is None:
        return int(li.output.reshape(-1).argmax())
    if not 0 <= target < n:
        raise ConvscopeError(f"--target {target} is out of range for {n} outputs")
    return target


def _write(out: PathLike, metrics: dict[str, Any], figures: Mapping[str, Figure]) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save_figure(fig, out / name)
    write_json(out / "metrics.json", metrics)


def _share(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num / den) if float(den) != 0 else float("nan")


def run_residual(
    model: PathLike,
    image: PathLike,
    out: PathLike,
    *,
    mode: str = "freeze",
    target: int | None = None,
    weights: bool = False,
    channels: int | None = None,
    size: Pair | None = None,
    top: int = 5,
) -> dict[str, Any]:
    """The residual r(x0): its share r_c / y_c of a score, or |r| / |f(x0)| (seed 001 Table 3).

    A classifier (or any model given a ``target``) gets the score split into
    ``F x0`` and ``r`` for the ``top`` largest scores; an image-to-image model gets
    its output and residual side by side. Writes ``residual.png`` and ``metrics.json``.

    Args:
        model, image, mode, weights, channels, size: As in :func:`prepare_linear`.
        out: Folder to write into (created).
        target: Flat output index / class (default: the largest score).
        top: Classifiers: scores shown.

    Returns:
        The metrics written: the head of :func:`prepare_linear`, and ``target``,
        ``class_name``, ``score``, ``residual``, ``input_part``, ``residual_share``,
        ``top`` for a score, or ``output_norm``, ``residual_norm``,
        ``residual_max_abs``, ``relative_residual`` for a whole output.

    Raises:
        ConvscopeError: As :func:`prepare_linear`, or a target out of range.
    """
    s = prepare_linear(model, image, mode=mode, weights=weights, channels=channels, size=size)
    li, info, m = s.interpreter, s.info, s.metrics
    y = li.output.reshape(-1)
    r = li.residual.reshape(-1)
    if len(li.out_shape) == 1 or target is not None:
        c = _flat_target(li, target)
        order = y.argsort(descending=True)[: max(1, top)].tolist()
        if c not in order:
            order = [c, *order[:-1]]
        m.update(
            target=c,
            class_name=_class_name(info, c),
            score=float(y[c]),
            residual=float(r[c]),
            input_part=float(y[c] - r[c]),
            residual_share=_share(r[c], y[c]),
            top=[
                {"index": k, "name": _class_name(info, k), "score": float(y[k]),
                 "residual": float(r[k]), "residual_share": _share(r[k], y[k])}
                for k in order
            ],
        )  # fmt: skip
        fig = lf.plot_score_split(
            [_class_name(info, k) for k in order],
            (y[order] - r[order]).numpy(),
            r[order].numpy(),
            image=_picture(s.x0),
            title=f"{m['model']}: scores = F x0 + r",
        )
    else:
        rel = _share(r.norm(), y.norm())
        m.update(
            output_norm=float(y.norm()),
            residual_norm=float(r.norm()),
            residual_max_abs=float(r.abs().max()),
            relative_residual=rel,
        )
        fig = lf.plot_signed_maps(
            [li.output[0].numpy(), li.residual[0].numpy()],
            ["output f(x0)", f"residual r (|r|/|f| = {rel:.3g})"],
            image=_picture(s.x0),
        )
    _write(out, m, {"residual.png": fig})
    return m


def run_contributions(
    model: PathLike,
    image: PathLike,
    out: PathLike,
    *,
    mode: str = "freeze",
    target: int | None = None,
    weights: bool = False,
    channels: int | None = None,
    size: Pair | None = None,
) -> dict[str, Any]:
    """Split f(x0) into the input's part F x0 and every bias source's (seed 001 Fig. 4).

    Writes ``contributions.png`` and ``metrics.json``.

    Args:
        model, image, mode, weights, channels, size: As in :func:`prepare_linear`.
        out: Folder to write into (created).
        target: Flat output index / class (default: the largest score for a classifier;
            an image-to-image model without a target is split as a whole).

    Returns:
        The metrics written: the head of :func:`prepare_linear`, ``sources`` (name,
        module, op of each bias source), and for a score ``target``, ``class_name``,
        ``score``, ``sum`` (of the contributions: the score, to rounding),
        ``contributions``, ``groups`` (summed by layer) and ``shares`` (groups over the
        score); for a whole output, ``contributions`` and ``groups`` as ``{"sum",
        "norm"}`` of each map, and ``output`` likewise.

    Raises:
        ConvscopeError: As :func:`prepare_linear`, or a target out of range.
    """
    s = prepare_linear(model, image, mode=mode, weights=weights, channels=channels, size=size)
    li, info, m = s.interpreter, s.info, s.metrics
    m["sources"] = [{"name": src.name, "module": src.module, "op": src.op} for src in li.sources]
    if len(li.out_shape) == 1 or target is not None:
        c = _flat_target(li, target)
        contribs = li.contributions(target=c)
        groups = group_contributions(contribs)
        score = float(li.output.reshape(-1)[c])
        total = float(sum(float(v) for v in contribs.values()))
        shares = np.array([float(v) / score if score else np.nan for v in groups.values()])
        m.update(
            target=c,
            class_name=_class_name(info, c),
            score=score,
            sum=total,
            contributions={k: float(v) for k, v in contribs.items()},
            groups={k: float(v) for k, v in groups.items()},
            shares={k: float(v) for k, v in zip(groups, shares, strict=True)},
        )
        fig = lf.plot_contribution_histogram(
            list(groups),
            {"this image": (shares, np.zeros_like(shares))},
            residual={"this image": (1.0 - float(shares[0]), 0.0)},
            title=f"{m['model']}: contributions to {_class_name(info, c)} (score {score:.4g})",
            ylabel="share of the score",
        )
    else:
        contribs = li.contributions()
        groups = group_contributions(contribs)
        m.update(
            contributions={k: {"sum": float(v.sum()), "norm": float(v.norm())}
                           for k, v in contribs.items()},
            groups={k: {"sum": float(v.sum()), "norm": float(v.norm())}
                    for k, v in groups.items()},
            output={"sum": float(li.output.sum()), "norm": float(li.output.norm())},
        )  # fmt: skip
        fig = lf.plot_signed_maps(
            [v[0].numpy() for v in groups.values()],
            [f"{k} (|.| {float(v.norm()):.3g})" for k, v in groups.items()],
            image=_picture(s.x0),
            title=f"{m['model']}: f(x0) = input + biases",
        )
    _write(out, m, {"contributions.png": fig})
    return m


def run_votes(
    model: PathLike,
    image: PathLike,
    out: PathLike,
    *,
    mode: str = "freeze",
    weights: bool = False,
    channels: int | None = None,
    size: Pair | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Pixel discussions and votes of a classifier, with the masked images (seed 001 Fig. 3).

    Writes ``votes.png`` and ``metrics.json``.

    Args:
        model, image, mode, weights, channels, size: As in :func:`prepare_linear`.
        out: Folder to write into (created).
        top: Classes that take part in the vote (the largest scores).

    Returns:
        The metrics written: the head of :func:`prepare_linear`, ``targets`` (class
        indices, best first) and ``target_names``, ``vote_share`` (by class name; the
        shares sum to 1), ``top1``, ``most_voted``, ``top1_wins`` and ``votes`` (the
        (H, W) map of class indices).

    Raises:
        ConvscopeError: As :func:`prepare_linear`, a model that is not a classifier
            of images, or ``top`` < 1.
    """
    s = prepare_linear(model, image, mode=mode, weights=weights, channels=channels, size=size)
    li, info, m = s.interpreter, s.info, s.metrics
    if len(li.out_shape) != 1 or len(li.in_shape) != 3:
        raise ConvscopeError(
            f"votes need a classifier from images (C, H, W) to scores; this model maps "
            f"{tuple(li.in_shape)} to {tuple(li.out_shape)}"
        )
    if top < 1:
        raise ConvscopeError(f"--top must be >= 1; got {top}")
    flat = li.output.reshape(-1)
    targets = flat.topk(min(top, flat.numel())).indices
    pd = li.pixel_discussion(targets)
    votes = targets[pd.argmax(0)]
    shares = {int(c): float((votes == c).double().mean()) for c in targets}
    top1 = int(targets[0])
    winner = max(shares, key=lambda c: shares[c])
    m.update(
        targets=[int(c) for c in targets],
        target_names=[_class_name(info, int(c)) for c in targets],
        vote_share={_class_name(info, c): v for c, v in shares.items()},
        top1=top1,
        most_voted=winner,
        top1_wins=winner == top1,
        votes=votes.tolist(),
    )
    fig = lf.plot_pixel_votes(
        [_picture(s.x0)],
        [votes.numpy()],
        [[int(c) for c in targets[: min(3, len(targets))]]],
        info.get("class_names") or None,
        discussions=[pd[0].numpy()],
        row_titles=[f"top-1 {_class_name(info, top1)}"],
    )
    _write(out, m, {"votes.png": fig})
    return m


def run_svd(
    model: PathLike,
    image: PathLike,
    out: PathLike,
    *,
    mode: str = "freeze",
    weights: bool = False,
    channels: int | None = None,
    size: Pair | None = None,
    k: int = 4,
    steps: int = 100,
    method: str = "power",
) -> dict[str, Any]:
    """Top-k singular values, eigen-inputs and eigen-outputs of F (seed 001 Fig. 5, 12).

    Writes ``svd.png`` and ``metrics.json``.

    Args:
        model, image, mode, weights, channels, size: As in :func:`prepare_linear`.
        out: Folder to write into (created).
        k: Singular triplets, 1 to min(inputs, outputs).
        steps: ``"power"``: at most this many steps per pair.
        method: ``"power"`` (the paper's Algorithm 1) or ``"randomized"``.

    Returns:
        The metrics written: the head of :func:`prepare_linear`, ``k``, ``method``,
        ``steps`` (None for randomized), ``singular_values``, ``iterations`` and
        ``converged`` per pair.

    Raises:
        ConvscopeError: As :func:`prepare_linear`, ``k`` out of range or an unknown
            method.
    """
    s = prepare_linear(model, image, mode=mode, weights=weights, channels=channels, size=size)
    li, m = s.interpreter, s.metrics
    limit = min(math.prod(li.in_shape), math.prod(li.out_shape))
    if not 1 <= k <= limit:
        raise ConvscopeError(f"--k must lie in [1, {limit}]; got {k}")
    if method == "power":
        res = li.svd(k=k, steps=steps)
    elif method == "randomized":
        res = li.svd(k=k, method="randomized")
    else:
        raise ConvscopeError(f"--method must be power or randomized; got {method!r}")
    m.update(
        k=k,
        method=method,
        steps=steps if method == "power" else None,
        singular_values=[float(v) for v in res.S],
        iterations=list(res.iterations),
        converged=[bool(c) for c in res.converged],
    )
    fig = lf.plot_svd_pairs(res.S.numpy(), res.U.numpy(), res.V.numpy(), image=_picture(s.x0),
                            title=f"{m['model']}: SVD of F ({method})")  # fmt: skip
    _write(out, m, {"svd.png": fig})
    return m


def run_explore(
    model: PathLike,
    image: PathLike,
    out: PathLike,
    *,
    mode: str = "freeze",
    weights: bool = False,
    size: Pair | None = None,
    max_pixels: int = 1024,
    k_svd: int = 4,
    tile: int | None = None,
    **options: Any,
) -> tuple[Path, tuple[int, int]]:
    """Write the static explorer page: F's row and column under the pointer.

    Args:
        model: ``bicubic``, ``espcn`` (the trained x4 ESPCN kept in the repository), a
            convscope checkpoint (.pt) or a torchvision model name.
        image: A PNG/JPEG file or ``"sample:NAME"``.
        out: Folder to write the page and its tiles into.
        mode: ``"freeze"`` or ``"taylor"``.
        weights: torchvision models: pretrained weights from the local cache.
        size: Resize the image to (H, W) (or ``"H,W"``); default: the model's input size,
            else the longer side shrunk to 64.
        max_pixels: Compute filters on a grid of at most this many pixels.
        k_svd: Singular pairs shown.
        tile: Filter window in input pixels, odd (default: automatic).
        **options: Passed on to :func:`convscope.report.explorer.write_explorer`.

    Returns:
        The page's path and the (H, W) of the image the filters were computed at.

    Raises:
        ConvscopeError: On a bad mode or size, a model or image that cannot be read,
            or a model that refuses the image.
    """
    from convscope.report import explorer as ex

    spec = str(model)
    if mode not in ("freeze", "taylor"):
        raise ConvscopeError(f"--mode must be freeze or taylor; got {mode!r}")
    if spec == "espcn":  # here the trained one: an untrained ESPCN shows little
        if weights:
            raise ConvscopeError("--weights is for torchvision models; espcn is convscope's")
        net, info = _load(str(ex.trained_espcn_checkpoint()), False)
        label = "ESPCN x4 (trained)"
    else:
        try:
            net, info = _load(spec, weights)
        except ConvscopeError as e:
            if not str(e).startswith("unknown torchvision model"):
                raise
            raise ConvscopeError(
                f"--model {spec!r} is not bicubic, espcn, a checkpoint file or a torchvision "
                "model name"
            ) from None
        label = f"{spec} ({info['source']})"
    hw = parse_pair(size, "--size", "64,64") if size else info["input_size"]
    if hw is not None and min(hw) < 1:
        raise ConvscopeError(f"--size must be positive; got {size!r}")
    x = ex.explorer_image(image, info["in_channels"] or 3, hw)
    try:
        page = ex.write_explorer(
            net, x, out, mode=mode, tile=tile, k_svd=k_svd, max_pixels=max_pixels,
            class_names=info.get("class_names"), title=f"{label} at {Path(image).name}",
            **options,
        )  # fmt: skip
    except RuntimeError as e:  # the model refuses this input, e.g. a size it cannot take
        raise ConvscopeError(
            f"{spec} cannot run on {image} of shape {tuple(x.shape)}: {_first_line(e)} (try --size)"
        ) from None
    return page, (int(x.shape[-2]), int(x.shape[-1]))
