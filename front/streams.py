"""Answers as server-sent events, in ARR-COC's own shape and in OpenAI's.

``/answer_stream``: ``data: {"delta": ...}`` per text delta, then ``event: done`` with
the body ``/answer`` returns, or ``event: error`` with the error body. ``/v1/chat/completions``
with ``stream``: ``chat.completion.chunk`` objects, then ``data: [DONE]``. Once a stream
has begun its status is 200, so a failure travels as one last event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from front import openai_chat
from front.errors import body_for, log
from front.pipeline import Job, Pipeline
from front.schemas import GenerationFields


def sse(data: dict | str, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def error_event(pipeline: Pipeline, job: Job, error: Exception, path: str) -> dict:
    """The error body of a stream that failed after it began, counted like any failed request."""
    pipeline.failed(job, error)
    status, kind, detail, field = log(path, error)
    return body_for(path, status, kind, detail, field)


async def answer_events(pipeline: Pipeline, job: Job, generation: GenerationFields) -> AsyncIterator[str]:
    """The events of ``/answer_stream``."""
    try:
        async for event in pipeline.events(job, generation):
            if "delta" in event:
                yield sse({"delta": event["delta"]})
            else:
                yield sse(pipeline.answered(job, event["done"]).model_dump(), event="done")
    except Exception as error:  # the runner failed mid-stream
        yield sse(error_event(pipeline, job, error, "/answer_stream"), event="error")


async def chat_chunks(pipeline: Pipeline, job: Job, generation: GenerationFields) -> AsyncIterator[str]:
    """The events of a streamed chat completion: a role chunk, content chunks, a finish chunk, ``[DONE]``."""
    completion_id, model = f"chatcmpl-{job.request_id}", job.variant.name
    yield sse(openai_chat.chunk(completion_id, model, {"role": "assistant", "content": ""}))
    try:
        async for event in pipeline.events(job, generation):
            if "delta" in event:
                yield sse(openai_chat.chunk(completion_id, model, {"content": event["delta"]}))
            else:
                output = event["done"]
                answered = pipeline.answered(job, output)
                reason = openai_chat.FINISH_REASONS.get(output.finish_reason, "stop")
                yield sse(openai_chat.chunk(completion_id, model, {}, reason, output, answered.scorer, answered.cost))
    except Exception as error:
        yield sse(error_event(pipeline, job, error, "/v1/chat/completions"))
    yield sse("[DONE]")
