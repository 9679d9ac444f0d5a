"""The real front app in this process, its runners stood in for: a fault in the front is a logged 500
``internal``; a runner that fails or is out of reach stays a 503 ``runner_unavailable``."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import aiohttp
import httpx
import pytest
from bentoml import get_current_service
from bentoml.exceptions import InternalServerError, ServiceUnavailable

import front.pipeline
import service
from front.errors import INTERNAL_DETAIL
from front.pipeline import Pipeline
from serving.settings import ServerSettings
from serving.wire import AnswerOutput, ScoreOutput
from testkit.drawing import scene
from testkit.serving import b64_png

IMAGE = b64_png(scene(64, 64))
ANSWER_BODY = {"image": IMAGE, "question": "What colour is the star?", "max_new_tokens": 2}
CHAT_BODY = {
    "model": "arr-coc-25",
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
                {"type": "text", "text": "What colour is the star?"},
            ],
        }
    ],
    "max_tokens": 2,
}
SCORED = ScoreOutput(grid=(2, 2), relevance=[0.1, 0.2, 0.3, 0.4])
ANSWERED = AnswerOutput(answer="red", kept=[0, 3], total_tokens=4, grid=(2, 2), finish_reason="eos")


def runner(method: str, result) -> SimpleNamespace:
    """A stand-in runner whose ``to_async.<method>(items)`` answers ``result`` per item, or raises it."""

    async def call(items):
        if isinstance(result, BaseException):
            raise result
        return [result for _ in items]

    return SimpleNamespace(to_async=SimpleNamespace(**{method: call}))


def post(path: str, body: dict, vlm_answer=ANSWERED) -> tuple[httpx.Response, list[dict]]:
    """``body`` posted to ``path`` of the service's app; the response and what was recorded in tracking."""
    recorded = []
    front_service = object.__new__(service.ARRCOC.inner)  # no __init__: no runners, no W&B
    tracking = SimpleNamespace(record=lambda variant, latency_ms, **fields: recorded.append(fields))
    front_service.pipeline = Pipeline(runner("score", SCORED), runner("answer", vlm_answer), tracking, ServerSettings())

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=service.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
            return await client.post(path, json=body)

    service.app.dependency_overrides[get_current_service] = lambda: front_service
    try:
        return asyncio.run(call()), recorded
    finally:
        service.app.dependency_overrides.pop(get_current_service)


def test_the_stand_in_runners_answer():
    response, _ = post("/answer", ANSWER_BODY)
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == "red" and response.json()["kept_tokens"] == 2


def test_a_fault_in_the_front_is_a_logged_500_not_a_runner_failure(monkeypatch, caplog):
    def broken(scored, output):
        raise ValueError("a bug in the front")

    monkeypatch.setattr(front.pipeline, "stage_timings", broken)
    with caplog.at_level(logging.ERROR, logger="arr_coc.service"):
        response, recorded = post("/answer", ANSWER_BODY)
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "field": None, "detail": INTERNAL_DETAIL}
    [logged] = [record for record in caplog.records if record.exc_info]
    assert logged.exc_info[0] is ValueError and "Traceback" in caplog.text and "a bug in the front" in caplog.text
    assert recorded == [{"error_kind": "internal"}]  # counted as a failure of its own kind
    chat, _ = post("/v1/chat/completions", CHAT_BODY)
    assert chat.status_code == 500
    assert chat.json()["error"] == {
        "message": INTERNAL_DETAIL,
        "type": "server_error",
        "param": None,
        "code": "internal",
    }


@pytest.mark.parametrize(
    "failure",
    [
        InternalServerError("the runner raised"),  # what BentoML's client raises when a runner answers 500
        ServiceUnavailable("the runner is starting"),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
    ],
    ids=lambda failure: type(failure).__name__,
)
def test_a_runner_failure_is_still_a_503(failure):
    response, recorded = post("/answer", ANSWER_BODY, vlm_answer=failure)
    assert response.status_code == 503
    assert response.json() == {
        "error": "runner_unavailable",
        "field": None,
        "detail": f"a model runner failed: {type(failure).__name__}",
    }
    assert recorded == [{"error_kind": "runner_unavailable"}]
