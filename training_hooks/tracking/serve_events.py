"""What a serving worker's request events become on W&B: window rows, run summary, table rows.

Pure data (no thread, no wandb): :class:`WindowStats` folds one window's
:class:`RequestEvent` s into one history row, :class:`RunTotals` keeps run-wide
figures for ``run.summary``, :func:`render_example` turns a sampled request's raw
arrays into the images of one table row. ``training_hooks.tracking.tracker`` runs them in
its owner thread.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

PREFIX = "serve/"
RESERVOIR_SIZE = 10_000  # latency samples per series kept for the run summary


@dataclass(frozen=True, slots=True)
class Example:
    """Raw material of one table row, handed over as is (rendered in the owner thread).

    image: PIL image or ``[H, W, 3]`` uint8 array.
    relevance: ``[H', W']`` scores in [0, 1] (array-like; CPU torch tensors work).
    kept: raster indices of the kept visual tokens into the ``[H', W']`` grid.
    """

    image: Any
    relevance: Any
    kept: Any
    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class RequestEvent:
    """What one request leaves behind. Times in milliseconds.

    error_kind: ``None`` for an answered request, else a short name
        (e.g. ``ArrCocError.kind``); failed requests count in errors, not latency.
    batch_sizes: runner name -> size of the batch this request ran in.
    vision_cached: whether the VLM runner took the tower's outputs from its feature
        cache (``None`` when the request had no tower pass to cache, e.g. ``pre``).
    generated_tokens: tokens the VLM generated for it.
    decoding: the step scheduler's view of it: ``running_rows`` (mean rows of its
        decode steps), ``queue_depth`` (requests ahead of it on arrival), ``step_ms``
        (mean time of its decode steps); empty with the batch scheduler.
    cost_dollars: what it cost, US$ (``arr_coc.pricing``: its share of the runners'
        busy time priced as instance time); ``None`` for a failed request.
    gpu_s: the GPU-seconds billed for it (0 without a GPU).
    """

    latency_ms: float
    stages_ms: Mapping[str, float] = field(default_factory=dict)
    kept_ratio: float | None = None
    error_kind: str | None = None
    batch_sizes: Mapping[str, int] = field(default_factory=dict)
    example: Example | None = None
    vision_cached: bool | None = None
    generated_tokens: int = 0
    decoding: Mapping[str, float] = field(default_factory=dict)
    cost_dollars: float | None = None
    gpu_s: float | None = None


@dataclass(frozen=True, slots=True)
class ExampleRow:
    """One rendered table row: the image, its relevance heatmap, its kept tokens."""

    question: str
    answer: str
    kept_ratio: float
    image: Image.Image
    heatmap: Image.Image
    kept_mask: Image.Image


def percentiles(values: Sequence[float], qs: Sequence[int] = (50, 95, 99)) -> dict[int, float]:
    """Nearest-rank percentiles (each one an observed value); empty input gives ``{}``."""
    ordered = sorted(values)
    if not ordered:
        return {}
    return {q: ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1] for q in qs}


class WindowStats:
    """Aggregates the events of one window into one history row (``serve/...`` keys)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.requests = 0
        self.errors: dict[str, int] = defaultdict(int)
        self.latency: list[float] = []
        self.stages: dict[str, list[float]] = defaultdict(list)
        self.kept: list[float] = []
        self.batches: dict[str, list[int]] = defaultdict(list)
        self.cache_lookups: list[bool] = []
        self.generated_tokens = 0
        self.decoding: dict[str, list[float]] = defaultdict(list)
        self.costs: list[float] = []
        self.gpu_s: list[float] = []

    def add(self, event: RequestEvent) -> None:
        self.requests += 1
        if event.error_kind is not None:
            self.errors[event.error_kind] += 1
            return
        self.latency.append(event.latency_ms)
        for stage, ms in event.stages_ms.items():
            self.stages[stage].append(ms)
        if event.kept_ratio is not None:
            self.kept.append(event.kept_ratio)
        for runner, size in event.batch_sizes.items():
            self.batches[runner].append(size)
        if event.vision_cached is not None:
            self.cache_lookups.append(event.vision_cached)
        self.generated_tokens += event.generated_tokens
        for name, value in event.decoding.items():
            self.decoding[name].append(value)
        if event.cost_dollars is not None:
            self.costs.append(event.cost_dollars)
            self.gpu_s.append(event.gpu_s or 0.0)

    def metrics(self, ended: float, dropped: int, dropped_total: int) -> dict[str, float]:
        """The window's row: counts, ``throughput_rps`` (answered requests / s), latency
        percentiles in ms (``latency_ms/p50``, ``latency_ms/<stage>/p95``...), mean
        kept ratio, batch size mean/max per runner (as seen by requests), the share of
        tower passes served by the feature cache (``vision_cache/hit_rate``), generated
        tokens per second, the step scheduler's running rows and queue depth (mean)
        and step time (p50, p95), US$ per 1,000 answers and GPU-seconds per answer, drops."""
        seconds = max(ended - self.started, 1e-9)
        row: dict[str, float] = {
            "requests": self.requests,
            "answered": len(self.latency),
            "errors": sum(self.errors.values()),
            "throughput_rps": len(self.latency) / seconds,
            "window_s": seconds,
            "dropped": dropped,
            "dropped_total": dropped_total,
        }
        row.update({f"errors/{kind}": n for kind, n in self.errors.items()})
        row.update({f"latency_ms/p{q}": v for q, v in percentiles(self.latency).items()})
        for stage, values in self.stages.items():
            row.update({f"latency_ms/{stage}/p{q}": v for q, v in percentiles(values).items()})
        if self.kept:
            row["kept_ratio/mean"] = sum(self.kept) / len(self.kept)
        for runner, sizes in self.batches.items():
            row[f"batch_size/{runner}/mean"] = sum(sizes) / len(sizes)
            row[f"batch_size/{runner}/max"] = max(sizes)
        if self.cache_lookups:
            row["vision_cache/hit_rate"] = sum(self.cache_lookups) / len(self.cache_lookups)
        row["generated_tokens_per_s"] = self.generated_tokens / seconds
        for name in ("running_rows", "queue_depth"):
            if self.decoding.get(name):
                row[f"scheduler/{name}/mean"] = sum(self.decoding[name]) / len(self.decoding[name])
        if self.decoding.get("step_ms"):
            row.update(
                {f"scheduler/step_ms/p{q}": v for q, v in percentiles(self.decoding["step_ms"], (50, 95)).items()}
            )
        if self.costs:
            row["cost/dollars_per_1k_answers"] = 1000.0 * sum(self.costs) / len(self.costs)
            row["cost/gpu_s_per_answer"] = sum(self.gpu_s) / len(self.gpu_s)
        return {PREFIX + key: value for key, value in row.items()}


