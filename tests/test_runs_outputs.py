"""convscope.runs.outputs and result: --out checked before any work, never clobbered, Ctrl-C."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from convscope.errors import ConvscopeError
from convscope.runs.inputs import ImageSource
from convscope.runs.outputs import RunInterrupted, check_out, open_out
from convscope.runs.result import RunResult, plan_outputs


def test_check_out_creates_the_folder_and_leaves_no_probe(tmp_path: Path) -> None:
    out = check_out(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []


def test_an_existing_file_is_not_a_folder(tmp_path: Path) -> None:
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    with pytest.raises(ConvscopeError, match=r"--out .*results.txt is a file; give a folder"):
        check_out(f)
    with pytest.raises(ConvscopeError, match=r"lies inside the file .*results.txt"):
        check_out(f / "sub" / "dir")
    assert f.read_text() == "keep me"


def test_an_unwritable_out_is_one_line() -> None:
    # /proc refuses new folders even to root, whom permission bits do not stop
    with pytest.raises(ConvscopeError, match=r"--out /proc/convscope-x cannot be written to \("):
        check_out("/proc/convscope-x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConvscopeError, match="cannot be written to"):
            check_out(ro)
    finally:
        ro.chmod(0o700)


def test_files_of_an_earlier_run_are_refused_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "votes.json").write_text("{}")
    (tmp_path / "votes.svg").write_text("<svg/>")
    with pytest.raises(ConvscopeError, match=r"already holds votes.json from an earlier run"):
        open_out(tmp_path, ["votes.json", "votes.png"])
    # the svg is a figure of the run only when svg is asked for
    with pytest.raises(ConvscopeError, match=r"already holds votes.json, votes.svg"):
        open_out(tmp_path, ["votes.json", "votes.png"], formats=("png", "svg"))
    # another command's files in the same folder are no obstacle
    o = open_out(tmp_path, ["residual.json", "residual.png"])
    assert o.owned == ("residual.json", "residual.png")
    o = open_out(tmp_path, ["votes.json", "votes.png"], overwrite=True, formats=["png", "pdf"])
    assert o.owned == ("votes.json", "votes.png", "votes.pdf")
    assert (tmp_path / "votes.json").read_text() == "{}"  # nothing is touched by claiming


def test_formats_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConvscopeError, match=r"--format takes png, svg, pdf .*got 'png,gif'"):
        open_out(tmp_path, ["a.png"], formats=("png", "gif"))
    assert open_out(tmp_path, ["a.png"], formats=(" SVG", ".pdf")).formats == ("svg", "pdf")


def test_raster_pictures_stay_png(tmp_path: Path) -> None:
    o = open_out(tmp_path, ["sheet.png"], formats=("svg",), raster=["kernel_a.png"])
    assert o.owned == ("sheet.svg", "kernel_a.png")


def test_figures_in_every_format_and_json_are_recorded(tmp_path: Path) -> None:
    o = open_out(tmp_path, ["x.json", "x.png"], formats=("png", "svg", "pdf"))
    fig = plt.figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    paths = o.figure("x.png", fig)
    assert [p.name for p in paths] == ["x.png", "x.svg", "x.pdf"]
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "x.pdf").read_bytes()[:4] == b"%PDF"
    assert not plt.fignum_exists(fig.number)  # closed after the last format
    o.json("x.json", {"a": float("nan")})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None}
    assert [p.name for p in o.written] == ["x.png", "x.svg", "x.pdf", "x.json"]
    with pytest.raises(ConvscopeError, match="without claiming it"):
        o.json("other.json", {})


def test_ctrl_c_says_what_was_kept(tmp_path: Path) -> None:
    o = open_out(tmp_path, ["a.json", "b.json"])
    with pytest.raises(RunInterrupted) as e, o.interruptible():
        raise KeyboardInterrupt
    assert str(e.value) == f"interrupted: nothing written to {tmp_path}"
    with pytest.raises(RunInterrupted) as e, o.interruptible():
        o.json("a.json", {"done": True})
        raise KeyboardInterrupt
    assert str(e.value) == (
        f"interrupted: kept a.json in {tmp_path} (each complete; nothing half-written)"
    )
    assert isinstance(e.value, KeyboardInterrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary files


def _image(name: str) -> ImageSource:
    return ImageSource(name, path=Path(name))


def test_several_images_get_a_folder_each_and_an_index(tmp_path: Path) -> None:
    images = [_image("a/x.png"), _image("b/x.png"), _image("c/y.jpg")]
    plan = plan_outputs("votes", images, tmp_path, ["votes.json"])
    assert [f.folder.name for f in plan.folders] == ["x", "x_2", "y"]

    def one(src: ImageSource, o: object) -> RunResult:
        assert hasattr(o, "json")
        path = o.json("votes.json", {"image": src.label})  # type: ignore[attr-defined]
        return RunResult(path.parent, [path], {"image": src.label})

    res = plan.run(one, row=lambda r: [r.metrics["image"]], headers=["again"])
    assert [r.metrics["image"] for r in res.items] == ["a/x.png", "b/x.png", "c/y.jpg"]
    index = json.loads((tmp_path / "votes.json").read_text())
    assert [i["folder"] for i in index["images"]] == ["x", "x_2", "y"]
    html = (tmp_path / "votes_index.html").read_text()
    assert 'href="x_2/votes.json"' in html and "c/y.jpg" in html
    # a second run finds the first one's files in the image folders before any work
    with pytest.raises(ConvscopeError, match="already holds"):
        plan_outputs("votes", images, tmp_path, ["votes.json"])


def test_ctrl_c_during_several_images_lists_the_finished_ones(tmp_path: Path) -> None:
    images = [_image("x.png"), _image("y.png")]
    plan = plan_outputs("res", images, tmp_path, ["res.json"])

    def one(src: ImageSource, o: object) -> RunResult:
        if src.label == "y.png":
            raise KeyboardInterrupt
        path = o.json("res.json", {})  # type: ignore[attr-defined]
        return RunResult(path.parent, [path], {})

    with pytest.raises(RunInterrupted, match=r"kept x/res.json in "):
        plan.run(one)
