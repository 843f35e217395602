"""Fixed-kernel networks of seed 000: the kernel-bank layer, GFNN and GF-ResNet.

The first layer of these networks is a bank of classic image kernels
(:mod:`convscope.kernels`). In ``"fixed"`` mode its weight is a registered buffer,
so no optimizer ever sees it; the other modes are the baselines of seed 000
Fig. 3b: ``"init"`` (trainable, starts at the bank), ``"random"`` (fixed,
normalised random kernels) and ``"learned"`` (a regular convolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convscope import kernels as kb
from convscope.errors import ConvscopeError

__all__ = [
    "FIRST_LAYER_MODES",
    "GFNN",
    "ColorFrontEnd",
    "KernelBank2d",
    "find_kernel_bank",
    "gf_resnet50",
    "gf_resnet_small",
    "kernel_bank_conv2d",
    "resolve_kernels",
]

FirstLayer = Literal["fixed", "init", "random", "learned"]
FIRST_LAYER_MODES: tuple[str, ...] = ("fixed", "init", "random", "learned")


def resolve_kernels(kernels: Sequence[kb.Kernel | str] | None) -> list[kb.Kernel]:
    """Kernels from names or records; ``None`` is the 40-kernel GFNN bank."""
    if kernels is None:
        return kb.gfnn_bank()
    out = [kb.get(k) if isinstance(k, str) else k for k in kernels]
    if not out:
        raise ConvscopeError("the kernel list is empty; pass None for the GFNN bank")
    return out


def kernel_bank_conv2d(
    x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 1
) -> torch.Tensor:
    """Apply a ``(K, 1, f, f)`` bank to every channel of ``x`` separately.

    Args:
        x: ``(N, C, H, W)``.
        weight: ``(K, 1, f, f)``, the same bank for every channel.

    Returns:
        ``(N, C * K, H', W')``, ordered by channel: map ``c * K + k`` is kernel ``k``
        on channel ``c``.
    """
    c = x.shape[1]
    w = weight.repeat(c, 1, 1, 1)  # groups=C takes K consecutive filters per channel
    return F.conv2d(x, w, stride=stride, padding=padding, groups=c)


class KernelBank2d(nn.Module):
    """A layer of classic kernels applied to every input channel (no bias).

    Args:
        kernels: kernel records or names; ``None`` is the 40-kernel GFNN bank.
        in_channels: colour channels of the input; each is filtered separately.
        mode: ``"fixed"`` (buffer, never trained), ``"init"`` (trainable, starts at
            the bank) or ``"random"`` (fixed random kernels, each scaled to the L2 norm
            of the bank kernel it replaces so the layer's output scale is kept).
        stride, padding: as in ``nn.Conv2d``.
        seed: seed of the random kernels.

    Shapes:
        input ``(N, C, H, W)`` -> output ``(N, C * K, H', W')`` ordered by channel.
    """

    weight: torch.Tensor

    def __init__(
        self,
        kernels: Sequence[kb.Kernel | str] | None = None,
        in_channels: int = 1,
        mode: Literal["fixed", "init", "random"] = "fixed",
        stride: int = 1,
        padding: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mode not in ("fixed", "init", "random"):
            raise ConvscopeError(f"KernelBank2d mode must be fixed, init or random; got {mode!r}")
        ks = resolve_kernels(kernels)
        bank = kb.bank_array(ks)
        if mode == "random":
            rng = np.random.default_rng(seed)
            rand = rng.standard_normal(bank.shape)
            norms = np.linalg.norm(bank.reshape(len(ks), -1), axis=1)
            rand *= (norms / np.linalg.norm(rand.reshape(len(ks), -1), axis=1))[:, None, None]
            bank = rand
            self.kernel_names = [f"random_{i:02d}" for i in range(len(ks))]
        else:
            self.kernel_names = [k.name for k in ks]
        w = torch.as_tensor(bank, dtype=torch.float32).unsqueeze(1)
        if mode == "init":
            self.weight = nn.Parameter(w)
        else:
            self.register_buffer("weight", w)
        self.mode = mode
        self.in_channels = in_channels
        self.num_kernels = len(ks)
        self.out_channels = in_channels * len(ks)
        self.stride = stride
        self.padding = padding

    @property
    def trainable(self) -> bool:
        return isinstance(self.weight, nn.Parameter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConvscopeError(
                f"the kernel bank expects (N, {self.in_channels}, H, W) input, got {tuple(x.shape)}"
            )
        return kernel_bank_conv2d(x, self.weight, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, kernels={self.num_kernels}, mode={self.mode}, "
            f"stride={self.stride}, padding={self.padding}"
        )


def find_kernel_bank(model: nn.Module) -> tuple[str, KernelBank2d]:
    """The first :class:`KernelBank2d` in ``model`` and its dotted name.

    Raises:
        ConvscopeError: the model has none (e.g. a regular CNN).
    """
    for name, m in model.named_modules():
        if isinstance(m, KernelBank2d):
            return name, m
    raise ConvscopeError(
        f"{type(model).__name__} has no fixed-kernel layer (KernelBank2d); filter scores need "
        "a GFNN-style model - use saliency or gradient_x_input for other models"
    )


class ColorFrontEnd(nn.Module):
    """Seed 000 Fig. 2b: every kernel on every colour channel, then a learned 1x1 conv.

    Args:
        kernels: the bank (``None``: the 32 compass edge kernels, 96 maps on RGB).
        in_channels: colour channels.
        width: output maps of the 1x1 convolution.
        mode: mode of the kernel bank (``"fixed"``, ``"init"``, ``"random"``).
        bank_stride, mix_stride: strides of the bank and of the 1x1 conv.
        bias: bias on the 1x1 conv.
    """

    def __init__(
        self,
        kernels: Sequence[kb.Kernel | str] | None = None,
        in_channels: int = 3,
        width: int = 64,
        mode: Literal["fixed", "init", "random"] = "fixed",
        bank_stride: int = 1,
        mix_stride: int = 1,
        bias: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        ks = kb.names("edge") if kernels is None else kernels
        self.bank = KernelBank2d(ks, in_channels, mode, stride=bank_stride, padding=1, seed=seed)
        self.mix = nn.Conv2d(self.bank.out_channels, width, 1, stride=mix_stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.bank(x))


def _first_layer(
    first_layer: str,
    kernels: Sequence[kb.Kernel | str] | None,
    in_channels: int,
    seed: int,
    width: int = 64,
    bias: bool = True,
) -> tuple[nn.Module, int]:
    """The first layer of a GFNN and its number of output maps."""
    if first_layer not in FIRST_LAYER_MODES:
        raise ConvscopeError(
            f"first_layer must be one of {', '.join(FIRST_LAYER_MODES)}; got {first_layer!r}"
        )
    n = len(resolve_kernels(kernels))
    if in_channels == 1:
        if first_layer == "learned":
            return nn.Conv2d(1, n, 3, padding=1), n
        return KernelBank2d(kernels, 1, first_layer, seed=seed), n  # type: ignore[arg-type]
    if first_layer == "learned":
        return nn.Conv2d(in_channels, width, 3, padding=1), width
    front = ColorFrontEnd(kernels, in_channels, width, first_layer, bias=bias, seed=seed)  # type: ignore[arg-type]
    return front, width


class GFNN(nn.Module):
    """General Filter Neural Net (seed 000, section 3, Fig. 2a).

    Grey: kernel bank (40 maps, pad 1) -> ReLU -> pool -> conv 3x3 64 -> ReLU -> pool
    -> conv 3x3 128 -> ReLU -> pool -> dense 2048 -> dense 625 -> classes, with ReLU
    and dropout between the dense layers. Colour (``in_channels=3``): the colour
    front-end (every kernel on every channel, 1x1 conv to 64) replaces the bank and
    the next conv is 5x5 as in the paper's colour CNN.

    Args:
        num_classes: output logits.
        in_channels: 1 (grey) or the number of colour channels.
        first_layer: ``"fixed"`` | ``"init"`` | ``"random"`` | ``"learned"`` (the
            regular CNN: a trainable 3x3 conv with bias and as many maps).
        kernels: kernel names/records (``None``: the GFNN bank of 40).
        input_size: side of the square input (28 for MNIST, 8 for sklearn digits).
        dropout: dropout probability between the dense layers.
        bias: ``False`` builds every layer after the first without bias, the case in
            which filter scores add up to the logit exactly.
        seed: seed of the random kernels (``first_layer="random"``).

    Shapes:
        ``(N, in_channels, input_size, input_size)`` -> ``(N, num_classes)`` logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        first_layer: FirstLayer = "fixed",
        kernels: Sequence[kb.Kernel | str] | None = None,
        input_size: int = 28,
        dropout: float = 0.5,
        bias: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.first, maps = _first_layer(first_layer, kernels, in_channels, seed, bias=bias)
        k2 = 3 if in_channels == 1 else 5
        self.features = nn.Sequential(
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(maps, 64, k2, padding=k2 // 2, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=bias),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = input_size // 8
        if side < 1:
            raise ConvscopeError(
                f"input_size must be at least 8 (three 2x2 pools); got {input_size}"
            )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 2048, bias=bias),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(2048, 625, bias=bias),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(625, num_classes, bias=bias),
        )
        self.in_channels = in_channels
        self.input_size = input_size
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.first(x)))


