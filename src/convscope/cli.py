"""The ``convscope`` command. Thin: parse options, call a run in :mod:`convscope.runs`, say
where the files went.

The options every analysis shares are defined once, in groups (:data:`MODEL`,
:data:`IMAGE`, :data:`OUTPUT`), and added to each command by :func:`_shared`; a command
receives them as one ``options`` dict, which is what the runs take as keyword options.

Bad input raises :class:`convscope.errors.ConvscopeError`; :func:`main` prints its
message on one line and exits with status 2, never with a traceback. Ctrl-C prints one
line saying what was kept and exits with 130. An untrained model's warning is one
``warning:`` line on stderr.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from convscope.errors import ConvscopeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="convscope",
    help="Open up convolutional networks for images: fixed-kernel networks, the exact linear "
    "interpreter, filter decoding, spectral response and a NumPy CNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
kernels_app = typer.Typer(
    help="The kernel bank: list it, apply it to a photo.", no_args_is_help=True
)
app.add_typer(kernels_app, name="kernels")
linear_app = typer.Typer(
    help="The linear interpreter: the network frozen at one image as y = F x + r "
    "(rows, columns, SVD, bias contributions, pixel votes).",
    no_args_is_help=True,
)
app.add_typer(linear_app, name="linear")
numpy_cnn_app = typer.Typer(help="The textbook CNN in NumPy.", no_args_is_help=True)
app.add_typer(numpy_cnn_app, name="numpy-cnn")


def _version(value: bool) -> None:
    if value:
        from convscope import __version__

        typer.echo(f"convscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Open up convolutional networks for images."""


# -- shared option groups ----------------------------------------------------------------

_MODEL_HELP = (
    "The model: a convscope checkpoint (.pt), a convscope architecture (gfnn, espcn ...), a "
    "torchvision or timm name (untrained unless --weights), pkg.module:factory or "
    "file.py:factory (a function returning an nn.Module), or an exported program (.pt2)."
)
ModelSpec = Annotated[str, typer.Option("--model", "--checkpoint", help=_MODEL_HELP)]
ImageSpec = Annotated[
    str,
    typer.Option(
        "--image", help="A PNG/JPEG file, sample:NAME (a scikit-image photo), a folder or a glob."
    ),
]
ImageOrData = Annotated[
    str | None,
    typer.Option(
        "--image",
        help="A PNG/JPEG file, sample:NAME (a scikit-image photo), a folder or a glob "
        "(or --data for a whole dataset).",
    ),
]


OutDir = Annotated[Path, typer.Option("--out", help="Folder to write results into.")]

# name -> (annotation, default); the runs take the same names as keyword options
MODEL: dict[str, tuple[Any, Any]] = {
    "weights": (
        Annotated[
            str | None,
            typer.Option(
                help="Pretrained weights of a torchvision/timm name: DEFAULT or a weights name "
                "(downloaded through their own cache)."
            ),
        ],
        None,
    ),
    "state_dict": (
        Annotated[
            Path | None,
            typer.Option(
                "--state-dict", help="Weights to load into the model (read weights-only)."
            ),
        ],
        None,
    ),
    "device": (
        Annotated[str, typer.Option(help="auto (CUDA when there is one), cpu, cuda, cuda:1 ...")],
        "auto",
    ),
}
IMAGE: dict[str, tuple[Any, Any]] = {
    "channels": (
        Annotated[int | None, typer.Option(help="Convert the image to 1 (grey) or 3 (RGB).")],
        None,
    ),
    "invert": (
        Annotated[bool, typer.Option(help="Invert the image: dark digits on light paper.")],
        False,
    ),
    "size": (Annotated[str | None, typer.Option(help="Resize the image to H,W first.")], None),
}
OUTPUT: dict[str, tuple[Any, Any]] = {
    "overwrite": (
        Annotated[bool, typer.Option(help="Replace results an earlier run left in --out.")],
        False,
    ),
    "formats": (
        Annotated[
            str, typer.Option("--format", help="Figure formats, comma-separated: png, svg, pdf.")
        ],
        "png",
    ),
    "progress": (Annotated[bool, typer.Option(help="Progress bars on stderr.")], True),
}
DATA: dict[str, tuple[Any, Any]] = {
    "data": (
        Annotated[
            str | None,
            typer.Option(
                help="A whole dataset instead of --image: mnist-subset, digits, idx:DIR, "
                "imagefolder:DIR or a glob of images (one row per image in per_image.parquet; "
                "reruns resume; split across processes under torchrun)."
            ),
        ],
        None,
    ),
    "split": (Annotated[str, typer.Option(help="--data: train, test or all.")], "test"),
    "limit": (
        Annotated[
            int | None,
            typer.Option(help="--data: the first N images (an image folder's classes in turn)."),
        ],
        None,
    ),
    "batch_size": (Annotated[int, typer.Option(help="--data: images per batch.")], 64),
    "workers": (
        Annotated[int, typer.Option(help="--data: DataLoader processes reading images.")],
        0,
    ),
}
ALL = {**MODEL, **IMAGE, **OUTPUT}


