"""Evaluating a variant: answers, recall@budget, tokens kept and latency over a dataset.

:func:`evaluate_variant` sends the dataset through ``VLMPipeline.answer_batch``
(the serving path: same scorer, same allocator, same pruned generation) in
batches of ``batch_size`` and yields one :class:`EvalRecord` per sample;
:func:`summarize` folds records into the numbers a dashboard compares
(``accuracy``, ``recall``, ``kept_ratio``, latency percentiles, throughput).
No W&B here: ``training_hooks.jobs.eval_job`` logs what this yields.

Answer fidelity needs no labels: the model's own answers with every visual token
(:func:`reference_answers`, the ``full`` variant) are the reference, and a variant
evaluated with ``references`` records per sample whether its greedy answer equals the
reference (``agrees``) and ``KL(p_full || p_pruned)`` of the first answer token's
distribution (:func:`first_token_kl`, nats); :func:`summarize` then adds ``fidelity``
(the share that agrees) and ``first_token_kl`` (the mean). Samples without an expected
answer (a question set, ``arr_coc.tasks.image_questions``) are left out of ``accuracy``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from arr_coc.errors import EmptyDatasetError, InvalidConfigError
from arr_coc.metrics import answer_matches, percentile, recall_at_budget
from arr_coc.synthetic import Dataset, Sample
from arr_coc.variants import Variant, get_variant
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.types import AnswerRequest, AnswerResult, GenerationParams


@dataclass
class EvalRecord:
    """One answered sample.

    recall: share of the target tokens kept, in [0, 1].
    latency_ms: wall-clock ms of the sample's whole batch (its ``total``);
    timings_ms: the batch's stage timings (``preprocess``, ``vision``, ``scoring``,
    ``prefill``, ``decode``, ``total``).
    agrees, first_token_kl: with references only (else ``None``): the answer equals the
    all-token answer; ``KL(p_full || p_pruned)`` of the first answer token, nats.
    """

    index: int
    sample: Sample
    result: AnswerResult
    correct: bool
    recall: float
    batch_size: int
    agrees: bool | None = None
    first_token_kl: float | None = None

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


def first_token_kl(full: torch.Tensor, pruned: torch.Tensor) -> float:
    """``KL(p_full || p_pruned)`` in nats of two first-token log-softmax vectors ``[V]``.

    Terms where ``p_full`` is 0 count 0; rounding below 0 is clipped (equal inputs give exactly 0).
    """
    full, pruned = full.double(), pruned.double()
    probs = full.exp()
    terms = torch.where(probs > 0, probs * (full - pruned), torch.zeros_like(probs))
    return max(float(terms.sum()), 0.0)


def answers_agree(result: AnswerResult, reference: AnswerResult) -> bool:
    """Whether two answers are the same text (surrounding whitespace ignored)."""
    return result.answer.strip() == reference.answer.strip()


def fidelity_of(result: AnswerResult, reference: AnswerResult) -> tuple[bool, float]:
    """``(agrees, first_token_kl)`` of ``result`` against the all-token ``reference``; both need first-token log-probs."""
    if result.first_token_logprobs is None or reference.first_token_logprobs is None:
        raise InvalidConfigError("fidelity needs answers with first_token_logprobs", field="references")
    return answers_agree(result, reference), first_token_kl(reference.first_token_logprobs, result.first_token_logprobs)


def evaluate_variant(
    pipeline: VLMPipeline,
    variant: Variant,
    dataset: Dataset,
    *,
    limit: int | None = None,
    batch_size: int = 1,
    max_new_tokens: int = 8,
    seed: int = 0,
    references: Sequence[AnswerResult] | None = None,
    first_token_logprobs: bool = False,
) -> Iterator[EvalRecord]:
    """Yield a record per sample (in dataset order) for ``variant``'s method, budget and stage.

    Greedy decoding; ``seed + index`` seeds the ``random`` method per sample. With
    ``references`` (the all-token answers of the same samples, :func:`reference_answers`)
    each record also gets ``agrees`` and ``first_token_kl``. ``first_token_logprobs``
    (implied by ``references``) keeps the first answer token's log-probs in each result.
    """
    count = sample_count(dataset, limit)
    if batch_size < 1:
        raise EmptyDatasetError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    if references is not None and len(references) < count:
        raise InvalidConfigError(f"{len(references)} reference answers for {count} samples", field="references")
    keep_logprobs = first_token_logprobs or references is not None
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
                first_token_logprobs=keep_logprobs,
            )
            for i, s in zip(indices, samples)
        ]
        for i, sample, result in zip(indices, samples, pipeline.answer_batch(requests)):
            recall = recall_at_budget(result.kept, sample.target_mask) if sample.target_mask.any() else float("nan")
            record = EvalRecord(i, sample, result, answer_matches(result.answer, sample.answer), recall, len(indices))
            if references is not None:
                record.agrees, record.first_token_kl = fidelity_of(result, references[i])
            yield record


def reference_answers(
    pipeline: VLMPipeline,
    dataset: Dataset,
    *,
    limit: int | None = None,
    batch_size: int = 1,
    max_new_tokens: int = 8,
    seed: int = 0,
) -> list[AnswerResult]:
    """The model's own greedy answers with every visual token (the ``full`` variant), first-token log-probs kept.

    The reference of answer fidelity: pass it as ``references`` to :func:`evaluate_variant`
    with the same dataset, limit and ``max_new_tokens``.
    """
    records = evaluate_variant(
        pipeline,
        get_variant("full"),
        dataset,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        first_token_logprobs=True,
    )
    return [record.result for record in records]


def add_fidelity(records: Sequence[EvalRecord], references: Sequence[AnswerResult]) -> None:
    """Set ``agrees`` and ``first_token_kl`` of records already evaluated (with first-token log-probs)."""
    for record in records:
        record.agrees, record.first_token_kl = fidelity_of(record.result, references[record.index])


def summarize(records: Sequence[EvalRecord], wall_s: float) -> dict[str, float]:
    """Summary metrics of an evaluation that took ``wall_s`` seconds.

    ``accuracy`` (over the samples that have an expected answer; absent when none has)
    and ``recall`` are means in [0, 1]; ``kept_tokens_mean`` and
    ``total_tokens_mean`` in visual tokens; ``kept_ratio`` their per-sample ratio's
    mean (``kept_ratio_p95`` its 95th percentile); ``latency_p50_ms``/``latency_p95_ms`` and ``<stage>_p50_ms`` in ms;
    ``throughput_rps`` answered samples per second of wall time. Records evaluated
    against references add ``fidelity`` (share of answers equal to the all-token ones,
    in [0, 1]) and ``first_token_kl`` (mean KL of the first answer token, nats).
    """
    if not records:
        raise EmptyDatasetError("no samples were evaluated", field="limit")
    n = len(records)
    recalls = [r.recall for r in records if r.recall == r.recall]
    latencies = [r.latency_ms for r in records]
    labelled = [r for r in records if r.sample.answer]
    summary = {
        "samples": n,
        **({"accuracy": sum(r.correct for r in labelled) / len(labelled)} if labelled else {}),
        "recall": sum(recalls) / len(recalls) if recalls else float("nan"),
        "kept_tokens_mean": sum(r.result.kept_tokens for r in records) / n,
        "total_tokens_mean": sum(r.result.total_tokens for r in records) / n,
        "kept_ratio": sum(r.result.kept_ratio for r in records) / n,
        "kept_ratio_p95": percentile([r.result.kept_ratio for r in records], 95),
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p95_ms": percentile(latencies, 95),
        "throughput_rps": n / wall_s if wall_s > 0 else float("nan"),
    }
    compared = [r for r in records if r.agrees is not None]
    if compared:
        summary["fidelity"] = sum(r.agrees for r in compared) / len(compared)
        summary["first_token_kl"] = sum(r.first_token_kl for r in compared) / len(compared)
    stages = sorted({stage for r in records for stage in r.timings_ms if stage != "total"})
    for stage in stages:
        values = [r.timings_ms[stage] for r in records if stage in r.timings_ms]
        summary[f"{stage}_p50_ms"] = percentile(values, 50)
        summary[f"{stage}_p95_ms"] = percentile(values, 95)
    return summary


def cost_per_1k_answers(records: Sequence[EvalRecord], dollars_per_s: float) -> float:
    """US$ per 1,000 answers on an instance costing ``dollars_per_s``: each answer holds its batch's wall time
    divided among the batch (as a served answer holds its share of the runners' busy time)."""
    held_s = [r.latency_ms / 1000.0 / r.batch_size for r in records]
    return 1000.0 * dollars_per_s * sum(held_s) / len(held_s)


class Stopwatch:
    """Seconds since construction (``perf_counter``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start
