"""The OpenAPI document at ``/docs.json``: every route, status and error body, the probes, the version."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from front.schemas import ErrorBody

ERROR_RESPONSES = {
    400: {"model": ErrorBody, "description": "malformed JSON or form, or an image that does not decode"},
    401: {"model": ErrorBody, "description": "a valid API key is required (when the deployment sets keys)"},
    408: {"model": ErrorBody, "description": "no part of the body arrived within the client idle timeout"},
    413: {"model": ErrorBody, "description": "the body, or the image once decoded, is over its limit"},
    415: {"model": ErrorBody, "description": "a media type other than JSON (or a multipart form)"},
    422: {"model": ErrorBody, "description": "a field out of range: budget, variant, method, stage, question, ..."},
    429: {"model": ErrorBody, "description": "overloaded: too many requests in flight; retry after Retry-After s"},
    500: {"model": ErrorBody, "description": "a fault in the server itself (kind internal); it is logged"},
    503: {
        "model": ErrorBody,
        "description": "a model runner failed or is unreachable, or the server drains after SIGTERM (Retry-After)",
    },
}
EVENT_STREAM = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "server-sent events"}
}
PROBES = {
    "/livez": "200 while the server process is alive",
    "/readyz": "200 once both runners have loaded (and warmed up) their models, else 503",
    "/metrics": "Prometheus metrics: arr_coc_* and BentoML's own",
}


def document(app: FastAPI) -> Callable[[], dict]:
    """``app.openapi``: FastAPI's document of ``app``, plus BentoML's probes, built once."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                openapi_version=app.openapi_version,
            )
            for path, description in PROBES.items():
                schema["paths"][path] = {
                    "get": {"summary": description, "tags": ["probes"], "responses": {"200": {"description": "OK"}}}
                }
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