def _dataset(
    image: str | None, options: dict[str, Any], *, need_image: bool = True
) -> dict[str, Any] | None:
    """Split the --data options off ``options``: ``None`` for an --image run.

    Raises:
        ConvscopeError: both --image and --data, or neither (where an image is needed).
    """
    data = {k: options.pop(k) for k in DATA}
    if data["data"] is None:
        if image is None and need_image:
            raise ConvscopeError("give --image (one image, a folder or a glob) or --data")
        return None
    if image is not None:
        raise ConvscopeError("give --image or --data, not both")
    return data


def _say_dataset(res: Any) -> None:
    """What a dataset run did, on rank 0."""
    if res.rank != 0:
        return
    done = f"{res.computed} images computed"
    if res.resumed:
        done += f", {res.resumed} were already done"
    if res.world_size > 1:
        done += f" (rank 0 of {res.world_size} processes)"
    typer.echo(done)


def _shared(*groups: dict[str, tuple[Any, Any]]) -> Callable[[Callable[..., Any]], Any]:
    """Add the options of ``groups`` to a command; it receives them as ``options``."""
    shared = {k: v for g in groups for k, v in g.items()}

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "options"]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for name, (a, d) in shared.items()
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            options = {k: kwargs.pop(k) for k in shared}
            if "formats" in options:
                options["formats"] = tuple(options["formats"].split(","))
            return fn(**kwargs, options=options)

        params = own + extra
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return deco


def _done(out: Path, what: str = "results") -> None:
    typer.echo(f"wrote {what} to {out.resolve()}")


def _say_images(res: Any) -> bool:
    """For several images: say how many and where the index page is; ``True`` when it did."""
    if not res.items:
        return False
    index = res.out / f"{res.metrics['command']}_index.html"
    typer.echo(f"{len(res.items)} images; index page {index.resolve()}")
    return True


# -- commands ------------------------------------------------------------------------------


@app.command()
@_shared({"formats": OUTPUT["formats"]})
def demo(
    out: OutDir = Path("demo_output"),
    quick: Annotated[bool, typer.Option(help="2 epochs on 2,000 images: under a minute.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Override the preset's epochs.")] = None,
    seed: int = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in --out.")] = False,
    options: Any = None,
) -> None:
    """Train GFNN and a regular CNN on the embedded MNIST subset; report.html tours the five
    lenses on them (filter scores, the linear interpreter, filter decoding, the spectral
    response, the NumPy CNN) and compares their maps' faithfulness with Captum's and Zennit's."""
    from convscope.runs import demo as run

    res = run.run(out, quick=quick, epochs=epochs, seed=seed, progress=progress,
                  overwrite=overwrite, **options)  # fmt: skip
    for key, label in (("gfnn", "GFNN"), ("regular_cnn", "regular CNN")):
        typer.echo(
            f"{label:12s} test accuracy: {100 * res.metrics['models'][key]['test_acc']:.2f}%"
        )
    _done(out / "report.html", "the report")


