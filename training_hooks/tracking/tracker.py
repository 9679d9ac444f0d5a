"""Inference tracking of one serving worker process on W&B, off the request path.

The request path calls :meth:`InferenceTracker.record`, which only does a
``put_nowait`` of a small :class:`RequestEvent` into a bounded queue (a full queue
drops the event and counts it). One owner thread per process holds the W&B run
(wandb is not thread-safe): it calls ``wandb.init`` lazily once started, folds
events into windows of ``window_s`` seconds, logs one history row per window,
renders the sampled examples into images and keeps ``run.summary`` up to date.

Every W&B call goes through a :class:`TrackingBackend`; whatever it does (raise,
hang, be missing) only the owner thread waits or fails: exceptions (of W&B calls
and of example rendering) are logged, counted in
:attr:`InferenceTracker.backend_errors` and swallowed. If the process exits before
``wandb.init`` ever returned, the events are lost (logged), never the process.

Metric names: history rows ``serve/...`` (see ``serve_events.WindowStats.metrics``),
summary ``latency_p50_ms``, ``latency_p95_ms``, ``throughput_rps``, ...
(``serve_events.RunTotals.summary``), table ``serve/examples``; its rows also go to the
run's local folder as a question file (``serve_samples``), which ``arr-coc
export-questions`` reads.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from training_hooks.tracking.serve_events import (
    PREFIX,
    Example,
    ExampleRow,
    RequestEvent,
    RunTotals,
    WindowStats,
    render_example,
)
from training_hooks.tracking.serve_samples import SampleWriter, run_samples_folder

logger = logging.getLogger(__name__)

SWITCH_ENV = "ARR_COC_WANDB"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
EXAMPLES_KEY = PREFIX + "examples"
_WAKE = object()  # wakes the owner thread; carries no event
DETACHED_IDLE_TIMEOUT = "10s"


def env_switch(name: str, env: Mapping[str, str] | None = None) -> bool | None:
    """``True`` for 1/true/yes/on, ``False`` for 0/false/no/off, ``None`` when unset or other."""
    value = (os.environ if env is None else env).get(name, "").strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


def tracking_enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether to track: ``ARR_COC_WANDB`` truthy, or ``WANDB_API_KEY`` set.

    ``ARR_COC_WANDB=0`` (or false/no/off) turns tracking off even with a key.
    """
    switch = env_switch(SWITCH_ENV, env)
    if switch is not None:
        return switch
    return bool((os.environ if env is None else env).get("WANDB_API_KEY", "").strip())


class TrackerConfig(BaseModel):
    """How a serving worker tracks itself: a plain config, built from the server's settings
    (:class:`serving.settings.ServerSettings`, which read the environment) by ``service_tracking``,
    or by tests directly.

    window_s: length of one aggregation window (one history row), seconds.
    queue_size: events the queue holds before ``record`` drops.
    example_rate: fraction of requests offered as table examples, in [0, 1].
    max_examples: examples per run at most (the table grows incrementally).
    example_max_px: longest side of the example images, pixels.
    close_timeout_s: how long ``close`` waits for the owner thread, seconds.
    seed: seeds example sampling and the percentile reservoirs.
    """

    model_config = ConfigDict(frozen=True)

    project: str = "arr-coc"
    entity: str | None = None
    deployment: str = "local"
    window_s: float = Field(30.0, gt=0)
    queue_size: int = Field(4096, ge=1)
    example_rate: float = Field(0.01, ge=0, le=1)
    max_examples: int = Field(200, ge=0)
    example_max_px: int = Field(320, ge=8)
    close_timeout_s: float = Field(10.0, ge=0)
    seed: int = 0


class TrackingBackend(Protocol):
    """The W&B calls the owner thread makes, in this order: start, (log, summary)*, finish.

    ``start`` gets the ``wandb.init`` keyword arguments (:meth:`InferenceTracker.init_kwargs`);
    ``log`` one window's metrics and the example rows rendered since the last window.
    """

    def start(self, init_kwargs: Mapping[str, Any]) -> None: ...
    def log(self, metrics: Mapping[str, float], examples: Sequence[ExampleRow]) -> None: ...
    def update_summary(self, values: Mapping[str, float]) -> None: ...
    def finish(self) -> None: ...


def use_detached_service(idle_timeout: str = DETACHED_IDLE_TIMEOUT) -> bool:
    """Run this process's W&B runs on a detached ``wandb-core`` (``wandb beta core start``).

    BentoML stops a worker by sending SIGTERM to it and to its direct children at
    once; a ``wandb-core`` the SDK spawned itself is such a child and dies before
    the worker's shutdown hook can finish the run, losing its last, buffered
    records. A detached core is not our child: it outlives the worker long enough to
    write everything, then exits ``idle_timeout`` after its last client. Found
    through ``WANDB_SERVICE``, W&B's documented way to share one. Returns False (and
    the SDK starts its own core as usual) if it cannot be started.
    """
    if os.environ.get("WANDB_SERVICE"):
        return True
    command = [sys.executable, "-m", "wandb", "beta", "core", "start", "--idle-timeout", idle_timeout]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        token = result.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as error:
        logger.warning("W&B tracking: no detached wandb-core (%s); using the SDK's own", error)
        return False
    os.environ["WANDB_SERVICE"] = token
    _started_cores.append(token)
    return True


