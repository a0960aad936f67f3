"""The /demo page: its files over HTTP, and the page in a real browser (Debian's headless chromium via
selenium) against the live server; the browser tests skip when chromium is not installed.

The page is checked from outside: the points it posted are read back from Redis and compared with
where the clicks landed, and the band is found in the canvas pixels where the service's own
prediction puts it. The live server has API keys, so the page is also driven through its key field.
What the page may ask for is checked in the browser's console: a refused request logs its status.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from matplotlib import image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from model import load_checkpoint
from service.client import CMANPClient
from service.store import session_keys
from tests.service.helpers import API_KEYS, logged_points, stored_event_state
from tools.browser import chromium, click_plot, console_messages, missing_browser, plot, wait_for_points

# The plot's layout, as service/static/demo/chart.js and main.js draw it: margins around the
# plotting area (CSS pixels) and the y range; x spans the model's range (the tiny model's [-2, 2]).
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 12, 34
X_RANGE, Y_RANGE = (-2.0, 2.0), (-3.0, 3.0)
BAND_RGB = np.array([37, 99, 235]) * 0.18 + 255 * 0.82  # rgba(37, 99, 235, 0.18) over white
CLICKS = [(0.2, 0.35), (0.5, 0.6), (0.8, 0.3)]  # fractions of the canvas, from its top-left


PRIOR_WARNING = "no context yet: this is the model's prior"


@pytest.fixture
def fresh_page(server: str) -> Iterator[WebDriver]:
    """The demo page as it first loads, no API key typed: the live server refuses it with 401."""
    if reason := missing_browser():
        pytest.skip(reason)
    with chromium() as driver:
        driver.get(f"{server}/demo")
        WebDriverWait(driver, 60).until(lambda d: plot(d).get_attribute("data-busy") == "false")
        yield driver


@pytest.fixture
def page(fresh_page: WebDriver) -> WebDriver:
    """The demo page, loaded and given alice's API key (without one it can only show a 401)."""
    key = fresh_page.find_element(By.ID, "api-key")
    key.send_keys(API_KEYS["alice"], Keys.TAB)  # leaving the field fires "change": a new session
    wait_for_points(fresh_page, 0)
    return fresh_page


def content_box(driver: WebDriver) -> tuple[int, int, int, int]:
    """Border width (left, top) and the drawing area's size (width, height) of the plot canvas."""
    return tuple(
        driver.execute_script(
            "const c = arguments[0]; return [c.clientLeft, c.clientTop, c.clientWidth, c.clientHeight];", plot(driver)
        )
    )


def to_data(
    u: float, v: float, width: int, height: int, x_range: tuple = X_RANGE, y_range: tuple = Y_RANGE
) -> tuple[float, float]:
    """Data coordinates of the canvas pixel (u, v), counted from the drawing area's top-left."""
    x = x_range[0] + (u - MARGIN_LEFT) / (width - MARGIN_LEFT - MARGIN_RIGHT) * (x_range[1] - x_range[0])
    y = y_range[0] + (height - MARGIN_BOTTOM - v) / (height - MARGIN_TOP - MARGIN_BOTTOM) * (y_range[1] - y_range[0])
    return x, y


def to_row(y: float, height: int) -> float:
    return height - MARGIN_BOTTOM - (y - Y_RANGE[0]) / (Y_RANGE[1] - Y_RANGE[0]) * (height - MARGIN_TOP - MARGIN_BOTTOM)


def canvas_pixels(driver: WebDriver) -> np.ndarray:
    """The plot canvas as shown, RGB 0-255, indexed [row, column] from the drawing area's top-left."""
    left, top, width, height = content_box(driver)
    shot = image.imread(io.BytesIO(plot(driver).screenshot_as_png), format="png")[..., :3] * 255
    return shot[top : top + height, left : left + width]


def is_band(rgb: np.ndarray) -> bool:
    return bool(np.all(np.abs(rgb - BAND_RGB) < 8))


