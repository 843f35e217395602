"""Image-to-image translation: the CycleGAN ResNet generator.

Seed 001 (section 4 "Case 3", 8.C, Fig. 7, 13-15) analyses CycleGAN's generator, whose
instance normalization and reflection padding are the non-linear units the linear
interpreter freezes besides ReLU and the final tanh. This is the generator of Zhu et al.
(2017) as in the authors' code (junyanz/pytorch-CycleGAN-and-pix2pix, ``ResnetGenerator``),
with the same module layout, so that code's ``latest_net_G.pth`` files load with
:meth:`CycleGANGenerator.load_original_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from convscope.errors import ConvscopeError

__all__ = ["NORMS", "CycleGANGenerator", "ResnetBlock"]

NORMS: tuple[str, ...] = ("instance", "batch", "none")
"""Normalizations :class:`CycleGANGenerator` accepts; ``"instance"`` is CycleGAN's."""

# Two stride-2 convolutions down and two transposed convolutions up: sizes must divide by 4.
_N_DOWNSAMPLING = 2


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "instance":
        # The original: no affine parameters and no running statistics, so the layer always
        # normalizes with the statistics of the image at hand (train and eval alike).
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if norm == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    return lambda c: nn.Identity()


class ResnetBlock(nn.Module):
    """Reflection pad, conv 3x3, norm, ReLU, (dropout), reflection pad, conv 3x3, norm; + x.

    Args:
        dim: Channels in and out.
        norm: One of :data:`NORMS`.
        use_dropout: Dropout(0.5) between the two convolutions (off in CycleGAN).
        use_bias: Convolution biases (the original drops them before batch norm only).

    Shape:
        (N, dim, H, W) -> (N, dim, H, W).
    """

    def __init__(
        self, dim: int, norm: str = "instance", use_dropout: bool = False, use_bias: bool = True
    ) -> None:
        super().__init__()
        make_norm = _norm_layer(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
            make_norm(dim),
            nn.ReLU(True),
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
            make_norm(dim),
        ]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class CycleGANGenerator(nn.Module):
    """CycleGAN's ResNet generator: encoder, residual blocks, decoder, tanh.

    ReflectionPad2d(3) + conv 7x7 ``ngf`` + norm + ReLU; two conv 3x3 stride 2 (``2 ngf``,
    ``4 ngf``) + norm + ReLU; ``n_blocks`` :class:`ResnetBlock` at ``4 ngf``; two
    ConvTranspose2d 3x3 stride 2 (padding 1, output_padding 1) + norm + ReLU back to ``ngf``;
    ReflectionPad2d(3) + conv 7x7 to ``out_channels`` + Tanh. With ``norm="instance"`` the
    norms have no affine parameters and no running statistics, and the convolutions keep their
    biases, as in the original; weights start as the original initialises them (N(0, 0.02)).

    The layers sit in one ``nn.Sequential`` called ``model`` (the original's layout, so its
    state dicts load). Inputs and outputs are in [-1, 1], CycleGAN's convention.

    Args:
        in_channels: Input image channels.
        out_channels: Output image channels.
        ngf: Width of the first layer (64 in CycleGAN; small values for tests).
        n_blocks: Residual blocks: 9 for 256x256 images, 6 for 128x128 in CycleGAN.
        norm: One of :data:`NORMS`.
        use_dropout: Dropout(0.5) inside the residual blocks.

    Shape:
        input (N, in_channels, H, W) -> output (N, out_channels, H, W); H and W must be
        multiples of 4 (two stride-2 steps) and larger than 3 (reflection padding).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        use_dropout: bool = False,
    ) -> None:
        super().__init__()
        where = "CycleGANGenerator"
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("ngf", ngf)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConvscopeError(f"{where}: {name} must be a positive integer, got {v!r}")
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 0:
            raise ConvscopeError(f"{where}: n_blocks must be an integer >= 0, got {n_blocks!r}")
        if norm not in NORMS:
            raise ConvscopeError(f"{where}: norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        make_norm = _norm_layer(norm)
        # Batch norm has its own shift, so the original drops the conv bias before it only.
        use_bias = norm != "batch"

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7, padding=0, bias=use_bias),
            make_norm(ngf),
            nn.ReLU(True),
        ]
        for i in range(_N_DOWNSAMPLING):
            c = ngf * 2**i
            layers += [
                nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1, bias=use_bias),
                make_norm(2 * c),
                nn.ReLU(True),
            ]
        dim = ngf * 2**_N_DOWNSAMPLING
        layers += [ResnetBlock(dim, norm, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(_N_DOWNSAMPLING):
            c = ngf * 2 ** (_N_DOWNSAMPLING - i)
            layers += [
                nn.ConvTranspose2d(
                    c,
                    c // 2,
                    kernel_size=3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    bias=use_bias,
                ),
                make_norm(c // 2),
                nn.ReLU(True),
            ]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, out_channels, kernel_size=7, padding=0),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        # The original's default ("normal", gain 0.02): N(0, 0.02) convolution weights, zero
        # biases, batch-norm scales N(1, 0.02).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate ``x`` (N, in_channels, H, W) to (N, out_channels, H, W), values in [-1, 1]."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConvscopeError(
                f"CycleGANGenerator expects images (N, {self.in_channels}, H, W), got shape "
                f"{tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % 4 or w % 4 or min(h, w) < 4:
            raise ConvscopeError(
                f"CycleGANGenerator needs H and W that are multiples of 4 (two stride-2 "
                f"steps), got {h}x{w}; crop or pad the image"
            )
        return self.model(x)

    def load_original_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a state dict saved by the CycleGAN authors' code (``latest_net_G.pth``).

        Checkpoints written by PyTorch < 0.4 carry ``running_mean``/``running_var`` entries for
        the instance norms, which have none today; they are dropped, as the original's own
        loader does. Everything else must match exactly.

        Args:
            state: The loaded dict (``torch.load(path, weights_only=True)``).

        Raises:
            ConvscopeError: If keys or shapes do not match this generator's settings.
        """
        norms = {
            name
            for name, m in self.named_modules()
            if isinstance(m, nn.InstanceNorm2d) and not m.track_running_stats
        }
        clean = {
            k: v
            for k, v in state.items()
            if not (
                k.rsplit(".", 1)[0] in norms
                and k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
            )
        }
        try:
            self.load_state_dict(clean)
        except RuntimeError as e:
            raise ConvscopeError(
                f"state dict does not fit CycleGANGenerator(ngf, n_blocks, norm as built): {e}"
            ) from None
