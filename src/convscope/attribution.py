"""Gradient attributions on logits: saliency, gradient x input, gradient x activation
and the filter scores of fixed-kernel networks (seed 000, section 2.1.3).

Every function takes a batch ``x`` of shape ``(N, C, H, W)`` and a ``target``:
``None`` (each image's predicted class), an ``int`` (the same class for every
image) or one class per image (an ``(N,)`` integer tensor or a list). Scores are
always taken on the logits the model returns, never on a softmax.

Mode handling: by default each function runs the model in eval mode and gives
every module its own ``training`` flag back afterwards, even when the model
raises. In training mode dropout would make the scores random, and batch-norm
would mix the images of a batch, update its running statistics and break the
sum of filter scores to the logit. Pass ``eval_mode=False`` to run the model in
whatever mode it is in.

Filter scores. Let ``L`` be the output of the fixed-kernel layer (before any
non-linearity), ``(N, C * K, H', W')`` ordered by colour channel (map
``c * K + k`` is kernel ``k`` on channel ``c``), and ``y_t`` the target logit.
The filter score image of kernel ``k`` is ``sum_c (d y_t / d L)[c * K + k] * L[c * K + k]``;
its filter score is the sum of that image; the colour score of channel ``c`` sums
every kernel's maps on ``c``; the pixel map sums all maps. When no bias follows
``L`` the filter scores of an image add up to ``y_t`` (ReLU networks are
positively homogeneous).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from convscope import kernels as kb
from convscope.errors import ConvscopeError
from convscope.models.gfnn import find_kernel_bank

__all__ = [
    "ClassAverages",
    "FilterScores",
    "Target",
    "class_average_filter_scores",
    "filter_scores",
    "gradient_x_activation",
    "gradient_x_input",
    "saliency",
]

Target = int | Sequence[int] | torch.Tensor | None


# -- shared plumbing ------------------------------------------------------------


@contextlib.contextmanager
def _mode(model: nn.Module, eval_mode: bool) -> Iterator[None]:
    """Run in eval mode and give every module its own flag back afterwards.

    Flags are restored per module, not with ``model.train(was)``, because a
    caller may have set sub-modules to different modes on purpose (e.g. frozen
    batch-norm inside a training model).
    """
    if not eval_mode:
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConvscopeError(f"x must be an image batch (N, C, H, W); got {shape}")
    if not x.is_floating_point():
        raise ConvscopeError(f"x must be a floating-point tensor; got dtype {x.dtype}")


def _check_logits(out: object, n: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConvscopeError(
            f"attribution needs a model that returns logits (N, classes) = ({n}, ...); got {shape}"
        )
    return out


def _resolve_target(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """The ``(N,)`` class index of every image, checked against the logits."""
    n, num_classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise ConvscopeError(f"target must be None, an int or one class per image; got {target!r}")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long, device=logits.device)
    else:
        try:
            t = torch.as_tensor(target, device=logits.device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConvscopeError(
                f"target must be None, an int or one class per image; got {target!r}"
            ) from e
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ConvscopeError(f"target must hold integer class indices; got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ConvscopeError(
                f"target must hold one class per image, shape ({n},); got {tuple(t.shape)}"
            )
        t = t.long()
    if n and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ConvscopeError(f"target class {bad} is out of range for {num_classes} logits")
    return t


def _target_logits(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, t[:, None])[:, 0]


def _resolve_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ConvscopeError(f"{type(model).__name__} has no sub-module named {layer!r}")
        return layer, modules[layer]
    for name, m in model.named_modules():
        if m is layer:
            return name, m
    raise ConvscopeError(f"the layer {type(layer).__name__} is not a sub-module of the model")


def _input_gradient(
    model: nn.Module, x: torch.Tensor, target: Target
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d y_t / d x`` for every image, and the inputs it was taken at."""
    _check_input(x)
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _check_logits(model(xg), x.shape[0])
        t = _resolve_target(logits, target)
        # The images of a batch are independent (eval mode), so the gradient of the
        # sum of target logits is every image's own gradient in one backward pass.
        (grad,) = torch.autograd.grad(_target_logits(logits, t).sum(), xg)
    return grad, xg.detach()


# -- input attributions ---------------------------------------------------------


