"""SVD of an operator given as two callables: power iteration (seed 001, Algorithm 1)
with momentum and deflation, and randomized subspace iteration."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

from convscope.errors import ConvscopeError
from convscope.linear.svd import SVDResult, power_svd, randomized_svd, svd

Op = Callable[[torch.Tensor], torch.Tensor]
D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add overhead


def _matrix(s: list[float], rows: int = 60, cols: int = 40, seed: int = 0) -> torch.Tensor:
    """``A = U diag(s) V^T`` with random orthonormal ``U``, ``V``: a known spectrum."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(rows, len(s), generator=g, dtype=D)).Q
    V = torch.linalg.qr(torch.randn(cols, len(s), generator=g, dtype=D)).Q
    return U @ torch.diag(torch.tensor(s, dtype=D)) @ V.T


def _ops(A: torch.Tensor) -> tuple[Op, Op]:
    return (lambda x: x @ A.T), (lambda y: y @ A)


# well separated on top, then a decaying tail (40 values for a 60 x 40 matrix)
SEPARATED = [10.0, 8.0, 6.0, 4.0, 2.0] + [1.0 * 0.8**i for i in range(35)]
# a tight gap between the first two: s2 / s1 = 0.99, so plain power iteration on
# F^T F contracts the error only by 0.98 per step
TIGHT = [1.0, 0.99, 0.6, 0.5, 0.4] + [0.3 * 0.9**i for i in range(35)]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|cos| between matching rows of ``a`` and ``b`` (any trailing shape)."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return (a * b).sum(1).abs() / (a.norm(dim=1) * b.norm(dim=1))


def _run(
    method: str, lin: Op, tr: Op, in_shape: tuple[int, ...], out_shape: tuple[int, ...], k: int = 5
) -> SVDResult:
    if method == "power":
        return power_svd(lin, tr, in_shape, out_shape, k=k, steps=3000, tol=1e-9)
    return randomized_svd(lin, tr, in_shape, out_shape, k=k, oversample=10, power_iters=15)


# -- 1. dense matrices with a known spectrum -------------------------------------------


@pytest.mark.parametrize("method", ["power", "randomized"])
def test_dense_matches_torch_svd(method: str) -> None:
    A = _matrix(SEPARATED)
    lin, tr = _ops(A)
    res = _run(method, lin, tr, (40,), (60,))
    U_ref, S_ref, Vh_ref = torch.linalg.svd(A, full_matrices=False)

    assert res.method == method
    assert res.S.shape == (5,) and res.U.shape == (5, 60) and res.V.shape == (5, 40)
    assert res.S.dtype == D
    torch.testing.assert_close(res.S, S_ref[:5], rtol=1e-9, atol=0)
    assert (_cos(res.V, Vh_ref[:5]) > 1 - 1e-8).all()
    assert (_cos(res.U, U_ref.T[:5]) > 1 - 1e-8).all()
    # a singular triplet: F v = s u and F^T u = s v, with unit vectors
    torch.testing.assert_close(lin(res.V), res.S[:, None] * res.U, rtol=0, atol=1e-8)
    torch.testing.assert_close(tr(res.U), res.S[:, None] * res.V, rtol=0, atol=1e-8)
    torch.testing.assert_close(res.V @ res.V.T, torch.eye(5, dtype=D), rtol=0, atol=1e-8)
    assert (res.S[:-1] >= res.S[1:]).all()
    S, U, V = res  # unpacks like torch.linalg.svd's triple
    assert S is res.S and U is res.U and V is res.V


def test_sign_convention_is_shared_by_both_methods() -> None:
    lin, tr = _ops(_matrix(SEPARATED))
    a = _run("power", lin, tr, (40,), (60,))
    b = _run("randomized", lin, tr, (40,), (60,))
    torch.testing.assert_close(a.V, b.V, rtol=0, atol=1e-7)
    torch.testing.assert_close(a.U, b.U, rtol=0, atol=1e-7)


def test_same_seed_same_result_and_seed_changes_start() -> None:
    lin, tr = _ops(_matrix(TIGHT))
    a = power_svd(lin, tr, (40,), (60,), k=2, steps=5, tol=None, seed=3)
    b = power_svd(lin, tr, (40,), (60,), k=2, steps=5, tol=None, seed=3)
    c = power_svd(lin, tr, (40,), (60,), k=2, steps=5, tol=None, seed=4)
    assert torch.equal(a.V, b.V) and torch.equal(a.S, b.S)
    assert not torch.equal(a.V, c.V)


# -- 2. the acceptance: a small conv net, F materialized --------------------------------


