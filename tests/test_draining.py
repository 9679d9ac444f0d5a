"""SIGTERM through a Gate: the server's own handler runs only once nothing is in flight (or at the timeout)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from serving.draining import Gate, bound_uvicorn_shutdown, stop_after_drain


@pytest.fixture
def server_handler():
    """A stand-in for uvicorn's SIGTERM handler; the process's handler is restored afterwards."""
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    yield stopped
    signal.signal(signal.SIGTERM, previous)


def test_the_server_stops_only_after_the_requests_in_flight(server_handler):
    gate = Gate()
    assert stop_after_drain(gate, timeout_s=30, quiet_s=0.05)
    gate.enter()
    os.kill(os.getpid(), signal.SIGTERM)
    assert gate.draining
    assert not server_handler.wait(0.5)  # a request is still in flight: the server keeps serving
    gate.leave()
    assert server_handler.wait(10)


def test_the_drain_ends_at_its_timeout_and_a_second_sigterm_stops_at_once(server_handler):
    gate = Gate()
    stop_after_drain(gate, timeout_s=0.2, quiet_s=0.05)
    gate.enter()  # never leaves
    os.kill(os.getpid(), signal.SIGTERM)
    assert server_handler.wait(10) and gate.in_flight == 1
    server_handler.clear()
    os.kill(os.getpid(), signal.SIGTERM)
    assert server_handler.wait(1)


def test_outside_the_main_thread_nothing_is_installed(server_handler):
    installed = []
    thread = threading.Thread(target=lambda: installed.append(stop_after_drain(Gate(), timeout_s=1)))
    thread.start()
    thread.join()
    assert installed == [False]


def test_uvicorn_waits_a_bounded_time_for_requests_left_after_the_drain() -> None:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app=None))
    assert server.config.timeout_graceful_shutdown is None, "uvicorn's default: wait for ever"
    assert bound_uvicorn_shutdown(server.handle_exit, 1.0)
    assert server.config.timeout_graceful_shutdown == 1.0
    given = uvicorn.Server(uvicorn.Config(app=None, timeout_graceful_shutdown=9))
    assert bound_uvicorn_shutdown(given.handle_exit, 1.0) and given.config.timeout_graceful_shutdown == 9
    assert not bound_uvicorn_shutdown(lambda signum, frame: None, 1.0), "not a uvicorn handler: left alone"
