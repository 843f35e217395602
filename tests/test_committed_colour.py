"""The committed colour front-end results are what experiments/colour_patches.py computes.

The script trains ``gf_resnet_small`` on patches of scikit-image's colour photos and writes
``experiments/results/colour/``. Here the script's own code reruns the analyses on the
committed checkpoint and the regenerated held-out patches (every stored number must come
back), the page is regenerated from the json, the colour scores are checked against an
independent gradient of the logit with respect to the fixed maps, and a one-epoch training
cell is rerun from its seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from _scripts import experiment

from convscope.attribution import filter_scores
from convscope.models import ColorFrontEnd, load_checkpoint

OUT = Path(__file__).resolve().parents[1] / "experiments" / "results" / "colour"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stored() -> dict[str, Any]:
    return json.loads((OUT / "colour_patches.json").read_text())


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    m, extra = load_checkpoint(OUT / "gf_resnet_small.pt")
    assert extra["classes"] == list(experiment("colour_patches").PHOTOS)
    return m


def _close(a: Any, b: Any, path: str = "") -> None:
    """Nested equality, floats to 1e-6 relative (a rerun on the same build is bitwise equal
    in practice; the tolerance only allows another CPU's summation order)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (path, a, b)
    else:
        assert a == b, path


def test_page_is_the_summary_of_the_json(stored: dict[str, Any]) -> None:
    script = experiment("colour_patches")
    assert (OUT / "colour_patches.md").read_text() == script.summary(stored)


def test_settings_are_the_scripts(stored: dict[str, Any]) -> None:
    script = experiment("colour_patches")
    assert stored["photos"] == list(script.PHOTOS) and stored["patch"] == script.PATCH
    assert (stored["n_train"], stored["n_test"], stored["epochs"]) == (
        script.N_TRAIN,
        script.N_TEST,
        script.EPOCHS,
    )
    assert len(stored["losses"]["fixed"]) == len(stored["losses"]["learned"]) == script.EPOCHS


def test_held_out_patches_lie_right_of_the_split() -> None:
    script = experiment("colour_patches")
    from convscope.data.photos import sample_photo

    where = script.positions(n_train=50, n_test=50)
    xtr, ytr, xte, yte = script.patches(n_train=50, n_test=50)
    for label, name in enumerate(script.PHOTOS):
        img = sample_photo(name)
        h, w = img.shape[:2]
        split = int(round(w * script.TRAIN_SHARE))
        tr, te = where[name]["train"], where[name]["test"]
        assert tr[:, 1].max() + script.PATCH <= split <= te[:, 1].min()
        assert tr[:, 0].max() + script.PATCH <= h and te[:, 1].max() + script.PATCH <= w
        y, x = te[7]
        crop = torch.from_numpy(img[y : y + 32, x : x + 32].astype("float32") / 255).permute(
            2, 0, 1
        )
        torch.testing.assert_close(xte[label * 50 + 7], crop, rtol=0, atol=0)
        assert int(yte[label * 50 + 7]) == int(ytr[label * 50]) == label


def test_analyses_rerun_on_the_checkpoint_give_the_stored_numbers(
    stored: dict[str, Any], model: torch.nn.Module
) -> None:
    script = experiment("colour_patches")
    _, _, xte, yte = script.patches()
    fresh = script.analyse(model, xte, yte)
    _close(fresh, stored["fixed"], "fixed")
    assert stored["fixed"]["accuracy"] > 1.5 / len(script.PHOTOS)  # learned, not chance


def test_colour_scores_are_gradient_times_maps_summed_per_channel() -> None:
    """Independent of the hook in convscope.attribution: run the network from the fixed maps
    L as a leaf, differentiate the target logit, and sum (dy/dL) L over each channel's maps."""
    script = experiment("colour_patches")
    _, _, xte, yte = script.patches(n_train=1, n_test=2)
    m, _ = load_checkpoint(OUT / "gf_resnet_small.pt")  # a copy: .double() works in place
    m = m.double().eval()
    x = xte.double()
    front = m[0]
    assert isinstance(front, ColorFrontEnd)
    maps = front.bank(x).detach().requires_grad_(True)
    logits = m[1:](front.mix(maps))
    y = logits.gather(1, yte[:, None]).sum()
    (g,) = torch.autograd.grad(y, maps)
    c, k = front.bank.in_channels, front.bank.num_kernels
    ref = (g * maps).detach().reshape(len(x), c, k, *maps.shape[-2:]).sum(dim=(2, 3, 4))
    fs = filter_scores(m, x, yte)
    assert fs.color_scores is not None
    torch.testing.assert_close(fs.color_scores, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fs.color_scores.sum(1), fs.scores.sum(1), rtol=1e-10, atol=1e-12)
    assert ref.abs().max() > 1e-4  # the signal did not vanish
    torch.testing.assert_close(
        script.colour_maps(m, x, yte).sum(dim=(2, 3)), ref, rtol=1e-10, atol=1e-12
    )


def test_one_epoch_cell_reruns_from_its_seed(stored: dict[str, Any]) -> None:
    script = experiment("colour_patches")
    cell = stored["smoke"]
    sx, sy, _, _ = script.patches(n_train=cell["n_train"], n_test=1)
    losses = script.train(script.build("fixed"), sx, sy, epochs=cell["epochs"])
    assert losses == pytest.approx(cell["losses"], rel=1e-5)


def test_what_docs_fixed_kernels_says_of_the_run_holds(stored: dict[str, Any]) -> None:
    """The guide's sentences around its numbers (the numbers themselves are markers)."""
    c = stored["fixed"]["class_color_scores"]
    assert c["chelsea"]["red"] > 0 > c["chelsea"]["green"]  # red found, green subtracted
    assert c["coffee"]["blue"] < 0
    assert stored["fixed"]["accuracy"] >= stored["learned"]["accuracy"] - 0.02  # not degraded
    border = stored["fixed"]["border_share"]
    assert border["median"] > 2 * border["pixels"]  # the border carries more than its share