_started_cores: list[str] = []  # the detached services this process started (not one it was handed)


def stop_detached_service(timeout_s: float) -> bool:
    """Stop the detached ``wandb-core`` this process started (``wandb beta core stop``), once its runs are
    finished, so that no W&B process outlives the server. Waits at most ``timeout_s``; whether it stopped."""
    if not _started_cores:
        return True
    command = [sys.executable, "-m", "wandb", "beta", "core", "stop"]
    environment = {**os.environ, "WANDB_SERVICE": _started_cores[-1]}
    try:
        subprocess.run(command, env=environment, capture_output=True, timeout=timeout_s, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("W&B tracking: the detached wandb-core did not stop (%s); it exits when idle", error)
        return False
    _started_cores.clear()
    return True


class WandbBackend:
    """The real backend: one wandb run, one incremental examples table, whose rows are also kept
    in the run's local folder as a question file (``serve_samples.SampleWriter``)."""

    def __init__(self) -> None:
        self._run: Any = None
        self._table: Any = None
        self._samples: SampleWriter | None = None

    def start(self, init_kwargs: Mapping[str, Any]) -> None:
        import wandb  # imported in the owner thread, never at import time

        use_detached_service()
        self._wandb = wandb
        settings = wandb.Settings(console="off", silent=True)
        self._run = wandb.init(**init_kwargs, settings=settings, reinit="create_new")
        folder = run_samples_folder(self._run)
        self._samples = None if folder is None else SampleWriter(folder)

    def log(self, metrics: Mapping[str, float], examples: Sequence[ExampleRow]) -> None:
        payload: dict[str, Any] = dict(metrics)
        if examples:
            if self._table is None:
                columns = ["question", "answer", "kept_ratio", "image", "relevance", "kept_tokens"]
                self._table = self._wandb.Table(columns=columns, log_mode="INCREMENTAL")
            for row in examples:
                images = (self._wandb.Image(im) for im in (row.image, row.heatmap, row.kept_mask))
                self._table.add_data(row.question, row.answer, row.kept_ratio, *images)
            payload[EXAMPLES_KEY] = self._table
        self._run.log(payload)
        if self._samples is not None:
            for row in examples:
                self._samples.add(row)

    def update_summary(self, values: Mapping[str, float]) -> None:
        self._run.summary.update(dict(values))

    def finish(self) -> None:
        self._run.finish()


class InferenceTracker:
    """Tracks one serving worker as one W&B run (``job_type="serve"``, ``group`` = variant).

    Build it anywhere (nothing starts, wandb is not imported); the owner thread
    starts on :meth:`start` or on the first :meth:`record` in a process, so a
    tracker built before a fork starts afresh in each child.
    """

    def __init__(
        self,
        variant: str,
        run_config: Mapping[str, Any],
        settings: TrackerConfig | None = None,
        *,
        worker_id: str | int | None = None,
        backend_factory: Callable[[], TrackingBackend] = WandbBackend,
    ) -> None:
        self.variant = variant
        self.run_config = dict(run_config)
        self.settings = settings or TrackerConfig()
        self.worker_id = worker_id
        self._backend_factory = backend_factory
        self._rng = random.Random(self.settings.seed)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue[Any] = queue.Queue(self.settings.queue_size)
        self._stop = threading.Event()
        self._closed = False
        self._offered = 0
        self.dropped = 0
        self.backend_errors = 0

    def init_kwargs(self) -> dict[str, Any]:
        """The ``wandb.init`` arguments; the name is ``<deployment>-<variant>-w<worker>``."""
        worker = self.worker_id if self.worker_id is not None else os.getpid()
        s = self.settings
        tracking = {
            "deployment": s.deployment,
            "worker_id": worker,
            "window_s": s.window_s,
            "example_rate": s.example_rate,
        }
        return {
            "project": s.project,
            "entity": s.entity,
            "group": self.variant,
            "job_type": "serve",
            "name": f"{s.deployment}-{self.variant}-w{worker}",
            "tags": [s.deployment, self.variant],
            "config": {**self.run_config, "tracking": tracking},
        }

    def start(self) -> None:
        """Start the owner thread of this process (idempotent; after a fork, a new one)."""
        with self._lock:
            if self._pid == os.getpid() or self._closed:
                return
            self._queue = queue.Queue(self.settings.queue_size)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._own, name="arr-coc-wandb", daemon=True)
            self._thread.start()
            self._pid = os.getpid()
            # Threading's exit hooks run before non-daemon threads are joined and before
            # atexit, so the run is closed while wandb's own service is still up.
            getattr(threading, "_register_atexit", atexit.register)(self.close)

    def wants_example(self) -> bool:
        """Whether to hand this request's :class:`Example` over (sampled at ``example_rate``)."""
        if self._offered >= self.settings.max_examples or self._rng.random() >= self.settings.example_rate:
            return False
        self._offered += 1
        return True

    def record(
        self,
        latency_ms: float,
        *,
        stages_ms: Mapping[str, float] | None = None,
        kept_ratio: float | None = None,
        error_kind: str | None = None,
        batch_sizes: Mapping[str, int] | None = None,
        example: Example | None = None,
        vision_cached: bool | None = None,
        generated_tokens: int = 0,
        decoding: Mapping[str, float] | None = None,
        cost_dollars: float | None = None,
        gpu_s: float | None = None,
    ) -> bool:
        """Queue one request's event without blocking; ``False`` if dropped or closed.

        Never raises. Times in milliseconds; see :class:`RequestEvent`.
        """
        try:
            if self._closed:
                return False
            if self._pid != os.getpid():
                self.start()
            event = RequestEvent(
                latency_ms,
                stages_ms or {},
                kept_ratio,
                error_kind,
                batch_sizes or {},
                example,
                vision_cached,
                generated_tokens,
                decoding or {},
                cost_dollars,
                gpu_s,
            )
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False
        except Exception:  # tracking must never fail a request
            logger.exception("W&B tracking: record failed")
            return False

    def stop(self) -> None:
        """Ask the owner thread to flush, summarise and finish the run; returns at once."""
        self._closed = True
        if self._thread is None or self._pid != os.getpid():
            return
        self._stop.set()
        try:
            self._queue.put_nowait(_WAKE)
        except queue.Full:
            pass  # the thread is busy and sees the stop flag after each event

    def close(self, timeout_s: float | None = None) -> bool:
        """Flush the last window, write the summary, finish the run.

        Waits at most ``timeout_s`` (default ``settings.close_timeout_s``) seconds for
        the owner thread; ``True`` when it finished in time.
        """
        self.stop()
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return True
        thread.join(self.settings.close_timeout_s if timeout_s is None else timeout_s)
        if thread.is_alive():
            logger.warning("W&B tracking: owner thread still busy after close; abandoning it")
            return False
        return True

    def _call(self, what: str, fn: Callable[..., None], *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except Exception:
            self.backend_errors += 1
            logger.exception("W&B tracking: backend %s failed", what)
            return False

    def _own(self) -> None:
        backend = None
        try:
            backend = self._backend_factory()
            backend.start(self.init_kwargs())
        except Exception:
            backend = None
            self.backend_errors += 1
            logger.exception("W&B tracking: could not start the run; events are discarded")
        window_s, totals = self.settings.window_s, RunTotals(random.Random(self.settings.seed + 1))
        window, rows, logged_drops = WindowStats(time.monotonic()), [], 0
        while True:
            due = window.started + window_s
            try:
                if self._stop.is_set():
                    item = self._queue.get_nowait()
                else:
                    item = self._queue.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                item = None
                if self._stop.is_set():
                    break
            if isinstance(item, RequestEvent):
                window.add(item)
                if item.example is not None and backend is not None:
                    try:
                        rows.append(render_example(item.example, self.settings.example_max_px))
                    except Exception:
                        self.backend_errors += 1
                        logger.exception("W&B tracking: could not render an example")
            now = time.monotonic()
            if now >= due:
                logged_drops = self._flush(backend, window, totals, rows, now, logged_drops)
                window, rows = WindowStats(now), []
        if window.requests or rows or self.dropped > logged_drops:
            self._flush(backend, window, totals, rows, time.monotonic(), logged_drops)
        if backend is not None:
            self._call("summary", backend.update_summary, totals.summary(self.dropped))
            self._call("finish", backend.finish)

    def _flush(
        self,
        backend: TrackingBackend | None,
        window: WindowStats,
        totals: RunTotals,
        rows: list[ExampleRow],
        now: float,
        logged_drops: int,
    ) -> int:
        dropped = self.dropped
        totals.add_window(window, now)
        if backend is not None:
            metrics = window.metrics(now, dropped - logged_drops, dropped)
            self._call("log", backend.log, metrics, list(rows))
            self._call("summary", backend.update_summary, totals.summary(dropped))
        return dropped


class DisabledTracker:
    """Same calls as :class:`InferenceTracker`, doing nothing (tracking off)."""

    dropped = 0
    backend_errors = 0

    def start(self) -> None:
        pass

    def wants_example(self) -> bool:
        return False

    def record(self, latency_ms: float, **_: Any) -> bool:
        return False

    def stop(self) -> None:
        pass

    def close(self, timeout_s: float | None = None) -> bool:
        return True


def create_tracker(
    variant: str,
    run_config: Mapping[str, Any],
    settings: TrackerConfig | None = None,
    *,
    worker_id: str | int | None = None,
    env: Mapping[str, str] | None = None,
) -> InferenceTracker | DisabledTracker:
    """An :class:`InferenceTracker` when :func:`tracking_enabled`, else a :class:`DisabledTracker`."""
    if not tracking_enabled(env):
        return DisabledTracker()
    return InferenceTracker(variant, run_config, settings, worker_id=worker_id)
