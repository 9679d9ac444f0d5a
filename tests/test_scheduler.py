"""The step scheduler: every request gets the ids it gets alone, however it joins, leaves or shares the batch."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from arr_coc.errors import ArrCocInputError, InvalidBudgetError
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.scheduler import SchedulerStoppedError, StepScheduler
from arr_coc.vlm.slot_cache import CacheFullError, row_buckets
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from testkit.drawing import scene, shapes, text

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]


def mixed() -> list[AnswerRequest]:
    """Different image sizes, questions, methods, budgets, stages and lengths; one stop string; one sampled row."""
    return [
        AnswerRequest(
            scene(300, 200), "What colour is the circle?", "arr-coc", 0.25, GenerationParams(max_new_tokens=9)
        ),
        AnswerRequest(shapes(120, 260, seed=1), "How many?", "uniform", 0.5, GenerationParams(max_new_tokens=3)),
        AnswerRequest(scene(200, 300), "Is it?", "arr-coc", 0.1, GenerationParams(max_new_tokens=14), stage="pre"),
        AnswerRequest(
            shapes(220, 160, seed=2),
            "Where is the square?",
            "random",
            0.6,
            GenerationParams(max_new_tokens=7, temperature=0.8, top_p=0.9, seed=5),
        ),
        AnswerRequest(text(200, 100), "Read the text.", "cdpruner", 5, GenerationParams(max_new_tokens=11)),
    ]


def run_to_end(scheduler: StepScheduler, rounds: int = 500) -> int:
    for count in range(rounds):
        if not scheduler.iterate():
            return count + 1
    raise AssertionError("the scheduler did not finish")


@pytest.fixture(scope="module")
def alone(testbed_pipeline):
    """``alone(family)``: each mixed request answered on its own."""
    answers = {}

    def get(family: str = "qwen2.5-vl"):
        if family not in answers:
            answers[family] = [testbed_pipeline(family).answer(r) for r in mixed()]
        return answers[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_one_batch_gives_each_request_its_ids_alone(testbed_pipeline, alone, family):
    scheduler = StepScheduler(testbed_pipeline(family), rows=8, cache_tokens=512)
    tickets = [scheduler.submit(r) for r in mixed()]
    run_to_end(scheduler)
    for expected, ticket in zip(alone(family), tickets):
        got = ticket.wait(0)
        assert got.token_ids == expected.token_ids and got.answer == expected.answer
        assert torch.equal(got.kept, expected.kept) and got.finish_reason == expected.finish_reason
    assert len({tuple(t.wait(0).token_ids) for t in tickets}) == len(tickets)
    assert max(t.rows_seen / t.steps for t in tickets) > 3, "the requests decoded together"


@pytest.mark.parametrize("family", FAMILIES)
def test_requests_that_join_midway_and_wait_for_rows(testbed_pipeline, alone, family):
    """Two rows for ten requests, one arriving per round: rows free, refill and are packed."""
    scheduler = StepScheduler(testbed_pipeline(family), rows=2, cache_tokens=256)
    moves = []
    move = scheduler.cache.move
    scheduler.cache.move = lambda source, target: (moves.append(source != target), move(source, target))
    requests, expected = mixed() * 2, alone(family) * 2
    tickets = []
    for request in requests:
        tickets.append(scheduler.submit(request))
        scheduler.iterate()
        assert scheduler.running <= 2
    run_to_end(scheduler)
    assert [t.wait(0).token_ids for t in tickets] == [e.token_ids for e in expected]
    assert any(moves), "a row left before the last running one and was refilled by it"
    assert max(t.queued_behind for t in tickets) >= 1


def test_a_short_request_leaves_before_its_long_batch_mates(testbed_pipeline):
    pipeline = testbed_pipeline()
    scheduler = StepScheduler(pipeline, rows=16, cache_tokens=512)
    long = [
        scheduler.submit(AnswerRequest(scene(300, 200), f"Question {i}?", "arr-coc", 0.25, GenerationParams(40)))
        for i in range(4)
    ]
    scheduler.iterate()
    short = scheduler.submit(AnswerRequest(shapes(160, 160), "Which?", "arr-coc", 0.25, GenerationParams(2)))
    rounds = 0
    while not short.done:
        scheduler.iterate()
        rounds += 1
    assert rounds <= 2 and not any(t.done for t in long)
    assert short.wait(0).token_ids == pipeline.answer(short.request).token_ids
    run_to_end(scheduler)
    assert all(len(t.wait(0).token_ids) == 40 for t in long)


def test_first_come_first_served_into_free_rows(testbed_pipeline):
    """One row, five requests of one length: they finish in the order they came, none overtakes."""
    scheduler = StepScheduler(testbed_pipeline(), rows=1, cache_tokens=512)
    finished: list[int] = []
    for index in range(5):
        request = AnswerRequest(shapes(160, 160, seed=index), "Which?", "arr-coc", 0.25, GenerationParams(3))
        scheduler.submit(request, on_done=lambda index=index: finished.append(index))
    rounds = run_to_end(scheduler)
    assert finished == [0, 1, 2, 3, 4] and rounds >= 5 * 2


def test_stream_deltas_and_a_reader_that_leaves(testbed_pipeline, alone):
    """Deltas add up to the answer; a cancelled row frees its row at once and its mates go on unchanged."""
    scheduler = StepScheduler(testbed_pipeline(), rows=4, cache_tokens=512)
    requests = mixed()
    deltas: dict[int, list] = {0: [], 2: []}
    tickets = [
        scheduler.submit(r, listener=deltas[i].append if i in deltas else None) for i, r in enumerate(requests[:3])
    ]
    for _ in range(3):
        scheduler.iterate()
    running = scheduler.running
    tickets[2].cancel()
    scheduler.iterate()
    assert scheduler.running == running - 1 and tickets[2].done
    left = tickets[2].wait(0)
    assert 0 < len(left.token_ids) < requests[2].generation.max_new_tokens
    assert left.token_ids == alone()[2].token_ids[: len(left.token_ids)]
    run_to_end(scheduler)
    assert deltas[0][-1] is None and "".join(deltas[0][:-1]) == tickets[0].wait(0).answer
    assert len(deltas[0]) > 2, "the text came in several deltas"
    assert [t.wait(0).token_ids for t in tickets[:2]] == [a.token_ids for a in alone()[:2]]


def test_stop_strings_end_a_row(testbed_pipeline):
    pipeline = testbed_pipeline()
    plain = pipeline.answer(AnswerRequest(scene(300, 200), "What?", "arr-coc", 0.25, GenerationParams(12)))
    stop = plain.answer[len(plain.answer) // 2 : len(plain.answer) // 2 + 2]
    request = AnswerRequest(scene(300, 200), "What?", "arr-coc", 0.25, GenerationParams(12, stop=(stop,)))
    scheduler = StepScheduler(pipeline, rows=4, cache_tokens=512)
    others = [scheduler.submit(r) for r in mixed()[:2]]
    ticket = scheduler.submit(request)
    run_to_end(scheduler)
    expected = pipeline.answer(request)
    got = ticket.wait(0)
    assert got.finish_reason == "stop" and got.answer == expected.answer and got.token_ids == expected.token_ids
    assert all(o.done for o in others)


def test_bad_input_fails_alone(testbed_pipeline, alone):
    scheduler = StepScheduler(testbed_pipeline(), rows=4, cache_tokens=512)
    good = mixed()[0]
    bad = AnswerRequest(scene(300, 200), "What?", "arr-coc", 1.5)
    tickets = [scheduler.submit(good), scheduler.submit(bad), scheduler.submit(good)]
    run_to_end(scheduler)
    with pytest.raises(InvalidBudgetError):
        tickets[1].wait(0)
    assert isinstance(tickets[1].error, ArrCocInputError)
    assert tickets[0].wait(0).token_ids == tickets[2].wait(0).token_ids == alone()[0].token_ids


def test_a_request_too_long_for_a_row_decodes_beside_the_batch(testbed_pipeline, alone):
    """Its prompt plus answer exceeds the row's slots: it runs on its own cache, the others in rows."""
    requests = mixed()
    needs = sorted(a.prompt_tokens + r.generation.max_new_tokens for a, r in zip(alone(), requests))
    scheduler = StepScheduler(testbed_pipeline(), rows=4, cache_tokens=needs[2])  # two requests do not fit
    tickets = [scheduler.submit(r) for r in requests]
    scheduler.iterate()
    assert len(scheduler._solo) == 2 and scheduler._running
    run_to_end(scheduler)
    assert [t.wait(0).token_ids for t in tickets] == [a.token_ids for a in alone()]


