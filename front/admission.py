"""Admission control: at most ``limit`` model requests in flight per front worker; the rest get 429 at once.

A request that would wait behind a full house is refused with ``Retry-After`` and the
one error body, so a client (or a load balancer) backs off or goes elsewhere instead
of timing out in a queue. A stream holds its place until its last event is sent (or
its client leaves). Probes, metrics, the page and the model list are never refused.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

from front.errors import RequestError, error_response

MODEL_ROUTES = frozenset({"/answer", "/answer_stream", "/relevance", "/v1/chat/completions"})
RETRY_AFTER_S = 1


class Overloaded(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__("overloaded", f"{limit} requests are in flight, the most this server takes; retry shortly")


def admit(app: FastAPI, limit: int) -> None:
    """Refuse model requests of ``app`` beyond ``limit`` in flight with 429 and ``Retry-After``."""
    in_flight = 0

    @app.middleware("http")
    async def admission(request: Request, call_next) -> Response:
        nonlocal in_flight
        if request.url.path not in MODEL_ROUTES:
            return await call_next(request)
        if in_flight >= limit:
            response = error_response(request.url.path, Overloaded(limit))
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return response
        in_flight += 1
        try:
            response = await call_next(request)
        except BaseException:
            in_flight -= 1
            raise
        body = response.body_iterator

        async def released():
            nonlocal in_flight
            try:
                async for chunk in body:
                    yield chunk
            finally:
                in_flight -= 1

        response.body_iterator = released()
        return response
