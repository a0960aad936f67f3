"""The live demo page: ``GET /demo`` and its files under ``/demo/``, from ``service/static/demo``.

Plain HTML, CSS and ES modules (no build step, no CDN), a same-origin client of the public API;
see docs/SERVICE.md. Served by routes rather than a static mount so that the request metrics
label them by route like every other path.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFoundError

DEMO_DIR = Path(__file__).resolve().parents[1] / "static" / "demo"
# Only these names are served, so no request path can reach outside the folder.
DEMO_FILES = frozenset(path.name for path in DEMO_DIR.iterdir() if path.is_file())

router = APIRouter(prefix="/demo", tags=["demo"], include_in_schema=False)


@router.get("")
async def demo_page() -> FileResponse:
    return FileResponse(DEMO_DIR / "index.html")


@router.get("/{name}")
async def demo_file(name: str) -> FileResponse:
    if name not in DEMO_FILES:
        raise NotFoundError(f"no demo file {name!r}")
    return FileResponse(DEMO_DIR / name)
