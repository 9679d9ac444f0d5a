"""A stop that loses nothing: on SIGTERM a service process finishes what is in flight, then lets uvicorn stop.

Cloud Run (and ``bentoml serve``) send SIGTERM to every process at once and kill
them 10 s later. Left alone, uvicorn closes its listener at once: a request arriving
then gets a closed connection, and a runner stops under a front request that still
needs it. Here each process counts its requests in a :class:`Gate`; on SIGTERM the
gate turns ``draining`` (the front then answers new model requests 503 with
``Retry-After``) and uvicorn's own handler runs only once nothing has been in flight
for ``quiet_s`` seconds, or after ``timeout_s``. A second SIGTERM stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

STUCK_REQUEST_GRACE_S = 1.0
"""After the drain, how long uvicorn waits for the requests it still holds (none of them counted) before it cancels them."""


class Gate:
    """Requests in flight in this process, and whether it is draining (``since``: monotonic time of SIGTERM)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.since: float | None = None
        self._last_change = time.monotonic()
        self._lock = threading.Lock()

    @property
    def draining(self) -> bool:
        return self.since is not None

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self._last_change = time.monotonic()

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self._last_change = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds without a request in flight since the last one ended or SIGTERM came, whichever is later."""
        with self._lock:
            if self.in_flight:
                return 0.0
            return time.monotonic() - max(self._last_change, self.since or self._last_change)

    def drained_s(self) -> float:
        """Seconds since SIGTERM (0 before it)."""
        return 0.0 if self.since is None else time.monotonic() - self.since


class CountInFlight:
    """ASGI middleware: every HTTP request of the app passes through ``gate``."""

    def __init__(self, app, gate: Gate) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.gate.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.gate.leave()


def bound_uvicorn_shutdown(stop: Callable, seconds: float) -> bool:
    """Let the uvicorn server behind ``stop`` (its ``handle_exit``) wait at most ``seconds`` for requests
    still open when it stops, then cancel them; whether it could.

    By then the drain has let this process's counted requests finish, so what is left is
    requests stuck elsewhere: a ``/readyz`` from BentoML's runner probe that waits on a
    runner connection that never answers. Without a bound, uvicorn waits for them for
    ever (``timeout_graceful_shutdown`` is ``None`` unless ``bentoml serve`` is given
    ``--timeout-graceful-shutdown``), the shutdown hooks never run, and the container is
    killed with its W&B runs unfinished. A bound set on the command line is kept.
    """
    config = getattr(getattr(stop, "__self__", None), "config", None)
    if config is None or not hasattr(config, "timeout_graceful_shutdown"):
        return False
    if config.timeout_graceful_shutdown is None:
        config.timeout_graceful_shutdown = seconds
    return True


def stop_after_drain(
    gate: Gate, timeout_s: float, quiet_s: float = 0.5, while_busy: Callable[[], Awaitable] | None = None
) -> bool:
    """Route this process's SIGTERM through ``gate`` (see the module); whether it was installed.

    ``while_busy``: a coroutine function run on this process's event loop every
    ``quiet_s / 3`` seconds while requests are still in flight here (the front uses it
    to keep the runners it still needs from going quiet). Call this in the main thread
    from a service's ``__init__``, which runs on the event loop after uvicorn installed
    its own handler; elsewhere it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop):
        return False
    try:
        loop = asyncio.get_running_loop() if while_busy is not None else None
    except RuntimeError:  # no event loop: nothing to keep alive
        loop = None

    def wait_then_stop(signum: int) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and gate.quiet_for() < quiet_s:
            if loop is not None and gate.in_flight:
                asyncio.run_coroutine_threadsafe(while_busy(), loop)
            time.sleep(quiet_s / 3)
        if gate.in_flight:
            logger.warning("stopping with %d requests still in flight after %.1f s", gate.in_flight, timeout_s)
        stop(signum, None)

    bound_uvicorn_shutdown(stop, STUCK_REQUEST_GRACE_S)

    def on_sigterm(signum: int, frame) -> None:
        if gate.draining:
            stop(signum, frame)
            return
        gate.since = time.monotonic()
        threading.Thread(target=wait_then_stop, args=(signum,), name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    return True