def _train_optimizer(value: str | None) -> str | None:
    """``convscope train --optimizer``: one of :data:`convscope.train.config.OPTIMIZERS`."""
    if value is None:
        return None
    from convscope.train.config import OPTIMIZERS  # torch: only once --optimizer is given

    if value not in OPTIMIZERS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(OPTIMIZERS)}")
    return value


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def train(
    out: OutDir = Path("runs/train"),
    arch: Annotated[str, typer.Option(help="Architecture: gfnn, gf_resnet50, lenet ...")] = "gfnn",
    dataset: Annotated[
        str,
        typer.Option(
            help="mnist-subset, digits, mnist (needs --data-dir), folder, or toy (256 synthetic "
            "16x16 images, for smoke runs)."
        ),
    ] = "mnist-subset",
    data_dir: Annotated[Path | None, typer.Option(help="MNIST IDX files or image folder.")] = None,
    first_layer: Annotated[
        str, typer.Option(help="fixed, init, random or learned (gfnn, gf_resnet50).")
    ] = "fixed",
    n_edges: Annotated[int, typer.Option(help="Edge kernels in the bank: 32/24/16/8/4.")] = 32,
    preset: Annotated[str, typer.Option(help="Training preset (see convscope.train).")] = (
        "gfnn-mnist"
    ),
    epochs: Annotated[int | None, typer.Option(help="Override the preset (0: keep it).")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the preset (0: keep it).")] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="The global mini-batch, split between torchrun processes (0: preset's)."),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(callback=_train_optimizer, help="adam or sgd; override the preset."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seeds the weights, data order and GFNN's bank.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    dropout: Annotated[float | None, typer.Option(help="gfnn only (default 0.5).")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Train on the first N training images only.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars on stderr (rank 0).")] = True,
    max_gain: Annotated[
        bool, typer.Option(help="Log the impulse-image Maximum Gain (dB) every epoch.")
    ] = False,
    tensorboard: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR", help="Write TensorBoard event files (loss, accuracy ...) here."
        ),
    ] = None,
    tensorboard_figures: Annotated[
        bool, typer.Option(help="With --tensorboard: also spectrum and filter-score images.")
    ] = False,
    save_last: Annotated[
        bool, typer.Option(help="Write --out/last.pt after every epoch (for --resume).")
    ] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue from --out/last.pt (and keep writing it).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run in --out.")] = False,
) -> None:
    """Train a model and write checkpoint.pt and metrics.json.

    Several processes or GPUs: torchrun --nproc_per_node=2 -m convscope train --out DIR ...
    (only rank 0 writes files and prints).

    python -m convscope.train is this same command. Unlike its old argparse version,
    --seed also seeds GFNN's random kernel bank (it kept seed 0) and --epochs 0 keeps the
    preset's value (it was refused); see docs/training.md.
    """
    import os

    from convscope.runs import train as run

    rank0 = int(os.environ.get("RANK", "0")) == 0
    # --seed seeds the starting weights (so a rerun gives the same model) and GFNN's kernel
    # bank; a falsy --epochs/--lr/--batch-size (0) keeps the preset's value
    try:
        history = run.run(out=out, arch=arch, dataset=dataset, data_dir=data_dir, preset=preset,
                          epochs=epochs or None, lr=lr or None, batch_size=batch_size or None,
                          optimizer=optimizer, seed=seed, device=device, first_layer=first_layer,
                          n_edges=n_edges, dropout=dropout, limit=limit, max_gain=max_gain,
                          tensorboard=tensorboard, tensorboard_figures=tensorboard_figures,
                          seed_weights=True, seed_bank=True, progress=progress,
                          save_last=save_last or resume, resume=resume,
                          overwrite=overwrite)  # fmt: skip
    except (ConvscopeError, KeyboardInterrupt) as e:
        if not rank0:  # under torchrun every rank fails alike; rank 0 says it once
            raise typer.Exit(130 if isinstance(e, KeyboardInterrupt) else 2) from None
        if isinstance(e, KeyboardInterrupt) and not str(e):
            # a TrainingInterrupted says what was kept; a bare one came before fit
            raise KeyboardInterrupt("interrupted before training started") from None
        raise
    if not rank0:
        return
    if history.test_acc:
        typer.echo(f"test accuracy: {100 * history.test_acc[-1]:.2f}%")
    if max_gain:
        from convscope.spectral import diagnose

        mg = history.extra["max_gain"]
        typer.echo(f"Maximum Gain: {mg[0]:.2f} -> {mg[-1]:.2f} dB")
        d = diagnose(history)
        typer.echo(f"diagnosis: {d.pattern} ({d.advice})")
    if tensorboard is not None:
        typer.echo(f"TensorBoard event files in {tensorboard} (tensorboard --logdir {tensorboard})")
    _done(out)


@app.command()
@_shared(MODEL, IMAGE, OUTPUT, DATA)
def explain(
    model: ModelSpec,
    image: ImageOrData = None,
    out: OutDir = Path("explain_output"),
    target: Annotated[int | None, typer.Option(help="Class to explain (default: predicted).")] = (
        None
    ),
    method: Annotated[str, typer.Option(help="auto, filter-scores or gradients.")] = "auto",
    top: Annotated[int, typer.Option(help="Kernels shown with their filter score images.")] = 3,
    options: Any = None,
) -> None:
    """Explain images: filter scores (models with a kernel bank), saliency, gradient x input.

    With --data: the filter scores of every image of a dataset, averaged per class (seed
    000 Fig. 4; colour scores for colour models), in per_image.parquet, summary.json and
    report.html; torchrun splits the images between processes.
    """
    from convscope.runs import explain as run

    dataset = _dataset(image, options)
    if dataset is not None:
        if method == "gradients":
            raise ConvscopeError("explain --data averages filter scores: drop --method gradients")
        dres = run.run_data(model, dataset.pop("data"), out, target=target, top=top, **dataset,
                            **options)  # fmt: skip
        _say_dataset(dres)
        if dres.rank == 0:
            for name, b in dres.summary["per_class"].items():
                typer.echo(f"class {name}: {', '.join(b['top_kernels'])}")
            _done(out / "report.html", "the report")
        return
    assert image is not None
    res = run.run(model, image, out, target=target, method=method, top=top, **options)
    if not _say_images(res):
        m = res.metrics
        typer.echo(f"class {m['target_name']} (logit {m['logit']:.3f})")
        if "top_kernels" in m:
            typer.echo("top kernels: " + ", ".join(m["top_kernels"]))
        if "color_scores" in m:
            typer.echo(
                "colour scores: " + ", ".join(f"{k} {v:.4g}" for k, v in m["color_scores"].items())
            )
    _done(out)


@app.command()
@_shared(MODEL, IMAGE, OUTPUT, DATA)
def spectrum(
    model: ModelSpec,
    image: Annotated[
        str | None,
        typer.Option(help="Operating point: file, sample:NAME, folder, glob (default: impulse)."),
    ] = None,
    out: OutDir = Path("spectrum_output"),
    target: Annotated[int | None, typer.Option(help="Class (default: the winner).")] = None,
    on: Annotated[str, typer.Option(help="softmax (p = 1/score) or logit.")] = "softmax",
    shape: Annotated[
        str | None, typer.Option(help="Impulse image shape C,H,W when the model does not say.")
    ] = None,
    options: Any = None,
) -> None:
    """Transfer function and Maximum Gain of a model (a training diagnostic, seed 004).

    With --data: the Maximum Gain at every image of a dataset (no window), per class, with
    each class's mean transfer function; torchrun splits the images between processes.
    """
    from convscope.runs import spectrum as run

    dataset = _dataset(image, options, need_image=False)
    if dataset is not None:
        if shape is not None:
            raise ConvscopeError("--shape sets the impulse image; --data takes the images' own")
        dres = run.run_data(model, dataset.pop("data"), out, target=target, on=on, **dataset,
                            **options)  # fmt: skip
        _say_dataset(dres)
        if dres.rank == 0:
            for c, st in dres.summary["maximum_gain_db"].items():
                typer.echo(f"Maximum Gain ({c}) over {st['n']} images: mean {st['mean']:.2f} dB, "
                           f"{st['min']:.2f} to {st['max']:.2f} dB")  # fmt: skip
            _done(out / "report.html", "the report")
        return
    res = run.run(model, out, image=image, target=target, on=on, shape=shape, **options)
    if not _say_images(res):
        gains = res.metrics["maximum_gain_db"]
        typer.echo("Maximum Gain: " + ", ".join(f"{g:.2f} dB" for g in gains)
                   + f" (class {res.metrics['class_name']})")  # fmt: skip
    _done(out)


@app.command()
@_shared(MODEL, OUTPUT)
def decode(
    model: ModelSpec,
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
    unit: Annotated[
        list[str] | None,
        typer.Option(
            "--unit",
            help="A unit to read three ways, LAYER:CHANNEL or LAYER:CHANNEL@Y,X (repeat for "
            "more; no position: the channel's strongest): its decoded filter, deconvnet map "
            "and linear interpreter's row side by side in the report.",
        ),
    ] = None,
    unit_image: Annotated[
        int | None,
        typer.Option(help="--unit: the test image to read on (default: each unit's strongest)."),
    ] = None,
    unit_mode: Annotated[
        str,
        typer.Option(
            help="--unit: the linear row frozen at the image's decisions (freeze) or the "
            "unit's gradient (taylor)."
        ),
    ] = "freeze",
    options: Any = None,
) -> None:
    """Decode a layer's filters into image space (seed 003): gallery, error table, report."""
    from convscope.runs import decode as run

    res = run.run(model, layer, out, unpool=unpool, dataset=dataset, data_dir=data_dir,
                  n_images=images, max_filters=max_filters, units=unit or (),
                  unit_image=unit_image, unit_mode=unit_mode, **options)  # fmt: skip
    for mode, e in res.metrics["reconstruction_error"].items():
        typer.echo(f"{mode:9s} reconstruction error {e['mean']:.4f} ± {e['std']:.4f}")
    for u in res.metrics.get("units", []):
        c = u["cosine"]
        typer.echo(f"{u['unit']} at {u['position'][0]},{u['position'][1]} on image {u['image']}: "
                   f"cosine decoded/row {c['decoded_row']:.3f}, deconvnet/row "
                   f"{c['deconvnet_row']:.3f}")  # fmt: skip
    _done(out / "report.html", "the report")


@app.command()
@_shared(MODEL, IMAGE, OUTPUT)
def evaluate(
    model: ModelSpec,
    data: Annotated[
        str,
        typer.Option(help="mnist-subset, digits, idx:DIR, imagefolder:DIR, or a glob of images."),
    ] = "mnist-subset",
    out: OutDir = Path("evaluate_output"),
    split: Annotated[str, typer.Option(help="train, test or all (named datasets).")] = "test",
    limit: Annotated[
        int | None, typer.Option(help="The first N images (an image folder's classes in turn).")
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: all that apply).")
    ] = None,
    metrics: Annotated[
        str | None, typer.Option(help="Comma-separated metrics (default: all).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    workers: Annotated[int, typer.Option(help="DataLoader processes reading images.")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the metrics' random draws.")] = 0,
    options: Any = None,
) -> None:
    """Whose explanations are faithful: every method x every metric, with intervals.

    One row per image in per_image.parquet; a rerun into the same --out resumes, and
    torchrun --nproc_per_node=N -m convscope evaluate ... splits the images between N
    processes.
    """
    from convscope.runs import evaluate as run

    res = run.run(model, out, data=data, split=split, limit=limit, methods=methods,
                  metrics=metrics, batch_size=batch_size, workers=workers, seed=seed,
                  **options)  # fmt: skip
    _say_dataset(res)
    if res.rank != 0:
        return
    ev = res.result
    for k in ev.metrics:
        if any(ev.table[m][k]["n"] for m in ev.methods):
            typer.echo(f"{k:26s} best: {ev.best(k)}")
    _done(out / "report.html", "the report")


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A folder with report.json.")],
    name: Annotated[str, typer.Option(help="The report's name (report, votes_index ...).")] = (
        "report"
    ),
) -> None:
    """Render report.html again from the report.json in FOLDER."""
    from convscope.report.html import load_report, write_report

    title, sections, meta = load_report(folder, name)
    _done(write_report(folder, title, sections, meta, name=name), "the report")


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
@_shared(IMAGE, OUTPUT)
def kernels_apply(
    image: ImageSpec,
    out: OutDir = Path("kernels_output"),
    kernels: Annotated[
        str | None, typer.Option(help="Comma-separated names (default: the GFNN bank of 40).")
    ] = None,
    options: Any = None,
) -> None:
    """Apply each kernel to a photo; write one PNG per kernel and a contact sheet."""
    from convscope.runs import kernels_apply as run

    if options.pop("channels") is not None:
        raise ConvscopeError("kernels apply filters every channel of the photo: drop --channels")
    names = [s.strip() for s in kernels.split(",")] if kernels else None
    res = run.run(image, out, kernels=names, **options)
    if not _say_images(res):
        typer.echo(f"{len(res.metrics['kernels'])} filtered images and the contact sheet")
    _done(out)


