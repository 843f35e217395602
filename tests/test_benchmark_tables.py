"""The README tables of the benchmarks that keep their raw output are their committed JSON.

For each script, the committed ``benchmarks/results/<script>_cpu.json`` is turned into the
README block (machine line and tables) by the script's own ``tables`` function, the one
that prints it after a run, and ``benchmarks/README.md`` must hold exactly that block in the
script's section. Nothing is timed.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
README = BENCHMARKS / "README.md"


def benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the folder is on ``sys.path`` only meanwhile:
    the scripts import their siblings, ``from _machine import cpu_name``)."""
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def section(name: str) -> str:
    """The ``## name`` section of benchmarks/README.md."""
    text = README.read_text()
    start = text.index(f"\n## {name}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def record(name: str) -> dict[str, Any]:
    return json.loads((BENCHMARKS / "results" / f"{name}_cpu.json").read_text())


def check_machine(rec: dict[str, Any], *versions: str) -> None:
    m = rec["machine"]
    assert m["cpu"] and m["python"] and m["threads"] >= 1
    for v in ("torch", *versions):
        assert m[v], v
    assert len(m["load_average_start"]) == len(m["load_average_end"]) == 3


SCRIPTS = ["filter_scores", "numpy_cnn", "svd", "decoding", "spectral"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_readme_holds_the_table_of_the_committed_json(name: str) -> None:
    block = benchmark(name).tables(record(name))
    assert block in section(name), f"regenerate with python benchmarks/{name}.py --table ..."
    assert f"--json benchmarks/results/{name}_cpu.json" in section(name)


def test_filter_scores_json_has_every_round() -> None:
    rec = record("filter_scores")
    check_machine(rec, "numpy")
    a, times, med = rec["args"], rec["seconds"], rec["median_s"]
    assert set(times) == set(med) >= {"plain forward+backward", "filter_scores"}
    for name, ts in times.items():
        assert len(ts) == a["repeats"] and all(t > 0 for t in ts)
        assert med[name] == statistics.median(ts)
        assert rec["ratio_to_plain"][name] == pytest.approx(
            med[name] / med["plain forward+backward"]
        )


def test_numpy_cnn_json_has_every_round() -> None:
    rec = record("numpy_cnn")
    check_machine(rec, "numpy")
    times, med = rec["seconds"], rec["median_s"]
    layers = {"conv_fast", "conv_loops", "pool_fast", "pool_loops"}
    network = {"numpy_step", "torch_step", "numpy_infer", "torch_infer"}
    assert set(times) == set(med) == layers | network
    for name, ts in times.items():
        rounds = rec["layer_rounds"] if name in layers else rec["args"]["repeats"]
        assert len(ts) == rounds and all(t > 0 for t in ts)
        assert med[name] == statistics.median(ts)
    assert rec["ratios"]["conv"] == pytest.approx(med["conv_loops"] / med["conv_fast"])
    assert rec["ratios"]["step"] == pytest.approx(med["numpy_step"] / med["torch_step"])


def test_svd_json_has_every_run() -> None:
    rec = record("svd")
    check_machine(rec)
    a, ref = rec["args"], rec["reference"]
    assert ref["seconds"] > 0 and len(ref["singular_values"]) == len(ref["gaps"]) + 1 == a["k"] + 1
    assert [r["method"] for r in rec["methods"]][:2] == ["power", "power+momentum"]
    for r in rec["methods"]:
        assert r["search"] and any(s["error"] <= a["rtol"] for s in r["search"])
        assert r["error"] <= a["rtol"] and len(r["singular_values"]) == a["k"]
        assert len(r["seconds"]) == len(r["cpu_seconds"]) == a["repeats"]
        assert r["median_s"] == statistics.median(r["seconds"])
        assert r["applications"] >= r["calls"] >= 1


def test_decoding_json_has_every_run() -> None:
    rec = record("decoding")
    check_machine(rec, "numpy")
    a = rec["args"]
    assert len(rec["fast_seconds"]) == a["repeats"]
    assert rec["fast_median_s"] == statistics.median(rec["fast_seconds"])
    assert len(rec["literal_seconds_per_filter"]) == rec["literal_filters"]
    scale = rec["filters"] / rec["literal_filters"]
    assert rec["literal_s"] == pytest.approx(sum(rec["literal_seconds_per_filter"]) * scale)
    assert rec["ratio"] == pytest.approx(rec["literal_s"] / rec["fast_median_s"])
    assert rec["max_abs_difference"] <= 1e-10


def test_spectral_json_has_every_epoch() -> None:
    rec = record("spectral")
    check_machine(rec, "numpy")
    n = rec["args"]["epochs"]
    assert len(rec["epoch_seconds_without"]) == len(rec["epoch_seconds_with"]) == n
    assert len(rec["callback_seconds"]) == n
    assert rec["epoch_median_s"] == statistics.median(rec["epoch_seconds_without"])
    assert rec["callback_median_s"] == statistics.median(rec["callback_seconds"])
    assert rec["callback_over_epoch"] == pytest.approx(
        rec["callback_median_s"] / rec["epoch_median_s"]
    )
    assert rec["with_over_without"] == pytest.approx(rec["run_with_s"] / rec["run_without_s"])


def test_edsr_sizes_table_and_json() -> None:
    rec = record("edsr_sizes")
    check_machine(rec)
    block = benchmark("edsr_sizes").tables(rec)
    assert block in section("linear"), "regenerate with python benchmarks/edsr_sizes.py --table"
    assert "--json benchmarks/results/edsr_sizes_cpu.json" in section("linear")
    sizes = [p["size"] for p in rec["points"]]
    assert sizes == sorted(sizes) and len(sizes) >= 3
    for p in rec["points"]:
        assert set(p["rounds"]) == set(p["seconds"]) == {
            "plain", "columns_off", "columns_on", "dfv", "jvp_vmap"
        }  # fmt: skip
        for k, ts in p["rounds"].items():
            assert len(ts) == rec["repeats"] and all(t > 0 for t in ts)
            assert p["seconds"][k] == statistics.median(ts)
        # DfV's decisions and the interpreter's cache: one bool per ReLU element
        assert p["dfv_storage_bytes"] == p["cache_bytes"] == p["float32_activation_bytes"] // 4
        assert p["dfv_vs_interpreter_columns"] <= 1e-4 and p["cache_on_vs_off_columns"] <= 1e-4
    # storage grows exactly with the image area
    per_pixel = {p["dfv_storage_bytes"] / p["size"] ** 2 for p in rec["points"]}
    assert len(per_pixel) == 1