def test_each_request_is_charged_its_share_of_the_model_time(testbed_pipeline):
    """Shares of batched preparation, prefill and steps: together they never exceed the time the model ran,
    and a request that shared its batches is charged less than their whole time."""
    pipeline = testbed_pipeline()
    requests = mixed()
    scheduler = StepScheduler(pipeline, rows=4, cache_tokens=180)
    tickets = [scheduler.submit(r) for r in requests]
    started = time.perf_counter()
    run_to_end(scheduler)
    wall_ms = (time.perf_counter() - started) * 1000.0
    busy = [t.busy_ms for t in tickets]
    assert all(ms > 0 for ms in busy) and sum(busy) <= wall_ms
    shared = [t for t in tickets if t.steps and t.rows_seen > t.steps]
    for ticket in shared:  # every stage's time is its whole batch's; the ticket pays a share of each
        whole = sum(
            ms for stage, ms in ticket.wait(0).timings_ms.items() if stage not in ("queue", "total", "decode_share")
        )
        assert ticket.busy_ms < whole
    assert shared


def test_a_failing_step_fails_its_rows_and_the_scheduler_goes_on(testbed_pipeline, alone):
    scheduler = StepScheduler(testbed_pipeline(), rows=4, cache_tokens=512)
    first = [scheduler.submit(r) for r in mixed()[:2]]
    scheduler.iterate()
    step = scheduler.cache.step

    def broken(tokens):
        scheduler.cache.step = step
        raise RuntimeError("replay failed")

    scheduler.cache.step = broken
    scheduler.iterate()
    assert all(t.done and isinstance(t.error, RuntimeError) for t in first)
    again = scheduler.submit(mixed()[0])
    run_to_end(scheduler)
    assert again.wait(0).token_ids == alone()[0].token_ids


