"""Which exceptions mean a model runner failed (503 ``runner_unavailable``) rather than the front (500 ``internal``).

A runner fails when the way to it breaks (aiohttp's client errors, a client session
closed under a call), when it answers an error status (BentoML's client raises the
``BentoMLException`` of that status: ``ServiceUnavailable`` while a runner restarts),
when it does not answer in time (``TimeoutError``: the runner timeout, or a stream
that fell silent), or when a reopened stream does not repeat what it already sent.
"""

from __future__ import annotations

import aiohttp
from bentoml.exceptions import BentoMLException, ServiceUnavailable


class StreamReplayError(RuntimeError):
    """A reopened stream that does not repeat what the broken one sent (a non-deterministic runner)."""


def is_connection_failure(error: BaseException) -> bool:
    """Whether ``error`` is the way to a runner failing, not the runner answering.

    BentoML replaces its client session every 100 requests or 300 s and closes the
    old one under requests still in flight; runner servers also close idle
    keep-alive connections that the client may still pick from its pool; a runner
    that is restarting answers 503 (``ServiceUnavailable``) until it is ready.
    """
    if isinstance(error, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ServiceUnavailable)):
        return True
    return isinstance(error, RuntimeError) and "closed" in str(error).lower()


def is_runner_failure(error: BaseException) -> bool:
    """Whether ``error`` is a runner failing or out of reach (see the module), not a bug in the front."""
    if is_connection_failure(error):
        return True
    return isinstance(error, (aiohttp.ClientError, BentoMLException, TimeoutError, StreamReplayError))