def assert_band_where_the_service_puts_it(page: WebDriver, client: CMANPClient, fx: float) -> None:
    """At the column fx of the canvas, the pixels at mean ± sigma are band-coloured and at mean ± 3 sigma
    they are not (the band is mean ± 2 sigma). The mean comes from the service, not the page."""
    border_x, _, width, height = content_box(page)
    pixels = canvas_pixels(page)
    column = round(fx * (width + 2 * border_x) - border_x)
    xq, _ = to_data(column, 0, width, height)
    prediction = client.predict(plot(page).get_attribute("data-session-id"), [xq])
    mean, std = prediction.mean[0, 0], float(np.sqrt(prediction.variance[0, 0]))
    rows = {k: round(to_row(mean + k * std, height)) for k in (-3, -1, 1, 3)}
    assert rows[-1] - rows[1] >= 4, "the band is too thin at this column to test"
    for k in (-1, 1):
        assert is_band(pixels[rows[k], column]), f"no band at mean {k:+d} sigma: {pixels[rows[k], column]}"
    for k in (-3, 3):
        if 0 <= rows[k] < height:
            assert not is_band(pixels[rows[k], column]), f"band at mean {k:+d} sigma"


def refused(driver: WebDriver, status: int) -> list[str]:
    """The console's lines about requests the service refused with this status."""
    return [m for m in console_messages(driver) if f"status of {status}" in m]


