"""The ``convscope`` command. Thin: parse, call the library, say where files went.

Bad input raises :class:`convscope.errors.ConvscopeError`; :func:`main` prints its
message on one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from convscope.errors import ConvscopeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="convscope",
    help="Open up convolutional networks for images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
kernels_app = typer.Typer(
    help="The kernel bank: list it, apply it to a photo.", no_args_is_help=True
)
app.add_typer(kernels_app, name="kernels")
linear_app = typer.Typer(
    help="The linear interpreter (seed 001): F x + r of a model at one image.",
    no_args_is_help=True,
)
app.add_typer(linear_app, name="linear")

OutDir = Annotated[Path, typer.Option("--out", help="Folder to write results into.")]


def _done(out: Path, what: str = "results") -> None:
    typer.echo(f"wrote {what} to {out.resolve()}")


@app.command()
def demo(
    out: OutDir = Path("demo_output"),
    quick: Annotated[bool, typer.Option(help="2 epochs on 2,000 images: under a minute.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    seed: int = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train GFNN and a regular CNN on the embedded MNIST subset and write report.html."""
    from convscope.demo import run_demo

    m = run_demo(out, quick=quick, epochs=epochs, seed=seed, progress=progress)
    for key, label in (("gfnn", "GFNN"), ("regular_cnn", "regular CNN")):
        typer.echo(f"{label:12s} test accuracy: {100 * m['models'][key]['test_acc']:.2f}%")
    _done(out / "report.html", "the report")


@app.command()
def train(
    out: OutDir = Path("runs/train"),
    arch: Annotated[str, typer.Option(help="Architecture: gfnn, gf_resnet50, lenet ...")] = "gfnn",
    dataset: Annotated[
        str, typer.Option(help="mnist-subset, digits, mnist (needs --data-dir) or folder.")
    ] = "mnist-subset",
    data_dir: Annotated[Path | None, typer.Option(help="MNIST IDX files or image folder.")] = None,
    first_layer: Annotated[str, typer.Option(help="fixed, init, random or learned.")] = "fixed",
    n_edges: Annotated[int, typer.Option(help="Edge kernels in the bank: 32/24/16/8/4.")] = 32,
    preset: Annotated[str, typer.Option(help="Training preset (see convscope.train).")] = (
        "gfnn-mnist"
    ),
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    max_gain: Annotated[
        bool, typer.Option(help="Log the impulse-image Maximum Gain (dB) every epoch.")
    ] = False,
) -> None:
    """Train a model and write checkpoint.pt and metrics.json."""
    from convscope import train as tr
    from convscope.data import load_dataset
    from convscope.kernels import gfnn_bank
    from convscope.models import build_model

    if preset not in tr.PRESETS:
        raise ConvscopeError(f"unknown preset {preset!r}; choose one of {', '.join(tr.PRESETS)}")
    train_set = load_dataset(dataset, "train", data_dir=data_dir)
    test_set = load_dataset(dataset, "test", data_dir=data_dir)
    c, h, w = train_set.image_shape
    kw: dict[str, object] = {"num_classes": train_set.num_classes}
    if arch in ("gfnn", "gf_resnet50"):
        kw["first_layer"] = first_layer
    if arch == "gfnn":
        if h != w:
            raise ConvscopeError(f"gfnn needs square images; {dataset} has {h}x{w}")
        bank = [k.name for k in gfnn_bank(n_edges=n_edges)]
        kw.update(in_channels=c, input_size=h, kernels=bank, seed=seed)
    model = build_model(arch, **kw)
    overrides = {
        k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size}.items() if v
    }
    config = tr.PRESETS[preset].replace(seed=seed, device=device, **overrides)
    callbacks = []
    if max_gain:
        from convscope.spectral import MaxGainCallback

        callbacks.append(MaxGainCallback(shape=(c, h, w)))
    history = tr.fit(model, train_set.to_torch(), test_set.to_torch(), config, out_dir=out,
                     progress=progress, callbacks=callbacks)  # fmt: skip
    typer.echo(f"test accuracy: {100 * history.test_acc[-1]:.2f}%")
    if max_gain:
        from convscope.spectral import diagnose

        mg = history.extra["max_gain"]
        typer.echo(f"Maximum Gain: {mg[0]:.2f} -> {mg[-1]:.2f} dB")
        if len(mg) >= 4:
            d = diagnose(history)
            typer.echo(f"diagnosis: {d.pattern} ({d.advice})")
    _done(out)


