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
    from convscope.train.run import train_model

    # --seed seeds the starting weights (so a rerun gives the same model) and GFNN's kernel
    # bank; a falsy --epochs/--lr/--batch-size (0) keeps the preset's value
    history = train_model(out=out, arch=arch, dataset=dataset, data_dir=data_dir, preset=preset,
                          epochs=epochs or None, lr=lr or None, batch_size=batch_size or None,
                          seed=seed, device=device, first_layer=first_layer, n_edges=n_edges,
                          max_gain=max_gain, seed_weights=True, seed_bank=True,
                          progress=progress)  # fmt: skip
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
    from convscope.report.spectrum_run import run_spectrum

    m = run_spectrum(out, checkpoint=checkpoint, model=model_spec, weights=weights, image=image,
                     target=target, on=on, channels=channels, shape=shape)  # fmt: skip
    typer.echo("Maximum Gain: " + ", ".join(f"{g:.2f} dB" for g in m["maximum_gain_db"]))
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
    from convscope.report.kernel_sheet import write_kernel_sheet

    names = [s.strip() for s in kernels.split(",")] if kernels else None
    written = write_kernel_sheet(str(image), out, names)
    _done(out, f"{len(written)} filtered images and contact_sheet.png")


# -- convscope linear: residual, contributions, votes, svd, rows, columns, explore -----------
# The runs are in convscope.report.linear_runs and convscope.report.linear_filter_runs.


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
    from convscope.report.linear_runs import run_residual

    m = run_residual(model, image, out, mode=mode, target=target, weights=weights,
                     channels=channels, size=size, top=top)  # fmt: skip
    if "target" in m:
        typer.echo(f"residual share of {m['class_name']} (score {m['score']:.4g}): "
                   f"{100 * m['residual_share']:.2f}%")  # fmt: skip
    else:
        typer.echo(f"|r| / |f(x0)| = {m['relative_residual']:.4g} "
                   f"(max |r| {m['residual_max_abs']:.3g})")  # fmt: skip
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
    from convscope.report.linear_runs import run_contributions

    m = run_contributions(model, image, out, mode=mode, target=target, weights=weights,
                          channels=channels, size=size)  # fmt: skip
    n = len(m["contributions"]) - 1
    if "target" in m:
        inp = m["contributions"]["input"]
        typer.echo(f"{m['class_name']}: score {m['score']:.4g} = input {inp:.4g} + "
                   f"{n} bias sources")  # fmt: skip
    else:
        typer.echo(f"f(x0) split into the input and {n} bias sources")
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
    from convscope.report.linear_runs import run_votes

    m = run_votes(model, image, out, mode=mode, weights=weights, channels=channels, size=size,
                  top=top)  # fmt: skip
    name = dict(zip(m["targets"], m["target_names"], strict=True))
    share = sum(row.count(m["top1"]) for row in m["votes"]) / sum(map(len, m["votes"]))
    typer.echo(f"top-1 {name[m['top1']]} gets {100 * share:.1f}% of the pixel "
               f"votes; most voted: {name[m['most_voted']]}")  # fmt: skip
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
    from convscope.report.linear_runs import run_svd

    m = run_svd(model, image, out, mode=mode, weights=weights, channels=channels, size=size,
                k=k, steps=steps, method=method)  # fmt: skip
    typer.echo("singular values: " + ", ".join(f"{s:.4g}" for s in m["singular_values"]))
    _done(out)


def _echo_filters(kind: str, m: dict[str, Any]) -> None:
    if "at" in m:
        at = ", ".join(f"({y},{x})" for y, x in m["at"])
        typer.echo(f"{len(m['at'])} {kind}s of F at {at}")
    else:
        typer.echo(f"row of {m['class_name']}: sum {m['maps'][0]['sum']:.4g}")


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
    from convscope.report.linear_filter_runs import run_rows

    m = run_rows(model, image, out, mode=mode, at=at, channel=channel, target=target,
                 weights=weights, channels=channels, size=size)  # fmt: skip
    _echo_filters("row", m)
    _done(out)


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
    from convscope.report.linear_filter_runs import run_columns

    m = run_columns(model, image, out, mode=mode, at=at, channel=channel, weights=weights,
                    channels=channels, size=size)  # fmt: skip
    _echo_filters("column", m)
    _done(out)


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
    per_channel: Annotated[
        bool,
        typer.Option(
            "--per-channel/--sum-channels",
            help="Colour models: tiles for every input (and output) channel, chosen on the "
            "page, or only the filters summed over channels (about 3x fewer probes).",
        ),
    ] = True,
) -> None:
    """Static HTML page: move the pointer over the image, see F's row and column there."""
    from convscope.report.linear_runs import run_explore

    page, (h, w) = run_explore(model, image, out, mode=mode, weights=weights, size=size,
                               max_pixels=max_pixels, k_svd=k_svd, tile=tile,
                               per_channel=per_channel)  # fmt: skip
    typer.echo(f"filters at {h}x{w} pixels; open {page.resolve()}")
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