class _MaskedConvNet(nn.Module):
    """conv 1->4 -> ReLU mask frozen at x0 -> conv 4->2, no biases: a linear map
    ``(1, 8, 8) -> (2, 8, 8)``, the linear part of a ReLU net frozen at ``x0``."""

    def __init__(self, seed: int = 8) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False).double()
        self.c2 = nn.Conv2d(4, 2, 3, padding=1, bias=False).double()
        x0 = torch.randn(1, 1, 8, 8, dtype=D)
        with torch.no_grad():
            self.mask = (self.c1(x0) > 0).to(D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.c1(x) * self.mask)

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        h = Fn.conv_transpose2d(y, self.c2.weight, padding=1) * self.mask
        return Fn.conv_transpose2d(h, self.c1.weight, padding=1)


@pytest.mark.parametrize("method", ["power", "randomized"])
def test_conv_net_matches_materialized_jacobian(method: str) -> None:
    net = _MaskedConvNet()
    with torch.no_grad():
        J = torch.func.jacrev(lambda x: net(x[None])[0])(torch.zeros(1, 8, 8, dtype=D))
    F = J.reshape(128, 64)
    y = torch.randn(3, 2, 8, 8, dtype=D)
    # the hand-written transpose really is F^T
    torch.testing.assert_close(net.transpose(y).reshape(3, 64), y.reshape(3, 128) @ F)
    U_ref, S_ref, Vh_ref = torch.linalg.svd(F, full_matrices=False)
    # the top five are distinct enough for their vectors to be well defined
    assert (S_ref[1:6] / S_ref[:5]).max() < 0.97

    with torch.no_grad():
        res = _run(method, net, net.transpose, (1, 8, 8), (2, 8, 8))
    assert res.U.shape == (5, 2, 8, 8) and res.V.shape == (5, 1, 8, 8)
    # acceptance: within 1% and |cos| > 0.99; the methods do far better here
    torch.testing.assert_close(res.S, S_ref[:5], rtol=1e-6, atol=0)
    assert (_cos(res.V, Vh_ref[:5]) > 0.999).all()
    assert (_cos(res.U, U_ref.T[:5]) > 0.999).all()


# -- 3. momentum ------------------------------------------------------------------------


def test_momentum_finds_the_same_pairs() -> None:
    lin, tr = _ops(_matrix(TIGHT))
    plain = power_svd(lin, tr, (40,), (60,), k=4, steps=3000)
    # per pair the best heavy-ball value lambda_2^2 / 4 of the deflated F^T F (lambda = s^2)
    momenta = [TIGHT[j + 1] ** 4 / 4 for j in range(4)]
    fast = power_svd(lin, tr, (40,), (60,), k=4, steps=3000, momentum=momenta)
    assert all(plain.converged) and all(fast.converged)
    torch.testing.assert_close(fast.S, plain.S, rtol=1e-12, atol=0)
    torch.testing.assert_close(fast.V, plain.V, rtol=0, atol=1e-8)
    torch.testing.assert_close(fast.S, torch.tensor(TIGHT[:4], dtype=D), rtol=1e-12, atol=0)
    # a small momentum that stays below lambda_1^2 / 4 of every deflated operator also works
    small = power_svd(lin, tr, (40,), (60,), k=3, steps=3000, momentum=0.01)
    torch.testing.assert_close(small.S, plain.S[:3], rtol=1e-12, atol=0)


def test_momentum_speeds_up_a_tight_gap() -> None:
    """Xu et al. 2018: heavy ball with m = lambda_2^2 / 4 contracts the error by about
    lambda_2 / (lambda_1 + sqrt(lambda_1^2 - lambda_2^2)) per step (0.82 here) instead of
    lambda_2 / lambda_1 (0.98 here)."""
    lin, tr = _ops(_matrix(TIGHT))
    lam2 = TIGHT[1] ** 2
    plain = power_svd(lin, tr, (40,), (60,), k=1, steps=3000, tol=1e-10)
    heavy = power_svd(lin, tr, (40,), (60,), k=1, steps=3000, tol=1e-10, momentum=lam2**2 / 4)
    assert plain.converged == [True] and heavy.converged == [True]
    torch.testing.assert_close(heavy.S, plain.S, rtol=1e-14, atol=0)
    # measured: 940 vs 125 steps
    assert heavy.iterations[0] * 4 < plain.iterations[0]
    # cost bookkeeping: two operator calls per step plus one for u
    assert heavy.applications == 2 * heavy.iterations[0] + 1


def test_too_much_momentum_does_not_converge_and_says_so() -> None:
    # above lambda_1^2 / 4 = 0.25 the recurrence's dominant roots are complex: it rotates
    lin, tr = _ops(_matrix(TIGHT))
    res = power_svd(lin, tr, (40,), (60,), k=1, steps=300, momentum=0.3)
    assert res.converged == [False] and res.iterations == [300]


