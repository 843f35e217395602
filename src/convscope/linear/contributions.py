"""Where a score comes from: bias contributions, pixel discussions and pixel votes.

Seed 001, Theorem 1, generalized from chains to any graph. The frozen system is
affine, so its output splits exactly into the part carried by the input and one part
per additive constant (bias source, see :mod:`convscope.linear.context`)::

    f(x0) = F x0 + sum_s Q_s b_s

where ``b_s`` is the constant at its site and ``Q_s`` the frozen linear map from that
site to the output. The contribution of a source is the output of the frozen system
with the input at 0 and only that source switched on; ``"input"`` is ``F x0``. Whole
outputs (``target=None``) come from batched passes, one probe per source. For one
score ``y_c`` a single forward and a single backward pass give all of them: the probe
row carries ``x0`` and adds every constant scaled by a gate ``g_s = 1``; its score is
``y_c = (F x0)_c + sum_s g_s (Q_s b_s)_c``, affine in the gates, so
``d y_c / d g_s`` is source ``s``'s contribution and ``(d y_c / d x1) . x0`` the
input's.

Pixel discussion (seed 001 eq. 18; the paper leaves the class dependence implicit,
so this is our reading, see docs/linear.md). For score ``c``::

    PD_c = sum over channels of [ x0 * F^T e_c  +  sum_s F_s^T (b_s * Q_s^T e_c) ]

scaled so that its pixels sum to ``y_c``. ``Q_s^T e_c`` weights the bias map at site
``s`` by how much each of its entries reaches score ``c`` (so ``b_s * Q_s^T e_c`` sums
to the source's contribution), and ``F_s^T`` back-projects that map to the input with
the transposed interpreter of the sub-network input -> ``s``. The first term sums to
``(F x0)_c`` on its own; the back-projected bias maps do not keep their sums, hence
the final scaling. Pixel vote: the target whose discussion is largest at a pixel; a
pixel where several targets tie for the largest (all 0, say) abstains with -1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from convscope.errors import ConvscopeError
from convscope.linear.context import ALL_OFF, ALL_ON, PassContext, Source, check_batch_size

__all__ = [
    "ABSTAIN",
    "ContributionHistogram",
    "Contributions",
    "FrozenSystem",
    "PixelVotes",
    "contribution_histogram",
    "contributions",
    "group_contributions",
    "pixel_discussion",
    "pixel_votes",
    "residual_share",
    "votes",
]

ABSTAIN = -1
"""The vote of a pixel with no say: its largest discussion is attained by several targets."""


class FrozenSystem(Protocol):
    """What these analyses need of a frozen network (a :class:`LinearInterpreter`).

    A protocol rather than an import of the interpreter, so that the interpreter can
    import this module and nothing imports in a circle.
    """

    x0: torch.Tensor
    batch_size: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def output(self) -> torch.Tensor: ...

    @property
    def residual(self) -> torch.Tensor: ...

    @property
    def sources(self) -> tuple[Source, ...]: ...

    def _run(
        self,
        probes: torch.Tensor,
        codes: Sequence[int] | torch.Tensor,
        *,
        source_hook: Any = None,
        grad: bool = False,
    ) -> tuple[torch.Tensor, PassContext]: ...  # probes' outputs: out[ctx.offset:]


@dataclass(frozen=True, eq=False)
class Contributions(Mapping[str, torch.Tensor]):
    """Where ``f(x0)`` (or one score of it) comes from: the input's part and each bias source's.

    A read-only mapping ``{"input": F x0, source name: Q_s b_s, ...}`` in the order the
    model adds the sources (what :func:`contributions` promised as a dict, so existing
    callers keep working), carrying what a reader needs alongside.

    Attributes:
        parts: the mapping itself as a dict; each value ``(1, *out_shape)`` (whole output) or 0-d
            (one score).
        target: the flat output index explained, or ``None`` for the whole output.
        score: ``y_c`` for a target (``f(x0)`` summed for a whole output).
        sources: the bias sources, in the order of ``values`` after ``"input"``.
    """

    parts: dict[str, torch.Tensor]
    target: int | None
    score: float
    sources: tuple[Source, ...] = field(default=())

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.parts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def total(self) -> float:
        """The sum of every contribution: ``score`` up to rounding (seed 001 Theorem 1)."""
        return float(sum(float(v.sum()) for v in self.parts.values()))

    def groups(self, depth: int | None = None) -> dict[str, torch.Tensor]:
        """Contributions summed by layer (see :func:`group_contributions`)."""
        return group_contributions(self.parts, depth)

    def shares(self, depth: int | None = None) -> dict[str, float]:
        """Each layer group's contribution over the score (one target only); NaN at score 0."""
        if self.target is None:
            raise ConvscopeError("shares are of one score: call contributions(target=c)")
        return {
            k: float(v) / self.score if self.score else math.nan
            for k, v in self.groups(depth).items()
        }

    @property
    def residual_share(self) -> float:
        """The share of the score the biases carry, ``1 - input / score`` (``r_c / y_c``)."""
        if self.target is None:
            raise ConvscopeError("a residual share is of one score: call contributions(target=c)")
        return 1.0 - float(self.parts["input"]) / self.score if self.score else math.nan


