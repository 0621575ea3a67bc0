"""The web console: ``GET /`` answers its page, ``/console/*`` its modules, styles and icon.

The page loads same-origin ES modules only (no inline script or style, no third-party code),
so a strict Content-Security-Policy holds (``kgents.api.security_headers`` gives it to every
HTML file under ``/console/`` too). Only ``/`` and ``/console/`` are taken: every other
path, ``/v1/...`` included, keeps the API's JSON answers and JSON 404s.
"""

import os

from fastapi import APIRouter, FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from kgents.api.security_headers import CONTENT_SECURITY_POLICY
from kgents.console import INDEX_FILE, STATIC_DIR

CONSOLE_PREFIX = "/console"

_SHARED_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
PAGE_HEADERS = {
    **_SHARED_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def console_page() -> FileResponse:
    """The console's single page; everything else is loaded from ``/console/``."""
    return FileResponse(INDEX_FILE, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


class ConsoleFiles(StaticFiles):
    """Static files with the console's headers (revalidated on each load, never sniffed)."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_SHARED_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the console from ``app``: the page at ``/``, its files under ``/console/``."""
    app.include_router(router)
    app.mount(CONSOLE_PREFIX, ConsoleFiles(directory=STATIC_DIR), name="console")
