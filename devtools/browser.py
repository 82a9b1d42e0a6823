"""Headless Chromium from Debian's packages (`chromium`, `chromium-driver`), driven by Selenium.

The operator console is tested in this real browser, with Chromium's fake capture device playing a
WAV file as the microphone. Nothing is downloaded: Selenium is pointed at the system's chromedriver.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = ("chromium", "chromium-browser")
DRIVER = "chromedriver"


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) found on PATH, or None when either is missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which(DRIVER)
    return (browser, driver) if browser and driver else None


def missing_reason() -> str:
    return (
        "no Chromium with chromedriver: install Debian's 'chromium' and 'chromium-driver' (scripts/tools.sh)"
    )


def chromium(
    microphone: Path | None = None, width: int = 1280, height: int = 900, log: Path | None = None
) -> webdriver.Chrome:
    """A headless Chromium; `microphone`: a WAV file it records from, in a loop, as the microphone,
    with the permission prompt answered yes."""
    found = chromium_paths()
    if found is None:
        raise RuntimeError(missing_reason())
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    if microphone is not None:
        options.add_argument("--use-fake-ui-for-media-stream")
        options.add_argument("--use-fake-device-for-media-stream")
        options.add_argument(f"--use-file-for-fake-audio-capture={microphone}")
    service = Service(executable_path=driver, log_output=str(log) if log else None)
    return webdriver.Chrome(options=options, service=service)