@dataclass(frozen=True)
class PixelVotes:
    """Pixel votes of a classifier and the discussions behind them (seed 001 Fig. 3).

    A pixel votes for the target whose discussion is largest there. Where the largest
    discussion is attained by more than one target (an exact tie, e.g. every discussion
    0 on a black background that nothing reaches) the pixel has no say and abstains:
    its vote is -1 (``ABSTAIN``).

    Attributes:
        targets: ``(T,)`` the classes that took part, best score first.
        discussions: ``(T, *spatial)`` each target's pixel discussion (sums to its score).
        votes: ``(*spatial)`` the class index each pixel votes for, -1 where the largest
            discussion is tied (a pixel with no say).
        scores: ``(T,)`` the targets' scores.
    """

    targets: torch.Tensor
    discussions: torch.Tensor
    votes: torch.Tensor
    scores: torch.Tensor

    def share(self, c: int) -> float:
        """The fraction of all pixels voting for class ``c`` (abstentions included in the
        count of pixels)."""
        return float((self.votes == c).double().mean())

    @property
    def abstained(self) -> float:
        """The fraction of pixels that abstain (vote -1: their largest discussion is tied)."""
        return self.share(ABSTAIN)

    @property
    def shares(self) -> dict[int, float]:
        """Vote share of every target, in target order, as a fraction of all pixels; the
        shares sum to ``1 - abstained``."""
        return {int(c): self.share(int(c)) for c in self.targets}

    @property
    def most_voted(self) -> int:
        """The target with the most pixel votes (the first such on a tie); abstentions do
        not count. -1 when no pixel votes at all (every pixel abstains)."""
        shares = self.shares
        best = max(shares, key=lambda c: shares[c])
        return best if shares[best] > 0 else ABSTAIN


def _target(li: FrozenSystem, target: int | None) -> int:
    n = math.prod(li.out_shape)
    if target is None:
        return int(li.output.reshape(-1).argmax())
    if isinstance(target, bool) or not isinstance(target, int):
        raise ConvscopeError(f"target must be an int (a flat output index); got {target!r}")
    if not 0 <= target < n:
        raise ConvscopeError(f"target {target} is out of range for {n} output values")
    return target


def contributions(
    li: FrozenSystem, target: int | None = None, *, batch_size: int | None = None
) -> Contributions:
    """Split ``f(x0)`` into the input's part and one part per bias source.

    ``target=None`` runs one probe per source (``1 + len(li.sources)`` probes in
    passes of ``batch_size``); a scalar target runs one forward and one backward pass
    whatever the number of sources (see the module docstring).

    Args:
        li: the interpreter.
        target: ``None`` for whole outputs, or a flat output index ``c`` (the class
            of a classifier) for the scalar shares of ``y_c``.
        batch_size: probes per pass (default: the interpreter's); unused with a target.

    Returns:
        :class:`Contributions`: the mapping ``{"input": F x0, source name: Q_s b_s,
        ...}`` in the order the model adds the sources; each value ``(1, *out_shape)``
        (``target=None``) or a 0-d tensor. The values sum to ``f(x0)`` (or ``y_c``) up
        to rounding.
    """
    size = check_batch_size(li.batch_size if batch_size is None else batch_size)
    if target is not None:
        c = _target(li, target)
        values = _scalar_contributions(li, c)
        score = float(li.output.reshape(-1)[c])
    else:
        c, values = None, _batched_contributions(li, None, size)
        score = float(li.output.sum())
    return Contributions(values, c, score, tuple(li.sources))


