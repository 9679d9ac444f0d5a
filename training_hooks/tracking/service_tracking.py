"""The front service's tracking: one inference tracker per variant in this worker.

Runs are created lazily, on a variant's first request, inside the worker process
(never at import, never before BentoML forks its workers). With tracking off
(no ``WANDB_API_KEY`` and no ``ARR_COC_WANDB=1``) every call is a no-op.

State is bounded by the registry, not by clients: a registered variant has its own
tracker; an ad-hoc ``method``+``budget`` request shares ``<method>@custom`` (or
``<method>@custom@pre``) with the other ad-hoc requests of its method (the kept
ratio it got is logged per request); a name that matches no variant (a rejected
request) counts under ``unknown``. The serving commit is read once per process. The
run config names the scorer (``scorer``: its checkpoint, ``testbed:<family>`` for the
shipped one, or ``untrained``) and ``scorer_state`` (``trained``/``untrained``), the
traffic split and the variant's share of it (``traffic``), and the instance and its
prices the answers' cost is computed with (``pricing``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from arr_coc.variants import VARIANTS, Variant
from serving.settings import ServerSettings
from training_hooks.tracking.serve_events import Example
from training_hooks.tracking.tracker import TrackerConfig, create_tracker, stop_detached_service

CLOSE_DEADLINE_S = 8.0
logger = logging.getLogger(__name__)


def tracking_name(variant: Variant | str) -> str:
    """The bounded name ``variant`` is tracked (and labelled in ``/metrics``) under."""
    if isinstance(variant, Variant):
        if variant.name in VARIANTS:
            return variant.name
        return f"{variant.method}@custom" + ("" if variant.stage == "post" else f"@{variant.stage}")
    return variant if variant in VARIANTS else "unknown"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the serving code, or '' outside a git checkout (e.g. in a bento)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


class Tracking:
    """``record(variant, latency_ms, ...)`` -> the tracker of that variant."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.trackers: dict[str, Any] = {}
        self.tracker_config = TrackerConfig(
            project=settings.wandb_project,
            deployment=settings.deployment,
            window_s=settings.wandb_window_s,
            example_rate=settings.wandb_sample_rate,
        )
        env = dict(os.environ)
        if settings.wandb:
            env["ARR_COC_WANDB"] = "1"
        self.env = env

    def run_config(self, variant: Variant | str) -> dict:
        name = tracking_name(variant)
        if name in VARIANTS:
            config = VARIANTS[name].as_config()
        elif isinstance(variant, Variant):  # every ad-hoc budget of one method: the budget varies per request
            config = {**variant.as_config(), "variant": name, "budget": "custom"}
        else:
            config = {"variant": name}
        return {
            **config,
            "vlm": self.settings.model or f"testbed:{self.settings.testbed_family}",
            "scorer": self.settings.scorer or self.scorer_default(),
            "scorer_state": self.settings.scorer_state,
            "scorer_artifact": self.settings.scorer_artifact,
            "traffic": self.traffic_config(name),
            "pricing": self.settings.served_instance.model_dump(),
            "git_commit": git_commit(),
            "bento_tag": os.environ.get("BENTOML_BENTO_TAG", os.environ.get("BENTO_TAG", "")),
        }

    def traffic_config(self, name: str) -> dict:
        """The deployment's split (``ARR_COC_TRAFFIC``, empty without one) and this variant's share of it."""
        split = self.settings.traffic_split
        shares = split.shares() if split else {}
        return {"split": self.settings.traffic, "share": shares.get(name, 0.0)}

    def scorer_default(self) -> str:
        """The scorer a deployment without ``ARR_COC_SCORER`` serves: the shipped testbed's, or ``untrained``."""
        return f"testbed:{self.settings.testbed_family}" if self.settings.scorer_trained else "untrained"

    def tracker(self, variant: Variant | str):
        name = tracking_name(variant)
        if name not in self.trackers:
            self.trackers[name] = create_tracker(
                name, self.run_config(variant), self.tracker_config, worker_id=os.getpid(), env=self.env
            )
        return self.trackers[name]

    def record(self, variant: Variant | str, latency_ms: float, example: tuple | None = None, **fields: Any) -> None:
        """Hand one request's figures to the tracker of ``variant``; never raises, never blocks."""
        tracker = self.tracker(variant)
        if example is not None and tracker.wants_example():
            image, scored, output, question = example
            relevance = np.asarray(scored.relevance, dtype=np.float32).reshape(scored.grid)
            fields["example"] = Example(image, relevance, list(output.kept), question, output.answer)
        tracker.record(latency_ms, **fields)

    def close(self, deadline_s: float = CLOSE_DEADLINE_S) -> int:
        """Finish every run within one deadline: all are told to stop at once, then awaited together.

        Returns how many were still busy at the deadline (abandoned, and logged); the
        server's shutdown stays inside Cloud Run's 10 s grace however many runs it has.
        """
        trackers = list(self.trackers.values())
        for tracker in trackers:
            tracker.stop()
        end = time.monotonic() + deadline_s
        abandoned = sum(not tracker.close(timeout_s=max(0.0, end - time.monotonic())) for tracker in trackers)
        if abandoned:  # W&B hangs: its detached core would hang on a stop too, and exits when idle
            logger.warning(
                "W&B tracking: %d of %d runs not finished within %.0f s; dropped", abandoned, len(trackers), deadline_s
            )
        else:
            stop_detached_service(max(1.0, end - time.monotonic()))
        return abandoned