# -- convscope linear: residual, contributions, votes, svd, rows, columns, explore -----------

LinMode = Annotated[str, typer.Option(help="freeze (the paper's frozen decisions) or taylor.")]
LinTarget = Annotated[int | None, typer.Option(help="Output index / class (default: top-1).")]
LinAt = Annotated[
    list[str] | None,
    typer.Option("--at", help="Position y,x (repeat for more; default: the centre)."),
]
LinChannel = Annotated[
    int | None, typer.Option("--channel", help="One channel at each position (default: all).")
]
LinOutput = Annotated[
    str | None,
    typer.Option(
        "--output",
        help="Models that return a dict or tuple: the key (out for torchvision segmentation) "
        "or index of the tensor to interpret.",
    ),
]


def _output_key(output: str | None) -> str | int | None:
    """``--output``: a tuple index when it is a number, else a dict key."""
    return int(output) if output is not None and output.lstrip("-").isdigit() else output


@linear_app.command("residual")
@_shared(MODEL, IMAGE, OUTPUT)
def linear_residual(
    model: ModelSpec,
    image: ImageSpec,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    output: LinOutput = None,
    target: LinTarget = None,
    top: Annotated[int, typer.Option(help="Classifiers: scores shown.")] = 5,
    options: Any = None,
) -> None:
    """The residual r(x0): its share of a score, or |r| / |f(x0)| (seed 001 Table 3)."""
    from convscope.runs import linear_residual as run

    res = run.run(
        model, image, out, mode=mode, output=_output_key(output), target=target, top=top, **options
    )
    if not _say_images(res):
        m = res.metrics
        if "target" in m:
            typer.echo(f"residual share of {m['class_name']} (score {m['score']:.4g}): "
                       f"{100 * m['residual_share']:.2f}%")  # fmt: skip
        else:
            typer.echo(f"|r| / |f(x0)| = {m['relative_residual']:.4g} "
                       f"(max |r| {m['residual_max_abs']:.3g})")  # fmt: skip
    _done(out)