def saliency(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    *,
    abs: bool = True,
    eval_mode: bool = True,
) -> torch.Tensor:
    """Saliency map (Simonyan et al.): the gradient of the target logit w.r.t. the input.

    The default ``abs=True`` takes magnitudes, as Simonyan et al. and Captum's
    ``Saliency`` do; ``abs=False`` gives the signed gradient, the coefficients
    ``alpha`` of seed 000 eq. 2.

    Args:
        model: a network returning logits ``(N, classes)``.
        x: ``(N, C, H, W)`` images.
        target: ``None`` (predicted class), an ``int`` or one class per image.
        abs: return ``|d y_t / d x|`` instead of the signed gradient.
        eval_mode: run in eval mode for the call (see the module docstring).

    Returns:
        ``(N, C, H, W)``, same dtype and device as ``x``.
    """
    with _mode(model, eval_mode):
        grad, _ = _input_gradient(model, x, target)
    return grad.abs() if abs else grad


def gradient_x_input(
    model: nn.Module, x: torch.Tensor, target: Target = None, *, eval_mode: bool = True
) -> torch.Tensor:
    """Gradient x input: ``x * d y_t / d x`` (equal to Captum's ``InputXGradient``).

    Args:
        model: a network returning logits ``(N, classes)``.
        x: ``(N, C, H, W)`` images.
        target: ``None`` (predicted class), an ``int`` or one class per image.
        eval_mode: run in eval mode for the call (see the module docstring).

    Returns:
        ``(N, C, H, W)``, same dtype and device as ``x``.
    """
    with _mode(model, eval_mode):
        grad, xd = _input_gradient(model, x, target)
    return grad * xd


# -- layer attributions ---------------------------------------------------------


def _layer_grad_x_act(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, layer_name: str, target: Target
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(d y_t / d A) * A`` for the output ``A`` of ``layer``.

    Returns the attribution, the targets ``(N,)``, the target logits ``(N,)`` and
    the number of classes.

    One forward hook swaps the layer's output for a detached leaf that requires
    grad: the backward pass then stops at the layer (nothing below it is
    differentiated) and works even when neither ``x`` nor the layer needs grad.
    The hook is removed in ``finally``, so the model leaves as it came in even if
    its forward raises.
    """
    _check_input(x)
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: object, out: object) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise ConvscopeError(
                f"layer {layer_name!r} returns {type(out).__name__}; it must return one tensor"
            )
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        # Hand the next layer a copy: an in-place op there (ReLU(inplace=True))
        # would otherwise overwrite L, the value before any non-linearity.
        return leaf.clone()

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = _check_logits(model(x), x.shape[0])
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ConvscopeError(
            f"layer {layer_name!r} ran {len(captured)} times in one forward pass; "
            "gradient x activation needs it to run exactly once"
        )
    (act,) = captured
    t = _resolve_target(logits, target)
    with torch.enable_grad():  # the caller may be inside torch.no_grad()
        y = _target_logits(logits, t)
        (grad,) = torch.autograd.grad(y.sum(), act)
    return grad * act.detach(), t, y.detach(), logits.shape[1]


def gradient_x_activation(
    model: nn.Module,
    x: torch.Tensor,
    layer: nn.Module | str,
    target: Target = None,
    *,
    eval_mode: bool = True,
) -> torch.Tensor:
    """Gradient x activation at the output of one layer (Captum's ``LayerGradientXActivation``).

    Args:
        model: a network returning logits ``(N, classes)``.
        x: ``(N, C, H, W)`` images.
        layer: the module, or its dotted name in ``model.named_modules()``; it must
            return a single tensor and run once per forward pass.
        target: ``None`` (predicted class), an ``int`` or one class per image.
        eval_mode: run in eval mode for the call (see the module docstring).

    Returns:
        Shaped like the layer's output, e.g. ``(N, C', H', W')``.
    """
    name, module = _resolve_layer(model, layer)
    with _mode(model, eval_mode):
        attr, _, _, _ = _layer_grad_x_act(model, x, module, name, target)
    return attr


# -- filter scores --------------------------------------------------------------


@dataclass
class FilterScores:
    """Filter scores of a batch (seed 000, section 2.1.3); see the module docstring.

    Attributes:
        scores: ``(N, K)`` filter score of every kernel.
        images: ``(N, K, H', W')`` filter score images, at the resolution of the
            fixed layer's output (the input's for the GFNN: stride 1, pad 1).
        color_scores: ``(N, C)`` colour scores, or ``None`` for a grey bank (C = 1).
        pixel_map: ``(N, H', W')`` sum over all maps.
        kernel_names: the ``K`` kernel names in bank order.
        target: ``(N,)`` the class each image is explained for.
        logits: ``(N,)`` the target logit of each image.
        layer_name: dotted name of the fixed-kernel layer in the model.
    """

    scores: torch.Tensor
    images: torch.Tensor
    color_scores: torch.Tensor | None
    pixel_map: torch.Tensor
    kernel_names: list[str]
    target: torch.Tensor
    logits: torch.Tensor
    layer_name: str

    def top_k(self, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` highest filter scores of every image (seed 000 Fig. 5).

        Returns:
            ``(values, indices)``, each ``(N, k)``, highest first; index into
            ``kernel_names`` and ``images[:, i]``.
        """
        num = self.scores.shape[1]
        if not 1 <= k <= num:
            raise ConvscopeError(f"top_k needs 1 <= k <= {num} kernels; got k={k}")
        values, indices = torch.topk(self.scores, k, dim=1)
        return values, indices

    def by_category(self, reduce: Literal["sum", "mean"] = "sum") -> tuple[torch.Tensor, list[str]]:
        """Scores grouped into the categories of seed 000 Fig. 4.

        The 8 edge directions, then second derivative, sharpen, emboss, blur, then
        any other group present (``first_derivative``); categories with no kernel
        in the bank are left out. Needs kernels from the registry.

        Args:
            reduce: ``"sum"`` keeps the total (the categories still add up to the
                logit) or ``"mean"`` over the kernels of a category.

        Returns:
            ``(values (N, G), category names)``.
        """
        if reduce not in ("sum", "mean"):
            raise ConvscopeError(f"reduce must be 'sum' or 'mean'; got {reduce!r}")
        try:
            cats = [kb.get(n).category for n in self.kernel_names]
        except ConvscopeError:
            raise ConvscopeError(
                "by_category needs registry kernels; this bank has "
                f"{', '.join(self.kernel_names[:3])}, ... (e.g. random kernels)"
            ) from None
        extra = sorted(set(cats) - set(kb.FIG4_CATEGORIES))
        names = [c for c in (*kb.FIG4_CATEGORIES, *extra) if c in cats]
        index = torch.tensor([names.index(c) for c in cats], device=self.scores.device)
        out = self.scores.new_zeros(self.scores.shape[0], len(names))
        out.index_add_(1, index, self.scores)
        if reduce == "mean":
            out = out / torch.bincount(index, minlength=len(names)).to(out.dtype)
        return out, names

    def normalized(self, relative: bool = True) -> torch.Tensor:
        """Scores scaled for comparing images.

        Args:
            relative: ``True`` divides by the target logit (the shares then add up
                to 1 when no bias follows the fixed layer; they blow up for logits
                near 0); ``False`` divides by the sum of absolute scores.

        Returns:
            ``(N, K)``.
        """
        if relative:
            return self.scores / self.logits[:, None]
        return self.scores / self.scores.abs().sum(dim=1, keepdim=True).clamp_min(1e-30)


