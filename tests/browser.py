"""Debian's Chromium driven by Playwright, with the fake camera and microphone."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
# Screenshots and other things a person should look at after a run (ignored by git).
ARTIFACTS_DIR = Path(
    os.environ.get("RECORDER_TEST_ARTIFACTS") or Path(__file__).resolve().parent.parent / "test-artifacts"
)


def chromium_playwright():
    """Playwright's sync API, or a skip (a failure under CI=true) when Chromium is missing."""
    from tests.conftest import skip_or_fail  # here: the fixture recorder script imports this module bare

    if not shutil.which(CHROMIUM):
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api").sync_playwright