@app.command()
def explain(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint from `convscope train`.")],
    image: Annotated[Path, typer.Option(help="PNG or JPEG to explain.")],
    out: OutDir = Path("explain_output"),
    target: Annotated[int | None, typer.Option(help="Class to explain (default: predicted).")] = (
        None
    ),
    channels: Annotated[
        int | None, typer.Option(help="Convert the image to 1 (grey) or 3 (RGB) channels.")
    ] = None,
    invert: Annotated[bool, typer.Option(help="Invert: dark digit on light paper.")] = False,
    method: Annotated[str, typer.Option(help="auto, filter-scores or gradients.")] = "auto",
    top: int = 3,
) -> None:
    """Explain one image: filter scores, saliency, gradient x input."""
    from convscope.demo import explain_image

    r = explain_image(checkpoint, image, out, target=target, channels=channels, invert=invert,
                      method=method, top=top)  # fmt: skip
    typer.echo(f"class {r['target_name']} (logit {r['logit']:.3f})")
    if "top_kernels" in r:
        typer.echo("top kernels: " + ", ".join(r["top_kernels"]))
    _done(out)


@app.command()
def spectrum(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint from `convscope train`.")
    ] = None,
    model_spec: Annotated[
        str | None,
        typer.Option("--model", help="Instead of --checkpoint: a torchvision model name."),
    ] = None,
    weights: Annotated[
        bool, typer.Option(help="With --model: torchvision weights from the local cache.")
    ] = False,
    image: Annotated[
        Path | None, typer.Option(help="Operating point (default: the impulse image).")
    ] = None,
    out: OutDir = Path("spectrum_output"),
    target: Annotated[int | None, typer.Option(help="Class (default: the winner).")] = None,
    on: Annotated[str, typer.Option(help="softmax (p = 1/score) or logit.")] = "softmax",
    channels: Annotated[int | None, typer.Option(help="Convert the image's channels.")] = None,
    shape: Annotated[
        str | None, typer.Option(help="Impulse image shape C,H,W when the model does not say.")
    ] = None,
) -> None:
    """Transfer function and Maximum Gain of a model (seed 004)."""
    import torch

    from convscope import spectral as sp
    from convscope.data import load_image
    from convscope.io import write_json
    from convscope.report.figures import plot_transfer_function, save_figure

    if on not in ("softmax", "logit"):
        raise ConvscopeError(f"--on must be softmax or logit, got {on!r}")
    if (checkpoint is None) == (model_spec is None):
        raise ConvscopeError("give exactly one of --checkpoint and --model")
    spec_name = str(checkpoint) if checkpoint is not None else str(model_spec)
    model, info = load_model(spec_name, weights)
    if image is None:
        if shape:
            try:
                dims = tuple(int(v) for v in shape.split(","))
            except ValueError:
                raise ConvscopeError(f"--shape must look like 1,28,28; got {shape!r}") from None
        elif info.get("normalization") == "imagenet":
            dims = (3, 224, 224)  # torchvision classifiers, behind their ImageNet normalisation
        else:
            dims = sp.model_input_shape(model)
        x = sp.impulse_image(dims)
        window: sp.Window = "hann"
    else:
        side = getattr(model, "input_size", None)
        x = load_image(image, channels=channels, size=(side, side) if side else None)
        window = None
    in_ch = int(getattr(model, "in_channels", x.shape[1]))
    if x.shape[1] != in_ch:
        raise ConvscopeError(
            f"{image}: image has {x.shape[1]} channels but the model expects {in_ch}; "
            f"pass --channels {in_ch} to convert it"
        )
    d = sp.data_derivative(model, x, target, on=on)[0]  # type: ignore[arg-type]
    spec = sp.spectrum_db(d, window)
    gains = [float(v) for v in spec.flatten(1).amax(1)]
    out.mkdir(parents=True, exist_ok=True)
    src = "impulse image" if image is None else image.name
    save_figure(
        plot_transfer_function(d.numpy(), spec.numpy(), gains, f"{Path(spec_name).name} at {src}"),
        out / "transfer_function.png",
    )
    with torch.no_grad():
        logits = model(x)[0]
    write_json(
        out / "metrics.json",
        {
            "model": spec_name,
            "source": info["source"],
            "operating_point": src,
            "window": window,
            "projection": on,
            "class": int(logits.argmax()) if target is None else target,
            "maximum_gain_db": gains,
        },
    )
    typer.echo("Maximum Gain: " + ", ".join(f"{g:.2f} dB" for g in gains))
    _done(out)


