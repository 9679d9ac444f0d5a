"""Admission control on a stand-in app: 429 with Retry-After beyond the limit, streams hold their place."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from starlette.responses import StreamingResponse

from front import admission, errors
from serving.draining import Gate


def app_with_limit(limit: int, gate: asyncio.Event, counter: Gate | None = None) -> FastAPI:
    app = FastAPI()
    errors.install(app)
    admission.admit(app, limit, counter or Gate())

    @app.post("/answer")
    async def answer():
        await gate.wait()
        return {"answer": "red"}

    @app.post("/answer_stream")
    async def answer_stream():
        async def events():
            yield "data: 1\n\n"
            await gate.wait()
            yield "data: 2\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"data": []}

    return app


def test_requests_beyond_the_limit_get_429_with_retry_after_and_the_error_body():
    async def scenario():
        gate = asyncio.Event()
        transport = httpx.ASGITransport(app=app_with_limit(2, gate))
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            held = [asyncio.create_task(client.post("/answer")) for _ in range(2)]
            await asyncio.sleep(0.05)
            refused = await client.post("/answer")
            free = await client.get("/v1/models")  # not a model route: never refused
            gate.set()
            answered = await asyncio.gather(*held)
            after = await client.post("/answer")
        return refused, free, answered, after

    refused, free, answered, after = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "overloaded" and set(refused.json()) == {"error", "field", "detail"}
    assert free.status_code == 200
    assert [r.status_code for r in answered] == [200, 200] and after.status_code == 200


async def open_stream(app: FastAPI, chunks: list[bytes], first: asyncio.Event) -> None:
    """Drive ``POST /answer_stream`` on ``app`` by hand (httpx's ASGI transport would wait for the whole body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/answer_stream",
        "raw_path": b"/answer_stream",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"front")],
        "client": ("127.0.0.1", 1),
        "server": ("front", 80),
    }
    requested = False

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            chunks.append(message["body"])
            first.set()

    await app(scope, receive, send)


def test_a_stream_holds_its_place_until_its_last_event():
    async def scenario():
        gate, first, chunks = asyncio.Event(), asyncio.Event(), []
        app = app_with_limit(1, gate)
        stream = asyncio.create_task(open_stream(app, chunks, first))
        await asyncio.wait_for(first.wait(), 10)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front") as client:
            during = await client.post("/answer")
            gate.set()
            await asyncio.wait_for(stream, 10)
            after = await client.post("/answer")
        return chunks, during, after

    chunks, during, after = asyncio.run(scenario())
    assert b"".join(chunks) == b"data: 1\n\ndata: 2\n\n"
    assert during.status_code == 429 and after.status_code == 200


def test_while_draining_new_model_requests_get_503_and_those_in_flight_finish():
    async def scenario():
        release, counter = asyncio.Event(), Gate()
        transport = httpx.ASGITransport(app=app_with_limit(8, release, counter))
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            held = asyncio.create_task(client.post("/answer"))
            await asyncio.sleep(0.05)
            counter.since = 0.0  # SIGTERM arrived
            refused = await client.post("/answer")
            free = await client.get("/v1/models")
            in_flight = counter.in_flight
            release.set()
            answered = await held
        return refused, free, in_flight, answered, counter.in_flight

    refused, free, in_flight, answered, left = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "draining" and set(refused.json()) == {"error", "field", "detail"}
    assert free.status_code == 200 and in_flight == 1
    assert answered.status_code == 200 and left == 0
    assert refused.headers["connection"] == answered.headers["connection"] == "close"  # no keep-alive to race
