"""Evaluating a variant: answers, recall@budget, tokens kept and latency over a dataset.

:func:`evaluate_variant` sends the dataset through ``VLMPipeline.answer_batch``
(the serving path: same scorer, same allocator, same pruned generation) in
batches of ``batch_size`` and yields one :class:`EvalRecord` per sample;
:func:`summarize` folds records into the numbers a dashboard compares
(``accuracy``, ``recall``, ``kept_ratio``, latency percentiles, throughput).
No W&B here: ``training_hooks.jobs.eval_job`` logs what this yields.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from arr_coc.errors import EmptyDatasetError
from arr_coc.metrics import answer_matches, percentile, recall_at_budget
from arr_coc.synthetic import Dataset, Sample
from arr_coc.variants import Variant
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.types import AnswerRequest, AnswerResult, GenerationParams


@dataclass
class EvalRecord:
    """One answered sample.

    recall: share of the target tokens kept, in [0, 1].
    latency_ms: wall-clock ms of the sample's whole batch (its ``total``);
    timings_ms: the batch's stage timings (``preprocess``, ``vision``, ``scoring``,
    ``prefill``, ``decode``, ``total``).
    """

    index: int
    sample: Sample
    result: AnswerResult
    correct: bool
    recall: float
    batch_size: int

    @property
    def timings_ms(self) -> dict[str, float]:
        return self.result.timings_ms

    @property
    def latency_ms(self) -> float:
        return float(self.result.timings_ms.get("total", sum(self.result.timings_ms.values())))


def sample_count(dataset: Dataset, limit: int | None) -> int:
    """How many samples an evaluation reads: ``limit`` (>= 1) capped at the dataset size."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EmptyDatasetError(f"limit must be an int >= 1, got {limit!r}", field="limit")
    if len(dataset) == 0:
        raise EmptyDatasetError("the dataset has no samples", field="dataset")
    return len(dataset) if limit is None else min(limit, len(dataset))


def evaluate_variant(
    pipeline: VLMPipeline,
    variant: Variant,
    dataset: Dataset,
    *,
    limit: int | None = None,
    batch_size: int = 1,
    max_new_tokens: int = 8,
    seed: int = 0,
) -> Iterator[EvalRecord]:
    """Yield a record per sample (in dataset order) for ``variant``'s method, budget and stage.

    Greedy decoding; ``seed + index`` seeds the ``random`` method per sample.
    """
    count = sample_count(dataset, limit)
    if batch_size < 1:
        raise EmptyDatasetError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    for start in range(0, count, batch_size):
        indices = list(range(start, min(count, start + batch_size)))
        samples = [dataset[i] for i in indices]
        requests = [
            AnswerRequest(
                image=s.image,
                question=s.question,
                method=variant.method,
                budget=variant.budget,
                stage=variant.stage,
                generation=GenerationParams(max_new_tokens=max_new_tokens, seed=seed + i),
            )
            for i, s in zip(indices, samples)
        ]
        for i, sample, result in zip(indices, samples, pipeline.answer_batch(requests)):
            recall = recall_at_budget(result.kept, sample.target_mask) if sample.target_mask.any() else float("nan")
            yield EvalRecord(i, sample, result, answer_matches(result.answer, sample.answer), recall, len(indices))


def summarize(records: Sequence[EvalRecord], wall_s: float) -> dict[str, float]:
    """Summary metrics of an evaluation that took ``wall_s`` seconds.

    ``accuracy`` and ``recall`` are means in [0, 1]; ``kept_tokens_mean`` and
    ``total_tokens_mean`` in visual tokens; ``kept_ratio`` their per-sample ratio's
    mean (``kept_ratio_p95`` its 95th percentile); ``latency_p50_ms``/``latency_p95_ms`` and ``<stage>_p50_ms`` in ms;
    ``throughput_rps`` answered samples per second of wall time.
    """
    if not records:
        raise EmptyDatasetError("no samples were evaluated", field="limit")
    n = len(records)
    recalls = [r.recall for r in records if r.recall == r.recall]
    latencies = [r.latency_ms for r in records]
    summary = {
        "samples": n,
        "accuracy": sum(r.correct for r in records) / n,
        "recall": sum(recalls) / len(recalls) if recalls else float("nan"),
        "kept_tokens_mean": sum(r.result.kept_tokens for r in records) / n,
        "total_tokens_mean": sum(r.result.total_tokens for r in records) / n,
        "kept_ratio": sum(r.result.kept_ratio for r in records) / n,
        "kept_ratio_p95": percentile([r.result.kept_ratio for r in records], 95),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "throughput_rps": n / wall_s if wall_s > 0 else float("nan"),
    }
    stages = sorted({stage for r in records for stage in r.timings_ms if stage != "total"})
    for stage in stages:
        values = [r.timings_ms[stage] for r in records if stage in r.timings_ms]
        summary[f"{stage}_p50_ms"] = percentile(values, 50)
        summary[f"{stage}_p95_ms"] = percentile(values, 95)
    return summary


class Stopwatch:
    """Seconds since construction (``perf_counter``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start
