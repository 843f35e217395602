"""Seed 001's image-to-image analyses (section 4 "Case 3", 8.C) on our trained CycleGAN generator.

The model is ``experiments/train_i2i.py``'s x4 SR refiner, ``sr = bicubic(lr) + G(2 bicubic(lr)
- 1)`` with ``G`` CycleGAN's ResNet generator (instance norm, reflection padding, tanh; ngf 16,
6 blocks), our substitute for the paper's pretrained CycleGANs (Van Gogh, Ukiyo-e,
photo-to-label). It is interpreted at the input of ``experiments/linear_sr.py`` (the held-out
astronaut's face, 128 x 128 HR luma reduced x4 to 32 x 32), in float64, mode ``freeze``, beside
bicubic and the committed ESPCN x4 at the same input and the same positions:

- exactness: ``F x0 + r`` against the model's own ``f(x0)`` (the script fails beyond 1e-10);
- residual: its size against the output and against G's detail ``f(x0) - bicubic(x0)``, split
  by kind of constant (convolution biases, instance norms' frozen means, the ``- 1`` of the
  input mapping), which is how the frozen instance-norm statistics enter ``f``;
- tanh: its frozen ratio ``tanh(z0) / z0`` at every output pixel;
- columns (projective filters) at every interior position: spread, centroid shift, gain,
  deviation (the functions of linear_sr.py), and their distance to bicubic's and ESPCN's columns
  at the same positions; G's own part of each column (the refiner's minus bicubic's); the same
  for the tangent map (mode ``taylor``, the refiner's Jacobian at the input, materialized),
  which is what freezing the instance norms' statistics and tanh's ratio is measured against;
- rows (receptive filters) at linear_sr.py's four positions: sums and L1 norms, and their
  distance to the rows of the tangent map (mode ``taylor``, the true gradient);
- the top singular triplets by randomized subspace iteration on the operator, checked against
  the SVD of the materialized ``F`` (16,384 x 1,024), with the exact values of bicubic's,
  ESPCN's and the tangent map's.

Writes into ``experiments/results/linear/``: ``i2i.json``, ``i2i.md`` (from the json by
:func:`summary`), ``i2i_columns.png``, ``i2i_detail_columns.png``, ``i2i_rows.png``,
``i2i_svd.png``, ``i2i_residual.png``.

    python experiments/linear_i2i.py          # about 20 minutes on one shared CPU thread
    python experiments/linear_i2i.py --quick  # a 16 x 16 LR part of the input: 1-2 minutes

``tests/test_committed_i2i.py`` ties the committed files to this code and the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from linear_sr import CROP, SCALE, SHOW, column_crops, column_stats, lr_image
from train_i2i import CKPT, ESPCN_CKPT, BicubicRefiner, load

from convscope.io import write_json
from convscope.linear import LinearInterpreter, group_contributions
from convscope.models import BicubicUpscaler, CycleGANGenerator, load_checkpoint
from convscope.report import linear_figures as lf
from convscope.report.figures import save_figure

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "linear"
METRICS = ROOT / "results" / "cyclegan" / "metrics.json"
TAYLOR = "cyclegan_taylor"  # the generator's tangent map (mode taylor), beside its frozen F
LABELS = {"bicubic": "bicubic", "espcn": "ESPCN", "cyclegan": "CycleGAN G",
          TAYLOR: "CycleGAN G (tangent map)"}  # fmt: skip
EXACT_TOL = 1e-10  # float64: F x0 + r must give f(x0) to rounding
POWER_ITERS = 8
OVERSAMPLE = 10
WINDOW = 9  # linear_sr.py's window (LR pixels) around each column's centre
KINDS = {
    "conv2d bias": "convolution biases",
    "conv_transpose2d bias": "convolution biases",
    "instance_norm shift": "instance-norm frozen means",
    "sub constant": "input mapping (2 y - 1)",
}


def interior(h: int, w: int) -> list[tuple[int, int]]:
    """linear_sr.py's interior positions: the crop and the filter's support inside."""
    m = 2 + WINDOW // 2
    return [(yy, xx) for yy in range(m, h - m) for xx in range(m, w - m)]


def all_columns(li: LinearInterpreter) -> torch.Tensor:
    h, w = li.in_shape[-2:]
    return li.columns(list(range(h * w)))  # (h w, 1, 4h, 4w)


def stats(t: torch.Tensor) -> dict[str, float]:
    return {"mean": float(t.mean()), "std": float(t.std()), "min": float(t.min()),
            "max": float(t.max())}  # fmt: skip


def out_positions(show: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The output pixels of linear_sr.py's rows: inside the 4x4 block of each shown pixel."""
    return [(SCALE * yy + 1, SCALE * xx + 2) for yy, xx in show]