def gf_resnet50(
    num_classes: int = 1000,
    width: int = 64,
    kernels: Sequence[kb.Kernel | str] | None = None,
    first_layer: FirstLayer = "fixed",
    seed: int = 0,
) -> nn.Module:
    """GF-ResNet: torchvision ResNet-50 whose ``conv1`` is the colour front-end.

    The bank (default: the 32 compass edge kernels, 96 maps on RGB) runs at stride 1
    and the 1x1 conv at stride 2, so ``conv1`` still halves the resolution and the
    rest of ResNet is unchanged. ``first_layer="learned"`` is the plain ResNet-50.
    With ``width != 64`` the first bottleneck is rebuilt to take ``width`` maps.
    """
    try:
        from torchvision.models import resnet50
    except ImportError as e:  # pragma: no cover - torchvision is in the zoo extra
        raise ConvscopeError("gf_resnet50 needs torchvision: pip install 'convscope[zoo]'") from e
    net = resnet50(weights=None, num_classes=num_classes)
    if first_layer == "learned":
        return net
    if first_layer not in FIRST_LAYER_MODES:
        raise ConvscopeError(
            f"first_layer must be one of {', '.join(FIRST_LAYER_MODES)}; got {first_layer!r}"
        )
    net.conv1 = ColorFrontEnd(  # type: ignore[assignment]
        kernels, 3, width, first_layer, bank_stride=1, mix_stride=2, bias=False, seed=seed
    )
    if width != 64:
        net.bn1 = nn.BatchNorm2d(width)
        block = net.layer1[0]
        block.conv1 = nn.Conv2d(width, block.conv1.out_channels, 1, bias=False)
        ds = block.downsample
        assert ds is not None
        ds[0] = nn.Conv2d(width, ds[0].out_channels, 1, bias=False)
    return net


