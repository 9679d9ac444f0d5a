"""Inference tracker: the owner thread, windows and summary, W&B that fails, hangs or is
missing, sampled examples, and real offline runs read back with the run-file reader."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wandb_jobs
from PIL import Image
from pydantic import ValidationError

import training_hooks.tracking.tracker as tracker_module
from training_hooks.comparison.runfile import find_run_files, read_run
from training_hooks.tracking.serve_events import Example
from training_hooks.tracking.tracker import (
    DisabledTracker,
    InferenceTracker,
    TrackerConfig,
    create_tracker,
    tracking_enabled,
)

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 60  # guard against a hang; never a timing assertion


class RecordingBackend:
    """Keeps every call; ``logged`` is set once a window with requests was logged."""

    def __init__(self) -> None:
        self.init_kwargs: dict[str, Any] | None = None
        self.logs: list[tuple[dict[str, float], list[Any]]] = []
        self.summaries: list[dict[str, float]] = []
        self.finished = threading.Event()
        self.logged = threading.Event()

    def start(self, init_kwargs):
        self.init_kwargs = dict(init_kwargs)

    def log(self, metrics, examples):
        self.logs.append((dict(metrics), list(examples)))
        if metrics["serve/requests"]:
            self.logged.set()

    def update_summary(self, values):
        self.summaries.append(dict(values))

    def finish(self):
        self.finished.set()


class RaisingBackend(RecordingBackend):
    """Raises from every method named in ``failing``."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing

    def _fail(self, name: str) -> None:
        if name in self.failing:
            raise RuntimeError(f"W&B is down ({name})")

    def start(self, init_kwargs):
        self._fail("start")
        super().start(init_kwargs)

    def log(self, metrics, examples):
        self._fail("log")
        super().log(metrics, examples)

    def update_summary(self, values):
        self._fail("update_summary")
        super().update_summary(values)

    def finish(self):
        self._fail("finish")
        super().finish()


class BlockingBackend(RecordingBackend):
    """Blocks in ``blocking_in`` until the test sets ``release``; ``entered`` tells it is stuck."""

    def __init__(self, blocking_in: str) -> None:
        super().__init__()
        self.blocking_in = blocking_in
        self.entered = threading.Event()
        self.release = threading.Event()

    def _block(self, name: str) -> None:
        if name == self.blocking_in and not self.release.is_set():
            self.entered.set()
            self.release.wait()

    def start(self, init_kwargs):
        self._block("start")
        super().start(init_kwargs)

    def log(self, metrics, examples):
        self._block("log")
        super().log(metrics, examples)


def make_tracker(backend: RecordingBackend, **settings: Any) -> InferenceTracker:
    config = {"variant": {"name": "arr-coc-25", "budget": 0.25}, "git_commit": "abc123"}
    return InferenceTracker(
        "arr-coc-25", config, TrackerConfig(**settings), worker_id=3, backend_factory=lambda: backend
    )


def test_tracking_switch_reads_the_environment() -> None:
    assert not tracking_enabled({})
    assert tracking_enabled({"WANDB_API_KEY": "k"})
    assert tracking_enabled({"ARR_COC_WANDB": "1"})
    assert tracking_enabled({"ARR_COC_WANDB": "true"})
    assert not tracking_enabled({"ARR_COC_WANDB": "0", "WANDB_API_KEY": "k"})
    assert not tracking_enabled({"WANDB_API_KEY": "  "})
    assert isinstance(create_tracker("v", {}, env={}), DisabledTracker)
    tracker = create_tracker("v", {}, env={"ARR_COC_WANDB": "1"})
    assert isinstance(tracker, InferenceTracker)
    assert tracker.close() is True  # never started: nothing to wait for
    with pytest.raises(ValidationError):
        TrackerConfig(window_s=0)
    with pytest.raises(ValidationError):
        TrackerConfig(example_rate=1.5)


def test_events_become_windows_summary_and_a_finished_run() -> None:
    backend = RecordingBackend()
    tracker = make_tracker(backend, window_s=0.05, deployment="test")
    for i in range(10):
        assert tracker.record(10.0 + i, stages_ms={"prefill": 5.0}, kept_ratio=0.5, batch_sizes={"vlm": 2})
    assert backend.logged.wait(WAIT_S)  # a window with requests was logged
    for i in range(10, 15):
        assert tracker.record(10.0 + i, error_kind="invalid_budget" if i == 14 else None)
    assert tracker.close() is True
    assert backend.finished.is_set()
    init = backend.init_kwargs
    assert (init["group"], init["job_type"], init["name"]) == ("arr-coc-25", "serve", "test-arr-coc-25-w3")
    assert init["config"]["variant"] == {"name": "arr-coc-25", "budget": 0.25}
    assert init["config"]["tracking"]["window_s"] == 0.05
    rows = [metrics for metrics, _ in backend.logs]
    assert len(rows) >= 2
    assert sum(row["serve/requests"] for row in rows) == 15
    assert sum(row.get("serve/errors/invalid_budget", 0) for row in rows) == 1
    final = backend.summaries[-1]
    assert (final["requests"], final["answered"], final["errors"]) == (15, 14, 1)
    assert (final["latency_p50_ms"], final["latency_p95_ms"]) == (16.0, 23.0)
    assert final["throughput_rps"] > 0 and final["kept_ratio_mean"] == 0.5
    assert tracker.record(1.0) is False  # closed


