"""Screenshots of the main pages for the docs: docs/screenshots/{demo,explain,explorer}.png.

    python docs/_screenshots.py            # runs the commands into a temporary folder
    python docs/_screenshots.py --keep DIR # ... into DIR, reusing the pages DIR already holds

Runs ``convscope demo --quick``, ``convscope explain`` with the demo's GFNN and
``convscope linear explore`` with the trained ESPCN, opens each page in headless Chromium
(Debian's chromium and chromium-driver: ``make browser``) and saves it as a PNG; on the
explorer page the pointer rests on the photo first, so its row and column are on show.
``make screenshots`` runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
sys.path.insert(0, str(ROOT / "tests"))  # the Chromium helper the browser tests use

import _browser  # noqa: E402

from convscope.cli import main  # noqa: E402


def cli(*args: str) -> None:
    try:
        main(list(args))
    except SystemExit as e:
        if e.code:
            raise SystemExit(f"convscope {' '.join(args)} failed ({e.code})") from None


def pages(work: Path) -> dict[str, Path]:
    """Each page to photograph, written by its command unless ``work`` has it already.

    The commands run inside ``work`` with relative paths, so that the pages name
    ``demo/gfnn.pt`` rather than a temporary folder.
    """
    with contextlib.chdir(work):
        found = _pages(Path("."))
    return {name: (work / page).resolve() for name, page in found.items()}


def _pages(work: Path) -> dict[str, Path]:
    demo = work / "demo" / "report.html"
    if not demo.is_file():
        cli("demo", "--quick", "--out", str(demo.parent), "--no-progress")
    explain = work / "explain" / "report.html"
    if not explain.is_file():
        cli("explain", "--model", str(demo.parent / "gfnn.pt"), "--image", "sample:camera",
            "--size", "28,28", "--channels", "1", "--out", str(explain.parent), "--no-progress",
            "--device", "cpu")  # fmt: skip
    explorer = work / "explore" / "explorer.html"
    if not explorer.is_file():
        cli("linear", "explore", "--model", "espcn", "--image", "sample:astronaut",
            "--size", "32,32", "--max-pixels", "256", "--out", str(explorer.parent),
            "--no-progress", "--device", "cpu")  # fmt: skip
    return {"demo": demo, "explain": explain, "explorer": explorer}


def point_at_photo(driver: object) -> None:
    """Rest the pointer on the explorer's photo: its row and column are drawn."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    photo = driver.find_element(By.ID, "input-view")  # type: ignore[attr-defined]
    ActionChains(driver).move_to_element_with_offset(photo, 5, -10).perform()  # type: ignore[arg-type]
    time.sleep(0.3)


def shoot(found: dict[str, Path], dst: Path = SHOTS) -> list[Path]:
    from PIL import Image

    written = []
    with _browser.chromium(width=1100, height=900) as driver:
        for name, page in found.items():
            explorer = name == "explorer"
            shot = _browser.screenshot(
                driver, page, dst / f"{name}.png", ready=explorer,
                max_height=2200 if name == "demo" else 1400,
                prepare=point_at_photo if explorer else None,
            )  # fmt: skip
            # a palette of 256 colours: a fraction of the size, the same to the eye
            img = Image.open(shot).convert("RGB").quantize(256, dither=Image.Dither.NONE)
            tmp = shot.with_name(f".{shot.name}.tmp")
            img.save(tmp, format="PNG", optimize=True)
            tmp.replace(shot)
            written.append(shot)
            print(f"wrote {shot.relative_to(ROOT)} ({shot.stat().st_size // 1024} kB)")
            driver.set_window_size(1100, 900)
    return written


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write (and reuse) the pages in this folder")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shoot(pages(args.keep))
        return
    with tempfile.TemporaryDirectory(prefix="convscope-shots-") as work:
        shoot(pages(Path(work)))


if __name__ == "__main__":
    run()
