"""The README's screenshot of the demo page: clicks a few points on /demo of a running service
(with --image: streams pixels of a held-out digit in the image view, which needs a 2-D model served).

make run    # in another shell
python -m tools.demo_screenshot [--url http://127.0.0.1:8000] [--model cmanp-and-gp-rbf] [--out docs/demo.png]
python -m tools.demo_screenshot --image [--pixels 150] --out docs/demo-image.png
"""

from __future__ import annotations

import argparse

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tools.browser import chromium, click_plot, wait_for_points

# A smooth arc of clicks with a gap in the middle, where the band opens up.
CLICKS = [(0.12, 0.55), (0.2, 0.42), (0.3, 0.35), (0.38, 0.38), (0.7, 0.62), (0.78, 0.55), (0.9, 0.4)]


def stream_pixels(driver: WebDriver, count: int) -> None:
    """Switch to the image view, stream `count` random pixels of its first digit and wait for the last redraw."""
    driver.find_element(By.ID, "view-image").click()
    images = driver.find_element(By.ID, "images")
    WebDriverWait(driver, 60).until(lambda d: images.get_attribute("data-revealed") == "0")
    field = driver.find_element(By.ID, "stream-count")
    field.clear()
    field.send_keys(str(count))
    driver.find_element(By.ID, "stream-pixels").click()
    WebDriverWait(driver, 300).until(
        lambda d: images.get_attribute("data-revealed") == str(count) and images.get_attribute("data-busy") == "false"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="pick this model in the page's selector (default: the default)")
    parser.add_argument("--image", action="store_true", help="the image view instead (a 2-D model must be served)")
    parser.add_argument("--pixels", type=int, default=150, help="with --image: how many pixels to stream")
    parser.add_argument("--out", default="docs/demo.png")
    args = parser.parse_args()

    with chromium(width=960, height=1120) as driver:
        driver.get(f"{args.url}/demo")
        if args.api_key:
            driver.find_element(By.ID, "api-key").send_keys(args.api_key, Keys.TAB)
        wait_for_points(driver, 0)
        if args.model:
            Select(driver.find_element(By.ID, "model")).select_by_value(args.model)
            wait_for_points(driver, 0)
        if args.image:
            stream_pixels(driver, args.pixels)
        else:
            for fx, fy in CLICKS:
                click_plot(driver, fx, fy)
            wait_for_points(driver, len(CLICKS))
        driver.save_screenshot(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