@app.command()
def decode(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint from `convscope train`.")],
    layer: Annotated[str, typer.Option(help="Conv2d to decode, e.g. features.conv4.")],
    out: OutDir = Path("decode_output"),
    unpool: Annotated[str, typer.Option(help="nearest, bilinear, bicubic or adjoint.")] = (
        "nearest"
    ),
    dataset: Annotated[str, typer.Option(help="Test images: mnist-subset, digits, mnist...")] = (
        "mnist-subset"
    ),
    data_dir: Annotated[Path | None, typer.Option(help="MNIST IDX files or image folder.")] = None,
    images: Annotated[int, typer.Option(help="Test images used (the first N).")] = 1000,
    max_filters: Annotated[int, typer.Option(help="Decoded filters drawn.")] = 50,
) -> None:
    """Decode a layer's filters into image space (seed 003): gallery, error table, report."""
    from convscope.report.decoding_report import write_decoding_report

    m = write_decoding_report(
        checkpoint,
        layer,
        out,
        unpool=unpool,
        dataset=dataset,
        data_dir=data_dir,
        n_images=images,
        max_filters=max_filters,
    )
    for mode, e in m["reconstruction_error"].items():
        typer.echo(f"{mode:9s} reconstruction error {e['mean']:.4f} ± {e['std']:.4f}")
    _done(out / "report.html", "the report")


@app.command()
def report(folder: Annotated[Path, typer.Argument(help="A folder with report.json.")]) -> None:
    """Render report.html again from the report.json in FOLDER."""
    from convscope.report.html import load_report, write_report

    title, sections, meta = load_report(folder)
    _done(write_report(folder, title, sections, meta), "the report")


@kernels_app.command("list")
def kernels_list(
    group: Annotated[str | None, typer.Option(help="Only this group, e.g. edge.")] = None,
) -> None:
    """Print the kernel bank as a table."""
    from convscope import kernels as kb

    names = kb.names(group)
    if not names:
        raise ConvscopeError(f"no kernels in group {group!r}")
    typer.echo(f"{'idx':>3}  {'name':20s} {'group':17s} {'family':16s} {'dir':3s}  weights")
    for n in names:
        k = kb.get(n)
        w = " ".join(f"{v:g}" for v in k.weight.ravel()) if k.weight.size <= 9 else "5x5"
        idx = "" if k.index is None else str(k.index)
        typer.echo(f"{idx:>3}  {n:20s} {k.group:17s} {k.family:16s} {k.direction or '':3s}  {w}")


@kernels_app.command("apply")
def kernels_apply(
    image: Annotated[
        Path, typer.Argument(help="A PNG/JPEG, or sample:NAME for a scikit-image photo.")
    ],
    out: OutDir = Path("kernels_output"),
    kernels: Annotated[
        str | None, typer.Option(help="Comma-separated names (default: the GFNN bank of 40).")
    ] = None,
) -> None:
    """Apply each kernel to a photo; write one PNG per kernel and a contact sheet."""
    import numpy as np

    from convscope import kernels as kb
    from convscope.data import load_image, sample_photo
    from convscope.io import save_png
    from convscope.report.figures import plot_contact_sheet, save_figure

    if str(image).startswith("sample:"):
        img = sample_photo(str(image)[len("sample:") :])
    else:
        x = load_image(image)[0].numpy()
        img = np.rint(np.moveaxis(x, 0, -1) * 255).astype(np.uint8)
        img = img[..., 0] if img.shape[-1] == 1 else img
    names = [s.strip() for s in kernels.split(",")] if kernels else [k.name for k in kb.gfnn_bank()]
    ks = [kb.get(n) for n in names]  # fail before writing anything
    out.mkdir(parents=True, exist_ok=True)
    tiles, titles = [img], ["original"]
    for k in ks:
        res = kb.filter_image(img, k)
        save_png(out / f"kernel_{k.name}.png", res)
        tiles.append(res)
        titles.append(k.name if k.index is None else f"{k.index}: {k.name}")
    save_figure(plot_contact_sheet(tiles, titles), out / "contact_sheet.png")
    _done(out, f"{len(ks)} filtered images and contact_sheet.png")


# -- convscope linear: residual, contributions, votes, svd, rows, columns -------------------


