"""Debian's headless chromium, driven by selenium, for the demo page: its tests and its README screenshot.

selenium is pointed at the system chromedriver; left alone, selenium-manager would try to
download a driver and a browser, which fails offline. The browser's console is kept for
``console_messages``; ``chromium(offline=True)`` reaches no host but 127.0.0.1 (every other name
fails to resolve, and no proxy is used), as on a machine without network.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"
INSTALL_HINT = "apt-get install -y chromium chromium-driver (.ci/run installs them)"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    absent = [name for name in (CHROMIUM, CHROMEDRIVER) if shutil.which(name) is None]
    return f"{' and '.join(absent)} not installed: {INSTALL_HINT}" if absent else None


OFFLINE_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--no-proxy-server")


@contextmanager
def chromium(width: int = 1000, height: int = 1000, offline: bool = False) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    for flag in OFFLINE_FLAGS if offline else ():
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_messages(driver: WebDriver) -> list[str]:
    """What the page logged to the console since the last call (errors, failed loads, console.log)."""
    return [entry["message"] for entry in driver.get_log("browser")]


def resources(driver: WebDriver) -> list[str]:
    """The URLs of every file the page has requested (scripts, styles, images, fetches)."""
    return driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")


def plot(driver: WebDriver) -> WebElement:
    return driver.find_element(By.ID, "plot")


def click_plot(driver: WebDriver, fx: float, fy: float) -> None:
    """Click the plot canvas at fractions (fx, fy) of its width and height, from its top-left corner."""
    canvas = plot(driver)
    width, height = canvas.size["width"], canvas.size["height"]
    # Offsets are from the element's centre.
    ActionChains(driver).move_to_element_with_offset(
        canvas, round((fx - 0.5) * width), round((fy - 0.5) * height)
    ).click().perform()


def wait_for_points(driver: WebDriver, num_points: int, timeout: float = 60.0) -> None:
    """Wait until the page shows `num_points` and has no request in flight."""

    def settled(d: WebDriver) -> bool:
        canvas = plot(d)
        return canvas.get_attribute("data-busy") == "false" and canvas.get_attribute("data-num-points") == str(
            num_points
        )

    WebDriverWait(driver, timeout).until(settled, message=f"the page never showed {num_points} points")