def test_the_page_and_only_its_files_are_served(server: str) -> None:
    with httpx.Client(base_url=server) as http:
        page = http.get("/demo")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/demo/main.js">' in page.text
        script = http.get("/demo/main.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        for outside in ("/demo/nothing.js", "/demo/..%2Fapp.py", "/demo/%2E%2E%2F%2E%2E%2Fpyproject.toml"):
            assert http.get(outside).status_code == 404, outside


def test_clicks_become_context_points_and_the_band_is_drawn(
    page: WebDriver, client: CMANPClient, redis_client: redis.Redis, tmp_path: Path
) -> None:
    canvas = plot(page)
    border_x, border_y, width, height = content_box(page)
    for fx, fy in CLICKS:
        click_plot(page, fx, fy)
    wait_for_points(page, 3)

    session_id = canvas.get_attribute("data-session-id")
    info = client.get_session(session_id)
    assert info.num_points == 3
    assert page.find_element(By.ID, "num-points").text == "3"
    assert page.find_element(By.ID, "state-bytes").text == f"{info.state_bytes:,}"
    assert f"the same {info.state_bytes:,} bytes at 0 and at 3 points" in page.find_element(By.ID, "state-note").text

    # The clicks' offsets are from the border box; the drawing starts inside the border.
    outer_width, outer_height = width + 2 * border_x, height + 2 * border_y
    expected = [to_data(fx * outer_width - border_x, fy * outer_height - border_y, width, height) for fx, fy in CLICKS]
    x, y = logged_points(redis_client, session_id, 1, 1)
    x_pixel = (X_RANGE[1] - X_RANGE[0]) / (width - MARGIN_LEFT - MARGIN_RIGHT)
    y_pixel = (Y_RANGE[1] - Y_RANGE[0]) / (height - MARGIN_TOP - MARGIN_BOTTOM)
    np.testing.assert_allclose(x[:, 0], [e[0] for e in expected], atol=1.5 * x_pixel)
    np.testing.assert_allclose(y[:, 0], [e[1] for e in expected], atol=1.5 * y_pixel)

    # The band, between two clicks.
    assert canvas.get_attribute("data-band-points") == "151"
    assert_band_where_the_service_puts_it(page, client, 0.35)
    assert page.find_element(By.ID, "warnings").text == ""

    screenshot = tmp_path / "demo.png"
    assert page.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000


def test_streaming_a_gp_draw_keeps_the_state_size(page: WebDriver, client: CMANPClient) -> None:
    canvas = plot(page)
    page.find_element(By.ID, "stream").click()
    wait_for_points(page, 25)

    info = client.get_session(canvas.get_attribute("data-session-id"))
    assert info.num_points == 25
    note = page.find_element(By.ID, "state-note").text
    assert note == f"the same {info.state_bytes:,} bytes at 0 and at 25 points"
    assert page.find_element(By.ID, "error").text == ""


def test_before_a_key_the_plot_and_the_state_say_what_they_wait_for(fresh_page: WebDriver) -> None:
    # The axes and a line of text in the middle of the plotting area are drawn: dark pixels there.
    _, _, width, height = content_box(fresh_page)
    pixels = canvas_pixels(fresh_page)
    middle_row = (MARGIN_TOP + height - MARGIN_BOTTOM) // 2
    middle = pixels[middle_row - 8 : middle_row + 8, width // 2 - 100 : width // 2 + 100]
    assert (middle.max(axis=-1) < 160).sum() > 50, "no message in the middle of the plot"
    assert (pixels[height - MARGIN_BOTTOM :, MARGIN_LEFT:].max(axis=-1) < 160).any(), "no tick labels"
    assert "API key" in fresh_page.find_element(By.ID, "error").text
    state = fresh_page.find_element(By.CSS_SELECTOR, "section.state").text
    assert "No session yet" in state and "–" not in state, state
    assert plot(fresh_page).get_attribute("data-num-points") == ""


def test_the_first_view_is_the_models_prior(page: WebDriver, client: CMANPClient) -> None:
    canvas = plot(page)
    assert canvas.get_attribute("data-band-points") == "151"
    assert_band_where_the_service_puts_it(page, client, 0.5)
    assert page.find_element(By.ID, "warnings").text == PRIOR_WARNING
    info = client.get_session(canvas.get_attribute("data-session-id"))
    assert info.num_points == 0
    assert page.find_element(By.ID, "num-points").text == "0"
    assert page.find_element(By.ID, "points-noun").text == "context points"
    assert page.find_element(By.ID, "state-note").text == f"add points and watch it stay {info.state_bytes:,} bytes"

    click_plot(page, 0.5, 0.5)
    wait_for_points(page, 1)
    assert page.find_element(By.ID, "points-noun").text == "context point"
    assert page.find_element(By.ID, "state-note").text == f"the same {info.state_bytes:,} bytes at 0 and at 1 point"
    assert page.find_element(By.ID, "warnings").text == ""


def test_the_page_asks_the_model_list_what_a_model_can_draw(page: WebDriver) -> None:
    canvas = plot(page)
    lead = page.find_element(By.CSS_SELECTOR, ".lead")
    # The default model, 'tiny', has no joint head: no sample paths asked for, promised or drawn.
    assert refused(page, 422) == []
    assert canvas.get_attribute("data-sample-paths") == "0"
    assert "sample path" not in lead.text
    assert "no joint head" in page.find_element(By.ID, "samples-note").text

    first_session = canvas.get_attribute("data-session-id")
    Select(page.find_element(By.ID, "model")).select_by_value("tiny-and")  # b_Q = 8: a joint head
    WebDriverWait(page, 60).until(lambda d: plot(d).get_attribute("data-session-id") not in ("", first_session))
    wait_for_points(page, 0)
    assert canvas.get_attribute("data-sample-paths") == "3"
    assert "3 of the model's joint sample paths" in lead.text
    assert page.find_element(By.ID, "samples-note").text == "lines: 3 joint sample paths from the model"
    assert refused(page, 422) == [] and refused(page, 400) == []


EVENT_TIMES, EVENT_MARKS = (0.0, 20.0), (-0.5, 2.5)  # events.js: time on x, the tiny event model's 3 marks as rows
EVENT_CLICKS = [(0.2, 0.2), (0.35, 0.85), (0.45, 0.5)]  # rows of marks 2, 0 and 1


def event_column(t: float, width: int) -> int:
    """The canvas column of time t on an event session's plot."""
    span = EVENT_TIMES[1] - EVENT_TIMES[0]
    return round(MARGIN_LEFT + (t - EVENT_TIMES[0]) / span * (width - MARGIN_LEFT - MARGIN_RIGHT))


def test_an_event_model_s_page_posts_clicks_as_events_and_draws_the_next_event_s_forecast(
    page: WebDriver, client: CMANPClient, redis_client: redis.Redis, checkpoint_dir: Path
) -> None:
    canvas = plot(page)
    first_session = canvas.get_attribute("data-session-id")
    Select(page.find_element(By.ID, "model")).select_by_value("tiny-events")
    WebDriverWait(page, 60).until(lambda d: plot(d).get_attribute("data-session-id") not in ("", first_session))
    wait_for_points(page, 0)
    assert canvas.get_attribute("data-session-kind") == "events" and canvas.get_attribute("data-forecast") != ""
    for fx, fy in EVENT_CLICKS:
        click_plot(page, fx, fy)
    wait_for_points(page, 3)

    # The events in Redis are where the clicks landed: time on x, the mark of the row.
    session_id = canvas.get_attribute("data-session-id")
    border_x, border_y, width, height = content_box(page)
    outer_width, outer_height = width + 2 * border_x, height + 2 * border_y
    expected = [
        to_data(fx * outer_width - border_x, fy * outer_height - border_y, width, height, EVENT_TIMES, EVENT_MARKS)
        for fx, fy in EVENT_CLICKS
    ]
    net = load_checkpoint(checkpoint_dir / "tiny-events.safetensors")
    t_pixel = (EVENT_TIMES[1] - EVENT_TIMES[0]) / (width - MARGIN_LEFT - MARGIN_RIGHT)
    times = [e[0] for e in expected]
    state = stored_event_state(redis_client, session_id, net)
    assert state.last_time.item() == pytest.approx(times[-1], abs=1.5 * t_pixel)
    want_marks = [round(e[1]) for e in expected]
    assert want_marks == [2, 0, 1]
    records = np.frombuffer(
        b"".join(redis_client.lrange(session_keys(session_id)[2], 0, -1)), [("t", "<f8"), ("k", "<i4")]
    )
    np.testing.assert_allclose(records["t"], times, atol=1.5 * t_pixel)
    assert records["k"].tolist() == want_marks
    assert page.find_element(By.ID, "points-noun").text == "events"

    # The forecast drawn is the service's: the band spans the 5%-95% times of the next event.
    got = client.forecast(session_id, quantiles=[0.05, 0.5, 0.95])
    shown = [float(v) for v in canvas.get_attribute("data-forecast").split(",")]
    np.testing.assert_allclose(shown, got.now + got.wait_quantiles, rtol=1e-12)
    assert page.find_element(By.ID, "samples-note").text.startswith("next event's mark: mark 0: ")
    pixels = canvas_pixels(page)
    row = round(
        MARGIN_TOP + (height - MARGIN_TOP - MARGIN_BOTTOM) * 1.25 / 3
    )  # y = 1.25: off the grid lines (0.5 apart)
    low, median, high = (event_column(t, width) for t in shown)
    inside = max((low + 2, high - 2), key=lambda c: abs(c - median))  # away from the dashed median line
    assert abs(inside - median) >= 4 and low < inside < high, "the band is too narrow at this zoom to test"
    assert is_band(pixels[row, inside])
    if high + 3 < width - MARGIN_RIGHT:
        assert not is_band(pixels[row, high + 3])

    # An event before the last one: the service refuses it with 409, and the page says so.
    click_plot(page, 0.1, 0.5)
    WebDriverWait(page, 60).until(lambda d: "409" in d.find_element(By.ID, "error").text)
    wait_for_points(page, 3)


def test_streaming_a_hawkes_process_posts_its_events_in_time_order(page: WebDriver, client: CMANPClient) -> None:
    canvas = plot(page)
    first_session = canvas.get_attribute("data-session-id")
    Select(page.find_element(By.ID, "model")).select_by_value("tiny-events")
    WebDriverWait(page, 60).until(lambda d: plot(d).get_attribute("data-session-id") not in ("", first_session))
    stream = page.find_element(By.ID, "stream")
    assert stream.text == "Simulate a Hawkes process and stream its events"
    stream.click()
    WebDriverWait(page, 120).until(
        lambda d: d.find_element(By.ID, "stream").is_enabled() and plot(d).get_attribute("data-busy") == "false"
    )
    info = client.get_session(canvas.get_attribute("data-session-id"))
    assert info.num_events >= 5 and canvas.get_attribute("data-num-points") == str(info.num_events)
    assert page.find_element(By.ID, "error").text == ""  # no post was out of order
    assert (
        f"the same {info.state_bytes:,} bytes at 0 and at {info.num_events} events"
        in page.find_element(By.ID, "state-note").text
    )
