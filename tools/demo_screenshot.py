"""The README's screenshot of the demo page: clicks a few points on /demo of a running service.

make run    # in another shell
python -m tools.demo_screenshot [--url http://127.0.0.1:8000] [--model cmanp-and-gp-rbf] [--out docs/demo.png]
"""

from __future__ import annotations

import argparse

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tools.browser import chromium, click_plot, wait_for_points

# A smooth arc of clicks with a gap in the middle, where the band opens up.
CLICKS = [(0.12, 0.55), (0.2, 0.42), (0.3, 0.35), (0.38, 0.38), (0.7, 0.62), (0.78, 0.55), (0.9, 0.4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="pick this model in the page's selector (default: the default)")
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
        for fx, fy in CLICKS:
            click_plot(driver, fx, fy)
        wait_for_points(driver, len(CLICKS))
        driver.save_screenshot(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
