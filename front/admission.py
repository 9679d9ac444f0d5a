"""Admission control: at most ``limit`` model requests in flight per front worker; the rest get 429 at once.

A request that would wait behind a full house is refused with ``Retry-After`` and the
one error body, so a client (or a load balancer) backs off or goes elsewhere instead
of timing out in a queue. A stream holds its place until its last event is sent (or
its client leaves). While the worker drains after SIGTERM (:mod:`serving.draining`),
new model requests get 503 ``draining`` with ``Retry-After`` instead of a closed
socket. Probes, metrics, the page and the model list are never refused.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

from front.errors import RequestError, error_response
from serving.draining import Gate

MODEL_ROUTES = frozenset({"/answer", "/answer_stream", "/relevance", "/v1/chat/completions"})
RETRY_AFTER_S = 1


class Overloaded(RequestError):
    def __init__(self, limit: int) -> None:
        super().__init__("overloaded", f"{limit} requests are in flight, the most this server takes; retry shortly")


class Draining(RequestError):
    def __init__(self) -> None:
        super().__init__("draining", "this server is shutting down; retry (another instance will answer)")


def closing(response: Response, gate: Gate) -> Response:
    """While draining, the connection closes after ``response``: a client's next request then opens a new
    one (refused once the server is gone) instead of racing the server's close of an idle keep-alive."""
    if gate.draining:
        response.headers["Connection"] = "close"
    return response


def admit(app: FastAPI, limit: int, gate: Gate) -> None:
    """Count model requests of ``app`` in ``gate``; refuse them beyond ``limit`` (429) or while draining (503)."""

    @app.middleware("http")
    async def admission(request: Request, call_next) -> Response:
        if request.url.path not in MODEL_ROUTES:
            return await call_next(request)
        refusal = Draining() if gate.draining else Overloaded(limit) if gate.in_flight >= limit else None
        if refusal is not None:
            response = error_response(request.url.path, refusal)
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            return closing(response, gate)
        gate.enter()
        try:
            response = closing(await call_next(request), gate)
        except BaseException:
            gate.leave()
            raise
        body = response.body_iterator

        async def released():
            try:
                async for chunk in body:
                    yield chunk
            finally:
                gate.leave()

        response.body_iterator = released()
        return response