class RunTotals:
    """Run-wide figures for ``run.summary``; latencies kept in bounded reservoirs."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.requests = self.answered = self.errors = 0
        self.active_s = 0.0
        self.kept_sum, self.kept_n = 0.0, 0
        self.cost_sum, self.gpu_s_sum, self.cost_n = 0.0, 0.0, 0
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._seen: dict[str, int] = defaultdict(int)

    def _sample(self, name: str, value: float) -> None:
        self._seen[name] += 1
        values = self.samples[name]
        if len(values) < RESERVOIR_SIZE:
            values.append(value)
        elif (slot := self._rng.randrange(self._seen[name])) < RESERVOIR_SIZE:
            values[slot] = value

    def add_window(self, window: WindowStats, ended: float) -> None:
        self.requests += window.requests
        self.errors += sum(window.errors.values())
        self.answered += len(window.latency)
        if window.requests:
            self.active_s += ended - window.started
        for value in window.latency:
            self._sample("latency", value)
        for stage, values in window.stages.items():
            for value in values:
                self._sample(stage, value)
        self.kept_sum += sum(window.kept)
        self.kept_n += len(window.kept)
        self.cost_sum += sum(window.costs)
        self.gpu_s_sum += sum(window.gpu_s)
        self.cost_n += len(window.costs)

    def summary(self, dropped_total: int) -> dict[str, float]:
        """``latency_p50_ms``/``_p95``/``_p99``, ``<stage>_p50_ms``..., ``throughput_rps``
        (answered requests per second of windows that saw requests), counts, and the
        run's ``cost_per_1k_answers`` (US$) and ``gpu_s_per_answer``."""
        out: dict[str, float] = {
            "requests": self.requests,
            "answered": self.answered,
            "errors": self.errors,
            "dropped_events": dropped_total,
            "throughput_rps": self.answered / self.active_s if self.active_s > 0 else 0.0,
        }
        for name, values in self.samples.items():
            out.update({f"{name}_p{q}_ms": v for q, v in percentiles(values).items()})
        if self.kept_n:
            out["kept_ratio_mean"] = self.kept_sum / self.kept_n
        if self.cost_n:
            out["cost_per_1k_answers"] = 1000.0 * self.cost_sum / self.cost_n
            out["gpu_s_per_answer"] = self.gpu_s_sum / self.cost_n
        return out


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def render_example(example: Example, max_px: int) -> ExampleRow:
    """Image (longest side <= ``max_px``), relevance heatmap over it ("hot" ramp), and
    the kept tokens in full colour over the dropped ones dimmed to a quarter."""
    image = example.image if isinstance(example.image, Image.Image) else Image.fromarray(_array(example.image))
    image = image.convert("RGB")  # always a copy: thumbnail must not resize the caller's image
    image.thumbnail((max_px, max_px))
    relevance = np.clip(_array(example.relevance).astype(np.float32), 0.0, 1.0)
    if relevance.ndim != 2:
        raise ValueError(f"relevance must be [H', W'], got shape {relevance.shape}")
    hot = np.stack([np.clip(relevance * 3 - k, 0, 1) for k in range(3)], axis=-1)
    heat = Image.fromarray((hot * 255).astype(np.uint8)).resize(image.size, Image.Resampling.NEAREST)
    mask = np.zeros(relevance.size, dtype=np.uint8)
    mask[_array(example.kept).astype(np.int64).ravel()] = 255
    mask_image = Image.fromarray(mask.reshape(relevance.shape)).resize(image.size, Image.Resampling.NEAREST)
    dimmed = Image.eval(image, lambda v: v // 4)
    return ExampleRow(
        question=example.question,
        answer=example.answer,
        kept_ratio=float((mask > 0).mean()),
        image=image,
        heatmap=Image.blend(image, heat, 0.6),
        kept_mask=Image.composite(image, dimmed, mask_image),
    )
