"""One place that turns every failure into an HTTP status and the body ``ErrorBody``.

- the library's typed input errors -> 400, 413 (too large) or 422 (well-formed but
  out of range);
- a runner that fails or cannot be reached -> 503; the server keeps serving;
- BentoML's own answers to bodies it cannot parse (its 400 with a pydantic error
  list, its 415) are rewritten by :class:`ErrorBodyMiddleware` into the same body.
"""

from __future__ import annotations

import json
import logging

from starlette.responses import JSONResponse

from arr_coc import errors

logger = logging.getLogger("arr_coc.service")

ACCEPTED_MEDIA_TYPES = ("application/json",)
_STATUS_BY_KIND = {"image_too_large": 413, "invalid_image": 400}


def status_for_kind(kind: str) -> int:
    """Status of an input error by its kind: undecodable image 400, too large 413, else 422."""
    return _STATUS_BY_KIND.get(kind, 422)


def error_response(status: int, error: str, detail: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "field": field, "detail": detail}, status_code=status)


def from_exception(error: Exception) -> JSONResponse:
    """The response for any exception raised while serving a request."""
    if isinstance(error, errors.ArrCocInputError):
        return error_response(status_for_kind(error.kind), error.kind, error.detail, error.field)
    logger.exception("runner failure", exc_info=error)
    return error_response(503, "runner_unavailable", f"a model runner failed: {type(error).__name__}")


def _field_of(loc) -> str | None:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ".".join(parts) or None


def rewrite_bentoml_error(status: int, body: bytes) -> tuple[int, dict] | None:
    """BentoML's own error body -> ``(status, ErrorBody)``, or ``None`` to pass it through."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        payload = payload[0]  # BentoML wraps 4xx InvalidArgument bodies in a list
    if not isinstance(payload, dict) or "field" in payload:
        return None
    details = payload.get("detail")
    if status == 400 and isinstance(details, list) and details:
        first = details[0]
        kind = first.get("type", "")
        if kind.startswith("json") or kind == "model_type" and not first.get("loc"):
            return 400, {"error": "malformed_json", "field": None, "detail": first.get("msg", "invalid JSON")}
        text = "; ".join(f"{_field_of(d.get('loc', ())) or 'body'}: {d.get('msg')}" for d in details)
        return 422, {"error": "validation_error", "field": _field_of(first.get("loc", ())), "detail": text}
    if status == 415:
        return 415, {"error": "unsupported_media_type", "field": None, "detail": str(payload.get("error"))}
    if 400 <= status < 500:
        return status, {"error": "bad_request", "field": None, "detail": str(payload.get("error", payload))}
    return None


class ErrorBodyMiddleware:
    """ASGI middleware: rewrite BentoML-generated 4xx bodies of the API routes."""

    def __init__(self, app, api_paths: tuple[str, ...]) -> None:
        self.app = app
        self.api_paths = api_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") not in self.api_paths:
            await self.app(scope, receive, send)
            return
        content_type = dict(scope.get("headers", [])).get(b"content-type", b"application/json")
        media_type = content_type.split(b";")[0].strip().lower().decode("latin-1")
        if scope.get("method") == "POST" and media_type not in ACCEPTED_MEDIA_TYPES:
            response = error_response(415, "unsupported_media_type",
                                      f"send application/json, not {media_type or 'no content type'}")  # fmt: skip
            await response(scope, receive, send)
            return
        start: dict | None = None
        chunks: list[bytes] = []

        async def capture(message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if 400 <= message["status"] < 500:
                    start = message
                    return
                await send(message)
            elif start is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    await flush(b"".join(chunks))
            else:
                await send(message)

        async def flush(body: bytes) -> None:
            rewritten = rewrite_bentoml_error(start["status"], body)
            status = start["status"]
            if rewritten is not None:
                status, payload = rewritten
                body = json.dumps(payload).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() not in (b"content-length", b"content-type")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
