"""API keys: ``Authorization: Bearer <key>`` on every route but the probes, ``/metrics`` and the web page.

The page (``/`` and its ``/static/`` files) holds no data and is open, so a browser
can load it; the page then sends the key a person types with every API call.

``ARR_COC_API_KEY`` holds one key or several, comma-separated; empty means no
access control (the default, for local development). A request without a valid
key gets 401 with ``WWW-Authenticate: Bearer`` and the service's JSON error body,
in OpenAI's shape on ``/v1/...`` (the ``openai`` client sends its ``api_key`` in
the same header). Keys are compared in constant time, and every key is compared
so the time does not tell which one was close.
"""

from __future__ import annotations

import hmac
import json

OPEN_PATHS = ("/livez", "/readyz", "/metrics", "/")
OPEN_PREFIXES = ("/static/",)


def parse_keys(value: str) -> tuple[bytes, ...]:
    """The keys of a comma-separated ``value``, blanks dropped."""
    return tuple(key.strip().encode() for key in value.split(",") if key.strip())


def authorized(header: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Whether ``header`` (the raw ``Authorization`` value) is ``Bearer <one of keys>``."""
    scheme, _, token = (header or b"").partition(b" ")
    token = token.strip()
    matches = [hmac.compare_digest(token, key) for key in keys]
    return scheme.lower() == b"bearer" and bool(token) and any(matches)


def unauthorized_body(path: str) -> bytes:
    detail = "a valid API key is required: send Authorization: Bearer <key>"
    if path.startswith("/v1/"):
        body = {"error": {"message": detail, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
    else:
        body = {"error": "unauthorized", "field": None, "detail": detail}
    return json.dumps(body).encode()


class BearerAuth:
    """ASGI middleware: HTTP requests outside ``OPEN_PATHS`` need a valid bearer key."""

    def __init__(self, app, keys: tuple[bytes, ...], open_paths: tuple[str, ...] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization")
        if authorized(header, self.keys):
            await self.app(scope, receive, send)
            return
        body = unauthorized_body(scope["path"])
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