@linear_app.command("contributions")
@_shared(MODEL, IMAGE, OUTPUT, DATA)
def linear_contributions(
    model: ModelSpec,
    image: ImageOrData = None,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    output: LinOutput = None,
    target: LinTarget = None,
    options: Any = None,
) -> None:
    """Split f(x0) into the input's part F x0 and every bias source's (seed 001 Fig. 4).

    With --data: every image of a dataset, its residual share and per-layer shares in
    per_image.parquet, the histograms and per-class table in summary.json and report.html
    (seed 001 Tables 3/4). torchrun --nproc_per_node=N -m convscope linear contributions
    ... splits the images between N processes.
    """
    from convscope.runs import linear_contributions as run

    dataset = _dataset(image, options)
    if dataset is not None:
        dres = run.run_data(model, dataset.pop("data"), out, mode=mode, output=_output_key(output),
                            target=target, **dataset, **options)  # fmt: skip
        _say_dataset(dres)
        if dres.rank == 0:
            rs = dres.summary["residual_share"]
            typer.echo(f"residual share over {dres.summary['images']} images: mean "
                       f"{100 * rs['mean']:.2f}%, median {100 * rs['median']:.2f}%")  # fmt: skip
            _done(out / "report.html", "the report")
        return
    assert image is not None
    res = run.run(
        model, image, out, mode=mode, output=_output_key(output), target=target, **options
    )
    if not _say_images(res):
        m = res.metrics
        n = len(m["contributions"]) - 1
        if "target" in m:
            inp = m["contributions"]["input"]
            rs = 100 * m["residual_share"]
            typer.echo(f"{m['class_name']}: score {m['score']:.4g} = input {inp:.4g} + "
                       f"{n} bias sources (residual share {rs:.2f}%)")  # fmt: skip
        else:
            typer.echo(f"f(x0) split into the input and {n} bias sources")
    _done(out)


