"""ARR-COC front service: HTTP API over the relevance and VLM runners.

    bentoml serve          # embedded testbed model on CPU, http://localhost:3000

``POST /answer`` answers a question about an image from its relevant visual tokens,
``POST /answer_stream`` streams the answer as server-sent events, ``POST /relevance``
returns the relevance map, the kept tokens and a heatmap. Every input is validated
here before a runner sees it (one exception would fail a runner's whole batch);
every error is a JSON ``ErrorBody``. ``/readyz`` turns ready once both runners have
loaded their models; ``/metrics`` adds the ``arr_coc_*`` metrics.
"""

from __future__ import annotations

import os

# Three model processes share the cores: idle OpenMP threads must sleep, not spin
# (spinning made concurrent requests 4x slower here). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import asyncio
import base64
import io
import json
import time
import uuid

from importlib.metadata import version

import aiohttp
import bentoml
import torch
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.responses import JSONResponse, StreamingResponse

from arr_coc.attending import FEATURE_METHODS, allocate
from arr_coc.errors import ArrCocInputError
from arr_coc.heatmap import overlay
from arr_coc.query import check_question
from arr_coc.settings import get_settings
from arr_coc.variants import Variant, ad_hoc, get_variant
from front import auth, openai_chat
from runners import http_errors, metrics
from runners.multipart import MultipartToJson
from runners.payload import decode_image_field
from runners.relevance import RelevanceRunner
from runners.schemas import (AnswerItem, AnswerOutput, AnswerRequestBody, AnswerResponse, GenerationFields, RunnerError,
                             RelevanceRequestBody, RelevanceResponse, ScoreItem, ScoreOutput)  # fmt: skip
from runners.vlm import VLMRunner
from training_hooks.service_tracking import Tracking, tracking_name

settings = get_settings()
API_ROUTES = ("/answer", "/answer_stream", "/relevance")


def pick_variant(body) -> Variant:
    """The request's variant: its method + budget (+ stage), else its named variant, else the default."""
    if body.method is not None or body.budget is not None or body.stage is not None:
        base = get_variant(body.variant or settings.default_variant)
        return ad_hoc(body.method or base.method, body.budget if body.budget is not None else base.budget,
                      body.stage or base.stage)  # fmt: skip
    return get_variant(body.variant or settings.default_variant)


class RunnerInputError(ArrCocInputError):
    """An input error a runner found; carries the runner's kind."""

    def __init__(self, error) -> None:
        super().__init__(error.detail, field=error.field)
        self._kind = error.kind

    @property
    def kind(self) -> str:
        return self._kind


async def call_runner(method, items: list):
    """``await runner.to_async.method(items)``, retried once when the connection breaks.

    Runner servers close idle keep-alive connections after 5 s while the client may
    still pick one from its pool (disconnected, or reset by peer). Runner calls are
    pure functions of their items, so one retry is safe.
    """
    try:
        return await method(items)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return await method(items)


def stage_timings(scored: ScoreOutput, output: AnswerOutput) -> dict[str, float]:
    """Milliseconds by stage: ``relevance`` (relevance runner) then the VLM runner's
    ``preprocess``, ``vision``, ``selection`` (allocation on the given relevance),
    ``prefill``, ``decode``, ``total``."""
    vlm = {("selection" if stage == "scoring" else stage): ms for stage, ms in output.timings_ms.items()}
    return {**scored.timings_ms, **vlm}