Parts = tuple[LinearInterpreter, dict[str, Any], dict[str, torch.Tensor], torch.Tensor]


def decompose(model: BicubicRefiner, x: torch.Tensor) -> Parts:
    """The frozen system at ``x`` (float64): its interpreter, the json's exactness, residual,
    contributions and tanh entries, the contributions grouped by kind, and tanh's ratio."""
    model = model.double().eval()
    gen = model.generator
    assert isinstance(gen, CycleGANGenerator)
    tanh_in: list[torch.Tensor] = []
    hook = gen.model[-1].register_forward_hook(lambda m, a, o: tanh_in.append(a[0].detach()))
    with torch.no_grad():
        f0 = model(x)
        bic0 = model.up(x)
    hook.remove()
    z0 = tanh_in[0]
    li = LinearInterpreter(model, x, batch_size=32)
    h, w = li.in_shape[-2:]
    y, r = li.output, li.residual
    detail = f0 - bic0
    res: dict[str, Any] = {
        "exactness": {
            "dtype": "float64",
            "max_abs_error": float((li.linear(x) + r - f0).abs().max()),
            "li_x0_max_abs_error": float((li(x) - f0).abs().max()),
            "output_max_abs_error": float((y - f0).abs().max()),
            "tolerance": EXACT_TOL,
        },
        "residual": {
            "bias_sources": len(li.sources),
            "output_norm": float(y.norm()),
            "residual_norm": float(r.norm()),
            "relative_residual": float(r.norm() / y.norm()),
            "residual_max_abs": float(r.abs().max()),
            "detail_norm": float(detail.norm()),
            "residual_over_detail": float(r.norm() / detail.norm()),
        },
    }
    # where the constants come from: the instance norms' frozen means are bias sources
    op = {s.name: s.op for s in li.sources}
    contrib = li.contributions()
    groups = group_contributions(contrib, key=lambda n: KINDS.get(op[n], op[n]))
    res["contributions"] = {
        "norm": {g: float(v.norm()) for g, v in groups.items()},
        "sum_over_output_norm": {g: float(v.sum() / y.norm()) for g, v in groups.items()},
        "sources_per_kind": {
            g: sum(1 for n in op if KINDS.get(op[n], op[n]) == g) for g in groups if g != "input"
        },  # fmt: skip
        "max_abs_error_of_sum": float((sum(groups.values()) - f0).abs().max()),
    }
    # G's detail = G's part of F x0 (F x0 - bicubic(x0): bicubic has no constant) + r
    res["residual"]["g_input_norm"] = float((contrib["input"] - bic0).norm())
    by_layer = group_contributions(contrib)
    in_norms = {
        n: float(by_layer[n].norm()) for n in by_layer if op.get(n) == "instance_norm shift"
    }
    top = max(in_norms, key=lambda n: in_norms[n])
    res["contributions"]["largest_instance_norm"] = {"module": top, "norm": in_norms[top]}
    # tanh, frozen: the ratio tanh(z0) / z0 at every output pixel (no constant)
    gate = torch.where(z0 == 0, torch.ones_like(z0), torch.tanh(z0) / z0)
    res["tanh"] = {
        "pre_tanh_abs": stats(z0.abs()),
        "gate": stats(gate),
        "share_gate_below_0.99": float((gate < 0.99).double().mean()),
        "share_gate_below_0.9": float((gate < 0.9).double().mean()),
        "detail_shrink": float(1 - torch.tanh(z0).norm() / z0.norm()),
    }
    return li, res, groups, gate


