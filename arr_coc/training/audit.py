"""The auditing event a training run raises as it starts, for whoever watches (:func:`sys.addaudithook`).

The test suite's hook checks that a test that trains is marked ``slow``. Torch-free.
"""

from __future__ import annotations

import sys

TRAINING_STARTS = "arr_coc.training.start"
"""Event name; its one argument is what trains: ``train-testbed``, ``train-scorer``, ``distill-scorer``."""


def training_starts(kind: str) -> None:
    """Raise the auditing event :data:`TRAINING_STARTS` with ``kind`` (a hook may raise to stop the run)."""
    sys.audit(TRAINING_STARTS, kind)
