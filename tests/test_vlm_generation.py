"""Answering on the testbed: batching, streaming, sampling, stop strings, results, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from batch_contract import assert_kept_match, assert_scores_match
from PIL import Image

from arr_coc.errors import (
    ArrCocInputError,
    InvalidBudgetError,
    InvalidGenerationConfigError,
    InvalidImageError,
    InvalidQuestionError,
    UnknownMethodError,
)
from arr_coc.selection import allocate, resolve_budget
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from testkit.drawing import gradient, noise, scene, shapes, text

QUESTION = "Where is the red house?"


def mixed_requests() -> list[AnswerRequest]:
    """Three requests that differ in image size, question, method, budget and decoding."""
    return [
        AnswerRequest(scene(300, 200), QUESTION, "arr-coc", 0.25, GenerationParams(max_new_tokens=9)),
        AnswerRequest(
            shapes(120, 260, seed=1),
            "How many shapes are there?",
            "cdpruner",
            5,
            GenerationParams(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3),
        ),
        AnswerRequest(text(200, 100), "Read the text.", "random", 0.6, GenerationParams(max_new_tokens=12, seed=11)),
    ]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_batched_equals_one_by_one(testbed_pipeline, family):
    pipeline = testbed_pipeline(family)
    requests = mixed_requests()
    alone = [pipeline.answer(r) for r in requests]
    batched = pipeline.answer_batch(requests)
    assert len({r.total_tokens for r in alone}) == 3  # three different image sizes
    for one, many in zip(alone, batched):
        assert many.token_ids == one.token_ids
        assert many.answer == one.answer
        assert many.grid == one.grid and many.total_tokens == one.total_tokens
        assert_scores_match(one.relevance, many.relevance)
        assert_kept_match(one.relevance, one.kept, many.kept)
    # reversed order gives the same per-request results too
    for one, many in zip(alone, reversed(pipeline.answer_batch(requests[::-1]))):
        assert many.token_ids == one.token_ids


def test_result_fields(testbed_pipeline):
    pipeline = testbed_pipeline()
    request = AnswerRequest(scene(280, 210), QUESTION, "arr-coc", 0.3, GenerationParams(max_new_tokens=7))
    result = pipeline.answer(request)
    height, width = result.grid
    assert result.total_tokens == height * width
    assert result.kept_tokens == resolve_budget(0.3, result.total_tokens)
    assert torch.equal(result.kept, torch.sort(torch.unique(result.kept)).values)
    assert 0 <= int(result.kept.min()) and int(result.kept.max()) < result.total_tokens
    assert result.relevance.shape == (height, width)
    assert float(result.relevance.min()) >= 0.0 and float(result.relevance.max()) <= 1.0
    # arr-coc keeps what the allocator picks from the returned relevance, the scorer's cells and exploration
    bridge = pipeline.token_grid(request.image)
    query = pipeline.question_embedding(QUESTION)[None]
    (scored,) = pipeline.scorer.score_images([bridge.image], [bridge.grid], query)
    assert torch.allclose(scored.relevance.cpu(), result.relevance, atol=1e-5)
    (expected,) = allocate(
        [result.relevance], 0.3, "arr-coc", cells=[scored.cells.detach().cpu()], explore=float(scored.explore.detach())
    )
    assert torch.equal(result.kept, expected)
    assert 1 <= len(result.token_ids) <= 7
    assert result.answer == pipeline.vlm.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    for stage in ("preprocess", "vision", "scoring", "prefill", "decode", "total"):
        assert math.isfinite(result.timings_ms[stage]) and result.timings_ms[stage] >= 0.0
    assert result.timings_ms["total"] >= result.timings_ms["prefill"] + result.timings_ms["decode"]


def test_stream_deltas_concatenate_to_the_answer(testbed_pipeline):
    pipeline = testbed_pipeline()
    request = AnswerRequest(noise(180, 140, seed=2), QUESTION, "uniform", 0.5, GenerationParams(max_new_tokens=14))
    stream = pipeline.stream(request)
    deltas = list(stream)
    assert len(deltas) >= 2 and all(deltas)
    expected = pipeline.answer(request)
    assert "".join(deltas) == stream.result.answer == expected.answer
    assert stream.result.token_ids == expected.token_ids
    assert torch.equal(stream.result.kept, expected.kept)
    assert stream.result.timings_ms["prefill"] > 0.0
    with pytest.raises(RuntimeError):
        list(stream)


def test_stop_string_ends_the_answer_before_it(testbed_pipeline):
    pipeline = testbed_pipeline()
    image = gradient(200, 160)
    free = pipeline.answer(AnswerRequest(image, QUESTION, "none", 1.0, GenerationParams(max_new_tokens=16)))
    assert len(free.answer) >= 6
    stop = free.answer[3:5]
    cut = free.answer.index(stop)
    params = GenerationParams(max_new_tokens=16, stop=(stop, "never-appears"))
    stopped = pipeline.answer(AnswerRequest(image, QUESTION, "none", 1.0, params))
    assert stopped.answer == free.answer[:cut]
    assert stopped.token_ids == free.token_ids[: len(stopped.token_ids)]
    assert len(stopped.token_ids) < len(free.token_ids)
    # the ids are those whose text lies wholly within the answer
    assert stopped.answer.startswith(pipeline.vlm.tokenizer.decode(stopped.token_ids))
    streamed = pipeline.stream(AnswerRequest(image, QUESTION, "none", 1.0, params))
    assert "".join(streamed) == stopped.answer


def test_sampling_is_seeded(testbed_pipeline):
    pipeline = testbed_pipeline()
    image = scene(220, 160, seed=3)

    def sample(seed: int, temperature: float = 1.5, top_p: float = 1.0) -> list[int]:
        params = GenerationParams(max_new_tokens=12, temperature=temperature, top_p=top_p, seed=seed)
        return pipeline.answer(AnswerRequest(image, QUESTION, "arr-coc", 0.5, params)).token_ids

    assert sample(1) == sample(1)
    assert len({tuple(sample(s)) for s in range(4)}) > 1
    greedy = pipeline.answer(AnswerRequest(image, QUESTION, "arr-coc", 0.5, GenerationParams(max_new_tokens=12)))
    # nucleus of a tiny mass keeps only the top token: sampling collapses to greedy
    assert sample(5, temperature=1.0, top_p=1e-6) == greedy.token_ids


def test_max_new_tokens_bounds_the_answer(testbed_pipeline):
    pipeline = testbed_pipeline()
    result = pipeline.answer(AnswerRequest(scene(200, 150), QUESTION, "none", 1.0, GenerationParams(max_new_tokens=1)))
    assert len(result.token_ids) <= 1


# --- bad input ------------------------------------------------------------------------------


def test_tiny_image_is_upscaled_to_the_minimum_grid(testbed_pipeline):
    pipeline = testbed_pipeline()
    for size in [(1, 1), (5, 3), (13, 13)]:
        result = pipeline.answer(
            AnswerRequest(
                Image.new("RGB", size, (200, 30, 30)), QUESTION, "arr-coc", 0.5, GenerationParams(max_new_tokens=2)
            )
        )
        assert result.total_tokens >= 4 and result.kept_tokens >= 1


def test_huge_image_is_bounded_by_max_pixels(testbed_pipeline, monkeypatch):
    pipeline = testbed_pipeline()
    image_processor = pipeline.vlm.processor.image_processor
    max_pixels = image_processor.size["longest_edge"]
    seen = []
    original = type(pipeline.vlm.processor).__call__

    def spy(self, *args, images=None, **kwargs):
        seen.extend(image.width * image.height for image in images)
        return original(self, *args, images=images, **kwargs)

    monkeypatch.setattr(type(pipeline.vlm.processor), "__call__", spy)
    huge = Image.new("RGB", (10000, 10000), (10, 120, 200))
    result = pipeline.answer(AnswerRequest(huge, QUESTION, "arr-coc", 0.1, GenerationParams(max_new_tokens=2)))
    assert seen and max(seen) <= max_pixels
    token_pixels = (image_processor.patch_size * image_processor.merge_size) ** 2
    assert result.total_tokens <= max_pixels // token_pixels


def test_extreme_aspect_ratio_is_refused(testbed_pipeline):
    with pytest.raises(InvalidImageError) as error:
        testbed_pipeline().answer(AnswerRequest(Image.new("RGB", (2000, 5)), QUESTION))
    assert error.value.field == "image" and "aspect ratio" in error.value.detail


@pytest.mark.parametrize("question", ["", "   \n\t"])
def test_empty_question_is_refused(testbed_pipeline, question):
    with pytest.raises(InvalidQuestionError) as error:
        testbed_pipeline().answer(AnswerRequest(scene(100, 100), question))
    assert error.value.field == "question"


def test_question_longer_than_the_context_is_refused(testbed_pipeline):
    pipeline = testbed_pipeline()
    context = pipeline.vlm.context_length
    with pytest.raises(InvalidQuestionError, match="context"):
        pipeline.answer(AnswerRequest(scene(100, 100), "why " * context))
    with pytest.raises(InvalidQuestionError, match="characters"):
        pipeline.answer(AnswerRequest(scene(100, 100), "x" * (context * 64)))


@pytest.mark.parametrize("budget", [0, -3, 0.0, 1.5, float("nan"), "half", True])
def test_budget_out_of_range_is_refused(testbed_pipeline, budget):
    with pytest.raises(InvalidBudgetError):
        testbed_pipeline().answer(AnswerRequest(scene(100, 100), QUESTION, "arr-coc", budget))


def test_unknown_method_is_refused(testbed_pipeline):
    with pytest.raises(UnknownMethodError) as error:
        testbed_pipeline().answer(AnswerRequest(scene(100, 100), QUESTION, "fastv", 0.5))
    assert error.value.field == "method"


@pytest.mark.parametrize(
    ("field", "params"),
    [
        ("max_new_tokens", GenerationParams(max_new_tokens=0)),
        ("max_new_tokens", GenerationParams(max_new_tokens=10**6)),
        ("temperature", GenerationParams(temperature=-0.1)),
        ("temperature", GenerationParams(temperature=float("inf"))),
        ("top_p", GenerationParams(top_p=0.0)),
        ("top_p", GenerationParams(top_p=1.01)),
        ("stop", GenerationParams(stop=("",))),
        ("seed", GenerationParams(seed=-1)),
    ],
)
def test_generation_settings_out_of_range_are_refused(testbed_pipeline, field, params):
    with pytest.raises(InvalidGenerationConfigError) as error:
        testbed_pipeline().answer(AnswerRequest(scene(100, 100), QUESTION, generation=params))
    assert error.value.field == field


def test_one_bad_request_fails_its_batch_before_any_model_work(testbed_pipeline, monkeypatch):
    pipeline = testbed_pipeline()
    calls = []
    monkeypatch.setattr(pipeline.vlm.model, "get_image_features", lambda *a, **k: calls.append(1))
    requests = mixed_requests() + [AnswerRequest(scene(100, 100), QUESTION, "nope")]
    with pytest.raises(ArrCocInputError):
        pipeline.answer_batch(requests)
    assert calls == []


def test_supplied_relevance_replaces_the_scorer(testbed_pipeline, monkeypatch):
    pipeline = testbed_pipeline()
    image = scene(224, 168)
    grid = pipeline.token_grid(image).grid
    relevance = torch.zeros(grid)
    relevance[-1, -3:] = 1.0  # the three last tokens are the relevant ones
    monkeypatch.setattr(pipeline.scorer, "forward", lambda *a, **k: pytest.fail("the scorer must not run"))
    result = pipeline.answer(
        AnswerRequest(image, QUESTION, "arr-coc", 3, GenerationParams(max_new_tokens=2), relevance)
    )
    n = grid[0] * grid[1]
    assert result.kept.tolist() == [n - 3, n - 2, n - 1]
    assert torch.equal(result.relevance, relevance)
    from arr_coc.errors import InvalidGridError

    for bad in (torch.zeros(grid[0] + 1, grid[1]), torch.full(grid, float("nan"))):
        with pytest.raises(InvalidGridError) as error:
            pipeline.answer(AnswerRequest(image, QUESTION, "arr-coc", 3, relevance=bad))
        assert error.value.field == "relevance"