@linear_app.command("votes")
@_shared(MODEL, IMAGE, OUTPUT, DATA)
def linear_votes(
    model: ModelSpec,
    image: ImageOrData = None,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    output: LinOutput = None,
    top: Annotated[int, typer.Option(help="Classes that take part in the vote (top scores).")] = (
        10
    ),
    options: Any = None,
) -> None:
    """Pixel discussions and votes of a classifier, with the masked images (seed 001 Fig. 3).

    Each pixel votes for the class whose discussion is largest there; a pixel where
    several classes tie for the largest (all 0, say) has no say and abstains (-1).

    With --data: how often the pixels of every image of a dataset vote for its top-1
    class (a per-pixel frequency map, a histogram, a per-class table); torchrun splits the
    images between processes.
    """
    from convscope.runs import linear_votes as run

    dataset = _dataset(image, options)
    if dataset is not None:
        dres = run.run_data(model, dataset.pop("data"), out, mode=mode, output=_output_key(output),
                            top=top, **dataset, **options)  # fmt: skip
        _say_dataset(dres)
        if dres.rank == 0:
            s = dres.summary
            typer.echo(f"top-1 vote share over {s['images']} images: mean "
                       f"{100 * s['top1_vote_share']['mean']:.1f}% (no say: "
                       f"{100 * s['abstained']['mean']:.1f}%); the top-1 class wins the "
                       f"vote in {100 * s['top1_wins']:.1f}% of them")  # fmt: skip
            _done(out / "report.html", "the report")
        return
    assert image is not None
    res = run.run(model, image, out, mode=mode, output=_output_key(output), top=top, **options)
    if not _say_images(res):
        m = res.metrics
        name = dict(zip(m["targets"], m["target_names"], strict=True))
        share = m["vote_share"][name[m["top1"]]]
        most = name.get(m["most_voted"], "none (every pixel abstains)")
        typer.echo(f"top-1 {name[m['top1']]} gets {100 * share:.1f}% of the pixel "
                   f"votes, {100 * m['abstained']:.1f}% of the pixels have no say (tied); "
                   f"most voted: {most}")  # fmt: skip
    _done(out)


