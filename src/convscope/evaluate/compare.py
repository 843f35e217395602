"""Every chosen method against every chosen metric on a model and a set of images.

:func:`compare` explains each image with each method once (timed), hands the maps to every
metric (the re-explaining ones call the method again through Quantus), and keeps one score
per image, so each cell of the table is a mean with a 95 % interval (Student's t over the
images) and its count. Targets are the model's predicted classes unless given. The random
state is seeded before every metric call, so a rerun gives the same table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from convscope.errors import ConvscopeError
from convscope.evaluate.methods import get_method, list_methods
from convscope.evaluate.metrics import get_metric, list_metrics

__all__ = [
    "DEFAULT_METHODS",
    "BatchScores",
    "Evaluation",
    "choose",
    "compare",
    "interval",
    "score_batch",
    "summarise",
]

DEFAULT_METHODS = (
    "input_contribution",
    "pixel_discussion",
    "filter_score_map",
    "deconvnet",
    "saliency",
    "gradient_x_input",
    "integrated_gradients",
    "guided_backprop",
    "occlusion",
    "grad_cam",
    "lrp_epsilon_plus",
)


def interval(values: np.ndarray) -> dict[str, float | int]:
    """Mean, 95 % Student-t interval and count of the finite values."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "low": math.nan, "high": math.nan, "n": 1}
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


