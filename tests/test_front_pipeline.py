"""The front's request path with stand-in runners: retries, stream recovery, idle timeouts, validation first."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import aiohttp
import pytest
from bentoml.exceptions import ServiceUnavailable

from arr_coc.errors import InvalidImageError
from front.pipeline import RETRIES, Job, Pipeline, StreamReplayError, call_runner
from front.schemas import AnswerRequestBody
from serving.settings import ServerSettings
from serving.wire import Pixels, ScoreOutput
from testkit.drawing import scene
from testkit.serving import b64_png

DONE = {"answer": "red", "kept": [0, 1], "total_tokens": 4, "grid": [2, 2], "finish_reason": "eos"}


def run(coroutine):
    return asyncio.run(coroutine)


class Flaky:
    """A runner method that fails with ``errors`` in turn, then answers ``result``."""

    def __init__(self, *errors: BaseException, result=("ok",)) -> None:
        self.errors, self.result, self.calls = list(errors), result, 0

    async def __call__(self, items):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return list(self.result)


def runner_of(method) -> SimpleNamespace:
    """A stand-in runner whose ``score`` is ``method``."""
    return SimpleNamespace(to_async=SimpleNamespace(score=method))


def test_unary_calls_retry_connection_failures_only():
    broken = Flaky(aiohttp.ServerDisconnectedError(), aiohttp.ClientConnectionError("Connector is closed."))
    assert run(call_runner(runner_of(broken), "score", [1])) == ["ok"] and broken.calls == 3
    restarting = Flaky(ServiceUnavailable("runner starting"))  # a runner coming back answers 503 until ready
    assert run(call_runner(runner_of(restarting), "score", [1])) == ["ok"] and restarting.calls == 2
    hopeless = Flaky(*[aiohttp.ClientOSError()] * (RETRIES + 1))
    with pytest.raises(aiohttp.ClientOSError):
        run(call_runner(runner_of(hopeless), "score", [1]))
    assert hopeless.calls == RETRIES + 1
    wrong = Flaky(ValueError("a bug, not a connection"))
    with pytest.raises(ValueError):
        run(call_runner(runner_of(wrong), "score", [1]))
    assert wrong.calls == 1


def streaming_runner(*scripts):
    """A VLM runner whose n-th ``stream`` call plays ``scripts[n]``: strings are sent, exceptions raised, floats slept."""
    calls = []

    async def stream(item):
        script = scripts[len(calls)]
        calls.append(item)
        for step in script:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            yield step

    return SimpleNamespace(to_async=SimpleNamespace(stream=stream)), calls


def delta(text: str) -> str:
    return json.dumps({"delta": text}) + "\n"


def pipeline_with(vlm_runner, idle_timeout_s: float = 5.0) -> tuple[Pipeline, Job]:
    pipeline = Pipeline(None, vlm_runner, tracking=None, settings=ServerSettings(stream_idle_timeout_s=idle_timeout_s))
    job = Job(pipeline.pick_variant(AnswerRequestBody(image="x", question="q")))
    job.image, job.question = scene(64, 64), "q"
    job.pixels = Pixels.of(job.image)
    job.scored = ScoreOutput(grid=(2, 2), relevance=[0.1, 0.2, 0.3, 0.4])
    return pipeline, job


async def collect(pipeline: Pipeline, job: Job) -> list[dict]:
    return [event async for event in pipeline.events(job, AnswerRequestBody(image="x", question="q"))]


def test_a_stream_that_broke_before_its_first_event_is_reopened_once_whole():
    done = json.dumps({"done": DONE}) + "\n"
    runner, calls = streaming_runner([aiohttp.ServerDisconnectedError()], [delta("re"), delta("d"), done])
    pipeline, job = pipeline_with(runner)
    events = run(collect(pipeline, job))
    assert [e.get("delta") for e in events[:2]] == ["re", "d"] and events[2]["done"].answer == "red"
    assert len(calls) == 2


def test_a_stream_that_broke_after_sending_text_is_replayed_without_repeating_it():
    done = json.dumps({"done": DONE}) + "\n"
    runner, calls = streaming_runner(
        [delta("r"), delta("e"), RuntimeError("Connection closed.")], [delta("re"), delta("d"), done]
    )
    pipeline, job = pipeline_with(runner)
    events = run(collect(pipeline, job))
    assert [e["delta"] for e in events if "delta" in e] == ["r", "e", "d"] and events[-1]["done"].answer == "red"
    assert len(calls) == 2


def test_a_replay_that_differs_from_the_sent_text_is_an_error():
    runner, _ = streaming_runner([delta("re"), aiohttp.ClientPayloadError("cut")], [delta("bl"), delta("ue")])
    pipeline, job = pipeline_with(runner)
    seen = []

    async def consume():
        async for event in pipeline.events(job, AnswerRequestBody(image="x", question="q")):
            seen.append(event)

    with pytest.raises(StreamReplayError):
        run(consume())
    assert seen == [{"delta": "re"}]


def test_a_silent_stream_is_replayed_then_times_out_instead_of_stalling():
    done = json.dumps({"done": DONE}) + "\n"
    runner, calls = streaming_runner([delta("re"), 30.0], [delta("re"), delta("d"), done])
    pipeline, job = pipeline_with(runner, idle_timeout_s=0.05)
    events = run(collect(pipeline, job))
    assert "".join(e.get("delta", "") for e in events) == "red" and len(calls) == 2
    silent, calls = streaming_runner(*[[delta("re"), 30.0]] * (RETRIES + 1))
    pipeline, job = pipeline_with(silent, idle_timeout_s=0.05)
    with pytest.raises(TimeoutError):
        run(collect(pipeline, job))
    assert len(calls) == RETRIES + 1


def test_bad_input_is_refused_before_any_runner_is_called():
    score = Flaky()
    relevance_runner = SimpleNamespace(to_async=SimpleNamespace(score=score))
    pipeline = Pipeline(relevance_runner, None, tracking=None, settings=ServerSettings())
    body = AnswerRequestBody(image=b64_png(scene(64, 64))[:-40], question="What colour is the circle?")
    with pytest.raises(InvalidImageError):
        run(pipeline.start(Job("arr-coc-25"), body))
    assert score.calls == 0


def test_the_front_keeps_its_sessions_to_the_runners():
    """BentoML's session swap (every 100 calls) stalled calls in flight; both runners turn it off."""
    from runners.relevance import RelevanceRunner
    from runners.vlm import VLMRunner

    for runner in (RelevanceRunner, VLMRunner):
        connection = runner.config["runner_connection"]
        assert connection["max_requests"] >= 2**40 and connection["max_age"] >= 3600 * 24 * 365