def analyse(
    model: BicubicRefiner, x: torch.Tensor, k: int, out: Path, show: list[tuple[int, int]] = SHOW
) -> dict[str, Any]:
    model = model.double().eval()
    li, res, groups, gate = decompose(model, x)
    h, w = li.in_shape[-2:]
    y, r = li.output, li.residual
    with torch.no_grad():
        detail = y - model.up(x)
    # columns: the refiner, bicubic and ESPCN at the same input and positions
    nets = {"bicubic": BicubicUpscaler(SCALE).double(),
            "espcn": load_checkpoint(ESPCN_CKPT)[0].double().eval()}  # fmt: skip
    full = {"cyclegan": all_columns(li)}
    for n, m in nets.items():
        full[n] = all_columns(LinearInterpreter(m, x, batch_size=64))
    # the tangent map (mode taylor, the true Jacobian at x0), materialized the same way
    tangent = LinearInterpreter(model, x, mode="taylor", batch_size=32)
    full[TAYLOR] = all_columns(tangent)
    inner = interior(h, w)
    flat = [yy * w + xx for yy, xx in inner]
    crops = {n: column_crops(c[flat], inner) for n, c in full.items()}
    own = crops["cyclegan"] - crops["bicubic"]  # G's part of the refiner's columns

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)

    res["columns"] = {
        **{n: column_stats(c) for n, c in crops.items()},
        "distance_to_bicubic": {
            n: stats(dist(crops[n], crops["bicubic"])) for n in ("espcn", "cyclegan", TAYLOR)
        },  # fmt: skip
        "cyclegan_distance_to_espcn": stats(dist(crops["cyclegan"], crops["espcn"])),
        "freeze_distance_to_taylor": stats(dist(crops["cyclegan"], crops[TAYLOR])),
        "detail_gain": stats(own.flatten(1).sum(1)),
    }
    # rows at linear_sr.py's positions, and the tangent map's rows there
    pos = out_positions(show)
    idx = [yy * SCALE * w + xx for yy, xx in pos]
    rows = li.rows(idx)
    taylor = tangent.rows(idx)
    bic_rows = LinearInterpreter(nets["bicubic"], x).rows(idx)
    esp_rows = LinearInterpreter(nets["espcn"], x).rows(idx)
    res["rows"] = {
        "at_output": [list(p) for p in pos],
        "sum": {
            "bicubic": bic_rows.flatten(1).sum(1).tolist(),
            "espcn": esp_rows.flatten(1).sum(1).tolist(),
            "cyclegan": rows.flatten(1).sum(1).tolist(),
        },  # fmt: skip
        "l1": {
            "bicubic": bic_rows.flatten(1).abs().sum(1).tolist(),
            "espcn": esp_rows.flatten(1).abs().sum(1).tolist(),
            "cyclegan": rows.flatten(1).abs().sum(1).tolist(),
        },  # fmt: skip
        "taylor_sum": taylor.flatten(1).sum(1).tolist(),
        "freeze_vs_taylor": (
            (rows - taylor).flatten(1).norm(dim=1) / taylor.flatten(1).norm(dim=1)
        ).tolist(),
    }
    # SVD: operator-only randomized method against the materialized F
    exact = {n: torch.linalg.svdvals(c.reshape(h * w, -1).T) for n, c in full.items()}
    del full[TAYLOR]
    t = time.perf_counter()
    svd = li.svd(k=k, method="randomized", power_iters=POWER_ITERS, oversample=OVERSAMPLE)
    s_exact = exact["cyclegan"][:k]
    res["svd"] = {
        "k": k,
        "method": f"randomized (power_iters {POWER_ITERS}, oversample {OVERSAMPLE})",
        "seconds": round(time.perf_counter() - t, 1),
        "singular_values": svd.S.tolist(),
        "exact_singular_values": {n: s[:k].tolist() for n, s in exact.items()},
        "max_relative_error": float(((svd.S - s_exact).abs() / s_exact).max()),
        "condition_top_vs_last": {n: float(s[0] / s[-1]) for n, s in exact.items()},
    }
    # figures
    picture = x[0, 0].numpy()
    cols_show = torch.stack([full["cyclegan"][yy * w + xx] for yy, xx in show])
    show_own = cols_show - torch.stack([full["bicubic"][yy * w + xx] for yy, xx in show])
    save_figure(
        lf.plot_filter_maps(picture, cols_show.numpy(), show, window=SCALE * WINDOW,
                            titles=[f"column at {p}" for p in show]),
        out / "i2i_columns.png",
    )  # fmt: skip
    save_figure(
        lf.plot_filter_maps(picture, show_own.numpy(), show, window=SCALE * WINDOW,
                            titles=[f"G's part of column {p}" for p in show]),
        out / "i2i_detail_columns.png",
    )  # fmt: skip
    save_figure(
        lf.plot_filter_maps(picture, rows.numpy(), show, window=11, kind="row",
                            titles=[f"row of output {p}" for p in pos]),
        out / "i2i_rows.png",
    )  # fmt: skip
    save_figure(
        lf.plot_svd_pairs(svd.S.numpy(), svd.U.numpy(), svd.V.numpy(), image=picture,
                          title=f"CycleGAN G refiner: top-{k} singular triplets of F"),
        out / "i2i_svd.png",
    )  # fmt: skip
    save_figure(
        lf.plot_signed_maps(
            [y[0].numpy(), detail[0].numpy(), r[0].numpy(),
             *(v[0].numpy() for g, v in groups.items() if g != "input"), (gate - 1)[0].numpy()],
            ["output f(x0)", "G's detail", "residual r",
             *(g for g in groups if g != "input"), "tanh ratio - 1"],
            image=picture, title="CycleGAN G refiner: f(x0) = F x0 + r, r split by kind",
        ),
        out / "i2i_residual.png",
    )  # fmt: skip
    return res