@dataclass
class Evaluation:
    """What :func:`compare` measured.

    Attributes:
        methods, metrics: The names compared, in order (methods that do not apply to
            the model are in ``skipped`` instead).
        table: ``method -> metric -> {"mean", "low", "high", "n"}``.
        scores: ``method -> metric -> (n,)`` per-image scores, in image order.
        curves: ``method -> metric -> (steps,)`` mean curve (deletion, insertion).
        seconds_per_image: ``method ->`` wall time of one explanation.
        higher_is_better: ``metric ->`` direction.
        examples: A few images, their targets and every method's maps, for a figure.
        skipped: ``method ->`` why it was left out.
        notes: ``method`` or ``metric ->`` what went missing (batches of all-zero maps, a
            metric that cannot score these images), not scored.
        images: How many images were evaluated.
        seed: The seed.
    """

    methods: list[str]
    metrics: list[str]
    table: dict[str, dict[str, dict[str, float | int]]]
    scores: dict[str, dict[str, np.ndarray]]
    curves: dict[str, dict[str, np.ndarray]]
    seconds_per_image: dict[str, float]
    higher_is_better: dict[str, bool]
    examples: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    images: int = 0
    seed: int = 0

    def best(self, metric: str) -> str:
        """The method with the best mean on ``metric``."""
        sign = 1.0 if self.higher_is_better[metric] else -1.0
        means = {m: float(self.table[m][metric]["mean"]) for m in self.methods}
        finite = {m: v for m, v in means.items() if math.isfinite(v)}
        if not finite:
            raise ConvscopeError(f"no method has a finite score on {metric}")
        return max(finite, key=lambda m: sign * finite[m])

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the table, directions, curves, timings, skipped methods."""
        return {
            "images": self.images,
            "seed": self.seed,
            "methods": self.methods,
            "metrics": self.metrics,
            "higher_is_better": self.higher_is_better,
            "table": self.table,
            "seconds_per_image": self.seconds_per_image,
            "curves": {m: {k: v.tolist() for k, v in c.items()} for m, c in self.curves.items()},
            "skipped": self.skipped,
            "notes": self.notes,
        }


def _as_loader(data: Any, batch_size: int, limit: int | None) -> DataLoader[Any]:
    to_torch = getattr(data, "to_torch", None)
    if callable(to_torch):  # convscope.data.ArrayDataset
        data = to_torch()
    if isinstance(data, torch.Tensor):
        data = TensorDataset(data)
    if not isinstance(data, Dataset):
        raise ConvscopeError(
            "data must be a torch Dataset, a convscope ArrayDataset or a tensor of images; "
            f"got {type(data).__name__}"
        )
    n = len(data)  # type: ignore[arg-type]
    if limit is not None:
        if limit < 1:
            raise ConvscopeError(f"limit must be at least 1; got {limit}")
        data = torch.utils.data.Subset(data, range(min(limit, n)))
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _images(batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConvscopeError(f"evaluation needs batches of images (N, C, H, W); got {got}")
    return x


def _seed(seed: int) -> None:
    np.random.seed(seed)  # noqa: NPY002 - Quantus draws from NumPy's global generator
    torch.manual_seed(seed)


def choose(
    model: nn.Module, methods: Sequence[str] | None, metrics: Sequence[str] | None
) -> tuple[list[str], list[str], dict[str, str]]:
    """The methods and metrics to compare, checked; and the default methods left out.

    Returns:
        ``(methods, metrics, skipped)``: ``skipped`` maps a default method that does not
        apply to the model (it needs a kernel bank) to why.

    Raises:
        ConvscopeError: an unknown name, or a method asked for that cannot run on the model.
    """
    chosen = list(methods) if methods is not None else list(DEFAULT_METHODS)
    for name in chosen:
        get_method(name)
    measures = list(metrics) if metrics is not None else list_metrics()
    for name in measures:
        get_metric(name)
    skipped = {
        n: "needs a fixed kernel bank" for n in chosen if not get_method(n).applies_to(model)
    }
    if methods is not None and skipped:
        raise ConvscopeError(f"the method {next(iter(skipped))!r} needs a fixed kernel bank")
    chosen = [n for n in chosen if n not in skipped]
    if not chosen:
        raise ConvscopeError(f"no method left to compare; registered: {', '.join(list_methods())}")
    return chosen, measures, skipped


@dataclass
class BatchScores:
    """What :func:`score_batch` measured on one batch.

    Attributes:
        scores: ``method -> metric -> (B,)`` per-image scores (NaN where not scored).
        curves: ``method -> metric -> (B, steps)`` per-image curves (deletion, insertion).
        seconds: ``method ->`` wall time of explaining the batch.
        maps: ``method -> (B, C, H, W)`` float32 maps.
        notes: What went unscored and why (first note per method or metric).
    """

    scores: dict[str, dict[str, np.ndarray]]
    curves: dict[str, dict[str, np.ndarray]]
    seconds: dict[str, float]
    maps: dict[str, np.ndarray]
    notes: dict[str, str]


def score_batch(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[str],
    metrics: Sequence[str],
    seed: int = 0,
) -> BatchScores:
    """Explain one batch with every method (timed) and score every map on every metric.

    The model must already be in eval mode. The random state is seeded before every
    metric call, so the same batch always gets the same scores.
    """
    xn, tn = x.detach().cpu().numpy(), targets.cpu().numpy()
    out = BatchScores({}, {}, {}, {}, {})
    for name in methods:
        method = get_method(name)
        start = time.perf_counter()
        a = method.explain(model, x, targets).detach()
        out.seconds[name] = time.perf_counter() - start
        an = a.to("cpu", torch.float32).numpy()
        out.maps[name] = an
        out.scores[name], out.curves[name] = {}, {}
        if not an.any():  # Quantus refuses an all-zero batch: no ordering to test
            out.notes.setdefault(name, f"all-zero maps for {len(xn)} images: no scores")
        for metric_name in metrics:
            metric = get_metric(metric_name)
            _seed(seed)
            refused = metric.refuses(xn.shape)
            if refused:
                out.notes.setdefault(metric_name, refused)
            if not an.any() or refused:
                per, curve = np.full(len(xn), np.nan), None
            else:
                per, curve = metric.score(model, xn, tn, an, {"method": name}, seed)
            out.scores[name][metric_name] = np.asarray(per, dtype=np.float64)
            if curve is not None:
                out.curves[name][metric_name] = np.asarray(curve, dtype=np.float64)
    return out


def summarise(
    methods: Sequence[str],
    metrics: Sequence[str],
    scores: dict[str, dict[str, np.ndarray]],
    curves: dict[str, dict[str, np.ndarray]],
    seconds: dict[str, float],
    images: int,
    *,
    skipped: dict[str, str] | None = None,
    notes: dict[str, str] | None = None,
    examples: dict[str, Any] | None = None,
    seed: int = 0,
) -> Evaluation:
    """The :class:`Evaluation` of per-image scores and curves over ``images`` images.

    Args:
        scores: ``method -> metric -> (n,)`` in image order.
        curves: ``method -> metric -> (n, steps)``.
        seconds: ``method ->`` total explaining time.
    """
    if images == 0:
        raise ConvscopeError("the data hold no images")
    return Evaluation(
        methods=list(methods),
        metrics=list(metrics),
        table={m: {k: interval(v) for k, v in s.items()} for m, s in scores.items()},
        scores=scores,
        curves={m: {k: v.mean(0) for k, v in c.items()} for m, c in curves.items()},
        seconds_per_image={m: s / images for m, s in seconds.items()},
        higher_is_better={k: get_metric(k).higher_is_better for k in metrics},
        examples=examples or {},
        skipped=dict(skipped or {}),
        notes=dict(notes or {}),
        images=images,
        seed=seed,
    )


def compare(
    model: nn.Module,
    data: Dataset[Any] | torch.Tensor,
    methods: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    *,
    targets: Sequence[int] | torch.Tensor | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    examples: int = 4,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> Evaluation:
    """Score every method on every metric over ``data``.

    Args:
        model: A classifier returning logits ``(N, classes)``; it is run in eval mode and
            given its mode back.
        data: A dataset of ``(image, label)`` (labels unused) or of images, or a tensor
            ``(N, C, H, W)``.
        methods: Names of :func:`convscope.evaluate.methods.list_methods` (default:
            :data:`DEFAULT_METHODS`, those that apply to the model).
        metrics: Names of :func:`convscope.evaluate.metrics.list_metrics` (default: all).
        targets: One class per image (default: the predicted class).
        limit: Evaluate the first ``limit`` images only.
        batch_size: Images per batch.
        seed: Seeds NumPy and torch before every metric call.
        examples: How many images' maps to keep for the side-by-side figure.
        progress: Wraps the batch iterator (e.g. ``tqdm``).

    Returns:
        The :class:`Evaluation`.

    Raises:
        ConvscopeError: an unknown method or metric (before any work), data that are not
            images, targets that do not match the images.
    """
    chosen, measures, skipped = choose(model, methods, metrics)
    loader = _as_loader(data, batch_size, limit)
    p = next(iter(model.parameters()))
    flags = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    scores: dict[str, dict[str, list[np.ndarray]]] = {m: {k: [] for k in measures} for m in chosen}
    curves: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in chosen}
    seconds = dict.fromkeys(chosen, 0.0)
    kept: dict[str, Any] = {"images": [], "targets": [], "maps": {m: [] for m in chosen}}
    notes: dict[str, str] = {}
    given = None if targets is None else torch.as_tensor(targets).long().reshape(-1)
    done = 0
    try:
        batches: Iterable[Any] = loader if progress is None else progress(loader)
        for batch in batches:
            x = _images(batch).to(p.device, p.dtype)
            with torch.no_grad():
                predicted = model(x).argmax(1)
            if given is not None:
                if done + len(x) > given.numel():
                    raise ConvscopeError(
                        f"targets has {given.numel()} classes for more images than that"
                    )
                t = given[done : done + len(x)].to(p.device)
            else:
                t = predicted
            b = score_batch(model, x, t, chosen, measures, seed)
            for m in chosen:
                seconds[m] += b.seconds[m]
                for k in measures:
                    scores[m][k].append(b.scores[m][k])
                for k, c in b.curves[m].items():
                    curves[m].setdefault(k, []).append(c)
            for k, v in b.notes.items():
                notes.setdefault(k, v)
            need = examples - len(kept["images"])
            if need > 0:
                kept["images"] += list(x[:need].detach().cpu().numpy())
                kept["targets"] += [int(v) for v in t[:need].cpu()]
                for m in chosen:
                    kept["maps"][m] += list(b.maps[m][:need])
            done += len(x)
    finally:
        for mod, flag in flags:
            mod.training = flag
    return summarise(
        chosen,
        measures,
        {m: {k: np.concatenate(v) for k, v in s.items()} for m, s in scores.items()},
        {m: {k: np.concatenate(v) for k, v in c.items()} for m, c in curves.items()},
        seconds,
        done,
        skipped=skipped,
        notes=notes,
        examples=examples_dict(kept) if done else None,
        seed=seed,
    )


def examples_dict(kept: dict[str, Any]) -> dict[str, Any]:
    """The ``examples`` of an :class:`Evaluation` from lists of images, targets and maps."""
    if not kept["images"]:
        return {"maps": {}}
    return {
        "images": np.stack(kept["images"]),
        "targets": list(kept["targets"]),
        "maps": {m: np.stack(v) for m, v in kept["maps"].items() if v},
    }
