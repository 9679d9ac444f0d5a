"""The web page at ``/``: static files in ``front/static``, no build step, no CDN (works offline)."""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


async def index() -> FileResponse:
    """The web page: drop an image, ask, watch the answer stream in, see the kept tokens."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