@pytest.mark.timeout(WAIT_S)
def test_hanging_start_never_blocks_record_and_drops_are_counted() -> None:
    backend = BlockingBackend("start")
    tracker = make_tracker(backend, queue_size=8, window_s=3600)
    tracker.start()
    assert backend.entered.wait(WAIT_S)  # the owner thread is stuck in wandb.init
    results = [tracker.record(5.0) for _ in range(13)]  # returns while W&B hangs
    assert results == [True] * 8 + [False] * 5
    assert tracker.dropped == 5
    backend.release.set()
    assert tracker.close() is True
    ((metrics, _),) = backend.logs
    assert metrics["serve/requests"] == 8 and metrics["serve/dropped_total"] == 5
    assert backend.summaries[-1]["dropped_events"] == 5


@pytest.mark.timeout(WAIT_S)
def test_hanging_log_never_blocks_record_or_close() -> None:
    backend = BlockingBackend("log")
    tracker = make_tracker(backend, queue_size=4, window_s=0.01)
    tracker.start()
    assert backend.entered.wait(WAIT_S)  # stuck logging the first (empty) window
    assert [tracker.record(1.0) for _ in range(7)] == [True] * 4 + [False] * 3
    assert tracker.close(timeout_s=0.1) is False  # gives up on the stuck thread
    assert tracker.record(1.0) is False
    backend.release.set()
    assert tracker.close() is True  # once unstuck, the thread drains and finishes
    assert sum(metrics["serve/requests"] for metrics, _ in backend.logs) == 4
    assert backend.logs[-1][0]["serve/dropped_total"] == 3


@pytest.mark.parametrize("failing", [{"start"}, {"log", "update_summary", "finish"}])
def test_raising_backend_is_swallowed_and_counted(failing: set[str], caplog: pytest.LogCaptureFixture) -> None:
    backend = RaisingBackend(failing)
    tracker = make_tracker(backend, window_s=0.01)
    assert all(tracker.record(3.0, example=None) for _ in range(20))
    tracker.start()
    assert tracker.close() is True
    assert tracker.backend_errors >= len(failing)
    assert "W&B is down" in caplog.text
    if "start" in failing:
        assert backend.logs == [] and not backend.finished.is_set()


def test_missing_wandb_is_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    tracker = InferenceTracker("v", {}, TrackerConfig(window_s=0.01))
    assert all(tracker.record(1.0) for _ in range(5))
    assert tracker.close() is True
    assert tracker.backend_errors == 1


def test_examples_are_sampled_and_rendered_in_the_owner_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real_render = tracker_module.render_example

    def spy(example, max_px):
        threads.append(threading.current_thread().name)
        return real_render(example, max_px)

    monkeypatch.setattr(tracker_module, "render_example", spy)
    backend = RecordingBackend()
    tracker = make_tracker(backend, example_rate=1.0, max_examples=2, window_s=3600)
    wanted = [tracker.wants_example() for _ in range(5)]
    assert wanted == [True, True, False, False, False]
    example = Example(np.zeros((16, 16, 3), np.uint8), np.eye(2), [0, 3], "what colour?", "red")
    for _ in range(2):
        tracker.record(7.0, kept_ratio=0.5, example=example)
    assert tracker.close() is True
    assert threads == ["arr-coc-wandb"] * 2
    rows = [row for _, examples in backend.logs for row in examples]
    assert [(row.question, row.answer) for row in rows] == [("what colour?", "red")] * 2
    assert all(isinstance(row.heatmap, Image.Image) for row in rows)
    never = make_tracker(RecordingBackend(), example_rate=0.0)
    assert not any(never.wants_example() for _ in range(100))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_owner_thread() -> None:
    parent_backend = RecordingBackend()
    child_backends: list[RecordingBackend] = []

    def factory() -> RecordingBackend:
        backend = parent_backend if os.getpid() == parent_pid else RecordingBackend()
        child_backends.append(backend)
        return backend

    parent_pid = os.getpid()
    tracker = InferenceTracker("v", {}, TrackerConfig(window_s=3600), backend_factory=factory)
    tracker.record(1.0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: record, close, report what its own backend saw
        os.close(read_end)
        tracker.record(2.0)
        tracker.record(3.0)
        ok = tracker.close(timeout_s=WAIT_S)
        logged = sum(m["serve/requests"] for m, _ in child_backends[-1].logs)
        os.write(write_end, f"{ok},{logged},{child_backends[-1] is not parent_backend}".encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    assert report == "True,2,True"
    assert tracker.close() is True
    assert sum(m["serve/requests"] for m, _ in parent_backend.logs) == 1


def offline_env(root: Path) -> dict[str, str]:
    return wandb_jobs.offline_env(root, PYTHONPATH=str(REPO))


def run_offline(root: Path, script: str) -> Path:
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], env=offline_env(root), cwd=root, check=True, timeout=120
    )
    (found,) = find_run_files(root)
    return found


