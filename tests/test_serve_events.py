"""Request events -> window rows, run summary and example images (no thread, no W&B)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from training_hooks.tracking.serve_events import (
    RESERVOIR_SIZE,
    Example,
    RequestEvent,
    RunTotals,
    WindowStats,
    percentiles,
    render_example,
)


def test_percentiles_are_nearest_rank() -> None:
    assert percentiles([]) == {}
    assert percentiles([5.0]) == {50: 5.0, 95: 5.0, 99: 5.0}
    values = [float(v) for v in range(100, 0, -1)]
    assert percentiles(values) == {50: 50.0, 95: 95.0, 99: 99.0}


def test_window_row_and_run_summary() -> None:
    window = WindowStats(started=10.0)
    for i in range(1, 21):
        window.add(RequestEvent(float(i), {"vision": 1.0, "decode": float(10 * i)}, 0.25, None, {"vlm": i % 4 + 1}))
    window.add(RequestEvent(2.0, error_kind="invalid_image"))
    window.add(RequestEvent(3.0, error_kind="invalid_image"))
    window.add(RequestEvent(4.0, error_kind="runner_unavailable"))
    row = window.metrics(ended=12.0, dropped=2, dropped_total=5)
    assert row["serve/requests"] == 23 and row["serve/answered"] == 20 and row["serve/errors"] == 3
    assert row["serve/errors/invalid_image"] == 2 and row["serve/errors/runner_unavailable"] == 1
    assert row["serve/throughput_rps"] == pytest.approx(10.0)
    assert (row["serve/latency_ms/p50"], row["serve/latency_ms/p95"], row["serve/latency_ms/p99"]) == (10.0, 19.0, 20.0)
    assert row["serve/latency_ms/decode/p50"] == 100.0 and row["serve/latency_ms/vision/p99"] == 1.0
    assert row["serve/kept_ratio/mean"] == 0.25
    assert row["serve/batch_size/vlm/mean"] == 2.5 and row["serve/batch_size/vlm/max"] == 4
    assert (row["serve/dropped"], row["serve/dropped_total"], row["serve/window_s"]) == (2, 5, 2.0)
    assert "serve/vision_cache/hit_rate" not in row  # no request reported a tower pass

    cached = WindowStats(started=0.0)
    for hit in (False, True, True, None):
        cached.add(RequestEvent(5.0, kept_ratio=0.25, vision_cached=hit))
    assert cached.metrics(ended=1.0, dropped=0, dropped_total=0)["serve/vision_cache/hit_rate"] == pytest.approx(2 / 3)

    totals = RunTotals(random.Random(0))
    totals.add_window(window, ended=12.0)
    idle = WindowStats(started=12.0)
    totals.add_window(idle, ended=40.0)  # idle windows do not dilute throughput
    summary = totals.summary(dropped_total=5)
    assert summary["throughput_rps"] == pytest.approx(10.0)
    assert (summary["latency_p50_ms"], summary["latency_p95_ms"]) == (10.0, 19.0)
    assert summary["decode_p95_ms"] == 190.0
    assert (summary["requests"], summary["errors"], summary["dropped_events"]) == (23, 3, 5)


def test_window_row_has_the_step_schedulers_figures() -> None:
    window = WindowStats(started=0.0)
    for rows, depth, step in ((4, 0, 10.0), (8, 2, 20.0), (12, 4, 30.0)):
        decoding = {"running_rows": rows, "queue_depth": depth, "step_ms": step}
        window.add(RequestEvent(50.0, generated_tokens=20, decoding=decoding))
    window.add(RequestEvent(50.0, generated_tokens=10))  # the batch scheduler reports no steps
    row = window.metrics(ended=2.0, dropped=0, dropped_total=0)
    assert row["serve/generated_tokens_per_s"] == pytest.approx(35.0)
    assert row["serve/scheduler/running_rows/mean"] == 8.0 and row["serve/scheduler/queue_depth/mean"] == 2.0
    assert (row["serve/scheduler/step_ms/p50"], row["serve/scheduler/step_ms/p95"]) == (20.0, 30.0)
    plain = WindowStats(started=0.0)
    plain.add(RequestEvent(50.0, generated_tokens=10))
    assert not any("scheduler" in key for key in plain.metrics(ended=1.0, dropped=0, dropped_total=0))


def test_example_images_show_relevance_and_kept_tokens() -> None:
    image = np.full((40, 60, 3), 200, dtype=np.uint8)
    relevance = torch.zeros(2, 3)
    relevance[0, 0] = 1.0
    row = render_example(Example(image, relevance, torch.tensor([0, 4]), "what?", "red"), max_px=30)
    assert row.image.size == (30, 20) and row.image.mode == "RGB"
    assert row.heatmap.size == row.kept_mask.size == row.image.size
    assert row.kept_ratio == pytest.approx(2 / 6)
    kept = np.asarray(row.kept_mask)
    assert kept[2, 2].tolist() == [200, 200, 200]  # token 0 kept: full colour
    assert kept[2, 12].tolist() == [50, 50, 50]  # token 1 dropped: dimmed
    assert kept[15, 15].tolist() == [200, 200, 200]  # token 4 (row 1, col 1) kept
    heat = np.asarray(row.heatmap).astype(int)
    assert heat[2, 2, 0] > heat[2, 12, 0]  # the relevant token is hotter
    gray = render_example(Example(Image.new("L", (8, 8)), np.ones((2, 2)), [3], "q", "a"), max_px=64)
    assert gray.image.mode == "RGB" and gray.image.size == (8, 8)
    original = Image.new("RGB", (60, 40))
    assert render_example(Example(original, np.ones((2, 2)), [0], "q", "a"), max_px=30).image.size == (30, 20)
    assert original.size == (60, 40)  # the caller's image is never resized


def test_run_summary_memory_is_bounded() -> None:
    totals = RunTotals(random.Random(0))
    for start in range(0, 30_000, 10_000):
        window = WindowStats(started=float(start))
        for value in range(start, start + 10_000):
            window.add(RequestEvent(float(value)))
        totals.add_window(window, ended=start + 1.0)
    assert len(totals.samples["latency"]) == RESERVOIR_SIZE
    summary = totals.summary(dropped_total=0)
    assert summary["requests"] == 30_000 and summary["throughput_rps"] == pytest.approx(10_000.0)
    assert summary["latency_p50_ms"] == pytest.approx(15_000, rel=0.05)