def test_background_thread_serves_concurrent_callers(testbed_pipeline, alone):
    pipeline = testbed_pipeline()
    scheduler = StepScheduler(pipeline, rows=4, cache_tokens=512).start()
    results: dict[int, list[int]] = {}

    def ask(index: int) -> None:
        results[index] = scheduler.submit(mixed()[index % 5]).wait(60).token_ids

    try:
        callers = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for caller in callers:
            caller.start()
        assert scheduler.call(lambda: "between steps") == "between steps"
        for caller in callers:
            caller.join(60)
    finally:
        scheduler.stop(10)
    assert results == {i: alone()[i % 5].token_ids for i in range(8)}
    with pytest.raises(SchedulerStoppedError):
        scheduler.submit(mixed()[0])


def test_stop_ends_what_is_queued(testbed_pipeline):
    scheduler = StepScheduler(testbed_pipeline(), rows=1, cache_tokens=512)
    tickets = [scheduler.submit(r) for r in mixed()[:3]]
    scheduler.iterate()
    scheduler.stop()
    assert all(t.done for t in tickets)
    with pytest.raises(SchedulerStoppedError):
        tickets[2].wait(0)


def test_bad_settings_and_a_full_cache(testbed_pipeline):
    pipeline: VLMPipeline = testbed_pipeline()
    with pytest.raises(ValueError):
        StepScheduler(pipeline, rows=0)
    with pytest.raises(ValueError):
        StepScheduler(pipeline, cache_tokens=1)
    scheduler = StepScheduler(pipeline, rows=2, cache_tokens=8)
    scheduler.cache.lengths[0] = 8
    with pytest.raises(CacheFullError):
        scheduler.cache.step([1])
    with pytest.raises(CacheFullError):
        scheduler.cache.load(0, None, 0, 8, torch.tensor(8))
    assert row_buckets(12) == (1, 2, 4, 8, 12) and row_buckets(16) == (1, 2, 4, 8, 16)
