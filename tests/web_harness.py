"""Drives the web page in Debian's chromium, headless, through Playwright; also regenerates the README's
screenshot (no patient image in it):

    PYTHONPATH=. .venv/bin/python -m tests.web_harness test-artifacts/web-page.png
"""

import contextlib
import os
import sys
import tempfile
from typing import Iterator

import numpy as np
import tensorflow as tf

from serving import config
from tests.serving_fixtures import MODEL_NAME, export_tiny_model, place_version, start_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
# Headless in containers and CI: no sandbox (root), no GPU, nothing fetched in the background.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--metrics-recording-only",
    "--mute-audio",
]
ARTIFACTS = os.environ.get("PNEUMONIA_TEST_ARTIFACTS", os.path.join(REPO, "test-artifacts"))


def missing_browser() -> str:
    """Why the browser tests cannot run here, or '' when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (make install)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (make install runs apt-get install chromium)"
    return ""


@contextlib.contextmanager
def chromium() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page, name: str) -> str:
    """A full-page PNG under the test artifact folder (git-ignored: it may show patient images)."""
    path = os.path.join(ARTIFACTS, "web", f"{name}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    page.screenshot(path=path, full_page=True)
    return path


def photograph(folder: str) -> str:
    """scikit-image's astronaut photograph as a PNG file: no chest X-ray, so the guard must flag it."""
    from skimage import data

    path = os.path.join(folder, "astronaut.png")
    tf.io.write_file(path, tf.io.encode_png(data.astronaut()))
    return path


def ct_like_slice(folder: str) -> str:
    """The Shepp-Logan phantom, a synthetic CT slice (no patient), as a PNG file."""
    from skimage.data import shepp_logan_phantom

    path = os.path.join(folder, "phantom.png")
    pixels = (255 * shepp_logan_phantom()).astype(np.uint8)[..., None]
    tf.io.write_file(path, tf.io.encode_png(pixels))
    return path


def text_file(folder: str) -> str:
    path = os.path.join(folder, "notes.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("not an image\n")
    return path


def wait_for_answers(page, count: int, timeout_ms: float = 30000) -> None:
    """Until `count` result cards have left the pending state (selectors, not script: the page's
    Content-Security-Policy forbids the eval that Playwright's wait_for_function needs)."""
    page.locator(".result:not([data-state='pending'])").nth(count - 1).wait_for(state="attached", timeout=timeout_ms)


def regenerate_readme_screenshot(path: str) -> None:
    """The page at laptop width after a photograph, a CT-like phantom and a text file were dropped on it."""
    from pneumonia.data.sources import shared_data_dir
    from tests.serving_fixtures import xray_guard

    data = shared_data_dir()
    if not data:
        raise SystemExit("error: ../shared/data is needed (the model's OOD guard is fitted on its X-rays)")
    with tempfile.TemporaryDirectory() as folder:
        base = os.path.join(folder, "serving", MODEL_NAME)
        os.makedirs(base)
        model = export_tiny_model(
            os.path.join(folder, "model"), os.path.join(folder, "work"), 1, lambda m: xray_guard(m, data)
        )
        place_version(base, 1, model)
        server = start_server(config.model_config(MODEL_NAME, base, labels={"stable": 1}))
        try:
            with chromium() as browser:
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.goto(f"http://127.0.0.1:{server.rest_port}/")
                page.wait_for_selector("#server-status[data-state='ok']")
                page.set_input_files("#file-input", [photograph(folder), ct_like_slice(folder), text_file(folder)])
                wait_for_answers(page, 3)
                page.screenshot(path=path, full_page=True)
        finally:
            server.stop(grace_seconds=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or missing_browser():
        raise SystemExit(f"usage: python -m tests.web_harness OUT.png ({missing_browser() or 'one path'})")
    regenerate_readme_screenshot(sys.argv[1])
