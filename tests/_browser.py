"""Headless Chromium for the tests that open our pages (and docs/_screenshots.py).

Debian's chromium, driven by Selenium through the system chromedriver named outright, so
Selenium Manager never downloads a browser or a driver. ``make browser`` installs both;
without them :func:`chromium_or_skip` skips with the command that installs them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = (
    "needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver): "
    "apt-get install -y --no-install-recommends chromium chromium-driver "
    "(or `make browser`, which `make test` runs first)"
)

# Every <img> on the page that did not load: no file, an unreadable file, or none decoded.
_BROKEN_IMAGES_JS = """
return Array.from(document.images)
  .filter(im => !im.complete || im.naturalWidth === 0)
  .map(im => im.getAttribute('src'));
"""


@contextmanager
def chromium(width: int = 1200, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium (a Selenium driver) with a throwaway profile, quit afterwards.

    Raises:
        FileNotFoundError: chromium or chromedriver is not installed (see INSTALL_HINT).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        raise FileNotFoundError(INSTALL_HINT)
    profile = tempfile.mkdtemp(prefix="convscope-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    # Every console message, so that a page's errors can be read back.
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def chromium_or_skip() -> Iterator[Any]:
    """Body of a module-scoped ``browser`` fixture: the driver, or a skip that says why."""
    import pytest

    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(INSTALL_HINT)
    pytest.importorskip("selenium.webdriver", reason="pip install selenium (dev extra)")
    with chromium() as driver:
        yield driver


def load(driver: Any, page: Path, *, ready: bool = False, timeout: float = 20.0) -> None:
    """Open ``page`` and wait until it and its images have loaded.

    Args:
        ready: also wait for ``document.body.dataset.ready == "1"``, which the explorer
            sets once it has drawn (the reports have no script).
    """
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())
    deadline = time.monotonic() + timeout
    script = "return document.readyState === 'complete'" + (
        " && document.body.dataset.ready === '1'" if ready else ""
    )
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise AssertionError(f"{page} never became ready")
        time.sleep(0.05)


def console_errors(driver: Any) -> list[str]:
    """The page's console errors (and failed loads) since it was opened."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def broken_images(driver: Any) -> list[str]:
    """The ``src`` of every image on the page that did not load (naturalWidth 0)."""
    return list(driver.execute_script(_BROKEN_IMAGES_JS))


def open_page(driver: Any, page: Path, *, ready: bool = False) -> None:
    """Open ``page`` (see :func:`load`); fail on a console error or an image that did not load."""
    load(driver, page, ready=ready)
    problems = broken_images(driver)
    assert not problems, f"{page}: images that did not load: {problems}"
    errors = console_errors(driver)
    assert not errors, f"{page}: console errors: {errors}"


def screenshot(
    driver: Any,
    page: Path,
    dst: Path,
    *,
    ready: bool = False,
    max_height: int = 2400,
    prepare: Callable[[Any], None] | None = None,
) -> Path:
    """Open ``page`` and save the whole of it (at most ``max_height`` pixels) as a PNG.

    Args:
        prepare: called with the driver once the page is open and sized, before the shot
            (to point at something, say).
    """
    open_page(driver, page, ready=ready)
    width = driver.get_window_size()["width"]
    height = driver.execute_script(
        "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)"
    )
    driver.set_window_size(width, min(int(height) + 120, max_height))
    time.sleep(0.2)
    if prepare is not None:
        prepare(driver)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_bytes(driver.get_screenshot_as_png())
    tmp.replace(dst)
    return dst