LinModel = Annotated[
    str,
    typer.Option(
        "--model",
        help="A convscope checkpoint (.pt), a convscope architecture (bicubic, espcn ..., "
        "untrained) or a torchvision model name (untrained unless --weights).",
    ),
]
LinImage = Annotated[
    str, typer.Option("--image", help="PNG or JPEG, or sample:NAME for a scikit-image photo.")
]
LinMode = Annotated[str, typer.Option(help="freeze (the paper's frozen decisions) or taylor.")]
LinTarget = Annotated[int | None, typer.Option(help="Output index / class (default: top-1).")]
LinWeights = Annotated[
    bool, typer.Option("--weights", help="torchvision: pretrained weights from the local cache.")
]
LinChannels = Annotated[int | None, typer.Option(help="Convert the image to 1 or 3 channels.")]
LinSize = Annotated[str | None, typer.Option(help="Resize the image to H,W first.")]
LinAt = Annotated[
    list[str] | None,
    typer.Option("--at", help="Position y,x (repeat for more; default: the centre)."),
]
LinChannel = Annotated[
    int | None, typer.Option("--channel", help="One channel at each position (default: all).")
]


def load_model(spec: str, weights: bool) -> tuple[Any, dict[str, Any]]:
    """:func:`convscope.models.zoo.load_model`, imported when a command needs it."""
    from convscope.models.zoo import load_model as _load

    return _load(spec, weights)


def _parse_pair(text: str, what: str, example: str) -> tuple[int, int]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise ConvscopeError(f"{what} must look like {example}; got {text!r}")
    return int(parts[0]), int(parts[1])


