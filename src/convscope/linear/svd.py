"""Singular value decomposition of a linear operator given only as two callables.

The linear interpreter of seed 001 freezes a network at an image ``x0`` into
``y = F x + r`` with ``F`` of shape ``(N, n)``: ``N`` output values, ``n`` input
values. ``F`` is far too large to build for a real image, but the interpreter can
apply it (``F x``) and its transpose (``F^T y``) to a batch of probes. The functions
here find the largest singular triplets ``F v_i = s_i u_i``, ``F^T u_i = s_i v_i``
from those two products alone:

- :func:`power_svd`: the paper's Algorithm 1, power iteration on ``F^T F`` with
  heavy-ball momentum (Xu et al. 2018, "Accelerated stochastic power iteration"),
  one vector at a time, the next pair found on the deflated operator
  ``F - sum_i s_i u_i v_i^T``.
- :func:`randomized_svd`: the randomized range finder of Halko, Martinsson and Tropp
  (2011) with subspace (power) iterations: every step applies ``F`` and ``F^T`` to a
  whole block of ``k + oversample`` vectors at once, then one small dense SVD.
- :func:`svd`: either of the two, by name.

Shapes. ``linear`` maps a batch ``(B, *in_shape)`` to ``(B, *out_shape)``;
``transpose`` maps ``(B, *out_shape)`` to ``(B, *in_shape)``. The result holds
``S`` ``(k,)`` in decreasing order, the eigen-outputs ``U`` ``(k, *out_shape)`` and
the eigen-inputs ``V`` ``(k, *in_shape)``, each of unit norm. The sign of a pair is
fixed so that the entry of ``V[i]`` with the largest magnitude is positive, which
makes results comparable between methods and runs.

``torch.lobpcg`` is not offered: it takes the symmetric matrix as a tensor (dense or
sparse), not as a function, so it cannot run on an operator that is never built.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from convscope.errors import ConvscopeError

__all__ = [
    "LinearOp",
    "SVDResult",
    "power_svd",
    "randomized_svd",
    "svd",
]

LinearOp = Callable[[torch.Tensor], torch.Tensor]
"""A linear map without bias acting on a batch: ``(B, *shape_in) -> (B, *shape_out)``."""

_METHODS = ("power", "randomized")


@dataclass(eq=False)
class SVDResult:
    """The ``k`` largest singular triplets of a linear operator ``F``.

    Unpacks as ``S, U, V = result``.

    Attributes:
        S: ``(k,)`` singular values, decreasing.
        U: ``(k, *out_shape)`` eigen-outputs (left singular vectors), unit norm.
        V: ``(k, *in_shape)`` eigen-inputs (right singular vectors), unit norm;
            ``F V[i] = S[i] U[i]``.
        iterations: for ``"power"`` the number of ``F^T F`` steps taken for each pair;
            for ``"randomized"`` the number of subspace iterations, repeated for every
            pair (the block moves together).
        method: ``"power"`` or ``"randomized"``.
        converged: per pair, whether the stopping tolerance was met before the step
            limit (always ``True`` when no tolerance was given).
        applications: how many single vectors went through ``linear`` plus
            ``transpose`` (a batch of ``B`` counts ``B``).
        calls: how many times ``linear`` or ``transpose`` was called.
    """

    S: torch.Tensor
    U: torch.Tensor
    V: torch.Tensor
    iterations: list[int]
    method: str
    converged: list[bool] = field(default_factory=list)
    applications: int = 0
    calls: int = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.S, self.U, self.V))


# -- shared plumbing ------------------------------------------------------------


class _Operator:
    """``F`` and ``F^T`` on flat vectors, with shape checks and a cost count."""

    def __init__(
        self,
        linear: LinearOp,
        transpose: LinearOp,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.linear = linear
        self.transpose = transpose
        self.in_shape = _check_shape(in_shape, "in_shape")
        self.out_shape = _check_shape(out_shape, "out_shape")
        self.n = math.prod(self.in_shape)
        self.N = math.prod(self.out_shape)
        self.dtype = dtype
        self.device = device
        self.applications = 0
        self.calls = 0

    def _apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        op, shape_in, shape_out, out_name = (
            (self.linear, self.in_shape, self.out_shape, "out_shape")
            if name == "linear"
            else (self.transpose, self.out_shape, self.in_shape, "in_shape")
        )
        b = x.shape[0]
        y = op(x.reshape(b, *shape_in))
        self.applications += b
        self.calls += 1
        if not isinstance(y, torch.Tensor):
            raise ConvscopeError(f"{name} must return a tensor, got {type(y).__name__}")
        if tuple(y.shape) != (b, *shape_out):
            raise ConvscopeError(
                f"{name} returned shape {tuple(y.shape)} for a batch of {b}; expected "
                f"{(b, *shape_out)} (batch, *{out_name})"
            )
        # the operator may compute in the model's own dtype; the iteration keeps its own
        y = y.reshape(b, -1).to(device=self.device, dtype=self.dtype)
        if not torch.isfinite(y).all():
            raise ConvscopeError(f"{name} returned non-finite values (inf or nan)")
        return y

    def F(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n) -> (B, N)``."""
        return self._apply("linear", x)

    def Ft(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, N) -> (B, n)``."""
        return self._apply("transpose", y)

    def randn(self, rows: int, gen: torch.Generator) -> torch.Tensor:
        # drawn on the CPU so a seed gives the same start on every device
        x = torch.randn(rows, self.n, generator=gen, dtype=torch.float64)
        return x.to(device=self.device, dtype=self.dtype)


def _check_shape(shape: Sequence[int], name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ConvscopeError(f"{name} must be a sequence of sizes, got {shape!r}") from None
    if not out or any(d < 1 for d in out):
        raise ConvscopeError(f"{name} must be a non-empty tuple of positive sizes, got {out}")
    return out


def _check_k(k: int, op: _Operator) -> None:
    limit = min(op.n, op.N)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConvscopeError(f"k (the number of singular pairs) must be an integer >= 1, got {k!r}")
    if k > limit:
        raise ConvscopeError(
            f"k={k} is more than the operator has: F is {op.N} x {op.n}, so at most "
            f"{limit} singular pairs exist"
        )


def _check_tol(tol: float | None) -> None:
    if tol is not None and not (math.isfinite(tol) and tol >= 0):
        raise ConvscopeError(f"tol must be None or a finite number >= 0, got {tol!r}")


def _fix_signs(U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip pairs so the largest-magnitude entry of each row of ``V`` is positive."""
    idx = V.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(V.gather(1, idx))
    sign[sign == 0] = 1
    return U * sign, V * sign


