"""A served request's life at its edges: a client that leaves a stream stops its generation; SIGTERM under load
finishes the requests in flight, answers newcomers 503 with Retry-After, and stops everything (W&B included).

The server runs a random-weight testbed: its answers run to ``max_new_tokens`` (no early end token).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import httpx
import psutil
import pytest

from testkit.drawing import scene
from testkit.serving import b64_png, running_server

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

LONG = 512  # the server's max_new_tokens limit


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lifecycle")
    # a random-weight testbed has no trained scorer: pin the default variant these answers were measured with
    env = {"ARR_COC_TESTBED_FAMILY": "qwen2.5-vl", "ARR_COC_WANDB": "true", "ARR_COC_DEFAULT_VARIANT": "arr-coc-25"}
    with running_server(workdir, **env) as server:
        server.started = psutil.Process(server.process.pid).create_time()
        yield server


def wandb_processes(server) -> list[psutil.Process]:
    """W&B's processes started since the server (its service runs detached, outside the server's tree)."""
    found = []
    for process in psutil.process_iter(["cmdline", "create_time"]):
        line = " ".join(process.info["cmdline"] or [])
        if "wandb" in line and process.info["create_time"] >= server.started and process.status() != "zombie":
            found.append(process)
    return found


def body(max_new_tokens: int) -> dict:
    """A request the random-weight testbed answers at full length (it draws no end token for this one)."""
    return {
        "image": b64_png(scene(224, 224)),
        "question": "q?",
        "max_new_tokens": max_new_tokens,
    }


def metric(server, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in httpx.get(f"{server.url}/metrics", timeout=30).text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_leaves_a_stream_stops_its_generation(server):
    full = httpx.post(f"{server.url}/answer", json=body(LONG), timeout=300).json()
    assert full["finish_reason"] == "length"  # left alone, every answer here costs LONG tokens
    for _ in range(3):
        with httpx.Client(base_url=server.url, timeout=300) as client:
            with client.stream("POST", "/answer_stream", json=body(LONG)) as response:
                assert next(response.iter_text()).startswith("data: ")  # first delta, then the client leaves
    deadline = time.monotonic() + 60
    while metric(server, "arr_coc_abandoned_streams_total") < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(server, "arr_coc_abandoned_streams_total") == 3
    generated = metric(server, "arr_coc_generated_tokens_total", api="stream")
    assert 3 <= generated < LONG  # three abandoned streams together cost less than one whole answer


def test_a_short_answer_does_not_wait_for_long_streams(server):
    """The step scheduler: a 2-token request joins the running batch and leaves it long before its batch mates."""
    before = metric(server, "arr_coc_decode_step_seconds_count")
    with httpx.Client(base_url=server.url, timeout=300) as client:
        streams = [client.stream("POST", "/answer_stream", json=body(LONG)) for _ in range(3)]
        responses = [stream.__enter__() for stream in streams]
        try:
            lines = [response.iter_lines() for response in responses]
            for reader in lines:
                assert next(reader).startswith("data: ")  # every long stream is decoding
            short = client.post("/answer", json=body(2)).json()
            assert short["finish_reason"] == "length" and short["timings_ms"]["decode"] > 0
            for reader in lines:  # each long stream is still sending deltas after the short answer came back
                following = [next(reader) for _ in range(4)]
                assert any(line.startswith("data: ") for line in following)
                assert not any(line.startswith("event: done") for line in following)
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    assert metric(server, "arr_coc_decode_step_seconds_count") > before
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert "arr_coc_running_rows " in text and "arr_coc_queue_depth " in text


def slow_upload(server, payload: bytes) -> socket.socket:
    """A request whose headers and first bytes are sent, the rest held back (it is in flight meanwhile)."""
    connection = socket.create_connection(("127.0.0.1", server.port))
    head = f"POST /answer HTTP/1.1\r\nHost: arr-coc\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}"
    connection.sendall(head.encode() + b"\r\n\r\n" + payload[:1000])
    return connection


def read_response(connection: socket.socket) -> tuple[int, dict]:
    raw = b""
    while chunk := connection.recv(65536):
        raw += chunk
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
            None,
        )
        if length is not None and len(rest) >= length:
            return int(head.split(b" ")[1]), json.loads(rest[:length])
    raise AssertionError(f"connection closed without a whole response: {raw[:200]!r}")


def test_sigterm_finishes_what_is_in_flight_refuses_newcomers_and_stops_within_10_s(server):
    """Last in this module: it stops the server."""
    payload = json.dumps(body(64)).encode()
    in_flight = slow_upload(server, payload)
    time.sleep(0.5)
    family = psutil.Process(server.process.pid).children(recursive=True) + wandb_processes(server)
    assert wandb_processes(server), "W&B tracking runs beside the server"
    os.kill(server.process.pid, signal.SIGTERM)  # what Cloud Run sends
    signalled = time.monotonic()
    time.sleep(0.3)
    refused = httpx.post(f"{server.url}/answer", json=body(8), timeout=30)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "draining"
    assert httpx.get(f"{server.url}/livez", timeout=30).status_code == 200  # probes still answer
    in_flight.sendall(payload[1000:])
    status, answered = read_response(in_flight)
    assert status == 200 and answered["finish_reason"] == "length", answered
    server.process.wait(timeout=30)
    assert server.process.returncode == 0
    assert time.monotonic() - signalled < 10  # Cloud Run's grace
    left = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] + wandb_processes(server)
    assert left == [], f"outlived the server: {[' '.join(p.cmdline())[:80] for p in left]}"