def _linear_setup(
    spec: str,
    image: str,
    mode: str,
    weights: bool,
    channels: int | None,
    size: str | None,
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """Load model and image, build the interpreter (float64, exact to rounding)."""
    import torch

    from convscope.data import _resize, load_image, sample_photo
    from convscope.linear import LinearInterpreter

    if mode not in ("freeze", "taylor"):
        raise ConvscopeError(f"--mode must be freeze or taylor; got {mode!r}")
    hw = _parse_pair(size, "--size", "224,224") if size else None
    if hw is not None and min(hw) < 1:
        raise ConvscopeError(f"--size must be positive; got {size!r}")
    if spec == "espcn" and not weights:  # the trained one, as in `linear explore`
        from convscope.report.explorer import trained_espcn_checkpoint

        model, info = load_model(str(trained_espcn_checkpoint()), False)
    else:
        model, info = load_model(spec, weights)
    if image.startswith("sample:"):
        rgb = torch.from_numpy(sample_photo(image[len("sample:") :])).permute(2, 0, 1)
        x = rgb[None].float() / 255.0
        if channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif channels not in (None, 3):
            raise ConvscopeError(f"--channels must be 1 or 3; got {channels}")
    else:
        x = load_image(image, channels=channels)
    hw = hw or info["input_size"]
    if hw is not None:
        x = _resize(x, hw)
    want = info["in_channels"]
    if want is not None and x.shape[1] != want:
        hint = f"; pass --channels {want}" if want in (1, 3) else ""
        raise ConvscopeError(
            f"{image}: the image has {x.shape[1]} channels but the model expects {want}{hint}"
        )
    model = model.double()
    x0 = x.double()
    try:
        li = LinearInterpreter(model, x0, mode=mode)  # type: ignore[arg-type]
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConvscopeError(
            f"{spec} cannot run on {image} of shape {tuple(x0.shape)}: {first} (try --size)"
        ) from None
    meta = {
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
    return li, x0, info, meta


def _class_name(info: dict[str, Any], c: int) -> str:
    names = info.get("class_names")
    return str(names[c]) if names and 0 <= c < len(names) else str(c)


def _picture(x0: Any) -> Any:
    """(1, C, H, W) tensor -> (H, W) or (H, W, 3) array in [0, 1] for the figures."""
    a = x0[0].detach().float().clamp(0, 1).numpy()
    return a[0] if a.shape[0] != 3 else a.transpose(1, 2, 0)


def _flat_target(li: Any, target: int | None) -> int:
    import math

    n = math.prod(li.out_shape)
    if target is None:
        return int(li.output.reshape(-1).argmax())
    if not 0 <= target < n:
        raise ConvscopeError(f"--target {target} is out of range for {n} outputs")
    return target


def _write_linear(out: Path, metrics: dict[str, Any], figures: dict[str, Any]) -> None:
    from convscope.io import write_json
    from convscope.report.figures import save_figure

    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save_figure(fig, out / name)
    write_json(out / "metrics.json", metrics)


@linear_app.command("residual")
def linear_residual(
    model: LinModel,
    image: LinImage,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    target: LinTarget = None,
    weights: LinWeights = False,
    channels: LinChannels = None,
    size: LinSize = None,
    top: Annotated[int, typer.Option(help="Classifiers: scores shown.")] = 5,
) -> None:
    """Residual r(x0): its share r_c / y_c of a score (seed 001 Table 3), or |r| / |f(x0)|."""
    from convscope.report import linear_figures as lf

    li, x0, info, m = _linear_setup(model, image, mode, weights, channels, size)
    y = li.output.reshape(-1)
    r = li.residual.reshape(-1)
    if len(li.out_shape) == 1 or target is not None:
        c = _flat_target(li, target)
        share = float(r[c] / y[c]) if float(y[c]) != 0 else float("nan")
        order = y.argsort(descending=True)[: max(1, top)].tolist()
        if c not in order:
            order = [c, *order[:-1]]
        m.update(
            target=c,
            class_name=_class_name(info, c),
            score=float(y[c]),
            residual=float(r[c]),
            input_part=float(y[c] - r[c]),
            residual_share=share,
            top=[
                {"index": k, "name": _class_name(info, k), "score": float(y[k]),
                 "residual": float(r[k]),
                 "residual_share": float(r[k] / y[k]) if float(y[k]) != 0 else float("nan")}
                for k in order
            ],
        )  # fmt: skip
        fig = lf.plot_score_split(
            [_class_name(info, k) for k in order],
            (y[order] - r[order]).numpy(),
            r[order].numpy(),
            image=_picture(x0),
            title=f"{model}: scores = F x0 + r",
        )
        typer.echo(f"residual share of {_class_name(info, c)} (score {float(y[c]):.4g}): "
                   f"{100 * share:.2f}%")  # fmt: skip
    else:
        rel = float(r.norm() / y.norm()) if float(y.norm()) != 0 else float("nan")
        m.update(
            output_norm=float(y.norm()),
            residual_norm=float(r.norm()),
            residual_max_abs=float(r.abs().max()),
            relative_residual=rel,
        )
        fig = lf.plot_signed_maps(
            [li.output[0].numpy(), li.residual[0].numpy()],
            ["output f(x0)", f"residual r (|r|/|f| = {rel:.3g})"],
            image=_picture(x0),
        )
        typer.echo(f"|r| / |f(x0)| = {rel:.4g} (max |r| {float(r.abs().max()):.3g})")
    _write_linear(out, m, {"residual.png": fig})
    _done(out)


@linear_app.command("contributions")
def linear_contributions(
    model: LinModel,
    image: LinImage,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    target: LinTarget = None,
    weights: LinWeights = False,
    channels: LinChannels = None,
    size: LinSize = None,
) -> None:
    """Split f(x0) into the input's part F x0 and every bias source's (seed 001 Fig. 4)."""
    import numpy as np

    from convscope.linear import group_contributions
    from convscope.report import linear_figures as lf

    li, x0, info, m = _linear_setup(model, image, mode, weights, channels, size)
    m["sources"] = [{"name": s.name, "module": s.module, "op": s.op} for s in li.sources]
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
            shares={k: float(s) for k, s in zip(groups, shares, strict=True)},
        )
        fig = lf.plot_contribution_histogram(
            list(groups),
            {"this image": (shares, np.zeros_like(shares))},
            residual={"this image": (1.0 - float(shares[0]), 0.0)},
            title=f"{model}: contributions to {_class_name(info, c)} (score {score:.4g})",
            ylabel="share of the score",
        )
        inp = float(contribs["input"])
        typer.echo(f"{_class_name(info, c)}: score {score:.4g} = input {inp:.4g} + "
                   f"{len(contribs) - 1} bias sources")  # fmt: skip
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
            image=_picture(x0),
            title=f"{model}: f(x0) = input + biases",
        )
        typer.echo(f"f(x0) split into the input and {len(contribs) - 1} bias sources")
    _write_linear(out, m, {"contributions.png": fig})
    _done(out)