SERVE_SCRIPT = """
    import sys, threading
    import numpy as np
    from training_hooks.tracking.serve_events import Example
    from training_hooks.tracking.tracker import InferenceTracker, TrackerConfig, WandbBackend

    class Observed(WandbBackend):  # the real backend, telling when a busy window was logged
        logged = threading.Event()
        def log(self, metrics, examples):
            super().log(metrics, examples)
            if metrics["serve/requests"]:
                self.logged.set()

    config = {"variant": {"name": "arr-coc-25", "method": "arr-coc", "budget": 0.25},
              "vlm": "testbed/qwen2-vl", "git_commit": "abc123", "bento_tag": "arr-coc:dev"}
    settings = TrackerConfig(project="arr-coc-test", deployment="ci", window_s=0.2,
                               example_rate=1.0, max_examples=2)
    tracker = InferenceTracker("arr-coc-25", config, settings, worker_id=0, backend_factory=Observed)
    image = np.full((32, 32, 3), 90, np.uint8)
    for i in range(1, 11):
        example = Example(image, np.eye(4), [0, 5, 10, 15], "where?", "here") if tracker.wants_example() else None
        tracker.record(float(i), stages_ms={"prefill": i / 2}, kept_ratio=0.25, batch_sizes={"vlm": 2}, example=example)
    if not Observed.logged.wait(60):
        sys.exit("no window logged")
    for i in range(11, 21):
        tracker.record(float(i), stages_ms={"prefill": i / 2}, kept_ratio=0.25, batch_sizes={"vlm": 4},
                       error_kind="invalid_image" if i == 20 else None)
    assert tracker.close(timeout_s=60), "owner thread did not finish"
    assert tracker.backend_errors == 0, tracker.backend_errors
"""


def test_serve_run_reads_back_from_an_offline_run_file(tmp_path: Path) -> None:
    run = read_run(run_offline(tmp_path, SERVE_SCRIPT))
    assert (run.project, run.group, run.job_type, run.name) == (
        "arr-coc-test",
        "arr-coc-25",
        "serve",
        "ci-arr-coc-25-w0",
    )
    assert run.tags == ("ci", "arr-coc-25")
    assert run.config["variant"] == {"name": "arr-coc-25", "method": "arr-coc", "budget": 0.25}
    assert (run.config["git_commit"], run.config["bento_tag"]) == ("abc123", "arr-coc:dev")
    assert run.config["tracking"] == {"deployment": "ci", "worker_id": 0, "window_s": 0.2, "example_rate": 1.0}
    windows = [row for row in run.history if "serve/requests" in row]
    assert len(windows) >= 2 and sum(row["serve/requests"] for row in windows) == 20
    assert sum(row.get("serve/errors/invalid_image", 0) for row in windows) == 1
    busy = [row for row in windows if row["serve/requests"]]
    assert all(row["serve/kept_ratio/mean"] == 0.25 for row in busy)
    assert {row["serve/batch_size/vlm/max"] for row in busy} >= {2, 4}
    assert all("serve/latency_ms/prefill/p95" in row for row in busy)
    s = run.summary
    assert (s["requests"], s["answered"], s["errors"], s["dropped_events"]) == (20, 19, 1, 0)
    assert (s["latency_p50_ms"], s["latency_p95_ms"], s["latency_p99_ms"]) == (10.0, 19.0, 19.0)
    assert s["prefill_p50_ms"] == 5.0 and s["throughput_rps"] > 0
    (table,) = [a for a in run.artifacts if a.type == "wandb-run-incremental-table"]
    assert sum(path.endswith(".png") for path in table.files) >= 2
    assert s["serve/examples"]["nrows"] == 2
    assert run.exit_code == 0


def test_summary_is_written_at_exit_without_close(tmp_path: Path) -> None:
    script = """
        import threading
        from training_hooks.tracking.tracker import InferenceTracker, TrackerConfig, WandbBackend

        class Observed(WandbBackend):
            started = threading.Event()
            def start(self, init_kwargs):
                super().start(init_kwargs)
                self.started.set()

        tracker = InferenceTracker("uniform-50", {"variant": {"name": "uniform-50"}},
                                   TrackerConfig(project="arr-coc-test", window_s=3600), worker_id=1,
                                   backend_factory=Observed)
        for i in range(4):
            tracker.record(100.0 + i)
        assert Observed.started.wait(60)  # a worker that served a while, then exits without close()
    """
    run = read_run(run_offline(tmp_path, script))
    assert run.group == "uniform-50"
    assert (run.summary["requests"], run.summary["latency_p50_ms"]) == (4, 101.0)
    assert [row["serve/requests"] for row in run.history] == [4]
