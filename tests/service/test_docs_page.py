"""/docs in a real browser with no network (Debian's headless chromium, every host but 127.0.0.1
unresolvable): Swagger UI must render every operation of the live server's OpenAPI document
from files the app serves itself. Skips when chromium is not installed."""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tools.browser import chromium, console_messages, missing_browser, resources

RENDER_SECONDS = 30


def operations(server: str) -> set[tuple[str, str]]:
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item}


def shown_operations(driver: WebDriver) -> set[tuple[str, str]]:
    blocks = driver.find_elements(By.CSS_SELECTOR, ".opblock")
    return {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
        )
        for block in blocks
    }


def test_docs_render_every_operation_without_network(server: str) -> None:
    if reason := missing_browser():
        pytest.skip(reason)
    expected = operations(server)
    assert ("POST", "/v1/sessions/{session_id}/context") in expected and len(expected) >= 8
    with chromium(offline=True) as driver:
        driver.get(f"{server}/docs")
        WebDriverWait(driver, RENDER_SECONDS).until(
            lambda d: shown_operations(d) == expected, message="Swagger UI did not render the operations offline"
        )
        assert driver.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("CMANP streaming inference")
        assert all(url.startswith(f"{server}/") for url in resources(driver)), resources(driver)
        errors = [m for m in console_messages(driver) if "Failed to load" in m or "ERR_" in m]
        assert errors == []


def test_only_the_docs_files_are_served_and_redoc_is_off(server: str) -> None:
    with httpx.Client(base_url=server) as http:
        page = http.get("/docs")
        assert page.status_code == 200 and "/docs/swagger-ui-bundle.js" in page.text and "cdn" not in page.text
        script = http.get("/docs/swagger-ui-bundle.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "SwaggerUIBundle" in script.text
        assert http.get("/docs/swagger-ui.css").headers["content-type"].startswith("text/css")
        for outside in ("/docs/index.html", "/docs/..%2F__init__.py", "/redoc"):
            assert http.get(outside).status_code == 404, outside