def _filter_scores(model: nn.Module, x: torch.Tensor, target: Target) -> tuple[FilterScores, int]:
    """Filter scores and the number of classes of the model."""
    name, bank = find_kernel_bank(model)
    prod, t, y, num_classes = _layer_grad_x_act(model, x, bank, name, target)
    n, _, h, w = prod.shape
    c, k = bank.in_channels, bank.num_kernels
    # Maps are ordered by channel (c * K + k), so one reshape exposes both axes and
    # every reduction below is a single vectorised sum.
    per_map = prod.reshape(n, c, k, h, w)
    images = per_map.sum(dim=1)
    per_channel_kernel = per_map.sum(dim=(3, 4))  # (N, C, K)
    fs = FilterScores(
        scores=per_channel_kernel.sum(dim=1),
        images=images,
        color_scores=per_channel_kernel.sum(dim=2) if c > 1 else None,
        pixel_map=images.sum(dim=1),
        kernel_names=list(bank.kernel_names),
        target=t,
        logits=y,
        layer_name=name,
    )
    return fs, num_classes


def filter_scores(
    model: nn.Module, x: torch.Tensor, target: Target = None, *, eval_mode: bool = True
) -> FilterScores:
    """Filter scores, filter score images, colour scores and pixel map (seed 000).

    One forward and one backward pass for the whole batch; the backward stops at
    the fixed-kernel layer.

    Args:
        model: a model holding a :class:`~convscope.models.KernelBank2d` (GFNN,
            GF-ResNet), returning logits ``(N, classes)``.
        x: ``(N, C, H, W)`` images.
        target: ``None`` (predicted class), an ``int`` or one class per image.
        eval_mode: run in eval mode for the call (see the module docstring).

    Returns:
        A :class:`FilterScores`.

    Raises:
        ConvscopeError: the model has no fixed-kernel layer, or a bad target.
    """
    with _mode(model, eval_mode):
        fs, _ = _filter_scores(model, x, target)
    return fs


# -- class averages -------------------------------------------------------------


