"""One place that turns every failure into an HTTP status and one error body.

- the library's typed input errors -> 400 (undecodable image), 413 (too large) or
  422 (well-formed but out of range);
- a body that fails its request model -> 422 ``validation_error`` naming the field;
  JSON that does not parse -> 400 ``malformed_json``;
- routing and protocol errors (404, 405, 413, 415) keep their status;
- a runner that fails or cannot be reached (:mod:`front.runner_failures`) -> 503
  ``runner_unavailable``; the server keeps serving;
- anything else is a fault in the front itself -> 500 ``internal``, with a detail that
  says nothing of it; its traceback goes to the log.

Bodies are :class:`front.schemas.ErrorBody` (``{error, field, detail}``), and on
``/v1/...`` OpenAI's ``{"error": {message, type, param, code}}``. Client errors are
logged as one line; only failures of the service itself get a traceback.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match

from arr_coc import errors
from front.runner_failures import is_runner_failure

logger = logging.getLogger("arr_coc.service")

_STATUS_BY_KIND = {
    "image_too_large": 413,
    "invalid_image": 400,
    "request_too_large": 413,
    "request_timeout": 408,
    "malformed_json": 400,
    "malformed_form": 400,
    "unsupported_media_type": 415,
    "overloaded": 429,
    "draining": 503,
}
_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
_KIND_BY_STATUS = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 415: "unsupported_media_type"}
INTERNAL_DETAIL = "the server failed on this request; the failure is logged"


class RequestError(errors.ArrCocInputError):
    """A request the front refuses before any model sees it (body too large, malformed, wrong media type)."""

    def __init__(self, kind: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail, field=field)
        self._kind = kind

    @property
    def kind(self) -> str:
        return self._kind


def status_for_kind(kind: str) -> int:
    """Status of an input error by its kind: undecodable image 400, too large 413, else 422."""
    return _STATUS_BY_KIND.get(kind, 422)


def field_of(loc) -> str | None:
    """The top-level request field of a pydantic error location (``("body", "budget", "int")`` -> ``budget``)."""
    names = [str(part) for part in loc if isinstance(part, str) and part != "body"]
    return names[0] if names else None


def is_openai(path: str) -> bool:
    return path.startswith("/v1/")


def body_for(path: str, status: int, kind: str, detail: str, field: str | None) -> dict:
    """The error body of ``path``: ours, or OpenAI's on ``/v1/...``."""
    if is_openai(path):
        error_type = "server_error" if status >= 500 else "invalid_request_error"
        return {"error": {"message": detail, "type": error_type, "param": field, "code": kind}}
    return {"error": kind, "field": field, "detail": detail}


def describe(error: Exception) -> tuple[int, str, str, str | None]:
    """``(status, kind, detail, field)`` of any exception raised while serving a request (no object reprs)."""
    status, kind, detail, field = _describe(error)
    return status, kind, _OBJECT_REPR.sub("", detail), field


def _describe(error: Exception) -> tuple[int, str, str, str | None]:
    if isinstance(error, errors.ArrCocInputError):
        return status_for_kind(error.kind), error.kind, error.detail, error.field
    if isinstance(error, (ValidationError, RequestValidationError)):
        problems = error.errors()
        first = problems[0]
        if first.get("type") == "json_invalid":
            return 400, "malformed_json", f"the body is not valid JSON: {first.get('msg')}", None
        text = "; ".join(f"{field_of(p.get('loc', ())) or 'body'}: {p.get('msg')}" for p in problems[:4])
        return 422, "validation_error", text, field_of(first.get("loc", ()))
    if isinstance(error, HTTPException):
        kind = _KIND_BY_STATUS.get(error.status_code, "bad_request" if error.status_code < 500 else "server_error")
        return error.status_code, kind, str(error.detail), None
    if is_runner_failure(error):
        return 503, "runner_unavailable", f"a model runner failed: {type(error).__name__}"[:200], None
    return 500, "internal", INTERNAL_DETAIL, None


def log(path: str, error: Exception) -> tuple[int, str, str, str | None]:
    """Log ``error`` on ``path`` (a line for client errors, a traceback for failures); its :func:`describe`."""
    status, kind, detail, field = described = describe(error)
    if kind == "internal":
        logger.exception("%s failed: a fault in the front", path, exc_info=error)
    elif status >= 500 and not isinstance(error, errors.ArrCocInputError):  # not a refusal (draining): a failure
        logger.error("%s failed", path, exc_info=error)
    else:
        logger.info("%s %d %s: %s", path, status, kind, detail[:200])
    return described


def error_response(path: str, error: Exception) -> JSONResponse:
    """The JSON response for ``error`` on ``path``, logged."""
    status, kind, detail, field = log(path, error)
    headers = {"Allow": error.headers["Allow"]} if isinstance(error, HTTPException) and error.headers else None
    return JSONResponse(body_for(path, status, kind, detail, field), status_code=status, headers=headers)


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def not_found(request: Request):
    """The route of last resort: 405 when another route takes the path with another method, else 404."""
    path, others = (
        request.url.path,
        [r for r in request.app.router.routes if getattr(r, "endpoint", None) is not not_found],
    )
    allowed = [
        m for m in ALL_METHODS if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in others)
    ]
    if allowed:
        raise HTTPException(405, f"{request.method} is not allowed on {path}", headers={"Allow": ", ".join(allowed)})
    raise HTTPException(404, f"no route {path}; GET /docs.json lists them")


def install(app: FastAPI) -> None:
    """Route every exception of ``app`` through :func:`error_response` (the unforeseen too: a JSON body)."""

    async def handle(request: Request, error: Exception) -> JSONResponse:
        return error_response(request.url.path, error)

    for exception_type in (errors.ArrCocInputError, RequestValidationError, ValidationError, HTTPException, Exception):
        app.add_exception_handler(exception_type, handle)
