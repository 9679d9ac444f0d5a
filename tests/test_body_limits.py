"""A request body arrives whole, under its size cap, without long gaps: 413 past the cap, 408 for a stalled client."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from front.errors import RequestError, status_for_kind
from front.uploads import BodyLimit, read_limited


def request_sending(*parts: bytes, stall: bool = False) -> Request:
    """A request whose body arrives in ``parts``; with ``stall`` the client then sends nothing more."""
    queue = [{"type": "http.request", "body": part, "more_body": True} for part in parts]

    async def receive():
        if queue:
            return queue.pop(0)
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": b"", "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def read(request: Request, limit: BodyLimit) -> bytes:
    return asyncio.run(read_limited(request, limit))


def test_a_body_in_parts_arrives_whole():
    assert read(request_sending(b'{"a":', b" 1}"), BodyLimit(100, 5.0)) == b'{"a": 1}'


def test_a_client_that_stops_sending_gets_408():
    with pytest.raises(RequestError) as refused:
        read(request_sending(b'{"image": "', stall=True), BodyLimit(100, 0.05))
    assert refused.value.kind == "request_timeout" and status_for_kind(refused.value.kind) == 408
    assert "0.05 s" in refused.value.detail


def test_a_body_past_the_cap_gets_413_as_it_streams_in():
    with pytest.raises(RequestError) as refused:
        read(request_sending(b"x" * 60, b"x" * 60, stall=True), BodyLimit(100, 5.0))
    assert refused.value.kind == "request_too_large" and status_for_kind(refused.value.kind) == 413