def _f(v: float) -> str:
    return f"{v:.3g}"


def summary(r: dict[str, Any]) -> str:
    """The page ``i2i.md``: every number and every comparison read from ``r`` (``i2i.json``)."""
    p, e, res, c, t = r["psnr"], r["exactness"], r["residual"], r["contributions"], r["tanh"]
    cols, rows, svd = r["columns"], r["rows"], r["svd"]
    names = ("bicubic", "espcn", "cyclegan")
    lr_h, lr_w = r["lr_size"]
    n_in, n_out = lr_h * lr_w, lr_h * lr_w * r["scale"] ** 2
    order = sorted(names, key=lambda n: p[f"mean_{n}_psnr"])
    ranking = " < ".join(f"{LABELS[n]} {p[f'mean_{n}_psnr']:.2f} dB" for n in order)
    photos = p["test_photos"]
    wins = {
        ref: sum(row["cyclegan_psnr"] > row[f"{ref}_psnr"] for row in photos.values())
        for ref in ("bicubic", "espcn")
    }
    d_bic = cols["distance_to_bicubic"]
    nearer = "closer to" if d_bic["cyclegan"]["mean"] < d_bic["espcn"]["mean"] else "farther from"
    kinds = [g for g in c["norm"] if g != "input"]
    biggest = max(kinds, key=lambda g: c["norm"][g])
    parts = sorted(kinds, key=lambda g: -c["norm"][g])
    constants = ", ".join(f"{g} {_f(c['norm'][g])}" for g in parts)
    row_sum = rows["sum"]
    fvt = rows["freeze_vs_taylor"]
    taylor_flat = max(abs(v - 1) for v in rows["taylor_sum"]) < 1e-6
    table = (*names, TAYLOR)
    header = "| | " + " | ".join(LABELS[n] for n in table) + " |"
    sv = svd["exact_singular_values"]
    cond = svd["condition_top_vs_last"]
    quick = " --quick" if r.get("quick") else ""
    part = (
        f" (`--quick`: a {lr_h} x {lr_w} LR part of linear_sr.py's input)" if r.get("quick") else ""
    )

    def col_row(label: str, key: str) -> str:
        cells = [f"{cols[n][key]['mean']:.3f} ± {cols[n][key]['std']:.3f}" for n in table]
        return f"| {label} | " + " | ".join(cells) + " |"

    def times(a: float, b: float) -> str:
        return f"{a / b:.3g} times"

    lines = [
        "# Linear interpreter on CycleGAN's generator (seed 001, Case 3, 8.C)",
        "",
        "Task, our substitute for the paper's pretrained CycleGANs (photo to painting, to facade "
        "labels), whose unpaired data we do not have: x4 super-resolution "
        "refinement of luma, `sr = bicubic(lr) + G(2 bicubic(lr) - 1)`, G CycleGAN's ResNet "
        f"generator (ngf {r['generator']['ngf']}, {r['generator']['n_blocks']} blocks, "
        f"{r['generator']['parameters']:,} parameters; instance norm, reflection padding, tanh) "
        "trained with MSE on the training photos of `experiments/train_sr.py` "
        "(`experiments/train_i2i.py`). Input: the held-out astronaut's face of linear_sr.py, "
        f"{lr_h * r['scale']} x {lr_w * r['scale']} HR luma reduced x{r['scale']} to "
        f"{lr_h} x {lr_w}{part}, float64, mode `freeze`; beside it the generator's tangent "
        "map (mode `taylor`, the Jacobian of the refiner at that input). Produced by "
        f"`python experiments/linear_i2i.py{quick}` in {r['seconds']:.0f} s.",
        "",
        "## Held-out PSNR (luma, 4 px shaved)",
        "",
        "| photo | bicubic | ESPCN | CycleGAN G |",
        "| --- | --- | --- | --- |",
        *(
            f"| {n} | {row['bicubic_psnr']:.2f} | {row['espcn_psnr']:.2f} | "
            f"{row['cyclegan_psnr']:.2f} |"
            for n, row in photos.items()
        ),
        f"| mean | {p['mean_bicubic_psnr']:.2f} | {p['mean_espcn_psnr']:.2f} | "
        f"{p['mean_cyclegan_psnr']:.2f} |",
        "",
        f"Ordered by mean PSNR: {ranking}. The generator beats bicubic on {wins['bicubic']} and "
        f"ESPCN on {wins['espcn']} of the {len(photos)} held-out photos.",
        "",
        "## Exactness and residual",
        "",
        f"`F x0 + r` against the model's `f(x0)`: max abs error {e['max_abs_error']:.1e} "
        f"(tolerance {e['tolerance']:g}, float64); the contributions sum to `f(x0)` within "
        f"{c['max_abs_error_of_sum']:.1e}. {res['bias_sources']} bias sources. "
        f"abs(r) / abs(f(x0)) = {res['relative_residual']:.3g}; against G's detail "
        f"`f(x0) - bicubic(x0)` (norm {_f(res['detail_norm'])}), abs(r) is "
        f"{res['residual_over_detail']:.3g} times as large.",
        "",
        "| part of f(x0) | sources | norm | sum / abs(f(x0)) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {g} | {c['sources_per_kind'].get(g, '-')} | {_f(c['norm'][g])} | "
            f"{c['sum_over_output_norm'][g]:.3g} |"
            for g in c["norm"]
        ),
        "",
        f"G's detail (norm {_f(res['detail_norm'])}) is G's part of `F x0` (norm "
        f"{_f(res['g_input_norm'])}, that is `F x0 - bicubic(x0)`) plus `r` (norm "
        f"{_f(res['residual_norm'])}): two terms {_f(res['g_input_norm'] / res['detail_norm'])} "
        f"and {_f(res['residual_norm'] / res['detail_norm'])} times the detail they add up to. "
        f"The constant parts by norm: {constants}; the largest is {biggest}. The largest "
        f"single instance norm: `{c['largest_instance_norm']['module']}` (norm "
        f"{_f(c['largest_instance_norm']['norm'])}). Frozen, an instance norm is "
        "`x * rstd0 - mean0 * rstd0`: its statistics are those of the image at hand, and the "
        "mean it removes becomes a constant of the frozen system, so F no longer removes a "
        "brightness change the network itself ignores.",
        "",
        f"tanh, frozen as the ratio `tanh(z0) / z0`: pre-tanh values up to "
        f"{t['pre_tanh_abs']['max']:.3g} in absolute value (mean {t['pre_tanh_abs']['mean']:.3g})"
        f", ratio {t['gate']['min']:.4f} to {t['gate']['max']:.4f} (mean "
        f"{t['gate']['mean']:.4f}); {t['share_gate_below_0.99']:.1%} of output pixels have a "
        f"ratio below 0.99 and {t['share_gate_below_0.9']:.1%} below 0.9. G's detail "
        f"`tanh(z0)` is {t['detail_shrink']:.1%} smaller in norm than `z0`.",
        "",
        f"## Columns (projective filters) at the {cols['cyclegan']['positions']} interior "
        "positions",
        "",
        f"As in `sr.md` ({SCALE * WINDOW} x {SCALE * WINDOW} HR crops; gain = sum, 16 for an "
        "upscaler that keeps flat areas flat). Distance = norm of the difference over the norm "
        "of the second column at the same position. Mean ± std over positions.",
        "",
        header,
        "| --- |" + " --- |" * len(table),
        col_row("gain (sum)", "gain"),
        col_row("spread (HR px)", "spread_hr_px"),
        col_row("centroid shift (HR px)", "centroid_shift_hr_px"),
        col_row("deviation from the mean column", "deviation_from_mean_column"),
        col_row("negative / positive mass", "negative_to_positive_mass"),
        "",
        "Distance to bicubic's column: "
        + ", ".join(
            f"{LABELS[n]} {d_bic[n]['mean']:.3f} ± {d_bic[n]['std']:.3f}"
            for n in ("espcn", "cyclegan", TAYLOR)
        )
        + f": the generator's frozen columns are {nearer} bicubic's than ESPCN's are; to "
        f"ESPCN's: {cols['cyclegan_distance_to_espcn']['mean']:.3f}; to the tangent map's: "
        f"{cols['freeze_distance_to_taylor']['mean']:.3f} ± "
        f"{cols['freeze_distance_to_taylor']['std']:.3f}. G's own part of a frozen column (the "
        f"refiner's minus bicubic's) sums to {cols['detail_gain']['mean']:.3f} ± "
        f"{cols['detail_gain']['std']:.3f}. Figures: `i2i_columns.png`, "
        "`i2i_detail_columns.png`.",
        "",
        "## Rows (receptive filters)",
        "",
        "| output pixel | sum: bicubic | ESPCN | CycleGAN G | L1: bicubic | ESPCN | CycleGAN G | "
        "freeze vs taylor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {tuple(pos)} | {row_sum['bicubic'][i]:.3f} | {row_sum['espcn'][i]:.3f} | "
            f"{row_sum['cyclegan'][i]:.3f} | {rows['l1']['bicubic'][i]:.3f} | "
            f"{rows['l1']['espcn'][i]:.3f} | {rows['l1']['cyclegan'][i]:.3f} | {fvt[i]:.3f} |"
            for i, pos in enumerate(rows["at_output"])
        ),
        "",
        "A row's sum is the output's response to a uniform brightening of the input under the "
        "frozen decisions (1 for bicubic). The tangent map's rows sum to "
        + ", ".join(f"{v:.3f}" for v in rows["taylor_sum"])
        + (
            ": G itself ignores a uniform brightening (its first instance norm removes it), so "
            "only bicubic's 1 is left; frozen, the statistics no longer follow the input and "
            "the rows sum to "
            if taylor_flat
            else "; frozen, the rows sum to "
        )
        + f"{min(row_sum['cyclegan']):.3f} to {max(row_sum['cyclegan']):.3f}. "
        "freeze vs taylor = distance of the frozen row from the tangent map's (the true "
        "gradient of that output pixel), relative to the latter: "
        f"{min(fvt):.3f} to {max(fvt):.3f}, what freezing the instance norms' statistics and "
        "tanh's ratio instead of differentiating them changes. Figure: `i2i_rows.png`.",
        "",
        "## SVD",
        "",
        f"{svd['method']} on the frozen operator, checked against `torch.linalg.svdvals` of "
        f"the materialized F ({n_out:,} x {n_in:,}): max relative error "
        f"{svd['max_relative_error']:.1e}. The table's values are all from materialized matrices.",
        "",
        "| model | top singular values (exact) | condition (largest / smallest) |",
        "| --- | --- | --- |",
        *(
            f"| {LABELS[n]} | "
            + ", ".join(f"{v:.4f}" for v in sv[n])
            + f" | {cond[n]:.3g} |"
            for n in table
        ),
        "",
        f"The frozen F's largest singular value is {times(sv['cyclegan'][0], sv[TAYLOR][0])} "
        "the tangent map's and "
        f"{times(sv['cyclegan'][0], sv['bicubic'][0])} bicubic's; the tangent map's is "
        f"{times(sv[TAYLOR][0], sv['bicubic'][0])} bicubic's and "
        f"{times(sv[TAYLOR][0], sv['espcn'][0])} ESPCN's. Randomized: "
        + ", ".join(f"{v:.4f}" for v in svd["singular_values"])
        + ". Figure: `i2i_svd.png`; the residual split by kind and tanh's ratio: "
        "`i2i_residual.png`.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--k", type=int, default=6, help="singular triplets")
    ap.add_argument("--ckpt", type=Path, default=CKPT)
    ap.add_argument("--metrics", type=Path, default=METRICS)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--quick", action="store_true", help="a 16 x 16 LR part of the crop (smoke)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    model, extra = load(args.ckpt)
    metrics = json.loads(args.metrics.read_text())
    x = lr_image()
    show = SHOW
    if args.quick:
        x, show = x[..., 4:20, 4:20].contiguous(), [(7, 7), (8, 9)]
    res = analyse(model, x, args.k, args.out, show)
    e = res["exactness"]
    if max(e["max_abs_error"], e["li_x0_max_abs_error"], e["output_max_abs_error"]) > EXACT_TOL:
        raise SystemExit(f"the frozen system is not exact: {e}")
    keys = ("test_photos", "mean_bicubic_psnr", "mean_espcn_psnr", "mean_cyclegan_psnr")
    results = {
        "crop": list(CROP),
        "scale": SCALE,
        "lr_size": list(x.shape[-2:]),
        "quick": args.quick,
        "checkpoint": str(args.ckpt.resolve()).removeprefix(str(ROOT.parent) + "/"),
        "generator": extra["generator"],
        "psnr": {k: metrics[k] for k in keys},
        "seconds": round(time.perf_counter() - t0, 1),
        **res,
    }
    write_json(args.out / "i2i.json", results)
    (args.out / "i2i.md").write_text(summary(results))
    d_bic = res["columns"]["distance_to_bicubic"]
    print(
        f"exact to {e['max_abs_error']:.1e}; |r|/|f| {res['residual']['relative_residual']:.3g}; "
        f"column distance to bicubic {d_bic['cyclegan']['mean']:.3f}"
        f" (ESPCN {d_bic['espcn']['mean']:.3f}); "
        f"SVD error {res['svd']['max_relative_error']:.1e}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
