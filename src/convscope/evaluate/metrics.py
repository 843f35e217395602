"""The explanation metrics of the comparison, each through Quantus where Quantus has it.

Every metric gives one number per image (so means get confidence intervals) and says
whether higher is better. Sizes scale with the image: the deletion curve removes about
``H * W / 28`` pixels a step (a divisor of ``H * W``), the faithfulness correlation
perturbs an eighth of the pixels.

- ``deletion``: Quantus ``PixelFlipping`` (most relevant pixels first, to the image's
  minimum): the target's softmax after each step; the score is the area under that curve
  (Quantus's ``calculate_auc``, divided by the number of steps so it lies in [0, 1];
  lower is better).
- ``insertion``: the mirror image (Quantus has none): from the image's minimum, the most
  relevant pixels are put back first; the area under the softmax curve, higher is better.
- ``faithfulness_correlation``: Quantus ``FaithfulnessCorrelation`` (Bhatt et al.):
  Pearson correlation between the attribution of random pixel subsets and the drop of the
  target logit when they are removed; higher is better.
- ``road``: Quantus ``ROAD`` (Rong et al., noisy linear imputation, most relevant first):
  the fraction of the removal levels 10, 30, 50, 70, 90 % at which the prediction holds,
  per image; lower is better.
- ``sparseness``: Quantus ``Sparseness`` (Gini index of |a|), higher is sparser.
- ``complexity``: Quantus ``Complexity`` (entropy of |a|), lower is simpler.
- ``randomisation``: Quantus ``MPRT`` (Adebayo et al.) with every layer randomised at
  once: the Spearman correlation between the map of the trained and of the randomised
  model, per image (NaN for a constant map); lower is better (a map that ignores the
  weights fails this sanity check).
- ``max_sensitivity``: Quantus ``MaxSensitivity`` (Yeh et al.): the largest relative
  change of the map over 4 draws of uniform noise (2 % of the image's range); lower is
  more robust.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.errors import ConvscopeError
from convscope.interop import require

__all__ = [
    "Metric",
    "deletion_steps",
    "get_metric",
    "insertion_curves",
    "list_metrics",
    "spearman_rows",
]

STEPS = 28  # points of the deletion and insertion curves (one MNIST row of pixels a step)


def deletion_steps(shape: tuple[int, ...]) -> int:
    """Pixels removed per step: the largest divisor of ``H * W`` (Quantus's PixelFlipping
    needs one) that gives the curve at least :data:`STEPS` steps."""
    h, w = shape[-2:]
    per = max(1, (h * w) // STEPS)
    while (h * w) % per:
        per -= 1
    return per


def spearman_rows(a: np.ndarray, b: np.ndarray, batched: bool = True, **kwargs: Any) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b``; NaN where a
    row is constant. (Quantus's own ``correlation_spearman`` fails when any row of the
    batch is constant: scipy then returns one NaN for the whole batch.)"""
    from scipy.stats import rankdata

    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    ra = rankdata(a2, axis=1) - (a2.shape[1] + 1) / 2
    rb = rankdata(b2, axis=1) - (b2.shape[1] + 1) / 2
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)
    return r if batched else r[0]


@dataclass(frozen=True)
class Metric:
    """A metric of the comparison.

    Attributes:
        name: Its one name.
        higher_is_better: The direction of "more faithful / better".
        description: One line for the table.
        score: ``score(model, x, y, a, explain, seed) -> (per-image scores (N,), curves or
            None)``, with ``x`` and ``a`` NumPy ``(N, C, H, W)``, ``y`` the targets and
            ``explain`` Quantus's ``explain_func`` keyword arguments.
        curve: Whether the metric also gives a curve per image (deletion, insertion).
        reexplains: Whether it calls the method again (randomisation, sensitivity): slower.
        grey_only: Quantus's implementation works on one-channel images only (ROAD).
    """

    name: str
    higher_is_better: bool
    description: str
    score: Callable[..., tuple[np.ndarray, np.ndarray | None]]
    curve: bool = False
    reexplains: bool = False
    grey_only: bool = False

    def refuses(self, shape: tuple[int, ...]) -> str | None:
        """Why the metric cannot score images of ``shape`` (N, C, H, W), or ``None``."""
        if self.grey_only and shape[1] != 1:
            return (
                "Quantus's implementation indexes the pixels of one channel only "
                "(indices of a colour map run past them); not scored on colour images"
            )
        return None


def _place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _quantus() -> Any:
    return require("quantus", "convscope evaluate")


def _common(seed: int) -> dict[str, Any]:
    # one score per image everywhere (FaithfulnessCorrelation would average the batch)
    return {"disable_warnings": True, "display_progressbar": False, "return_aggregate": False}


def _call(metric: Any, model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
          explain: dict[str, Any]) -> Any:  # fmt: skip
    from convscope.interop.quantus import explain_func

    device = str(_place(model)[0])
    return metric(
        model=model, x_batch=x, y_batch=y, a_batch=a, explain_func=explain_func,
        explain_func_kwargs=explain, device=device, channel_first=True, batch_size=len(x),
    )  # fmt: skip


def _deletion(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
              explain: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    q = _quantus()
    metric = q.PixelFlipping(
        features_in_step=deletion_steps(x.shape), perturb_baseline="black", **_common(seed)
    )
    curves = np.asarray(_call(metric, model, x, y, a, explain), dtype=np.float64)
    curves = np.concatenate([_softmax_at(model, x, y)[:, None], curves], axis=1)
    return _auc(curves), curves


def _auc(curves: np.ndarray) -> np.ndarray:
    """Trapezoid area under each curve, its x axis scaled to [0, 1].

    (Quantus's ``calculate_auc`` calls ``np.trapz``, which NumPy 2.4 removed.)
    """
    return np.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), axis=1)