def _finish(
    S: torch.Tensor,
    U: torch.Tensor,
    V: torch.Tensor,
    op: _Operator,
    iterations: list[int],
    converged: list[bool],
    method: str,
) -> SVDResult:
    order = torch.argsort(S, descending=True, stable=True)
    S, U, V = S[order], U[order], V[order]
    U, V = _fix_signs(U, V)
    perm = order.tolist()
    return SVDResult(
        S=S,
        U=U.reshape(-1, *op.out_shape),
        V=V.reshape(-1, *op.in_shape),
        iterations=[iterations[i] for i in perm],
        method=method,
        converged=[converged[i] for i in perm],
        applications=op.applications,
        calls=op.calls,
    )


def _resolve_device(device: torch.device | str | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


# -- power iteration (the paper's Algorithm 1) ---------------------------------------


def power_svd(
    linear: LinearOp,
    transpose: LinearOp,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    k: int = 5,
    steps: int = 100,
    momentum: float | Sequence[float] = 0.0,
    *,
    tol: float | None = 1e-10,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SVDResult:
    """Top-``k`` singular triplets by power iteration with momentum and deflation.

    Seed 001, Algorithm 1. For pair ``j`` (``j = 0 .. k-1``) the iteration runs on the
    deflated operator ``A_j = F^T F - sum_{i<j} s_i^2 v_i v_i^T``, the normal matrix of
    ``F - sum_{i<j} s_i u_i v_i^T``, starting from a random unit vector ``v_1`` and
    ``p_1 = 0``::

        w       = A_j v_t - m * p_t        # one call of linear, one of transpose
        p_{t+1} = v_t / ||w||
        v_{t+1} = w   / ||w||

    This is the heavy-ball recurrence ``z_{t+1} = A z_t - m z_{t-1}`` of Xu et al.
    (2018), rescaled at every step by one common factor, so it changes only the
    length, never the direction. ``m = 0`` is plain power iteration. The iteration
    stops after ``steps`` steps or once ``||v_{t+1} - v_t|| < tol``. Then
    ``s_j = ||F v||`` and ``u_j = F v / s_j`` (one more call of ``linear``). The paper's
    running estimate ``sigma^2 = v_t . w`` is not used: with ``m > 0`` it is off by
    ``m v_t . p_t``.

    Choosing the momentum. ``m`` is measured in the units of ``F^T F`` (singular value
    to the fourth power). Let ``lambda_1 > lambda_2`` be the two largest eigenvalues of
    ``A_j`` (``lambda = s^2``). Plain power iteration shrinks the error per step by
    ``lambda_2 / lambda_1``. With ``m <= lambda_2^2 / 4`` the rate is ``r(lambda_2) /
    r(lambda_1)`` with ``r(x) = (x + sqrt(x^2 - 4 m)) / 2``; the best choice,
    ``m = lambda_2^2 / 4``, gives ``lambda_2 / (lambda_1 + sqrt(lambda_1^2 -
    lambda_2^2))``, a large gain when the gap is small (0.98 becomes 0.82). Above it
    the rate is ``sqrt(m) / r(lambda_1)``, which reaches 1 at ``m = lambda_1^2 / 4``:
    beyond that the iterate rotates and never converges. The best value changes as
    pairs are deflated, and one that suits pair ``j`` can be too large for a later one
    (its ``lambda_1`` is smaller), so a sequence gives one momentum per pair.

    Numerics. Besides subtracting ``s_i^2 v_i (v_i . v)``, ``w`` is projected off the
    found ``v_i``: in exact arithmetic that changes nothing, but it stops rounding
    errors in the found pairs from growing back into the new one.

    Args:
        linear: ``F``, ``(B, *in_shape) -> (B, *out_shape)``, linear (no bias).
        transpose: ``F^T``, ``(B, *out_shape) -> (B, *in_shape)``.
        in_shape: shape of one input, e.g. ``(C, H, W)``.
        out_shape: shape of one output.
        k: number of pairs, ``1 <= k <= min(n, N)``.
        steps: at most this many ``F^T F`` steps per pair, ``>= 1``.
        momentum: ``m >= 0``, one value for every pair or one per pair.
        tol: stop a pair when its unit vector moves less than this in one step
            (Euclidean norm); ``None`` always runs ``steps`` steps. The vector's error
            is then about ``tol / (1 - rate)``, far more than ``tol`` when the gap is
            small; the singular value's relative error is of the order of its square.
        dtype: dtype of the iterates (the operator's outputs are cast to it).
        device: device of the iterates (``None``: CPU).
        seed: seed of the random start vectors (drawn on the CPU).
        progress: show a progress bar over the pairs.

    Returns:
        :class:`SVDResult` with ``method="power"``: ``S`` ``(k,)``, ``U``
        ``(k, *out_shape)``, ``V`` ``(k, *in_shape)``.

    Raises:
        ConvscopeError: bad ``k``, ``steps``, ``momentum``, ``tol`` or shapes, an
            operator returning the wrong shape, or non-finite values.
    """
    dev = _resolve_device(device)
    op = _Operator(linear, transpose, in_shape, out_shape, dtype, dev)
    _check_k(k, op)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConvscopeError(f"steps must be an integer >= 1, got {steps!r}")
    _check_tol(tol)
    momenta = _momenta(momentum, k)

    gen = torch.Generator().manual_seed(seed)
    S = torch.zeros(k, dtype=dtype, device=dev)
    U = torch.zeros(k, op.N, dtype=dtype, device=dev)
    V = torch.zeros(k, op.n, dtype=dtype, device=dev)
    iterations: list[int] = []
    converged: list[bool] = []

    def project(x: torch.Tensor, j: int) -> torch.Tensor:
        # two passes of Gram-Schmidt: one can leave O(eps * cond) behind
        for _ in range(2):
            x = x - (x @ V[:j].T) @ V[:j]
        return x

    bar = tqdm(range(k), desc="power svd", unit="pair", disable=not progress, dynamic_ncols=True)
    for j in bar:
        m = momenta[j]
        v = project(op.randn(1, gen), j)
        v = v / torch.linalg.vector_norm(v)
        p = torch.zeros_like(v)
        done = False
        t = 0
        while t < steps:
            t += 1
            w = op.Ft(op.F(v))
            if j:
                # deflation: the normal matrix of F - sum s_i u_i v_i^T applied to v is
                # F^T F v - sum s_i^2 v_i (v_i . v)
                w = w - ((v @ V[:j].T) * S[:j] ** 2) @ V[:j]
            if m:
                w = w - m * p
            w = project(w, j)
            norm = torch.linalg.vector_norm(w)
            if not norm > 0:
                # F is zero on what is left: any unit vector orthogonal to the found ones
                # is a singular vector with s = 0; keep v
                done = True
                break
            p = v / norm
            v_next = w / norm
            change = float(torch.linalg.vector_norm(v_next - v))
            v = v_next
            if tol is not None and change < tol:
                done = True
                break
        Fv = op.F(v)
        s = torch.linalg.vector_norm(Fv)
        S[j] = s
        V[j] = v[0]
        U[j] = Fv[0] / s if s > 0 else Fv[0]
        iterations.append(t)
        converged.append(done or tol is None)
        if progress:
            bar.set_postfix(s=f"{float(s):.4g}", steps=t)
    bar.close()
    return _finish(S, U, V, op, iterations, converged, "power")


def _momenta(momentum: float | Sequence[float], k: int) -> list[float]:
    if isinstance(momentum, (int, float)) and not isinstance(momentum, bool):
        values = [float(momentum)] * k
    else:
        try:
            values = [float(m) for m in momentum]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ConvscopeError(
                f"momentum must be a number or one number per pair, got {momentum!r}"
            ) from None
        if len(values) != k:
            raise ConvscopeError(f"momentum has {len(values)} values for k={k} pairs")
    for m in values:
        if not (math.isfinite(m) and m >= 0):
            raise ConvscopeError(f"momentum must be finite and >= 0, got {m!r}")
    return values


# -- randomized subspace iteration ------------------------------------------------------


def randomized_svd(
    linear: LinearOp,
    transpose: LinearOp,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    k: int = 5,
    oversample: int = 10,
    power_iters: int = 4,
    *,
    tol: float | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SVDResult:
    """Top-``k`` singular triplets by randomized subspace iteration (Halko et al. 2011).

    With ``l = min(k + oversample, n, N)`` random inputs ``Omega`` ``(l, n)``::

        Q = orth(F Omega^T)                      # (N, l), orthonormal columns
        Z = F^T Q                                # (n, l); Z^T = Q^T F
        repeat power_iters times:
            Q = orth(F orth(Z));  Z = F^T Q
        Z^T = Ub diag(S) Vh                      # small dense SVD, (l, n)
        U = Q Ub,  V = Vh

    so ``F ~ Q Q^T F = U diag(S) V``. Every step sends a whole block of ``l`` vectors
    through ``linear`` and ``transpose`` in one call, which is what makes it faster
    than one vector at a time. The error of ``s_i`` falls like
    ``(s_{l+1} / s_i)^(2 * power_iters + 1)``: more oversampling or more iterations
    help when the spectrum decays slowly. The singular values of ``Z`` after each step
    are the current estimates; with ``tol`` set, the iteration stops early once none
    of the top ``k`` moves by more than ``tol`` relative in one step.

    Cost: ``l * (power_iters + 1)`` vectors through ``linear`` and as many through
    ``transpose``, in ``2 * (power_iters + 1)`` calls.

    Args:
        linear: ``F``, ``(B, *in_shape) -> (B, *out_shape)``, linear (no bias).
        transpose: ``F^T``, ``(B, *out_shape) -> (B, *in_shape)``.
        in_shape: shape of one input.
        out_shape: shape of one output.
        k: number of pairs, ``1 <= k <= min(n, N)``.
        oversample: extra block vectors beyond ``k``, ``>= 0``.
        power_iters: subspace iterations, ``>= 0`` (0 is the plain range finder).
        tol: stop early when the top-``k`` estimates change less than this, relative;
            ``None`` always runs ``power_iters`` iterations.
        dtype: dtype of the block (the operator's outputs are cast to it).
        device: device of the block (``None``: CPU).
        seed: seed of ``Omega`` (drawn on the CPU).
        progress: show a progress bar over the iterations.

    Returns:
        :class:`SVDResult` with ``method="randomized"``.

    Raises:
        ConvscopeError: bad ``k``, ``oversample``, ``power_iters``, ``tol`` or shapes,
            or an operator returning the wrong shape or non-finite values.
    """
    dev = _resolve_device(device)
    op = _Operator(linear, transpose, in_shape, out_shape, dtype, dev)
    _check_k(k, op)
    for name, value in (("oversample", oversample), ("power_iters", power_iters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConvscopeError(f"{name} must be an integer >= 0, got {value!r}")
    _check_tol(tol)
    l = min(k + oversample, op.n, op.N)  # noqa: E741

    def orth(rows: torch.Tensor) -> torch.Tensor:
        # (l, d) -> (l, d) with orthonormal rows; Householder QR stays orthonormal
        # even when the block is (numerically) rank deficient
        return torch.linalg.qr(rows.T, mode="reduced").Q.T

    gen = torch.Generator().manual_seed(seed)
    Q = orth(op.F(op.randn(l, gen)))  # (l, N): rows span the range of F
    Z = op.Ft(Q)  # (l, n): row i is F^T q_i, so Z = Q F
    estimate = torch.linalg.svdvals(Z)[:k]
    done = tol is None
    it = 0
    bar = tqdm(
        total=power_iters,
        desc="randomized svd",
        unit="iter",
        disable=not progress,
        dynamic_ncols=True,
    )
    while it < power_iters:
        it += 1
        Q = orth(op.F(orth(Z)))
        Z = op.Ft(Q)
        bar.update(1)
        if tol is not None:
            new = torch.linalg.svdvals(Z)[:k]
            change = float(((new - estimate).abs() / new.clamp_min(torch.finfo(dtype).tiny)).max())
            estimate = new
            if change < tol:
                done = True
                break
    bar.close()
    # Q has orthonormal rows, so F ~ Q^T Q F = Q^T Z = (Q^T Ub) diag(S) Vh
    Ub, S, Vh = torch.linalg.svd(Z, full_matrices=False)  # Ub (l, l), Vh (l, n)
    U = (Ub.T @ Q)[:k]  # rows: left singular vectors, (k, N)
    V = Vh[:k]  # (k, n)
    return _finish(S[:k], U, V, op, [it] * k, [done] * k, "randomized")


# -- by name -------------------------------------------------------------------------------


def svd(
    linear: LinearOp,
    transpose: LinearOp,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    k: int = 5,
    *,
    method: str = "power",
    **options: Any,
) -> SVDResult:
    """Top-``k`` singular triplets of ``F`` by the named method.

    Args:
        linear: ``F``, ``(B, *in_shape) -> (B, *out_shape)``.
        transpose: ``F^T``, ``(B, *out_shape) -> (B, *in_shape)``.
        in_shape: shape of one input.
        out_shape: shape of one output.
        k: number of pairs.
        method: ``"power"`` (:func:`power_svd`, the paper's Algorithm 1) or
            ``"randomized"`` (:func:`randomized_svd`, block subspace iteration).
        **options: the keyword arguments of the chosen function (``steps``,
            ``momentum``, ``tol``, ``oversample``, ``power_iters``, ``dtype``,
            ``device``, ``seed``, ``progress``).

    Returns:
        :class:`SVDResult`: ``S`` ``(k,)``, ``U`` ``(k, *out_shape)``, ``V`` ``(k, *in_shape)``.

    Raises:
        ConvscopeError: an unknown method or option, or what the chosen function raises.
    """
    fn: Callable[..., SVDResult]
    if method == "power":
        fn, allowed = power_svd, {"steps", "momentum"}
    elif method == "randomized":
        fn, allowed = randomized_svd, {"oversample", "power_iters"}
    else:
        raise ConvscopeError(f"unknown SVD method {method!r}; choose one of {list(_METHODS)}")
    allowed |= {"tol", "dtype", "device", "seed", "progress"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConvscopeError(
            f"method {method!r} does not take {', '.join(unknown)}; it takes {sorted(allowed)}"
        )
    return fn(linear, transpose, in_shape, out_shape, k, **options)
