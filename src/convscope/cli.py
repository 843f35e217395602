"""The ``convscope`` command. Thin: parse, call the library, say where files went.

Bad input raises :class:`convscope.errors.ConvscopeError`; :func:`main` prints its
message on one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint from `convscope train`.")],
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
    from convscope.models import load_checkpoint
    from convscope.report.figures import plot_transfer_function, save_figure

    if on not in ("softmax", "logit"):
        raise ConvscopeError(f"--on must be softmax or logit, got {on!r}")
    model, extra = load_checkpoint(checkpoint)
    if image is None:
        if shape:
            try:
                dims = tuple(int(v) for v in shape.split(","))
            except ValueError:
                raise ConvscopeError(f"--shape must look like 1,28,28; got {shape!r}") from None
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
        plot_transfer_function(d.numpy(), spec.numpy(), gains, f"{checkpoint.name} at {src}"),
        out / "transfer_function.png",
    )
    with torch.no_grad():
        logits = model(x)[0]
    write_json(
        out / "metrics.json",
        {
            "checkpoint": str(checkpoint),
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
