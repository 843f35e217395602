"""Time decoding all 500 layer-5 filters of LeNet: batched (convscope) vs the paper's loops.

Layer 5 in seed 003's numbering is LeNet's third convolution, ``features.conv3``
(500 @ 4x4 over 50 channels); each decoded filter is 28x28. The fast version is
:func:`convscope.decoding.decode`, all filters at once as transposed convolutions; the
baseline is the literal loop-by-loop algorithm that the tests use as the reference
(``tests/_literal_decoding.py``: per filter, per channel pair, per pixel, place a
scaled lower filter). Both run in float64, and the script checks they agree.

The literal version takes minutes for all 500 filters; ``--literal-filters N`` times
the first N and scales by 500 / N (its cost is the same for every filter: the loops
do not depend on the values, except skipping exact zeros, which trained weights do
not have).

Usage::

    python benchmarks/decoding.py --repeats 20 --literal-filters 500
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _machine import cpu_name  # sibling module: the scripts run from benchmarks/

from convscope.decoding import decode
from convscope.models import LeNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _literal_decoding import literal_decode  # noqa: E402

LAYER = "features.conv3"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20, help="timed rounds of the fast version")
    p.add_argument("--literal-filters", type=int, default=500, help="filters the loops decode")
    p.add_argument("--mode", default="nearest", help="unpooling mode")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    n_lit = max(1, min(500, args.literal_filters))

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LeNet().eval()
    layers = list(model.features)[:5]  # conv1, pool1, conv2, pool2, conv3

    for _ in range(3):  # warm-up
        decode(model, LAYER, args.mode, dtype=torch.float64)
    fast_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        dec = decode(model, LAYER, args.mode, dtype=torch.float64)
        fast_times.append(time.perf_counter() - t0)
    fast = statistics.median(fast_times)
    assert dec.filters.shape == (500, 1, 28, 28)

    t0 = time.perf_counter()
    worst = 0.0
    for k in range(n_lit):
        ref = torch.from_numpy(literal_decode(layers, k, args.mode))
        worst = max(worst, float((ref - dec.filters[k]).abs().max()))
    literal = (time.perf_counter() - t0) * 500 / n_lit
    if worst > 1e-10:
        raise SystemExit(f"fast and literal disagree by {worst:.2e}")

    print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"LeNet {LAYER}: 500 filters -> (500, 1, 28, 28), unpool={args.mode}, float64")
    print(f"fast (batched, median of {args.repeats}): {1e3 * fast:.1f} ms")
    how = "measured" if n_lit == 500 else f"{n_lit} filters timed, x {500 / n_lit:g}"
    print(f"literal loops ({how}): {literal:.1f} s")
    print(f"ratio literal / fast: {literal / fast:.0f}x; max |difference| {worst:.1e}")


if __name__ == "__main__":
    main()