# -- 4. deflation -----------------------------------------------------------------------


def test_deflation_finds_the_second_pair_not_the_first_again() -> None:
    A = _matrix(TIGHT)
    lin, tr = _ops(A)
    res = power_svd(lin, tr, (40,), (60,), k=2, steps=3000)
    _, S_ref, Vh_ref = torch.linalg.svd(A, full_matrices=False)
    assert abs(float(res.S[1]) - 0.99) < 1e-12
    assert float(_cos(res.V[1:2], Vh_ref[1:2])) > 1 - 1e-9
    assert float(_cos(res.V[1:2], res.V[0:1])) < 1e-12


def test_more_pairs_than_the_rank_gives_zeros_not_nan() -> None:
    lin, tr = _ops(_matrix([3.0, 1.0], rows=6, cols=5))
    for res in (
        power_svd(lin, tr, (5,), (6,), k=4, steps=500),
        randomized_svd(lin, tr, (5,), (6,), k=4),
    ):
        assert torch.isfinite(res.S).all() and torch.isfinite(res.U).all()
        torch.testing.assert_close(res.S[:2], torch.tensor([3.0, 1.0], dtype=D))
        assert (res.S[2:] < 1e-8).all()


def test_randomized_iterations_tolerance_and_cost() -> None:
    lin, tr = _ops(_matrix(SEPARATED))
    res = randomized_svd(lin, tr, (40,), (60,), k=3, oversample=5, power_iters=3)
    assert res.iterations == [3, 3, 3] and res.method == "randomized"
    assert res.applications == 8 * 2 * (3 + 1) and res.calls == 2 * (3 + 1)
    early = randomized_svd(lin, tr, (40,), (60,), k=3, power_iters=50, tol=1e-12)
    assert early.converged == [True] * 3 and early.iterations[0] < 50
    torch.testing.assert_close(early.S, torch.tensor(SEPARATED[:3], dtype=D), rtol=1e-12, atol=0)


def test_svd_by_name_and_float32() -> None:
    lin, tr = _ops(_matrix(SEPARATED))
    a = svd(lin, tr, (40,), (60,), k=2, method="power", steps=500)
    b = svd(lin, tr, (40,), (60,), k=2, method="randomized", power_iters=2)
    assert (a.method, b.method) == ("power", "randomized")
    torch.testing.assert_close(a.S, b.S, rtol=1e-6, atol=0)
    # the operator may compute in its own dtype: the result is cast to the iterate's
    c = svd(
        lambda x: lin(x.double()),
        lambda y: tr(y.double()),
        (40,),
        (60,),
        k=2,
        dtype=torch.float32,
        tol=1e-5,
        progress=True,
    )
    assert c.S.dtype == torch.float32
    torch.testing.assert_close(c.S, a.S.float(), rtol=1e-5, atol=0)


# -- 5. bad arguments -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k .* >= 1"),
        ({"k": 41}, "at most 40"),
        ({"k": 2.0}, "integer"),
        ({"steps": 0}, "steps"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": [0.1]}, "1 values for k=5"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_power_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    lin, tr = _ops(_matrix(SEPARATED))
    with pytest.raises(ConvscopeError, match=match):
        power_svd(lin, tr, (40,), (60,), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", [power_svd, randomized_svd])
def test_wrong_operator_shapes(fn: Callable[..., SVDResult]) -> None:
    A = _matrix(SEPARATED)
    lin, tr = _ops(A)
    with pytest.raises(ConvscopeError, match=r"linear returned shape \(\d+, 60\).*expected"):
        fn(lin, tr, (40,), (61,), k=2)
    with pytest.raises(ConvscopeError, match="transpose returned shape"):
        fn(lin, lambda y: (y @ A)[:, :-1], (40,), (60,), k=2)
    with pytest.raises(ConvscopeError, match="in_shape"):
        fn(lin, tr, (0,), (60,), k=2)
    with pytest.raises(ConvscopeError, match="non-finite"):
        fn(lambda x: x @ A.T * float("nan"), tr, (40,), (60,), k=2)


def test_randomized_and_by_name_bad_arguments() -> None:
    lin, tr = _ops(_matrix(SEPARATED))
    with pytest.raises(ConvscopeError, match="oversample"):
        randomized_svd(lin, tr, (40,), (60,), oversample=-1)
    with pytest.raises(ConvscopeError, match="power_iters"):
        randomized_svd(lin, tr, (40,), (60,), power_iters=-1)
    with pytest.raises(ConvscopeError, match="unknown SVD method 'lobpcg'"):
        svd(lin, tr, (40,), (60,), method="lobpcg")
    with pytest.raises(ConvscopeError, match="does not take power_iters"):
        svd(lin, tr, (40,), (60,), method="power", power_iters=3)
