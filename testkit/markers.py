"""The pytest markers a test must carry for what it does: ``server`` to start the real server, ``slow`` to train.

``make test-fast`` deselects both markers, so a test that starts a server or trains
without declaring it (``pytestmark = pytest.mark.server`` in its module) would slip into
the fast set. ``tests/conftest.py`` records the running test's markers
(:func:`record_running`, :func:`clear_running`); :func:`require` raises
:class:`MissingMarkerError`, naming the marker, when that test lacks one. Outside a test
run (a benchmark, a shell) nothing is recorded and nothing is checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class MissingMarkerError(RuntimeError):
    """A test started a server or trained without declaring the marker that says so."""


@dataclass(frozen=True)
class RunningTest:
    node_id: str
    markers: frozenset[str]


_running: RunningTest | None = None


def record_running(node_id: str, markers: Iterable[str]) -> None:
    """Record the test that runs from now on and the names of its markers (module, class and own)."""
    global _running
    _running = RunningTest(node_id, frozenset(markers))


def clear_running() -> None:
    global _running
    _running = None


def require(marker: str, action: str) -> None:
    """Raise :class:`MissingMarkerError` if a test is running without ``marker``; ``action`` says what it did."""
    if _running is not None and marker not in _running.markers:
        raise MissingMarkerError(
            f"{_running.node_id} {action} but is not marked {marker!r}: "
            f"declare `pytestmark = pytest.mark.{marker}` in its module"
        )