@linear_app.command("votes")
def linear_votes(
    model: LinModel,
    image: LinImage,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    weights: LinWeights = False,
    channels: LinChannels = None,
    size: LinSize = None,
    top: Annotated[int, typer.Option(help="Classes that take part in the vote (top scores).")] = (
        10
    ),
) -> None:
    """Pixel discussions and votes of a classifier, with the masked images (seed 001 Fig. 3)."""
    from convscope.report import linear_figures as lf

    li, x0, info, m = _linear_setup(model, image, mode, weights, channels, size)
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
        vote_share={_class_name(info, c): s for c, s in shares.items()},
        top1=top1,
        most_voted=winner,
        top1_wins=winner == top1,
        votes=votes.tolist(),
    )
    fig = lf.plot_pixel_votes(
        [_picture(x0)],
        [votes.numpy()],
        [[int(c) for c in targets[: min(3, len(targets))]]],
        info.get("class_names") or None,
        discussions=[pd[0].numpy()],
        row_titles=[f"top-1 {_class_name(info, top1)}"],
    )
    typer.echo(f"top-1 {_class_name(info, top1)} gets {100 * shares[top1]:.1f}% of the pixel "
               f"votes; most voted: {_class_name(info, winner)}")  # fmt: skip
    _write_linear(out, m, {"votes.png": fig})
    _done(out)


@linear_app.command("svd")
def linear_svd(
    model: LinModel,
    image: LinImage,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    weights: LinWeights = False,
    channels: LinChannels = None,
    size: LinSize = None,
    k: Annotated[int, typer.Option(help="Singular triplets.")] = 4,
    steps: Annotated[int, typer.Option(help="power: at most this many steps per pair.")] = 100,
    method: Annotated[str, typer.Option(help="power (the paper) or randomized.")] = "power",
) -> None:
    """Top-k singular values, eigen-inputs and eigen-outputs of F (seed 001 Fig. 5, 12)."""
    import math

    from convscope.report import linear_figures as lf

    li, x0, info, m = _linear_setup(model, image, mode, weights, channels, size)
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
        singular_values=[float(s) for s in res.S],
        iterations=list(res.iterations),
        converged=[bool(c) for c in res.converged],
    )
    fig = lf.plot_svd_pairs(res.S.numpy(), res.U.numpy(), res.V.numpy(), image=_picture(x0),
                            title=f"{model}: SVD of F ({method})")  # fmt: skip
    typer.echo("singular values: " + ", ".join(f"{float(s):.4g}" for s in res.S))
    _write_linear(out, m, {"svd.png": fig})
    _done(out)


