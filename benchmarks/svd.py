"""Time ``power_svd`` (the paper's Algorithm 1) against ``randomized_svd`` for the top-k
singular values of a conv net frozen at one image, to a given relative accuracy.

The operator is the linear part of a 3-layer ReLU conv net (1 -> 8 -> 8 -> 1 channels by default,
3x3, padding 1, random He-scaled weights, no biases) with its ReLU masks frozen at
``x0`` = scikit-image's camera photo resized to ``side x side``: ``F`` is
``side^2 x side^2`` (4096 x 4096 at the default 64). The transpose is written with
``conv_transpose2d``. ``F`` is materialized column by column and the reference singular
values come from ``torch.linalg.eigvalsh(F^T F)`` (accurate far beyond ``--rtol`` for the
top of the spectrum).

For each method the script finds the cheapest setting that reaches ``--rtol`` on all top-k
singular values: for ``power_svd`` the loosest ``tol`` (``steps`` large), for
``randomized_svd`` the fewest ``power_iters``. It then times that setting (median of
``--repeats`` runs) and prints operator applications (single vectors through ``F`` or
``F^T``), calls (batches), seconds, and ratios against plain power iteration.
``power+momentum`` uses the best heavy-ball momentum of each pair,
``m_j = s_{j+1}^4 / 4``, taken from the reference spectrum: an oracle bound on what
momentum can give, not something a user can set without knowing the spectrum.

Usage::

    python benchmarks/svd.py --side 64 --k 5 --rtol 1e-3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as Fn
from _machine import cpu_name  # sibling module: the scripts run from benchmarks/

from convscope.linear.svd import SVDResult, power_svd, randomized_svd

D = torch.float64
T = TypeVar("T")


def _operator(side: int, width: int, seed: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    from skimage import data, transform

    img = transform.resize(
        data.camera().astype("float64") / 255.0, (side, side), anti_aliasing=True
    )
    x0 = torch.tensor(img, dtype=D)[None, None]
    g = torch.Generator().manual_seed(seed)

    def weight(o: int, i: int) -> torch.Tensor:
        return torch.randn(o, i, 3, 3, generator=g, dtype=D) * (2.0 / (9 * i)) ** 0.5

    w1, w2, w3 = weight(width, 1), weight(width, width), weight(1, width)
    h1 = Fn.conv2d(x0, w1, padding=1)
    m1 = (h1 > 0).to(D)
    m2 = (Fn.conv2d(h1 * m1, w2, padding=1) > 0).to(D)

    def linear(x: torch.Tensor) -> torch.Tensor:
        h = Fn.conv2d(Fn.conv2d(x, w1, padding=1) * m1, w2, padding=1) * m2
        return Fn.conv2d(h, w3, padding=1)

    def transpose(y: torch.Tensor) -> torch.Tensor:
        h = Fn.conv_transpose2d(Fn.conv_transpose2d(y, w3, padding=1) * m2, w2, padding=1)
        return Fn.conv_transpose2d(h * m1, w1, padding=1)

    return linear, transpose


def _materialize(linear: Callable[..., Any], side: int, chunk: int = 1) -> torch.Tensor:
    n = side * side
    eye = torch.eye(n, dtype=D)
    cols = [
        linear(eye[i : i + chunk].reshape(-1, 1, side, side)).reshape(-1, n)
        for i in range(0, n, chunk)
    ]
    return torch.cat(cols).T  # (N, n)


def _error(res: SVDResult, ref: torch.Tensor) -> float:
    return float(((res.S - ref) / ref).abs().max())


def _residual(res: SVDResult, linear: Callable[..., Any], transpose: Callable[..., Any]) -> float:
    """max_i of ||F v_i - s_i u_i|| / s_i and ||F^T u_i - s_i v_i|| / s_i: how far the pairs
    are from exact singular pairs (each method makes one of the two exact by construction)."""
    k = res.S.shape[0]
    u, v = res.U.reshape(k, -1), res.V.reshape(k, -1)
    r1 = linear(res.V).reshape(k, -1) - res.S[:, None] * u
    r2 = transpose(res.U).reshape(k, -1) - res.S[:, None] * v
    return float((torch.maximum(r1.norm(dim=1), r2.norm(dim=1)) / res.S).max())


def _first(settings: Sequence[T], ok: Callable[[T], bool]) -> T | None:
    """The first setting for which ``ok`` holds, assuming it keeps holding after that:
    probe indices 0, 1, 3, 7, ... until it holds, then bisect (a handful of runs)."""
    bad, i = -1, 0
    while not ok(settings[i]):
        bad = i
        if i == len(settings) - 1:
            return None
        i = min(2 * i + 1, len(settings) - 1)
    good = i
    while good - bad > 1:
        mid = (bad + good) // 2
        if ok(settings[mid]):
            good = mid
        else:
            bad = mid
    return settings[good]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=64, help="image side: F is side^2 x side^2")
    p.add_argument("--width", type=int, default=8, help="channels of the hidden conv layers")
    p.add_argument("--k", type=int, default=5, help="singular pairs")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative accuracy to reach")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the chosen setting")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    k, side = args.k, args.side
    shape = (1, side, side)

    linear, transpose = _operator(side, args.width, args.seed)
    t0 = time.perf_counter()
    F = _materialize(linear, side)
    y = torch.randn(3, side * side, dtype=D)
    err_t = (transpose(y.reshape(3, *shape)).reshape(3, -1) - y @ F).abs().max()
    assert err_t < 1e-10, f"transpose is not F^T: {err_t}"
    lam = torch.linalg.eigvalsh(F.T @ F).flip(0)
    ref_all = lam.clamp_min(0).sqrt()
    ref = ref_all[:k]
    t_ref = time.perf_counter() - t0
    gaps = (ref_all[1 : k + 1] / ref_all[:k]).tolist()

    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU: {cpu_name()}")
    print(
        f"operator: {side * side} -> {side * side}, hidden width {args.width}; "
        f"materialize + eigvalsh {t_ref:.1f} s"
    )
    print("top singular values: " + ", ".join(f"{v:.4f}" for v in ref_all[: k + 1].tolist()))
    print("ratios s_(i+1)/s_i:  " + ", ".join(f"{g:.4f}" for g in gaps))
    print(f"target: every one of the top {k} within {args.rtol:g} relative\n")

    def runner(name: str, setting: float | int) -> Callable[[], SVDResult]:
        if name == "power":
            return lambda: power_svd(
                linear, transpose, shape, shape, k=k, steps=100_000, tol=float(setting)
            )
        if name == "power+momentum":
            momenta = [float(ref_all[j + 1]) ** 4 / 4 for j in range(k)]
            return lambda: power_svd(
                linear,
                transpose,
                shape,
                shape,
                k=k,
                steps=100_000,
                tol=float(setting),
                momentum=momenta,
            )
        over = int(name.split("=")[1])
        return lambda: randomized_svd(
            linear, transpose, shape, shape, k=k, oversample=over, power_iters=int(setting)
        )

    tols = [3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6]
    plans: list[tuple[str, list[float] | list[int], str]] = [
        ("power", tols, "tol"),
        ("power+momentum", tols, "tol"),
        ("randomized oversample=5", list(range(0, 257)), "power_iters"),
        ("randomized oversample=10", list(range(0, 257)), "power_iters"),
        ("randomized oversample=20", list(range(0, 257)), "power_iters"),
    ]
    rows: list[tuple[str, str, SVDResult, float, float]] = []
    for name, settings, knob in plans:
        found = _first(
            settings,
            lambda setting, name=name: _error(runner(name, setting)(), ref) <= args.rtol,  # type: ignore[misc]
        )
        if found is None:
            print(f"{name}: did not reach {args.rtol:g} within the settings tried")
            continue
        run = runner(name, found)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            res = run()
            times.append(time.perf_counter() - t)
        rows.append(
            (
                name,
                f"{knob}={found:g}",
                res,
                statistics.median(times),
                _residual(res, linear, transpose),
            )
        )

    base = next((r for r in rows if r[0] == "power"), None)
    head = ["method", "setting", "iterations", "applications", "calls", "seconds", "error"]
    head += ["residual", "applications vs power", "seconds vs power"]
    print("| " + " | ".join(head) + " |")
    print("| --- | --- | --- |" + " ---: |" * (len(head) - 3))
    for name, setting, res, sec, resid in rows:
        ra = f"{base[2].applications / res.applications:.2f}x fewer" if base else "-"
        rs = f"{base[3] / sec:.2f}x faster" if base else "-"
        its = (
            ",".join(str(i) for i in res.iterations)
            if res.method == "power"
            else str(res.iterations[0])
        )
        print(
            f"| {name} | {setting} | {its} | {res.applications} | {res.calls} | {sec:.2f} | "
            f"{_error(res, ref):.1e} | {resid:.1e} | {ra} | {rs} |"
        )


if __name__ == "__main__":
    main()
