"""The interactive API docs, ``GET /docs``: Swagger UI with its files served by the app, so the docs
work offline.

FastAPI's own ``/docs`` page loads Swagger UI's script and stylesheet from a CDN: without network
it is a blank page. Here the files come from the ``swagger-ui-bundle-v2`` package (pinned in
pyproject.toml) through FastAPI's self-hosting recipe (``get_swagger_ui_html`` with local URLs);
Swagger UI's online validator is off, so the page asks nothing of any other host. ReDoc, which
also loads from a CDN, is not served (``create_app`` turns it off). Routes, like the demo's, so
the request metrics label them by route.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

from service.errors import NotFoundError

DOCS_URL = "/docs"
SWAGGER_UI_DIR = Path(swagger_ui_path)
# Only these names are served, so no request path can reach outside the package's folder.
SWAGGER_UI_FILES = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})

router = APIRouter(prefix=DOCS_URL, tags=["docs"], include_in_schema=False)


@router.get("")
async def swagger_ui(request: Request) -> HTMLResponse:
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - API docs",
        swagger_js_url=f"{DOCS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_URL}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # the validator badge would call validator.swagger.io
    )


@router.get("/{name}")
async def swagger_ui_file(name: str) -> FileResponse:
    if name not in SWAGGER_UI_FILES:
        raise NotFoundError(f"no docs file {name!r}")
    return FileResponse(SWAGGER_UI_DIR / name)