def _positions(at: list[str] | None, shape: tuple[int, ...], where: str) -> list[tuple[int, int]]:
    h, w = shape[-2:]
    if not at:
        return [(h // 2, w // 2)]
    pos = [_parse_pair(a, "--at", "12,30 (y,x)") for a in at]
    for y, x in pos:
        if not (0 <= y < h and 0 <= x < w):
            raise ConvscopeError(f"--at {y},{x} lies outside the {where} ({h}x{w} pixels)")
    return pos


def _impulses(shape: tuple[int, ...], pos: list[tuple[int, int]], channel: int | None) -> Any:
    """(P, *shape) probes: 1 at each position, in one channel or in all (a white impulse)."""
    import torch

    c = shape[0]
    if channel is not None and not 0 <= channel < c:
        raise ConvscopeError(f"--channel {channel} is out of range for {c} channels")
    e = torch.zeros((len(pos), *shape), dtype=torch.float64)
    for i, (y, x) in enumerate(pos):
        if channel is None:
            e[i, :, y, x] = 1
        else:
            e[i, channel, y, x] = 1
    return e


def _map_stats(maps: Any, centres: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Sum, peak and spread (RMS distance of |map|^2 from its centroid) of each map."""
    import torch

    stats = []
    for m, (cy, cx) in zip(maps, centres, strict=True):
        a = m.reshape(-1, *m.shape[-2:]).sum(0) if m.ndim >= 3 else m
        p = a.abs() ** 2
        total = float(p.sum())
        ys = torch.arange(a.shape[0], dtype=a.dtype)[:, None]
        xs = torch.arange(a.shape[1], dtype=a.dtype)[None, :]
        if total > 0:
            my, mx = float((p * ys).sum() / total), float((p * xs).sum() / total)
            spread = float(((p * ((ys - my) ** 2 + (xs - mx) ** 2)).sum() / total) ** 0.5)
        else:
            my = mx = spread = float("nan")
        peak = divmod(int(a.abs().argmax()), a.shape[1])
        stats.append(
            {"sum": float(a.sum()), "max_abs": float(a.abs().max()), "peak": list(peak),
             "centroid": [my, mx], "centroid_shift": [my - cy, mx - cx], "spread": spread}
        )  # fmt: skip
    return stats


def _rows_or_columns(
    kind: str,
    spec: str,
    image: str,
    out: Path,
    mode: str,
    weights: bool,
    channels: int | None,
    size: str | None,
    at: list[str] | None,
    channel: int | None,
    target: int | None,
) -> None:
    from convscope.report import linear_figures as lf

    li, x0, info, m = _linear_setup(spec, image, mode, weights, channels, size)
    classifier = len(li.out_shape) == 1
    picture = _picture(x0)
    in_hw = li.in_shape[-2:]
    if kind == "row" and classifier:
        if at:
            raise ConvscopeError(
                "a classifier's outputs have no positions: rows take --target, not --at"
            )
        c = _flat_target(li, target)
        maps = li.rows([c])
        m.update(target=c, class_name=_class_name(info, c), flat_indices=[c])
        m["maps"] = _map_stats(maps, [((in_hw[0] - 1) / 2, (in_hw[1] - 1) / 2)])
        fig = lf.plot_signed_maps([maps[0].numpy()], [f"row of {_class_name(info, c)}: F^T e_c"],
                                  image=picture)  # fmt: skip
        typer.echo(f"row of {_class_name(info, c)}: sum {m['maps'][0]['sum']:.4g}")
    else:
        if len(li.in_shape) != 3 or (kind == "row" and len(li.out_shape) != 3):
            raise ConvscopeError(
                f"{kind}s at positions need images (C, H, W); this model maps "
                f"{tuple(li.in_shape)} to {tuple(li.out_shape)}"
            )
        if target is not None:
            raise ConvscopeError(f"{kind}s take --at positions; --target is for classifier rows")
        space = li.in_shape if kind == "column" else li.out_shape
        pos = _positions(at, space, "input" if kind == "column" else "output")
        e = _impulses(space, pos, channel)
        maps = li.linear(e) if kind == "column" else li.transpose(e)
        sy = li.out_shape[-2] / li.in_shape[-2] if not classifier else 1.0
        sx = li.out_shape[-1] / li.in_shape[-1] if not classifier else 1.0
        if kind == "column":
            marks = pos
            centres = [((y + 0.5) * sy - 0.5, (x + 0.5) * sx - 0.5) for y, x in pos]
        else:
            marks = [(int(y / sy), int(x / sx)) for y, x in pos]
            centres = [((y + 0.5) / sy - 0.5, (x + 0.5) / sx - 0.5) for y, x in pos]
        hw = (space[1], space[2])
        chans = list(range(space[0])) if channel is None else [channel]
        flat = [[c * hw[0] * hw[1] + y * hw[1] + x for c in chans] for y, x in pos]
        m.update(at=[list(p) for p in pos], channel=channel, flat_indices=flat)
        if classifier:  # columns of a classifier: one score vector per input position
            m["columns"] = maps.tolist()
            fig = lf.plot_signed_maps([maps.numpy()], ["columns (position x class)"], image=picture)
        else:
            m["maps"] = _map_stats(maps, centres)
            ratio = max(sy, sx) if kind == "column" else 1 / min(sy, sx)
            size_map = maps.shape[-2:]
            window = int(min(min(size_map), max(11, round(8 * ratio))))
            fig = lf.plot_filter_maps(
                picture,
                maps.numpy(),
                marks,
                centres=[(round(cy), round(cx)) for cy, cx in centres],
                window=window,
                kind=kind,
            )
        typer.echo(f"{len(pos)} {kind}s of F at " + ", ".join(f"({y},{x})" for y, x in pos))
    _write_linear(out, m, {f"{kind}s.png": fig})
    _done(out)


@linear_app.command("rows")
def linear_rows(
    model: LinModel,
    image: LinImage,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    at: LinAt = None,
    channel: LinChannel = None,
    target: LinTarget = None,
    weights: LinWeights = False,
    channels: LinChannels = None,
    size: LinSize = None,
) -> None:
    """Rows of F (receptive filters) at output positions, or of a class (seed 001 Fig. 11)."""
    _rows_or_columns("row", model, image, out, mode, weights, channels, size, at, channel, target)


@linear_app.command("columns")
def linear_columns(
    model: LinModel,
    image: LinImage,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    at: LinAt = None,
    channel: LinChannel = None,
    weights: LinWeights = False,
    channels: LinChannels = None,
    size: LinSize = None,
) -> None:
    """Columns of F (projective filters) at input positions (seed 001 Fig. 11)."""
    _rows_or_columns("column", model, image, out, mode, weights, channels, size, at, channel, None)


@linear_app.command("explore")
def linear_explore(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="bicubic (x4 upscaler), espcn (the trained x4 ESPCN kept in "
            "experiments/results/espcn), a convscope checkpoint (.pt) or a torchvision name.",
        ),
    ],
    image: LinImage,
    out: OutDir = Path("explore_output"),
    mode: LinMode = "freeze",
    weights: LinWeights = False,
    size: Annotated[
        str | None, typer.Option(help="Resize the image to H,W (default: longer side 64).")
    ] = None,
    max_pixels: Annotated[
        int, typer.Option(help="Compute filters on a grid of at most this many pixels.")
    ] = 1024,
    k_svd: Annotated[int, typer.Option("--k-svd", help="Singular pairs shown.")] = 4,
    tile: Annotated[
        int | None, typer.Option(help="Filter window in input pixels, odd (default: auto).")
    ] = None,
) -> None:
    """Static HTML page: move the pointer over the image, see F's row and column there."""
    from convscope.report import explorer as ex

    if mode not in ("freeze", "taylor"):
        raise ConvscopeError(f"--mode must be freeze or taylor; got {mode!r}")
    if model == "espcn":  # here the trained one: an untrained ESPCN shows little
        if weights:
            raise ConvscopeError("--weights is for torchvision models; espcn is convscope's")
        net, info = load_model(str(ex.trained_espcn_checkpoint()), False)
        label = "ESPCN x4 (trained)"
    else:
        try:
            net, info = load_model(model, weights)
        except ConvscopeError as e:
            if not str(e).startswith("unknown torchvision model"):
                raise
            raise ConvscopeError(
                f"--model {model!r} is not bicubic, espcn, a checkpoint file or a torchvision "
                "model name"
            ) from None
        label = f"{model} ({info['source']})"
    hw = _parse_pair(size, "--size", "64,64") if size else info["input_size"]
    if hw is not None and min(hw) < 1:
        raise ConvscopeError(f"--size must be positive; got {size!r}")
    x = ex.explorer_image(image, info["in_channels"] or 3, hw)
    try:
        page = ex.write_explorer(
            net, x, out, mode=mode, tile=tile, k_svd=k_svd, max_pixels=max_pixels,
            class_names=info.get("class_names"), title=f"{label} at {Path(image).name}",
        )  # fmt: skip
    except RuntimeError as e:  # the model refuses this input, e.g. a size it cannot take
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConvscopeError(
            f"{model} cannot run on {image} of shape {tuple(x.shape)}: {first} (try --size)"
        ) from None
    typer.echo(f"filters at {x.shape[-2]}x{x.shape[-1]} pixels; open {page.resolve()}")
    _done(out, "the explorer page and its tiles")


numpy_cnn_app = typer.Typer(help="The textbook CNN in NumPy (seed 002).", no_args_is_help=True)
app.add_typer(numpy_cnn_app, name="numpy-cnn")


@numpy_cnn_app.command("walkthrough")
def numpy_cnn_walkthrough(
    out: OutDir = Path("walkthrough_output"),
    pairs: Annotated[
        str, typer.Option(help='Digit pairs "positive:negative", comma-separated.')
    ] = "1:0,7:1",
    epochs: Annotated[int, typer.Option(help="Training epochs (25 in the chapter).")] = 25,
    seeds: Annotated[int, typer.Option(help="Random starts trained per pair.")] = 3,
    seed: int = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = False,
) -> None:
    """Section 11.6.3: one learned 3x3 kernel read through line probes, and a hand-made one."""
    from convscope.numpy_cnn.walkthrough import run_walkthrough

    parsed: list[tuple[int, int]] = []
    for item in pairs.split(","):
        a, sep, b = item.strip().partition(":")
        if not sep or not a.isdigit() or not b.isdigit():
            raise ConvscopeError(f'--pairs: expected digits like "1:0,7:1", got {item!r}')
        parsed.append((int(a), int(b)))
    m = run_walkthrough(out, parsed, epochs=epochs, seeds=seeds, seed=seed, progress=progress)
    for p in m["pairs"].values():
        typer.echo(
            f'"{p["positive"]}" vs "{p["negative"]}": learned kernel '
            f"{100 * p['learned']['test']['accuracy']:.1f}%, hand-made "
            f"{' + '.join(p['hand_designed']['recipe'])} "
            f"{100 * p['hand_designed']['test']['accuracy']:.1f}% test accuracy"
        )
    _done(out / "report.html", "the report")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turn ConvscopeError into one line and exit code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except ConvscopeError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
