"""Security headers on every response, whichever route (or static file) answers it.

- Every response: ``X-Content-Type-Options: nosniff``, so no browser reads JSON as a page.
- Every HTML response (the console's page at ``/`` and any ``.html`` under ``/console/``):
  the console's strict ``Content-Security-Policy`` and ``X-Frame-Options: DENY``, so no page
  of another origin frames it. The interactive API docs (``/docs``) load their script and
  styles from this server (``api/routes/docs.py``) and start them inline, so they get a
  policy that allows exactly that, nothing from another host, and may not be framed either.

A header the route set itself is kept.
"""

from collections.abc import Collection

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        # The forms are handled by script; none may ever submit (and so put a key in a URL).
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "worker-src blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


class SecurityHeadersMiddleware:
    """Adds the headers above to each ``http.response.start``; ``docs_paths`` are the pages
    that get the docs' policy."""

    def __init__(self, app: ASGIApp, *, docs_paths: Collection[str] = ()) -> None:
        self.app = app
        self.docs_paths = frozenset(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope.get("path", "") in self.docs_paths

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").lower().startswith("text/html"):
                    policy = DOCS_CONTENT_SECURITY_POLICY if docs else CONTENT_SECURITY_POLICY
                    headers.setdefault("Content-Security-Policy", policy)
                    headers.setdefault("X-Frame-Options", "DENY")
            await send(message)

        await self.app(scope, receive, send_with_headers)