def heatmap_png(image, relevance: torch.Tensor, kept: list[int]) -> str:
    """Base64 PNG of the relevance overlay (dropped tokens dimmed)."""
    buffer = io.BytesIO()
    overlay(image, relevance, torch.tensor(kept, dtype=torch.long)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def checked(output: ScoreOutput | AnswerOutput):
    if output.error is not None:
        raise RunnerInputError(output.error)
    return output


openai_app = FastAPI(title="ARR-COC, OpenAI-compatible", version=version("arr-coc"))


@openai_app.exception_handler(RequestValidationError)
async def openai_validation_error(request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0]
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    return JSONResponse({"error": {"message": first["msg"], "type": "invalid_request_error", "param": param,
                                   "code": "validation_error"}}, status_code=422)  # fmt: skip


@bentoml.asgi_app(openai_app, path="/v1")
@bentoml.service(
    name="arr-coc",
    traffic={"timeout": settings.runner_timeout_s + 30, "concurrency": 64},
)
class ARRCOC:
    relevance_runner = bentoml.depends(RelevanceRunner)
    vlm_runner = bentoml.depends(VLMRunner)

    def __init__(self) -> None:
        self.tracking = Tracking(settings)
        # The default variant's run starts now, in this worker, not on the first request.
        self.tracking.tracker(get_variant(settings.default_variant)).start()

    @bentoml.on_shutdown
    def close_tracking(self) -> None:
        """Flush and finish the W&B runs while this worker can still reach W&B."""
        self.tracking.close()

    async def _prepare(self, body) -> tuple[Variant, bytes, object, str]:
        variant = pick_variant(body)
        question = check_question(body.question, settings.max_question_chars)
        data, image = await asyncio.to_thread(decode_image_field, body.image, settings)  # decoding is CPU work
        return variant, data, image, question

    async def _score(self, data: bytes, question: str) -> ScoreOutput:
        item = ScoreItem(image_b64=base64.b64encode(data).decode(), question=question)
        output = checked((await call_runner(self.relevance_runner.to_async.score, [item]))[0])
        metrics.RUNNER_BATCH_SIZE.labels(runner="relevance").observe(output.batch_size)
        return output

    def _answer_item(self, body: AnswerRequestBody, variant: Variant, data: bytes, question: str,
                     scored: ScoreOutput) -> AnswerItem:  # fmt: skip
        return AnswerItem(
            image_b64=base64.b64encode(data).decode(), question=question, method=variant.method,
            budget=variant.budget, stage=variant.stage, relevance=scored.relevance, grid=scored.grid,
            max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_p=body.top_p,
            stop=body.stop, seed=body.seed,
        )  # fmt: skip

    def _failed(self, error: Exception, variant: Variant | str, started: float) -> JSONResponse:
        response = http_errors.from_exception(error)
        kind = json.loads(response.body)["error"]
        metrics.ERRORS.labels(kind=kind).inc()
        self.tracking.record(variant, (time.perf_counter() - started) * 1000.0, error_kind=kind)
        return response

    @bentoml.api(route="/answer", input_spec=AnswerRequestBody)
    async def answer(self, **fields) -> AnswerResponse:
        started, body = time.perf_counter(), AnswerRequestBody.model_construct(**fields)
        variant: Variant | str = body.variant or settings.default_variant
        try:
            variant, data, image, question = await self._prepare(body)
            scored = await self._score(data, question)
            item = self._answer_item(body, variant, data, question, scored)
            output = checked((await call_runner(self.vlm_runner.to_async.answer, [item]))[0])
        except Exception as error:  # every failure becomes one ErrorBody; the server keeps serving
            return self._failed(error, variant, started)
        metrics.RUNNER_BATCH_SIZE.labels(runner="vlm").observe(output.batch_size)
        timings = stage_timings(scored, output)
        metrics.observe_stages(timings)
        kept_ratio = len(output.kept) / output.total_tokens
        metrics.KEPT_RATIO.labels(variant=tracking_name(variant)).observe(kept_ratio)
        cached = output.vision_cached if variant.stage == "post" else None
        if cached is not None:
            metrics.VISION_CACHE.labels(result="hit" if cached else "miss").inc()
        self.tracking.record(variant, (time.perf_counter() - started) * 1000.0, stages_ms=timings, vision_cached=cached,
                             kept_ratio=kept_ratio, batch_sizes={"relevance": scored.batch_size, "vlm": output.batch_size},
                             example=(image, scored, output, question))  # fmt: skip
        return AnswerResponse(
            answer=output.answer, variant=variant.name, kept_tokens=len(output.kept), total_tokens=output.total_tokens,
            kept_ratio=kept_ratio, timings_ms=timings, request_id=uuid.uuid4().hex,
        )  # fmt: skip

    @openai_app.get("/models")
    def openai_models(self) -> dict:
        return openai_chat.model_list()

    @openai_app.post("/chat/completions")
    async def openai_chat_completions(self, request: openai_chat.ChatRequest):
        """OpenAI's chat completion: one image, one question, the answer from the variant's kept tokens."""
        started, variant = time.perf_counter(), request.model or settings.default_variant
        try:
            body = openai_chat.answer_body(request, settings.default_max_new_tokens)
            variant, data, _, question = await self._prepare(body)
            scored = await self._score(data, question)
            item = self._answer_item(body, variant, data, question, scored)
            if request.stream:
                return StreamingResponse(self._chat_chunks(item, variant, scored, started),
                                         media_type="text/event-stream")  # fmt: skip
            output = checked((await call_runner(self.vlm_runner.to_async.answer, [item]))[0])
        except Exception as error:
            return self._openai_failed(error, variant, started)
        timings = stage_timings(scored, output)
        self.tracking.record(variant, (time.perf_counter() - started) * 1000.0, stages_ms=timings,
                             kept_ratio=len(output.kept) / output.total_tokens)  # fmt: skip
        return JSONResponse(openai_chat.completion(output, variant.name))

    async def _chat_chunks(self, item: AnswerItem, variant: Variant, scored: ScoreOutput, started: float):
        """``data: <chat.completion.chunk>`` per text delta, a last chunk with the finish reason, ``data: [DONE]``."""
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        yield f"data: {json.dumps(openai_chat.chunk(completion_id, variant.name, {'role': 'assistant', 'content': ''}))}\n\n"
        try:
            async for event in self._runner_events(item):
                if "delta" in event:
                    delta = openai_chat.chunk(completion_id, variant.name, {"content": event["delta"]})
                    yield f"data: {json.dumps(delta)}\n\n"
                elif "done" in event:
                    output = AnswerOutput.model_validate(event["done"])
                    reason = openai_chat.FINISH_REASONS.get(output.finish_reason, "stop")
                    yield f"data: {json.dumps(openai_chat.chunk(completion_id, variant.name, {}, reason, output))}\n\n"
                    self.tracking.record(variant, (time.perf_counter() - started) * 1000.0,
                                         stages_ms=stage_timings(scored, output),
                                         kept_ratio=len(output.kept) / output.total_tokens)  # fmt: skip
                else:
                    raise RunnerInputError(RunnerError.model_validate(event["error"]))
        except Exception as error:  # the stream has begun: the error travels as one more event
            failed = self._openai_failed(error, variant, started)
            yield f"data: {failed.body.decode()}\n\n"
        yield "data: [DONE]\n\n"

    async def _runner_events(self, item: AnswerItem):
        """The VLM runner's stream as events: ``{"delta": str}``, then ``{"done": ...}`` or ``{"error": ...}``."""
        buffer = ""
        async for piece in self.vlm_runner.to_async.stream(item):
            buffer += piece
            *lines, buffer = buffer.split("\n")
            for line in filter(None, lines):
                yield json.loads(line)

    def _openai_failed(self, error: Exception, variant: Variant | str, started: float) -> JSONResponse:
        """OpenAI's error body, with the status, metrics and tracking of ``/answer``'s errors."""
        if isinstance(error, ValidationError):
            status = 422
            metrics.ERRORS.labels(kind="validation_error").inc()
        else:
            status = self._failed(error, variant, started).status_code
        return JSONResponse(openai_chat.error_body(error, status), status_code=status)

    @bentoml.api(route="/answer_stream", input_spec=AnswerRequestBody)
    async def answer_stream(self, **fields) -> str:
        """Server-sent events: ``data: {"delta": ...}`` per text delta, then ``event: done``."""
        started, body = time.perf_counter(), AnswerRequestBody.model_construct(**fields)
        variant: Variant | str = body.variant or settings.default_variant
        try:
            variant, data, _, question = await self._prepare(body)
            scored = await self._score(data, question)
            item = self._answer_item(body, variant, data, question, scored)
        except Exception as error:
            return self._failed(error, variant, started)

        async def events():
            try:
                async for event in self._runner_events(item):
                    if "delta" in event:
                        yield f"data: {json.dumps({'delta': event['delta']})}\n\n"
                    elif "done" in event:
                        done = {**event["done"], "variant": variant.name}
                        done["timings_ms"] = stage_timings(scored, AnswerOutput.model_validate(event["done"]))
                        self.tracking.record(variant, (time.perf_counter() - started) * 1000.0,
                                             stages_ms=done["timings_ms"],
                                             kept_ratio=len(done["kept"]) / done["total_tokens"])  # fmt: skip
                        yield f"event: done\ndata: {json.dumps(done)}\n\n"
                    else:
                        yield f"event: error\ndata: {json.dumps(event['error'])}\n\n"
            except Exception as error:  # the runner failed mid-stream: end the stream with an error event
                body = json.loads(self._failed(error, variant, started).body)
                yield f"event: error\ndata: {json.dumps(body)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def _kept(self, variant: Variant, data: bytes, question: str, scored: ScoreOutput,
                    relevance: torch.Tensor, seed: int) -> list[int]:  # fmt: skip
        """Kept indices: feature-based methods need the VLM's features, the rest only ``relevance [H', W']``."""
        if variant.method in FEATURE_METHODS:
            body = AnswerRequestBody.model_construct(**GenerationFields().model_dump())
            item = self._answer_item(body, variant, data, question, scored)
            return checked((await call_runner(self.vlm_runner.to_async.select, [item]))[0]).kept
        return allocate(relevance[None], variant.budget, variant.method, seed)[0].tolist()

    @bentoml.api(route="/relevance", input_spec=RelevanceRequestBody)
    async def relevance(self, **fields) -> RelevanceResponse:
        started, body = time.perf_counter(), RelevanceRequestBody.model_construct(**fields)
        variant: Variant | str = body.variant or settings.default_variant
        try:
            variant, data, image, question = await self._prepare(body)
            scored = await self._score(data, question)
            relevance = torch.tensor(scored.relevance).reshape(scored.grid)
            kept = await self._kept(variant, data, question, scored, relevance, body.seed)
        except Exception as error:
            return self._failed(error, variant, started)
        heatmap = await asyncio.to_thread(heatmap_png, image, relevance, kept)
        return RelevanceResponse(
            variant=variant.name, grid=scored.grid, relevance=relevance.tolist(), kept=kept, kept_tokens=len(kept),
            total_tokens=len(scored.relevance), heatmap_png=heatmap,
            request_id=uuid.uuid4().hex,
        )  # fmt: skip


# Outermost first: API keys (when configured), uploads become JSON, then every 4xx body is made uniform.
if keys := auth.parse_keys(settings.api_key.get_secret_value()):
    ARRCOC.add_asgi_middleware(auth.BearerAuth, keys=keys)
ARRCOC.add_asgi_middleware(MultipartToJson, api_paths=API_ROUTES, max_bytes=settings.max_image_bytes)
ARRCOC.add_asgi_middleware(http_errors.ErrorBodyMiddleware, api_paths=API_ROUTES)