def _batched_contributions(li: FrozenSystem, c: int | None, size: int) -> dict[str, torch.Tensor]:
    """One probe per source (and one for the input), ``size`` probes per pass; the
    reference for :func:`_scalar_contributions`, and the only way to whole outputs."""
    n_sources = len(li.sources)
    codes = torch.tensor([ALL_OFF, *range(n_sources)])
    outs = []
    for start in range(0, n_sources + 1, size):
        sl = slice(start, min(n_sources + 1, start + size))
        probes = torch.zeros(
            (sl.stop - sl.start, *li.in_shape), dtype=li.x0.dtype, device=li.x0.device
        )
        if start == 0:
            probes[0] = li.x0[0]
        out, ctx = li._run(probes, codes[sl])
        outs.append(out[ctx.offset :].detach())
    values = torch.cat(outs)
    names = ["input", *(s.name for s in li.sources)]
    if c is None:
        return {name: values[i : i + 1] for i, name in enumerate(names)}
    flat = values.reshape(len(names), -1)[:, c]
    return {name: flat[i] for i, name in enumerate(names)}


def _scalar_contributions(li: FrozenSystem, c: int) -> dict[str, torch.Tensor]:
    """All shares of ``y_c`` from one forward and one backward pass.

    The probe row is ``x0`` and adds source ``s`` as ``g_s * b_s`` with one gate
    ``g = 1`` per source; row 0 adds the constants as they are, so the frozen
    decisions do not move (the rules detach row 0). The probe's score is
    ``(F x0)_c + sum_s g_s (Q_s b_s)_c``: its gradient in ``g`` holds the sources'
    contributions, its gradient in the probe ``F^T e_c``, dotted with ``x0``.
    """
    n = len(li.sources)
    dtype, device = li.x0.dtype, li.x0.device
    gates = torch.ones(n, dtype=dtype, device=device, requires_grad=True)

    def hook(index: int, lin: torch.Tensor, const: torch.Tensor) -> torch.Tensor:
        if index >= n:  # a pass that meets more sources than the first: _run refuses it
            return lin + const
        rows = lin.shape[0]
        if const.ndim == lin.ndim and const.shape[0] == rows:
            c0, cp = const[:1], const[1:]
        else:
            c0 = cp = const
        return torch.cat([lin[:1] + c0, lin[1:] + gates[index] * cp])

    x1 = li.x0.clone().requires_grad_(True)
    out, _ = li._run(x1, [ALL_ON], source_hook=hook, grad=True)
    score = out[1].reshape(-1)[c]
    g_x: torch.Tensor | None = None
    g_s: torch.Tensor | None = None
    if score.requires_grad:  # else it depends neither on the input nor on a source: 0
        g_x, g_s = torch.autograd.grad(score, [x1, gates], allow_unused=True)
    inp = (g_x * li.x0).sum() if g_x is not None else li.x0.new_zeros(())
    shares = g_s if g_s is not None else gates.new_zeros(n)
    values = torch.cat([inp.detach().reshape(1), shares.detach()])
    names = ["input", *(s.name for s in li.sources)]
    return {name: values[i] for i, name in enumerate(names)}


def residual_share(li: FrozenSystem, target: int | None = None) -> float:
    """``r_c / y_c``: the share of score ``c`` that the biases carry (seed 001 Table 3).

    Args:
        li: the interpreter.
        target: flat output index (default: the largest output, the top-1 class).

    Returns:
        The ratio as a float (``nan`` when ``y_c == 0``).
    """
    c = _target(li, target)
    y = float(li.output.reshape(-1)[c])
    r = float(li.residual.reshape(-1)[c])
    return r / y if y != 0 else math.nan


_REPEAT = re.compile(r"#\d+$")