@linear_app.command("svd")
@_shared(MODEL, IMAGE, OUTPUT)
def linear_svd(
    model: ModelSpec,
    image: ImageSpec,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    output: LinOutput = None,
    k: Annotated[int, typer.Option(help="Singular triplets.")] = 4,
    steps: Annotated[int, typer.Option(help="power: at most this many steps per pair.")] = 100,
    method: Annotated[str, typer.Option(help="power (the paper) or randomized.")] = "power",
    options: Any = None,
) -> None:
    """Top-k singular values, eigen-inputs and eigen-outputs of F (seed 001 Fig. 5, 12)."""
    from convscope.runs import linear_svd as run

    res = run.run(
        model,
        image,
        out,
        mode=mode,
        output=_output_key(output),
        k=k,
        steps=steps,
        method=method,
        **options,
    )
    if not _say_images(res):
        values = res.metrics["singular_values"]
        typer.echo("singular values: " + ", ".join(f"{s:.4g}" for s in values))
    _done(out)


def _echo_filters(kind: str, res: Any) -> None:
    if _say_images(res):
        return
    m = res.metrics
    if "at" in m:
        at = ", ".join(f"({y},{x})" for y, x in m["at"])
        typer.echo(f"{len(m['at'])} {kind}s of F at {at}")
    else:
        typer.echo(f"row of {m['class_name']}: sum {m['maps'][0]['sum']:.4g}")


@linear_app.command("rows")
@_shared(MODEL, IMAGE, OUTPUT)
def linear_rows(
    model: ModelSpec,
    image: ImageSpec,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    output: LinOutput = None,
    at: LinAt = None,
    channel: LinChannel = None,
    target: LinTarget = None,
    options: Any = None,
) -> None:
    """Rows of F (receptive filters) at output positions, or of a class (seed 001 Fig. 11)."""
    from convscope.runs import linear_rows as run

    res = run.run(
        model,
        image,
        out,
        mode=mode,
        output=_output_key(output),
        at=at,
        channel=channel,
        target=target,
        **options,
    )
    _echo_filters("row", res)
    _done(out)


@linear_app.command("columns")
@_shared(MODEL, IMAGE, OUTPUT)
def linear_columns(
    model: ModelSpec,
    image: ImageSpec,
    out: OutDir = Path("linear_output"),
    mode: LinMode = "freeze",
    output: LinOutput = None,
    at: LinAt = None,
    channel: LinChannel = None,
    options: Any = None,
) -> None:
    """Columns of F (projective filters) at input positions (seed 001 Fig. 11)."""
    from convscope.runs import linear_columns as run

    res = run.run(
        model, image, out, mode=mode, output=_output_key(output), at=at, channel=channel, **options
    )
    _echo_filters("column", res)
    _done(out)