@dataclass
class ClassAverages:
    """Per-class mean filter scores over a data set (seed 000 Fig. 4).

    Attributes:
        scores: ``(num_classes, K)`` mean filter scores of the images explained for
            each class; ``NaN`` for a class with no image (see ``counts``).
        counts: ``(num_classes,)`` images per class.
        logits: ``(num_classes,)`` mean target logit per class.
        color_scores: ``(num_classes, C)`` mean colour scores, ``None`` for grey.
        kernel_names: the ``K`` kernel names in bank order.
        target: ``"label"`` (each image explained for its label) or ``"pred"``.
    """

    scores: torch.Tensor
    counts: torch.Tensor
    logits: torch.Tensor
    color_scores: torch.Tensor | None
    kernel_names: list[str]
    target: str


def _batches(
    data: Dataset | DataLoader | Iterable | tuple[torch.Tensor, torch.Tensor], batch_size: int
) -> Iterable:
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(d, torch.Tensor) for d in data)
    ):
        data = TensorDataset(*data)
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    if isinstance(data, Iterable):
        return data
    raise ConvscopeError(
        "data must be a dataset of (image, label), a loader of (images, labels) batches "
        f"or a tuple (images, labels); got {type(data).__name__}"
    )


def _model_place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def class_average_filter_scores(
    model: nn.Module,
    data: Dataset | DataLoader | Iterable | tuple[torch.Tensor, torch.Tensor],
    batch_size: int = 256,
    target: Literal["label", "pred"] = "label",
    *,
    relative: bool = False,
    eval_mode: bool = True,
) -> ClassAverages:
    """Average filter scores per class over a data set (seed 000 Fig. 4).

    Args:
        model: a model with a fixed-kernel layer.
        data: a dataset of ``(image (C, H, W), label)``, an iterable of
            ``(images (B, C, H, W), labels (B,))`` batches (a ``DataLoader``), or a
            tuple of tensors ``(images (N, C, H, W), labels (N,))``. Images are
            moved to the model's device and floating dtype.
        batch_size: batch size when ``data`` is a dataset or a tuple.
        target: ``"label"`` explains each image for its label; ``"pred"`` for the
            predicted class. Images are averaged in the class they are explained for.
        relative: divide each image's scores by its target logit before averaging, so
            classes with large logits do not dominate a comparison (the demo's Fig. 4).
        eval_mode: run in eval mode for the call (see the module docstring).

    Returns:
        A :class:`ClassAverages`.
    """
    if target not in ("label", "pred"):
        raise ConvscopeError(f"target must be 'label' or 'pred'; got {target!r}")
    device, dtype = _model_place(model)
    sums: torch.Tensor | None = None
    color: torch.Tensor | None = None
    logit_sum: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    names: list[str] = []
    with _mode(model, eval_mode):
        for batch in _batches(data, batch_size):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ConvscopeError("each batch must be (images, labels)")
            xb = torch.as_tensor(batch[0]).to(device=device, dtype=dtype)
            yb = torch.as_tensor(batch[1]).to(device=device).long()
            fs, num_classes = _filter_scores(model, xb, yb if target == "label" else None)
            if sums is None:
                k = fs.scores.shape[1]
                sums = torch.zeros(num_classes, k, dtype=torch.float64, device=device)
                logit_sum = torch.zeros(num_classes, dtype=torch.float64, device=device)
                counts = torch.zeros(num_classes, dtype=torch.long, device=device)
                if fs.color_scores is not None:
                    color = torch.zeros(
                        num_classes, fs.color_scores.shape[1], dtype=torch.float64, device=device
                    )
                names = fs.kernel_names
            assert logit_sum is not None and counts is not None
            scores = fs.scores.double()
            if relative:
                scores = scores / fs.logits.double()[:, None]
            sums.index_add_(0, fs.target, scores)
            logit_sum.index_add_(0, fs.target, fs.logits.double())
            counts += torch.bincount(fs.target, minlength=counts.shape[0])
            if color is not None and fs.color_scores is not None:
                color.index_add_(0, fs.target, fs.color_scores.double())
    if sums is None or counts is None or logit_sum is None:
        raise ConvscopeError("class_average_filter_scores got no images")
    denom = counts.to(torch.float64)
    denom = torch.where(counts > 0, denom, torch.full_like(denom, float("nan")))
    return ClassAverages(
        scores=(sums / denom[:, None]).to(dtype),
        counts=counts,
        logits=(logit_sum / denom).to(dtype),
        color_scores=None if color is None else (color / denom[:, None]).to(dtype),
        kernel_names=names,
        target=target,
    )