def _softmax_at(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    device, dtype = _place(model)
    with torch.no_grad():
        probs = model(torch.as_tensor(x).to(device, dtype)).softmax(1)
    return probs[torch.arange(len(y)), torch.as_tensor(y).long()].double().cpu().numpy()


def insertion_curves(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
                     steps: int | None = None) -> np.ndarray:  # fmt: skip
    """Target softmax while the most relevant pixels are put back into a black image.

    The start is every image's own minimum (Quantus's "black" baseline, the deletion
    curve's end); at step ``k`` the ``k * steps`` pixels of largest attribution (summed
    over channels) hold their values. Returns ``(N, 1 + ceil(H * W / steps))``.
    """
    n, c, h, w = x.shape
    per = steps or deletion_steps(x.shape)
    order = np.argsort(-a.reshape(n, c, h * w).sum(1), axis=1, kind="stable")
    base = x.reshape(n, c, -1).min(axis=(1, 2))
    cur = np.broadcast_to(base[:, None, None], (n, c, h * w)).copy()
    flat = x.reshape(n, c, h * w)
    rows = np.arange(n)[:, None]
    curves = [_softmax_at(model, cur.reshape(x.shape), y)]
    for start in range(0, h * w, per):
        idx = order[:, start : start + per]
        cur[rows, :, idx] = flat[rows, :, idx]
        curves.append(_softmax_at(model, cur.reshape(x.shape).astype(x.dtype), y))
    return np.stack(curves, axis=1)


def _insertion(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
               explain: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    curves = insertion_curves(model, x, y, a)
    return _auc(curves), curves


def _faithfulness(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
                  explain: dict[str, Any], seed: int) -> tuple[np.ndarray, None]:  # fmt: skip
    q = _quantus()
    subset = max(1, x.shape[-2] * x.shape[-1] // 8)
    metric = q.FaithfulnessCorrelation(
        nr_runs=50, subset_size=subset, perturb_baseline="black", **_common(seed)
    )
    return np.asarray(_call(metric, model, x, y, a, explain), dtype=np.float64), None


def _road(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
          explain: dict[str, Any], seed: int) -> tuple[np.ndarray, None]:  # fmt: skip
    q = _quantus()
    percentages = list(range(10, 100, 20))

    class PerImageROAD(q.ROAD):  # type: ignore[misc,name-defined]
        """Quantus's ROAD, keeping each image's row instead of the batch mean."""

        def custom_postprocess(self, **kwargs: Any) -> None:
            rows = np.asarray(self.evaluation_scores[0])  # type: ignore[has-type]
            self.evaluation_scores = list(rows.mean(axis=1))

    metric = PerImageROAD(percentages=percentages, **_common(seed))
    return np.asarray(_call(metric, model, x, y, a, explain), dtype=np.float64), None


def _sparseness(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
                explain: dict[str, Any], seed: int) -> tuple[np.ndarray, None]:  # fmt: skip
    metric = _quantus().Sparseness(**_common(seed))
    return np.asarray(_call(metric, model, x, y, a, explain), dtype=np.float64), None


def _complexity(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
                explain: dict[str, Any], seed: int) -> tuple[np.ndarray, None]:  # fmt: skip
    metric = _quantus().Complexity(**_common(seed))
    return np.asarray(_call(metric, model, x, y, a, explain), dtype=np.float64), None


def _randomisation(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
                   explain: dict[str, Any], seed: int) -> tuple[np.ndarray, None]:  # fmt: skip
    metric = _quantus().MPRT(
        seed=seed, skip_layers=True, similarity_func=spearman_rows, **_common(seed)
    )
    out = _call(metric, model, x, y, a, explain)
    last = list(out.values())[-1] if isinstance(out, dict) else out
    return np.asarray(last, dtype=np.float64), None


def _max_sensitivity(model: nn.Module, x: np.ndarray, y: np.ndarray, a: np.ndarray,
                     explain: dict[str, Any], seed: int) -> tuple[np.ndarray, None]:  # fmt: skip
    spread = float(x.max() - x.min()) or 1.0
    metric = _quantus().MaxSensitivity(nr_samples=8, lower_bound=0.02 * spread, **_common(seed))
    return np.asarray(_call(metric, model, x, y, a, explain), dtype=np.float64), None


_METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("deletion", False, "area under the deletion curve (Quantus PixelFlipping)",
               _deletion, curve=True),
        Metric("insertion", True, "area under the insertion curve", _insertion, curve=True),
        Metric("faithfulness_correlation", True, "Quantus FaithfulnessCorrelation",
               _faithfulness),
        Metric("road", False, "Quantus ROAD, share of levels still predicted", _road,
               grey_only=True),
        Metric("sparseness", True, "Quantus Sparseness (Gini)", _sparseness),
        Metric("complexity", False, "Quantus Complexity (entropy)", _complexity),
        Metric("randomisation", False, "Quantus MPRT, all layers at once (Spearman)",
               _randomisation, reexplains=True),
        Metric("max_sensitivity", False, "Quantus MaxSensitivity, 4 samples",
               _max_sensitivity, reexplains=True),
    )
}  # fmt: skip


def list_metrics() -> list[str]:
    """The metric names, in the table's order."""
    return list(_METRICS)


def get_metric(name: str) -> Metric:
    """The metric called ``name``.

    Raises:
        ConvscopeError: an unknown name, listing the known ones.
    """
    if name not in _METRICS:
        raise ConvscopeError(f"unknown metric {name!r}; choose from {', '.join(_METRICS)}")
    return _METRICS[name]
