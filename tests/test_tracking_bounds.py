"""Tracking state is bounded by the variant registry, not by what clients send."""

from __future__ import annotations

import subprocess

import training_hooks.tracking.service_tracking as service_tracking
from arr_coc.variants import ad_hoc, get_variant
from serving.settings import ServerSettings
from training_hooks.tracking.service_tracking import Tracking, tracking_name


def test_names_are_bounded_by_the_registry():
    assert tracking_name(get_variant("arr-coc-25")) == tracking_name("arr-coc-25") == "arr-coc-25"
    assert tracking_name(ad_hoc("uniform", 7)) == tracking_name(ad_hoc("uniform", 0.33)) == "uniform@custom"
    assert tracking_name(ad_hoc("arr-coc", 0.3, "pre")) == "arr-coc@custom@pre"
    assert tracking_name("x" * 10**6) == tracking_name("best-ever") == "unknown"


def test_many_distinct_requests_make_a_few_trackers(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("ARR_COC_WANDB", raising=False)
    tracking = Tracking(ServerSettings())
    for budget in range(1, 201):
        tracking.record(ad_hoc("random", budget), 5.0, kept_ratio=0.1)
        tracking.record(f"rejected-{budget}", 5.0, error_kind="unknown_variant")
    tracking.record(get_variant("full"), 5.0, kept_ratio=1.0)
    assert sorted(tracking.trackers) == ["full", "random@custom", "unknown"]
    config = tracking.run_config(ad_hoc("random", 17))
    assert (config["variant"], config["method"], config["budget"]) == ("random@custom", "random", "custom")
    assert tracking.run_config("nope")["variant"] == "unknown"


def test_the_commit_is_read_once_per_process(monkeypatch):
    calls = []
    real = subprocess.run
    monkeypatch.setattr(service_tracking.subprocess, "run", lambda *a, **k: calls.append(a) or real(*a, **k))
    service_tracking.git_commit.cache_clear()
    tracking = Tracking(ServerSettings())
    for name in ("full", "arr-coc-10", "uniform-25"):
        tracking.run_config(name)
    assert len(calls) == 1
    service_tracking.git_commit.cache_clear()


class SlowTracker:
    """Stands in for a tracker: logs its stop and close calls; ``finishes`` says whether its run ends in time."""

    def __init__(self, name: str, log: list, finishes: bool = True) -> None:
        self.name, self.log, self.finishes = name, log, finishes

    def stop(self) -> None:
        self.log.append(("stop", self.name))

    def close(self, timeout_s: float | None = None) -> bool:
        self.log.append(("close", self.name, timeout_s))
        return self.finishes


def test_shutdown_stops_every_run_at_once_under_one_deadline(monkeypatch):
    log: list = []
    tracking = Tracking(ServerSettings())
    tracking.trackers = {name: SlowTracker(name, log, finishes=name != "stuck") for name in ("a", "b", "stuck", "c")}
    assert tracking.close(deadline_s=8.0) == 1  # the one still busy is counted and dropped
    stops = [entry for entry in log if entry[0] == "stop"]
    closes = [entry for entry in log if entry[0] == "close"]
    assert log[: len(stops)] == stops and len(stops) == 4  # every run is told to stop before any is awaited
    waits = [timeout for *_, timeout in closes]
    assert waits == sorted(waits, reverse=True) and 0.0 <= waits[-1] <= waits[0] <= 8.0  # one shared deadline
