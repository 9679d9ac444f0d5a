"""Label-free quality: first-token log-probs from the pipeline, their KL, and answer fidelity on the testbed."""

from __future__ import annotations

import math

import pytest
import torch
from batch_contract import SCORE_TOLERANCE

from arr_coc.errors import InvalidConfigError
from arr_coc.evaluation import (
    Stopwatch,
    add_fidelity,
    evaluate_variant,
    first_token_kl,
    reference_answers,
    summarize,
)
from arr_coc.tasks import load_dataset
from arr_coc.tasks.image_questions import template_questions
from arr_coc.training.data import processor_grid
from arr_coc.variants import ad_hoc, get_variant
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from testkit.drawing import scene, shapes, text


def mixed_requests(first_token_logprobs: bool = True) -> list[AnswerRequest]:
    """Three requests that differ in image size, question, method, budget and decoding."""
    return [
        AnswerRequest(
            scene(300, 200),
            "Where is the red house?",
            "arr-coc",
            0.25,
            GenerationParams(max_new_tokens=3),
            first_token_logprobs=first_token_logprobs,
        ),
        AnswerRequest(
            shapes(120, 260, seed=1),
            "How many shapes are there?",
            "uniform",
            5,
            GenerationParams(max_new_tokens=2, temperature=0.8, top_p=0.9, seed=3),
            first_token_logprobs=first_token_logprobs,
        ),
        AnswerRequest(
            text(200, 100),
            "Read the text.",
            "none",
            1.0,
            GenerationParams(max_new_tokens=2),
            first_token_logprobs=first_token_logprobs,
        ),
    ]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_first_token_logprobs_are_the_same_alone_and_in_a_batch(testbed_pipeline, family):
    pipeline = testbed_pipeline(family)
    requests = mixed_requests()
    alone = [pipeline.answer(r) for r in requests]
    batched = pipeline.answer_batch(requests)
    for one, many in zip(alone, batched):
        logprobs = one.first_token_logprobs
        assert logprobs.dim() == 1 and logprobs.dtype == torch.float32 and logprobs.device.type == "cpu"
        assert abs(float(torch.logsumexp(logprobs.double(), 0))) < 1e-5  # a log-softmax
        worst = float((many.first_token_logprobs - logprobs).abs().max())
        assert worst <= SCORE_TOLERANCE, f"first-token log-probs differ by {worst:.2e} in a batch"
    greedy = alone[0]  # the first choice of a greedy row is the top log-prob
    if greedy.token_ids:
        assert int(greedy.first_token_logprobs.argmax()) == greedy.token_ids[0]
    streamed = pipeline.stream(requests[2])
    "".join(streamed)
    assert torch.equal(streamed.result.first_token_logprobs, alone[2].first_token_logprobs)


def test_first_token_logprobs_are_off_by_default(testbed_pipeline):
    results = testbed_pipeline().answer_batch(mixed_requests(first_token_logprobs=False))
    assert all(result.first_token_logprobs is None for result in results)


def test_first_token_kl_in_nats():
    half = torch.log(torch.tensor([0.5, 0.5, 0.0]))
    skewed = torch.log(torch.tensor([0.9, 0.1, 0.0]))
    assert first_token_kl(half, half) == 0.0
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert first_token_kl(half, skewed) == pytest.approx(expected, rel=1e-6)
    assert first_token_kl(skewed, half) == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), rel=1e-6)


@pytest.fixture(scope="module")
def embedded():
    """The embedded trained testbed and 12 held-out samples of its task."""
    pipeline = VLMPipeline.from_pretrained(device="cpu", dtype="fp32")
    dataset = load_dataset("vqa", "heldout", 12, seed=0, grid_for=processor_grid(pipeline.vlm.processor))
    return pipeline, dataset


def fidelity_summary(pipeline, variant, dataset, references) -> dict[str, float]:
    clock = Stopwatch()
    records = list(evaluate_variant(pipeline, variant, dataset, batch_size=4, max_new_tokens=4, references=references))
    return summarize(records, clock.elapsed_s)


def test_all_tokens_are_faithful_to_themselves_and_3_percent_is_not(embedded):
    pipeline, dataset = embedded
    references = reference_answers(pipeline, dataset, batch_size=4, max_new_tokens=4)
    full = fidelity_summary(pipeline, get_variant("full"), dataset, references)
    assert full["fidelity"] == 1.0 and full["first_token_kl"] == 0.0
    bad = fidelity_summary(pipeline, ad_hoc("uniform", 0.03, "post"), dataset, references)
    assert bad["fidelity"] < 1.0 and bad["first_token_kl"] > 0.01
    assert bad["kept_ratio"] < 0.05 and "accuracy" in bad  # the task's answers still give accuracy


def test_fidelity_needs_no_answers(embedded, tmp_path):
    pipeline, dataset = embedded
    questions = template_questions([(f"{i}.png", dataset[i].image) for i in range(2)]).as_dataset()
    assert len(questions) == 6 and questions[0].answer == "" and not questions[0].target_mask.any()
    references = reference_answers(pipeline, questions, batch_size=3, max_new_tokens=4)
    clock = Stopwatch()
    records = list(
        evaluate_variant(
            pipeline, get_variant("full"), questions, batch_size=3, max_new_tokens=4, first_token_logprobs=True
        )
    )
    add_fidelity(records, references)
    summary = summarize(records, clock.elapsed_s)
    assert "accuracy" not in summary and math.isnan(summary["recall"])
    assert summary["samples"] == 6 and summary["fidelity"] == 1.0 and summary["first_token_kl"] == 0.0


def test_fidelity_needs_references_with_logprobs(embedded):
    pipeline, dataset = embedded
    plain = [r.result for r in evaluate_variant(pipeline, get_variant("full"), dataset, limit=2, max_new_tokens=2)]
    with pytest.raises(InvalidConfigError, match="first_token_logprobs"):
        next(evaluate_variant(pipeline, get_variant("full"), dataset, limit=2, references=plain))
    with pytest.raises(InvalidConfigError, match="2 reference answers for 3 samples"):
        next(evaluate_variant(pipeline, get_variant("full"), dataset, limit=3, references=plain))