@linear_app.command("explore")
@_shared(MODEL, IMAGE, OUTPUT)
def linear_explore(
    model: ModelSpec,
    image: ImageSpec,
    out: OutDir = Path("explore_output"),
    mode: LinMode = "freeze",
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
    pack: Annotated[
        bool,
        typer.Option(
            "--pack/--no-pack",
            help="Image-to-image models: let pixels whose filters cannot overlap share a "
            "probe, where a check shows it is exact (same filters, far fewer passes).",
        ),
    ] = True,
    options: Any = None,
) -> None:
    """Static HTML page: move the pointer over the image, see F's row and column there."""
    from convscope.runs import linear_explore as run

    res = run.run(model, image, out, mode=mode, max_pixels=max_pixels, k_svd=k_svd, tile=tile,
                  per_channel=per_channel, pack=pack, **options)  # fmt: skip
    if not _say_images(res):
        h, w = res.metrics["shape"]
        typer.echo(f"filters at {h}x{w} pixels; open {res.metrics['page']}")
    _done(out, "the explorer page and its tiles")


@numpy_cnn_app.command("walkthrough")
@_shared({"formats": OUTPUT["formats"]})
def numpy_cnn_walkthrough(
    out: OutDir = Path("walkthrough_output"),
    pairs: Annotated[
        str, typer.Option(help='Digit pairs "positive:negative", comma-separated.')
    ] = "1:0,7:1",
    epochs: Annotated[int, typer.Option(help="Training epochs (25 in the chapter).")] = 25,
    seeds: Annotated[int, typer.Option(help="Random starts trained per pair.")] = 3,
    seed: int = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier walkthrough.")] = False,
    options: Any = None,
) -> None:
    """Section 11.6.3: one learned 3x3 kernel read through line probes, and a hand-made one."""
    from convscope.runs import numpy_cnn_walkthrough as run

    parsed: list[tuple[int, int]] = []
    for item in pairs.split(","):
        a, sep, b = item.strip().partition(":")
        if not sep or not a.isdigit() or not b.isdigit():
            raise ConvscopeError(f'--pairs: expected digits like "1:0,7:1", got {item!r}')
        parsed.append((int(a), int(b)))
    res = run.run(out, parsed, epochs=epochs, seeds=seeds, seed=seed, progress=progress,
                  overwrite=overwrite, **options)  # fmt: skip
    for p in res.metrics["pairs"].values():
        typer.echo(
            f'"{p["positive"]}" vs "{p["negative"]}": learned kernel '
            f"{100 * p['learned']['test']['accuracy']:.1f}%, hand-made "
            f"{' + '.join(p['hand_designed']['recipe'])} "
            f"{100 * p['hand_designed']['test']['accuracy']:.1f}% test accuracy"
        )
    _done(out / "report.html", "the report")


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past click (which would print "Aborted!", exit 1)."""


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as e:
            raise _Interrupted(str(e) or "interrupted: nothing was being written") from None

    return command


def _guard_all(t: typer.Typer) -> None:
    for c in t.registered_commands:
        if c.callback is not None:
            c.callback = _guard(c.callback)
    for g in t.registered_groups:
        if g.typer_instance is not None:
            _guard_all(g.typer_instance)


_guard_all(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; ConvscopeError -> one line, exit 2; Ctrl-C -> one line, 130."""
    from convscope.runs.sources import UntrainedModelWarning

    previous = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, UntrainedModelWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            previous(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UntrainedModelWarning)
        warnings.showwarning = show
        # under torchrun every process fails alike: the first one says it once
        quiet = int(os.environ.get("RANK", "0")) != 0
        try:
            app(args=argv, standalone_mode=True)
        except ConvscopeError as e:
            if not quiet or getattr(e, "every_rank", False):
                typer.echo(f"error: {e}", err=True)
            sys.exit(2)
        except (_Interrupted, KeyboardInterrupt) as e:
            if not quiet:
                typer.echo(str(e) or "interrupted", err=True)
            sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