def group_contributions(
    contribs: Mapping[str, torch.Tensor],
    depth: int | None = None,
    key: Callable[[str], str] | None = None,
) -> dict[str, torch.Tensor]:
    """Sum contributions by layer, keeping the order in which layers first appear.

    Args:
        contribs: the output of :func:`contributions`.
        depth: group by the first ``depth`` parts of the module path
            (``features.3.conv`` -> ``features.3`` for ``depth=2``); ``None`` merges only
            repeated calls of one module (``relu#2`` into ``relu``).
        key: a function from source name to group name, instead of ``depth``.
            ``"input"`` always stays its own group.

    Returns:
        ``{group: summed value}``.
    """
    if depth is not None and depth < 1:
        raise ConvscopeError(f"depth must be >= 1; got {depth}")

    def default(name: str) -> str:
        base = _REPEAT.sub("", name)
        return base if depth is None else ".".join(base.split(".")[:depth])

    fn = key or default
    out: dict[str, torch.Tensor] = {}
    for name, value in contribs.items():
        group = "input" if name == "input" else fn(name)
        out[group] = out[group] + value if group in out else value.clone()
    return out


@dataclass(frozen=True)
class ContributionHistogram:
    """Per-layer shares of a score averaged over images (seed 001 Fig. 4 and 8).

    Attributes:
        names: ``"input"`` and the layer groups, in model order.
        mean: ``(L,)`` mean share (contribution / score) of each group.
        std: ``(L,)`` standard deviation over the images (0 for one image).
        count: the number of images.
    """

    names: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    count: int


def contribution_histogram(shares: Sequence[Mapping[str, torch.Tensor]]) -> ContributionHistogram:
    """Average scalar contributions over images, each normalized by its score.

    Args:
        shares: one dict per image from ``contributions(target=c)`` (optionally
            passed through :func:`group_contributions`); each is divided by its own
            total, the score ``y_c``. Groups missing in an image count as 0.

    Returns:
        :class:`ContributionHistogram`.
    """
    if not shares:
        raise ConvscopeError("contribution_histogram needs at least one image's contributions")
    names: list[str] = []
    for d in shares:
        names.extend(n for n in d if n not in names)
    table = torch.zeros(len(shares), len(names), dtype=torch.float64)
    for i, d in enumerate(shares):
        total = float(sum(float(v) for v in d.values()))
        if total == 0:
            raise ConvscopeError(f"image {i}: the contributions sum to 0, cannot normalize")
        for j, n in enumerate(names):
            if n in d:
                table[i, j] = float(d[n]) / total
    std = table.std(0) if len(shares) > 1 else torch.zeros(len(names), dtype=torch.float64)
    return ContributionHistogram(names=names, mean=table.mean(0), std=std, count=len(shares))


