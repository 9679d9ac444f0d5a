"""Prometheus metrics of the front service, served on BentoML's ``/metrics``.

Created through ``bentoml.metrics`` (a thin layer over ``prometheus_client`` that
BentoML wires for its multi-process server). :func:`count_requests` feeds the
per-route request metrics from every route of the front app, errors included.
"""

from __future__ import annotations

import time

import bentoml
from fastapi import FastAPI, Request

KEPT_RATIO = bentoml.metrics.Histogram(
    name="arr_coc_kept_ratio",
    documentation="Kept / total visual tokens per answered request",
    labelnames=["variant"],
    buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 0.9, 1.0),
)
STAGE_LATENCY = bentoml.metrics.Histogram(
    name="arr_coc_stage_latency_seconds",
    documentation="Latency of each pipeline stage, as measured in the runners (per batch)",
    labelnames=["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RUNNER_BATCH_SIZE = bentoml.metrics.Histogram(
    name="arr_coc_runner_batch_size",
    documentation="Size of the adaptive batch a request was served in, per runner",
    labelnames=["runner"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
VISION_CACHE = bentoml.metrics.Counter(
    name="arr_coc_vision_cache",
    documentation="Answered post-stage requests whose vision-tower outputs came from the feature cache (hit) or not",
    labelnames=["result"],
)
REQUESTS = bentoml.metrics.Counter(
    name="arr_coc_requests",
    documentation="Requests by route (the route's template; 'other' for no route) and status code",
    labelnames=["route", "status"],
)
RESPONSE_START = bentoml.metrics.Histogram(
    name="arr_coc_response_start_seconds",
    documentation="Seconds until the response starts, by route (for a stream: until its headers, after scoring)",
    labelnames=["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
RUNNER_RETRIES = bentoml.metrics.Counter(
    name="arr_coc_runner_retries",
    documentation="Runner calls tried again, by call and reason (a broken connection, or a stream that fell silent)",
    labelnames=["call", "reason"],
)
ANSWERS = bentoml.metrics.Counter(
    name="arr_coc_answers",
    documentation="Answered requests by variant",
    labelnames=["variant"],
)
COST_DOLLARS = bentoml.metrics.Counter(
    name="arr_coc_cost_dollars",
    documentation="US$ of instance time the answers held (their share of the runners' busy time), by variant",
    labelnames=["variant"],
)
GPU_SECONDS = bentoml.metrics.Counter(
    name="arr_coc_gpu_seconds",
    documentation="GPU-seconds billed for the answers (0 without a GPU), by variant",
    labelnames=["variant"],
)
COST_PER_1K = bentoml.metrics.Gauge(
    name="arr_coc_cost_per_1k_answers_dollars",
    documentation="US$ per 1,000 answers of this front worker since it started, by variant",
    labelnames=["variant"],
)
TRAFFIC_ASSIGNED = bentoml.metrics.Counter(
    name="arr_coc_traffic_assigned",
    documentation="Requests that named no variant, by the variant the traffic split gave them",
    labelnames=["variant"],
)
ERRORS = bentoml.metrics.Counter(
    name="arr_coc_errors",
    documentation="Failed requests by error kind",
    labelnames=["kind"],
)


def observe_stages(timings_ms: dict[str, float]) -> None:
    for stage, ms in timings_ms.items():
        STAGE_LATENCY.labels(stage=stage).observe(ms / 1000.0)


def count_requests(app: FastAPI) -> None:
    """Count every request of ``app`` by route and status, and time it until its response starts."""

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "") or "other"
        REQUESTS.labels(route=route, status=str(response.status_code)).inc()
        RESPONSE_START.labels(route=route).observe(time.perf_counter() - started)
        return response
