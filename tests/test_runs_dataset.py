"""Dataset-scale runs: streaming ``--data``, Parquet shards, resume, torchrun sharding.

The per-image rows are checked against the interpreter called directly and against a
plain float64 forward pass (the score is the model's logit, the contributions sum to it);
the summary against numpy/torch computations of the same statistics
(:func:`convscope.linear.contribution_histogram`); a two-process torchrun run and a run
killed half-way then resumed against an uninterrupted one-process run, exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pq = pytest.importorskip("pyarrow.parquet")

from convscope.errors import ConvscopeError  # noqa: E402
from convscope.runs.data import open_data  # noqa: E402
from convscope.runs.shards import ShardStore  # noqa: E402
from convscope.runs.summaries import histogram, per_class, stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "experiments/results/decoding/lenet_mnist.pt"
CLI = [sys.executable, "-m", "convscope"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _contributions(out: Path, *extra: str, limit: int = 40) -> subprocess.CompletedProcess[str]:
    args = ["linear", "contributions", "--model", str(LENET), "--data", "mnist-subset",
            "--limit", str(limit), "--out", str(out), "--device", "cpu", "--no-progress",
            *extra]  # fmt: skip
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=_env(), timeout=600)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    r = _contributions(out, "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    assert "40 images computed" in r.stdout
    return out


def _same_results(a: Path, b: Path) -> None:
    ta, tb = pq.read_table(a / "per_image.parquet"), pq.read_table(b / "per_image.parquet")
    assert ta.num_rows == tb.num_rows and ta.equals(tb)
    assert json.loads((a / "summary.json").read_text()) == json.loads(
        (b / "summary.json").read_text()
    )


# -- the rows and the summary are right --------------------------------------------------------


def test_rows_agree_with_the_interpreter_and_the_model(single: Path) -> None:
    from convscope.data.mnist import load_mnist_subset
    from convscope.linear import LinearInterpreter
    from convscope.runs.sources import resolve_model

    table = pq.read_table(single / "per_image.parquet")
    assert table.column("index").to_pylist() == list(range(40))
    ds = load_mnist_subset("test")
    assert table.column("label").to_pylist() == ds.labels[:40].tolist()
    model = resolve_model(str(LENET), dtype=torch.float64, warn=False).module
    x = torch.from_numpy(ds.images[:40].copy()).double()
    with torch.no_grad():
        logits = model(x)
    rows = table.to_pylist()
    for i in (0, 17, 39):
        r = rows[i]
        assert r["target"] == r["predicted"] == int(logits[i].argmax())
        assert r["score"] == pytest.approx(float(logits[i, r["target"]]), rel=1e-12)
        parts = [v for k, v in r.items() if k.startswith("contribution/")]
        assert sum(parts) == pytest.approx(r["score"], rel=1e-12)
        assert r["input"] + r["residual"] == pytest.approx(r["score"], rel=1e-12)
        li = LinearInterpreter(model, x[i : i + 1], mode="freeze")
        c = li.contributions(target=r["target"])
        assert r["residual_share"] == pytest.approx(c.residual_share, rel=1e-10, abs=1e-14)
        for k, v in c.groups().items():
            assert r[f"contribution/{k}"] == pytest.approx(float(v), rel=1e-10, abs=1e-14)
    accuracy = float((logits.argmax(1).numpy() == ds.labels[:40]).mean())
    summary = json.loads((single / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(accuracy)
    assert summary["images"] == 40
    assert summary["conservation_max_relative_error"] < 1e-12


def test_summary_equals_the_library_histogram(single: Path) -> None:
    from convscope.linear import contribution_histogram

    table = pq.read_table(single / "per_image.parquet")
    rows = table.to_pylist()
    parts = [{k[len("contribution/") :]: torch.tensor(v, dtype=torch.float64) for k, v in r.items()
              if k.startswith("contribution/")} for r in rows]  # fmt: skip
    ref = contribution_histogram(parts)
    summary = json.loads((single / "summary.json").read_text())
    assert list(summary["groups"]) == ref.names
    for j, name in enumerate(ref.names):
        g = summary["groups"][name]
        assert g["mean"] == pytest.approx(float(ref.mean[j]), rel=1e-9, abs=1e-15)
        assert g["std"] == pytest.approx(float(ref.std[j]), rel=1e-9, abs=1e-15)
        assert sum(g["histogram"]["counts"]) == 40
    rs = np.array([r["residual_share"] for r in rows])
    assert summary["residual_share"]["mean"] == pytest.approx(rs.mean(), rel=1e-12)
    assert summary["residual_share"]["median"] == pytest.approx(np.median(rs), rel=1e-12)
    assert summary["input_share"]["mean"] == pytest.approx(1 - rs.mean(), rel=1e-9)
    by_class = summary["per_class"]
    assert sum(v["images"] for v in by_class.values()) == 40
    for name, v in by_class.items():
        sel = [r["residual_share"] for r in rows if r["target"] == v["class"]]
        assert name == str(v["class"])  # mnist-subset's class names are the digits
        assert v["residual_share"]["mean"] == pytest.approx(np.mean(sel), rel=1e-12)
    report = (single / "report.html").read_text()
    assert "residual_shares.png" in report and "contributions.png" in report
    assert f"{100 * rs.mean():.2f}%" in report


# -- torchrun, kill and resume ------------------------------------------------------------------


def test_torchrun_two_processes_equal_one(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = ["linear", "contributions", "--model", str(LENET), "--data", "mnist-subset",
            "--limit", "40", "--out", str(out), "--device", "cpu", "--no-progress",
            "--batch-size", "8"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "convscope", *args]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr
    assert "24 images computed (rank 0 of 2 processes)" in r.stdout  # batches 0, 2, 4 of 8
    assert r.stdout.count("wrote the report") == 1  # rank 0 alone speaks
    _same_results(single, out)
    assert not (out / "per_image").exists()  # the shards were merged away


def test_killed_run_resumes_to_the_same_result(single: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    args = ["linear", "contributions", "--model", str(LENET), "--data", "mnist-subset",
            "--limit", "40", "--out", str(out), "--device", "cpu", "--no-progress",
            "--batch-size", "4"]  # fmt: skip
    p = subprocess.Popen([*CLI, *args], env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    shards = out / "per_image"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if shards.is_dir() and len(list(shards.glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    kept = ShardStore(out).done()
    assert 0 < len(kept) < 40, "the kill came too late to test a resume"
    assert not (out / "per_image.parquet").exists()
    r = _contributions(out, "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert f"{40 - len(kept)} images computed, {len(kept)} were already done" in r.stdout
    _same_results(single, out)
    r = _contributions(out, "--batch-size", "4")  # finished: nothing left to compute
    assert r.returncode == 0 and "0 images computed, 40 were already done" in r.stdout
    _same_results(single, out)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # pytest may have left it ignored


def test_ctrl_c_says_what_was_kept(tmp_path: Path) -> None:
    out = tmp_path / "ctrl_c"
    args = ["linear", "contributions", "--model", str(LENET), "--data", "mnist-subset",
            "--limit", "200", "--out", str(out), "--device", "cpu", "--no-progress",
            "--batch-size", "4"]  # fmt: skip
    p = subprocess.Popen([*CLI, *args], env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=_default_sigint)  # fmt: skip
    shards = out / "per_image"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if shards.is_dir() and list(shards.glob("part-*.parquet")):
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    kept = len(ShardStore(out).done())
    assert err.strip().splitlines()[-1] == (
        f"interrupted: {kept} of 200 images are kept in {out / 'per_image'}; run the same "
        "command again to finish the rest"
    )


# -- refusals, before any work --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image", "sample:camera"], "error: give --image or --data, not both"),
        (["--limit", "0"], "error: --limit must be at least 1; got 0"),
        (["--batch-size", "0"], "error: --batch-size must be at least 1; got 0"),
        (["--workers", "-1"], "error: --workers must be 0 or more; got -1"),
        (["--split", "val"], "error: unknown split 'val'"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    from convscope.cli import main

    argv = ["linear", "contributions", "--model", str(LENET), "--data", "mnist-subset",
            "--out", str(tmp_path / "o"), "--device", "cpu", *extra]  # fmt: skip
    r = subprocess.run([*CLI, *argv], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(message), r.stderr
    assert not (tmp_path / "o" / "run.json").exists()
    del main


def test_neither_image_nor_data(tmp_path: Path) -> None:
    r = subprocess.run([*CLI, "linear", "contributions", "--model", str(LENET), "--out",
                        str(tmp_path)], capture_output=True, text=True, env=_env())  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip() == "error: give --image (one image, a folder or a glob) or --data"


def test_another_run_in_the_same_out_is_refused(single: Path, tmp_path: Path) -> None:
    before = (single / "per_image.parquet").read_bytes()
    r = _contributions(single, "--mode", "taylor")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"error: --out {single} holds another run (its mode is 'freeze', this run's "
        "'taylor'); give another --out, or --overwrite to replace it"
    )
    assert (single / "per_image.parquet").read_bytes() == before
    # --overwrite starts again, as the other run
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(single, copy)
    r = _contributions(copy, "--mode", "taylor", "--overwrite", "--limit", "8")
    assert r.returncode == 0, r.stderr
    assert "8 images computed" in r.stdout and "already done" not in r.stdout
    assert json.loads((copy / "run.json").read_text())["config"]["mode"] == "taylor"
    assert pq.read_table(copy / "per_image.parquet").num_rows == 8
    # results of a run without a manifest (an image run) are not taken over either
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.html").write_text("mine")
    r = _contributions(other)
    assert r.returncode == 2 and "already holds report.html" in r.stderr
    assert (other / "report.html").read_text() == "mine"


# -- the stream --------------------------------------------------------------------------------


def _folder(root: Path, per_class: dict[str, int], size: tuple[int, int] = (12, 10)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, n in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / name / f"{i:03d}.png")


def test_image_folder_is_read_lazily_and_limit_takes_classes_in_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import convscope.data.images as images

    _folder(tmp_path / "val", {"ant": 5, "bee": 3, "cat": 4})
    calls: list[str] = []
    real = images.load_image

    def counting(path: Any, *a: Any, **k: Any) -> Any:
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(images, "load_image", counting)
    ds = open_data(f"imagefolder:{tmp_path}", split="val", limit=7, info={"in_channels": 1})
    assert len(calls) <= 2  # the first image, to check it against the model
    assert ds.class_names == ["ant", "bee", "cat"]
    # 5 ants (0-4), 3 bees (5-7), 4 cats (8-11): in turn a0 b0 c0 a1 b1 c1 a2
    assert ds.indices == [0, 1, 2, 5, 6, 8, 9]
    index, x, label = ds[3]
    assert (index, label) == (5, 1)
    assert x.shape == (1, 12, 10) and ds.notes == ["RGB to grey"]
    assert ds.path(5) == str(tmp_path / "val" / "bee" / "000.png")
    assert real(ds.path(5))[0].mean(0, keepdim=True).allclose(x)
    with pytest.raises(ConvscopeError, match=r"no test/ folder there \(it has val\); give "):
        open_data(f"imagefolder:{tmp_path}", split="test")
    with pytest.raises(ConvscopeError, match="the model takes 28x28; give --size 28,28"):
        open_data(f"imagefolder:{tmp_path}", split="val", info={"input_size": (28, 28)})
    ds = open_data(f"imagefolder:{tmp_path}", split="val", info={"input_size": (28, 28)},
                   size=(28, 28))  # fmt: skip
    assert ds[0][1].shape == (3, 28, 28) and ds.notes == ["resized to 28x28"]


def test_named_data_and_globs(tmp_path: Path) -> None:
    from convscope.data.digits import load_digits

    ds = open_data("digits", split="test", limit=5, info={"in_channels": 3}, invert=True)
    ref = load_digits("test")
    index, x, label = ds[4]
    assert (index, label) == (4, int(ref.labels[4]))
    assert torch.equal(x, 1 - torch.from_numpy(ref.images[4]).expand(3, -1, -1))
    assert ds.notes == ["grey to RGB", "inverted"]
    _folder(tmp_path / "g", {"x": 3})
    ds = open_data(str(tmp_path / "g" / "x" / "*.png"))
    assert len(ds) == 3 and ds[2][2] == -1 and ds.class_names is None
    with pytest.raises(ConvscopeError, match="not a dataset name and no images there"):
        open_data(str(tmp_path / "nothing-*.png"))
    with pytest.raises(ConvscopeError, match="sample photos are not a dataset"):
        open_data("sample:camera")


# -- the shard store and the statistics ---------------------------------------------------------


def test_shard_store_keeps_whole_shards_and_merges_once(tmp_path: Path) -> None:
    store = ShardStore(tmp_path)
    store.write([{"index": 3, "v": 0.3}, {"index": 1, "v": 0.1}])
    store.write([{"index": 2, "v": 0.2}])
    (tmp_path / "per_image" / ".part-000000009-000000009.parquet.abcd.tmp.parquet").write_bytes(
        b"half a shard"
    )  # what a kill during a write leaves: ignored
    assert store.done() == {1, 2, 3}
    with pytest.raises(ConvscopeError, match=r"1 of 4 images have no row yet \(0\); run the same"):
        store.merge([0, 1, 2, 3])
    table = store.merge([1, 2, 3])
    assert table.column("index").to_pylist() == [1, 2, 3]
    assert table.column("v").to_pylist() == [0.1, 0.2, 0.3]
    assert not (tmp_path / "per_image").exists()
    # a merge interrupted before removing its shards: each row once
    store.write([{"index": 2, "v": 0.2}])
    assert store.read().column("index").to_pylist() == [1, 2, 3]


def test_statistics_by_hand() -> None:
    s = stats(np.array([1.0, 2.0, 3.0, 4.0, np.nan]))
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5
    assert s["std"] == pytest.approx(np.sqrt(5 / 3))  # n - 1, not n
    assert (s["min"], s["max"], s["q25"], s["q75"]) == (1.0, 4.0, 1.75, 3.25)
    h = histogram(np.array([0.0, 0.1, 0.5, 1.0]), bins=2)
    assert h == {"edges": [0.0, 0.5, 1.0], "counts": [2, 2]}
    assert histogram(np.array([2.0, 2.0]), bins=1) == {"edges": [1.5, 2.5], "counts": [2]}
    t = per_class(np.array([1, 0, 1]), {"v": np.array([1.0, 5.0, 3.0])}, ["zero", "one"])
    assert list(t) == ["zero", "one"]
    assert t["one"] == {"class": 1, "images": 2, "v": {"mean": 2.0, "std": pytest.approx(2**0.5)}}
    assert t["zero"]["v"] == {"mean": 5.0, "std": None}


# -- explain --data: class-average filter scores ------------------------------------------------


def test_explain_data_equals_the_library_class_averages(tmp_path: Path) -> None:
    from convscope import attribution as attr
    from convscope.data.mnist import load_mnist_subset
    from convscope.models import build_model
    from convscope.runs.explain import run_data

    model = build_model("gfnn", seed=3).eval()
    res = run_data(model, "mnist-subset", tmp_path / "e", limit=90, batch_size=32, top=2,
                   device="cpu")  # fmt: skip
    ds = load_mnist_subset("test")
    x, y = torch.from_numpy(ds.images[:90].copy()), torch.from_numpy(ds.labels[:90].copy())
    ref = attr.class_average_filter_scores(model, (x, y), batch_size=32, target="label")
    s = res.summary
    assert s["kernels"] == ref.kernel_names and s["explained"] == "label"
    for name, b in s["per_class"].items():
        c = b["class"]
        assert name == str(c) and b["images"] == int(ref.counts[c])
        got = np.array([b["mean_scores"][k] for k in ref.kernel_names])
        np.testing.assert_allclose(got, ref.scores[c].double().numpy(), rtol=1e-5, atol=1e-6)
        assert b["mean_logit"] == pytest.approx(float(ref.logits[c]), rel=1e-5)
        assert b["top_kernels"] == [ref.kernel_names[j] for j in ref.scores[c].argsort(
            descending=True, stable=True)[:2].tolist()]  # fmt: skip
    fs = attr.filter_scores(model, x[:32], target=y[:32])
    rows = res.table.slice(0, 32).to_pylist()
    for i in (0, 31):
        assert rows[i]["target"] == int(y[i]) and rows[i]["label"] == int(y[i])
        assert rows[i]["logit"] == pytest.approx(float(fs.logits[i]), rel=1e-6)
        assert rows[i]["score/kirsch_n"] == pytest.approx(
            float(fs.scores[i, fs.kernel_names.index("kirsch_n")]), rel=1e-5, abs=1e-6
        )
    # the batch decides float32 rounding: a resume must keep it
    with pytest.raises(ConvscopeError, match="its batch_size is 32, this run's 16"):
        run_data(model, "mnist-subset", tmp_path / "e", limit=90, batch_size=16, device="cpu")
    assert "class_filter_scores.png" in (tmp_path / "e" / "report.html").read_text()


def test_explain_data_colour_scores_and_refusals(tmp_path: Path) -> None:
    from convscope import attribution as attr
    from convscope.models import build_model
    from convscope.runs.explain import run_data

    _folder(tmp_path / "photos" / "test", {"a": 4, "b": 3}, size=(16, 16))
    model = build_model("gfnn", in_channels=3, input_size=16, num_classes=2, seed=1)
    res = run_data(model.eval(), f"imagefolder:{tmp_path / 'photos'}", tmp_path / "c",
                   batch_size=4, device="cpu")  # fmt: skip
    table = res.table
    assert table.column("path").to_pylist()[0].endswith("a/000.png")
    x = torch.stack([open_data(f"imagefolder:{tmp_path / 'photos'}")[j][1] for j in range(7)])
    fs = attr.filter_scores(model, x, target=torch.tensor([0, 0, 0, 0, 1, 1, 1]))
    for c, ch in enumerate(["red", "green", "blue"]):
        got = res.summary["per_class"]["b"]["color_scores"][ch]
        assert got == pytest.approx(float(fs.color_scores[4:, c].mean()), rel=1e-5, abs=1e-7)
    with pytest.raises(ConvscopeError, match="averages filter scores, which need a kernel bank"):
        run_data("lenet", "mnist-subset", tmp_path / "l", limit=4, device="cpu")
    assert not (tmp_path / "l" / "run.json").exists()


def test_explain_data_from_the_command_line(tmp_path: Path) -> None:
    base = [*CLI, "explain", "--model", "gfnn", "--data", "mnist-subset", "--limit", "20",
            "--device", "cpu", "--no-progress"]  # fmt: skip
    r = subprocess.run([*base, "--method", "gradients", "--out", str(tmp_path / "g")],
                       capture_output=True, text=True, env=_env())  # fmt: skip
    assert r.returncode == 2
    assert (
        r.stderr.strip() == "error: explain --data averages filter scores: drop --method gradients"
    )
    r = subprocess.run([*base, "--out", str(tmp_path / "ok")], capture_output=True, text=True,
                       env=_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    for name, b in summary["per_class"].items():
        assert f"class {name}: {', '.join(b['top_kernels'])}" in r.stdout


# -- linear votes --data ------------------------------------------------------------------------


def test_votes_data_rows_and_frequency_map(tmp_path: Path) -> None:
    from convscope.data.mnist import load_mnist_subset
    from convscope.linear import LinearInterpreter
    from convscope.runs.sources import resolve_model

    out = tmp_path / "v"
    r = subprocess.run([*CLI, "linear", "votes", "--model", str(LENET), "--data", "mnist-subset",
                        "--limit", "12", "--top", "3", "--batch-size", "5", "--out", str(out),
                        "--device", "cpu", "--no-progress"], capture_output=True, text=True,
                       env=_env())  # fmt: skip
    assert r.returncode == 0, r.stderr
    table = pq.read_table(out / "per_image.parquet")
    summary = json.loads((out / "summary.json").read_text())
    ds = load_mnist_subset("test")
    model = resolve_model(str(LENET), dtype=torch.float64, warn=False).module
    masks = []
    for i, row in enumerate(table.to_pylist()):
        x0 = torch.from_numpy(ds.images[i : i + 1].copy()).double()
        pv = LinearInterpreter(model, x0).votes(top=3)
        top1 = int(pv.targets[0])
        assert row["top1"] == top1 and row["most_voted"] == pv.most_voted
        assert row["top1_vote_share"] == pytest.approx(pv.share(top1), abs=0)
        assert row["abstained"] == pytest.approx(pv.abstained, abs=0)
        mask = np.unpackbits(np.frombuffer(row["top1_mask"], np.uint8), count=784)
        assert np.array_equal(mask.reshape(28, 28), (pv.votes == top1).numpy())
        masks.append(mask.reshape(28, 28))
    np.testing.assert_allclose(summary["vote_frequency"], np.mean(masks, 0), atol=1e-15)
    assert summary["top1_wins"] == pytest.approx(np.mean(table.column("top1_wins").to_pylist()))
    assert summary["abstained"]["mean"] == pytest.approx(np.mean(table.column("abstained")))
    assert f"the top-1 class wins the vote in {100 * summary['top1_wins']:.1f}%" in r.stdout
    assert "vote_frequency.png" in (out / "report.html").read_text()


# -- spectrum --data ------------------------------------------------------------------------------


def test_spectrum_data_equals_the_spectral_calls(tmp_path: Path) -> None:
    from convscope import spectral as sp
    from convscope.data.mnist import load_mnist_subset
    from convscope.models import build_model
    from convscope.runs.spectrum import run_data

    model = build_model("gfnn", seed=5).eval()
    res = run_data(model, "mnist-subset", tmp_path / "s", limit=24, batch_size=8, on="logit",
                   device="cpu")  # fmt: skip
    x = torch.from_numpy(load_mnist_subset("test").images[:24].copy())
    pred = model(x).argmax(1)
    d = sp.data_derivative(model, x[:8], pred[:8], on="logit")
    spec = sp.spectrum_db(d, None)
    rows = res.table.to_pylist()
    for i in (0, 5):
        assert rows[i]["class"] == int(pred[i])
        assert rows[i]["max_gain_db/grey"] == pytest.approx(float(spec[i].max()), abs=1e-9)
        np.testing.assert_allclose(
            np.frombuffer(rows[i]["spectrum_db"], np.float32).reshape(1, 28, 28),
            spec[i].numpy(), rtol=1e-6, atol=1e-4,
        )  # fmt: skip
    gains = np.array([r["max_gain_db/grey"] for r in rows])
    s = res.summary
    assert s["maximum_gain_db"]["grey"]["mean"] == pytest.approx(gains.mean(), rel=1e-12)
    for name, v in s["per_class"].items():
        sel = [r["max_gain_db/grey"] for r in rows if str(r["class"]) == name]
        assert v["images"] == len(sel)
        assert v["maximum_gain_db/grey"]["mean"] == pytest.approx(np.mean(sel), rel=1e-12)
    r = subprocess.run([*CLI, "spectrum", "--model", "gfnn", "--data", "mnist-subset", "--shape",
                        "1,28,28", "--out", str(tmp_path / "x")], capture_output=True, text=True,
                       env=_env())  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --shape sets the impulse image; --data takes the images' own"


def test_the_weights_own_resize_and_crop_and_mixed_sizes(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "mixed" / "cls"
    root.mkdir(parents=True)
    for i, (h, w) in enumerate([(20, 30), (40, 24), (18, 18)]):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    prep = {"resize": 16, "crop": [12, 12], "interpolation": "bilinear"}
    ds = open_data(f"imagefolder:{tmp_path / 'mixed'}", info={"preprocess": prep})
    assert [tuple(ds[j][1].shape) for j in range(3)] == [(3, 12, 12)] * 3
    assert ds.notes == ["the weights' own resize 16 and centre crop [12, 12]"]
    assert float(ds[2][1].mean()) == pytest.approx(80 / 255, abs=1e-6)
    ds = open_data(f"imagefolder:{tmp_path / 'mixed'}")  # no size known: the first image's
    with pytest.raises(
        ConvscopeError, match=r"cls/1\.png: 40x24, not 20x30 as the model or the first "
    ):
        ds[1]


def test_the_committed_lenet_table_is_what_the_code_computes(single: Path) -> None:
    committed = ROOT / "experiments/results/dataset/lenet_contributions/per_image.parquet"
    table = pq.read_table(committed)
    assert table.num_rows == 1000
    ours = pq.read_table(single / "per_image.parquet")
    head = table.slice(0, 40)
    assert head.schema.equals(ours.schema)
    # the same numbers to float64 rounding: the committed table was computed on another
    # machine, whose oneDNN kernels may sum in another order (1e-15 apart seen)
    for name in head.column_names:
        want, got = head.column(name).to_numpy(), ours.column(name).to_numpy()
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
    summary = json.loads(committed.with_name("summary.json").read_text())
    rs = table.column("residual_share").to_numpy()
    assert summary["residual_share"]["mean"] == pytest.approx(rs.mean(), rel=1e-12)
    shares = json.loads((ROOT / "experiments/results/dataset/residual_shares.json").read_text())
    assert shares["models"]["lenet"]["residual_share"] == summary["residual_share"]


def test_workers_read_the_images_in_other_processes(single: Path, tmp_path: Path) -> None:
    from convscope.runs.linear_contributions import run_data

    res = run_data(str(LENET), "mnist-subset", tmp_path / "w", limit=40, batch_size=8,
                   workers=2, device="cpu")  # fmt: skip
    assert res.computed == 40
    assert res.table.equals(pq.read_table(single / "per_image.parquet"))


def test_radial_profile_by_hand_and_large_images_keep_only_it(tmp_path: Path) -> None:
    from convscope import spectral as sp
    from convscope.models import build_model
    from convscope.runs.spectrum import SPECTRUM_PIXELS, run_data

    freq = torch.fft.fftshift(torch.fft.fftfreq(16, dtype=torch.float64))
    radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    prof, centres = sp.radial_profile(torch.stack([radius, torch.full_like(radius, 7.0)]))
    assert centres.tolist() == [(k + 0.5) / 16 for k in range(8)]
    assert prof[1].tolist() == [7.0] * 8  # a flat spectrum is flat
    assert prof[0, 0] == 0.0  # ring 0 holds DC alone at 1/16 cycles per pixel spacing
    inner = radius[(radius >= 2 / 16) & (radius < 3 / 16)]  # ring 2: [0.125, 0.1875)
    assert prof[0, 2] == pytest.approx(float(inner.mean()))
    assert (prof[0, 1:] - centres[1:]).abs().max() < 1 / 32  # each ring's mean radius in it
    with pytest.raises(ConvscopeError, match="bins must be at least 1"):
        sp.radial_profile(radius, bins=0)
    # an image over SPECTRUM_PIXELS keeps its profile, not its spectrum
    _folder(tmp_path / "big" / "test", {"a": 2, "b": 1}, size=(72, 72))
    assert 72 * 72 > SPECTRUM_PIXELS
    model = build_model("gfnn", in_channels=3, input_size=72, num_classes=2, seed=1).eval()
    res = run_data(model, f"imagefolder:{tmp_path / 'big'}", tmp_path / "s", batch_size=2,
                   device="cpu")  # fmt: skip
    assert "spectrum_db" not in res.table.column_names
    assert len(res.table.column("radial_db")[0]) == 3 * 36
    assert res.summary["mean_spectrum_db"] is None
    assert "transfer_functions.png" not in (tmp_path / "s" / "report.html").read_text()
    assert "radial_profiles.png" in (tmp_path / "s" / "report.html").read_text()


def test_an_image_only_rank_1_reads_is_reported_by_rank_1(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "bad" / "a").mkdir(parents=True)
    for i, (h, w) in enumerate([(28, 28), (28, 28), (28, 28), (40, 24)]):
        Image.fromarray(np.full((h, w), 50 * i, np.uint8)).save(tmp_path / "bad" / "a" / f"{i}.png")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "convscope", "linear", "contributions", "--model", str(LENET), "--data",
           f"imagefolder:{tmp_path / 'bad'}", "--batch-size", "2", "--out", str(tmp_path / "o"),
           "--device", "cpu", "--no-progress"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode != 0
    assert (
        f"error: process 1 of 2: {tmp_path / 'bad' / 'a' / '3.png'}: 40x24, not 28x28 as the "
        "model or the first image; give --size 28,28"
    ) in r.stderr