def _targets(li: FrozenSystem, targets: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(targets).reshape(-1)
    if t.is_floating_point() or t.dtype == torch.bool or t.numel() == 0:
        raise ConvscopeError(f"targets must be one or more integer output indices; got {targets!r}")
    n = math.prod(li.out_shape)
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise ConvscopeError(f"targets must lie in [0, {n}); got {t.tolist()}")
    return t.long()


def pixel_discussion(
    li: FrozenSystem,
    targets: int | Sequence[int] | torch.Tensor,
    *,
    normalize: bool = True,
    batch_size: int | None = None,
    channels: bool = False,
) -> torch.Tensor:
    """Pixel-wise contributions to each target score (seed 001 eq. 18, our reading).

    One forward pass per chunk of targets with every bias source as a leaf tensor,
    then two backward passes: the first gives ``F^T e_c`` and every ``Q_s^T e_c``, the
    second back-projects all weighted bias maps ``b_s * Q_s^T e_c`` at once.

    Args:
        li: the interpreter; its input is ``(1, C, *spatial)``.
        targets: flat output indices (classes).
        normalize: scale each discussion so its pixels sum to the score ``y_c``; a
            discussion whose raw sum is 0 is left as it is.
        batch_size: targets per pass.
        channels: keep the colour channels apart, ``(T, C, *spatial)``; summed over ``C``
            they are the default result (the normalization is per target either way).

    Returns:
        ``(T, *spatial)``, e.g. ``(T, H, W)``, summed over the colour channels
        (``(T, C, *spatial)`` with ``channels=True``).
    """
    if len(li.in_shape) < 2:
        raise ConvscopeError(f"pixel discussions need inputs (C, H, W); got {li.in_shape}")
    t = _targets(li, targets)
    size = check_batch_size(li.batch_size if batch_size is None else batch_size)
    parts = []
    for start in range(0, t.numel(), size):
        parts.append(_discuss(li, t[start : start + size], channels))
    pd = torch.cat(parts)
    if normalize:
        scores = li.output.reshape(-1)[t].to(pd.dtype)
        sums = pd.flatten(1).sum(1)
        factor = torch.where(sums != 0, scores / torch.where(sums != 0, sums, 1), 1)
        pd = pd * factor.view(-1, *([1] * (pd.ndim - 1)))
    return pd


def _discuss(li: FrozenSystem, t: torch.Tensor, channels: bool = False) -> torch.Tensor:
    b = t.numel()
    records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(index: int, lin: torch.Tensor, const: torch.Tensor) -> torch.Tensor:
        rows = lin.shape[0]
        if const.ndim == lin.ndim and const.shape[0] == rows:
            c0, cp = const[:1], const[1:]
        else:
            c0 = cp = const
        beta = torch.broadcast_to(cp, (rows - 1, *lin.shape[1:])).clone().requires_grad_(True)
        records.append((lin[1:], beta))
        return torch.cat([lin[:1] + c0, lin[1:] + beta])

    x1 = torch.zeros((b, *li.in_shape), dtype=li.x0.dtype, device=li.x0.device)
    x1.requires_grad_(True)
    out, _ = li._run(x1, [ALL_ON] * b, source_hook=hook, grad=True)
    score = out[1:].reshape(b, -1).gather(1, t.to(out.device)[:, None]).sum()
    inputs = [x1, *(beta for _, beta in records)]
    grads = torch.autograd.grad(score, inputs, retain_graph=True, allow_unused=True)
    g_x = torch.zeros_like(x1) if grads[0] is None else grads[0]
    total = None
    for (lin, beta), g_beta in zip(records, grads[1:], strict=True):
        if g_beta is None or not lin.requires_grad:
            continue
        term = (lin * (beta.detach() * g_beta)).sum()
        total = term if total is None else total + term
    back = torch.zeros_like(x1)
    if total is not None:
        (g,) = torch.autograd.grad(total, x1, allow_unused=True)
        if g is not None:
            back = g
    pd = (li.x0 * g_x + back).detach()
    return pd if channels else pd.sum(1)


def pixel_votes(
    li: FrozenSystem,
    targets: int | Sequence[int] | torch.Tensor | None = None,
    *,
    top: int = 10,
    batch_size: int | None = None,
) -> torch.Tensor:
    """The target each pixel votes for: the largest pixel discussion among the targets.

    A pixel where the largest discussion is attained by more than one target (an exact
    tie, e.g. all of them 0) has no say and abstains (-1).

    Args:
        li: the interpreter.
        targets: output indices to choose from; ``None``: the ``top`` largest outputs.
        top: how many top outputs when ``targets`` is ``None``.
        batch_size: targets per pass.

    Returns:
        ``(*spatial)`` integer tensor, e.g. ``(H, W)``: the class index each pixel votes
        for, -1 where the largest discussion is tied (a pixel with no say); the
        ``votes`` of :func:`votes`.
    """
    return votes(li, targets, top=top, batch_size=batch_size).votes


def votes(
    li: FrozenSystem,
    targets: int | Sequence[int] | torch.Tensor | None = None,
    *,
    top: int = 10,
    batch_size: int | None = None,
) -> PixelVotes:
    """Pixel votes with the discussions and scores behind them (one set of passes).

    Args:
        li, targets, top, batch_size: as in :func:`pixel_votes`.

    Returns:
        :class:`PixelVotes`; ``.votes`` is what :func:`pixel_votes` returns.
    """
    if targets is None:
        if top < 1:
            raise ConvscopeError(f"top must be >= 1; got {top}")
        flat = li.output.reshape(-1)
        t = flat.topk(min(top, flat.numel())).indices.cpu()
    else:
        t = _targets(li, targets)
    pd = pixel_discussion(li, t, batch_size=batch_size)
    t = t.to(pd.device)
    return PixelVotes(t, pd, _vote(t, pd), li.output.reshape(-1)[t].detach())


def _vote(t: torch.Tensor, pd: torch.Tensor) -> torch.Tensor:
    """``t[argmax]`` per pixel, ``ABSTAIN`` where more than one target attains the maximum
    (argmax alone would hand every tie, all-zero pixels included, to the first target)."""
    tied = (pd == pd.amax(0)).sum(0) > 1
    return torch.where(tied, torch.full_like(t[:1], ABSTAIN), t[pd.argmax(0)])