def gf_resnet_small(
    num_classes: int = 10,
    widths: Sequence[int] = (16, 32, 64),
    kernels: Sequence[kb.Kernel | str] | None = None,
    first_layer: FirstLayer = "fixed",
    seed: int = 0,
) -> nn.Module:
    """A small GF-ResNet for CPU-sized colour tasks (32 x 32 patches, say).

    GF-ResNet's design at a width a CPU trains in minutes: the colour front-end (the bank,
    default the 32 compass edge kernels, on every RGB channel: 96 maps, then a 1x1 conv
    without bias to ``widths[0]`` maps), batch norm and ReLU as after ResNet's ``conv1``,
    then one torchvision ``BasicBlock`` per width (stride 2 from the second on, with a 1x1
    projection where the shape changes), global average pooling and a linear classifier.
    ``first_layer="learned"`` puts a regular 3x3 conv with as many maps in front instead.

    Shapes:
        ``(N, 3, H, W)`` -> ``(N, num_classes)`` logits.
    """
    try:
        from torchvision.models.resnet import BasicBlock
    except ImportError as e:  # pragma: no cover - torchvision is in the zoo extra
        raise ConvscopeError(
            "gf_resnet_small needs torchvision: pip install 'convscope[zoo]'"
        ) from e
    ws = [int(w) for w in widths]
    if not ws or min(ws) < 1:
        raise ConvscopeError(f"widths must be one or more positive ints; got {tuple(widths)}")
    if first_layer not in FIRST_LAYER_MODES:
        raise ConvscopeError(
            f"first_layer must be one of {', '.join(FIRST_LAYER_MODES)}; got {first_layer!r}"
        )
    front: nn.Module
    if first_layer == "learned":
        front = nn.Conv2d(3, ws[0], 3, padding=1, bias=False)
    else:
        front = ColorFrontEnd(kernels, 3, ws[0], first_layer, bias=False, seed=seed)
    layers: list[nn.Module] = [front, nn.BatchNorm2d(ws[0]), nn.ReLU()]
    prev = ws[0]
    for i, w in enumerate(ws):
        stride = 1 if i == 0 else 2
        down = None
        if stride != 1 or prev != w:
            down = nn.Sequential(
                nn.Conv2d(prev, w, 1, stride=stride, bias=False), nn.BatchNorm2d(w)
            )
        layers.append(BasicBlock(prev, w, stride=stride, downsample=down))
        prev = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes)]
    return nn.Sequential(*layers)
