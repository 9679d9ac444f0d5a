"""ARR-COC front service: the HTTP API over the relevance and VLM runners.

    bentoml serve          # embedded testbed model on CPU, http://localhost:3000

``POST /answer`` answers a question about an image from its relevant visual tokens,
``POST /answer_stream`` streams the answer as server-sent events, ``POST /relevance``
returns the relevance map, the kept tokens and a heatmap; ``/v1/chat/completions``
and ``/v1/models`` speak OpenAI's API; ``/`` is a web page. A request that names no
variant gets the default one, or with ``ARR_COC_TRAFFIC`` its caller's side of the split. The routes are a FastAPI
app that BentoML mounts; BentoML adds the probes (``/livez``, ``/readyz``) and ``/metrics``.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep, not spin (spinning made concurrent requests 4x slower here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Runners on loopback TCP: on SIGTERM BentoML deletes Unix socket files at once, cutting off
# requests in flight from runners that still serve.
os.environ.setdefault("BENTOML_NO_UDS", "1")

import asyncio
from collections.abc import Awaitable, Callable

import bentoml
from fastapi import Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response, StreamingResponse

from arr_coc.heatmap import heatmap_png
from arr_coc.variants import get_variant
from front import auth, errors, openai_chat, openapi, streams
from front.app import add_fallbacks, create_app
from front.pipeline import Job, Pipeline
from front.schemas import AnswerRequestBody, AnswerResponse, RelevanceRequestBody, RelevanceResponse
from front.uploads import body_limit, fetch_image, is_remote, read_request, request_body_openapi, url_hosts
from runners.relevance import RelevanceRunner
from runners.vlm import VLMRunner
from serving.draining import stop_after_drain
from serving.settings import get_server_settings
from serving.traffic import caller_key
from training_hooks.tracking.service_tracking import Tracking

settings = get_server_settings()
LIMIT = body_limit(settings)
KEYS = auth.parse_keys(settings.api_key.get_secret_value())
SHUTDOWN_GRACE_S = 7.0  # for drain + W&B: Cloud Run kills a container 10 s after SIGTERM

app = create_app(settings, description=__doc__)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="arr-coc", traffic={"timeout": settings.runner_timeout_s + 30, "concurrency": 64})
class ARRCOC:
    relevance_runner = bentoml.depends(RelevanceRunner)
    vlm_runner = bentoml.depends(VLMRunner)

    def __init__(self) -> None:
        tracking = Tracking(settings)
        # The default variant's run starts now, in this worker, not on the first request.
        tracking.tracker(get_variant(settings.default_variant)).start()
        self.pipeline = Pipeline(self.relevance_runner, self.vlm_runner, tracking, settings)
        stop_after_drain(app.state.gate, settings.drain_timeout_s, while_busy=self.pipeline.keep_runners_up)

    @bentoml.on_shutdown
    def close_tracking(self) -> None:
        """Flush and finish the W&B runs in what is left of the 10 s a container gets after SIGTERM."""
        self.pipeline.tracking.close(deadline_s=max(1.0, SHUTDOWN_GRACE_S - app.state.gate.drained_s()))

    async def _serve(
        self, http: Request, respond: Callable[[Job], Awaitable[BaseModel | Response]]
    ) -> BaseModel | Response:
        """``respond(job)``'s answer; when it fails, the failure counted against ``job`` and its error response.

        Every model route answers through here, so a failure anywhere on its path (the
        body, the image, a runner, the front itself) is recorded once and answered in the
        one error body of :mod:`front.errors`.
        """
        job = Job(settings.default_variant, caller=caller_key(http.headers, KEYS))
        try:
            return await respond(job)
        except Exception as error:
            self.pipeline.failed(job, error)
            return errors.error_response(http.url.path, error)

    async def _start(self, http: Request, model: type[BaseModel], job: Job) -> BaseModel:
        """The request's body validated as ``model``, and ``job`` scored (under the variant the body names)."""
        body = await read_request(http, model, LIMIT)
        job.variant = body.variant or settings.default_variant
        await self.pipeline.start(job, body)
        return body

    @app.post("/answer", response_model=AnswerResponse, openapi_extra=request_body_openapi(AnswerRequestBody))
    async def answer(self, http: Request):
        """Answer a question about an image from its relevant visual tokens."""

        async def respond(job: Job) -> AnswerResponse:
            body = await self._start(http, AnswerRequestBody, job)
            return self.pipeline.answered(job, await self.pipeline.answer(job, body))

        return await self._serve(http, respond)

    @app.post(
        "/answer_stream",
        response_class=StreamingResponse,
        openapi_extra=request_body_openapi(AnswerRequestBody),
        responses=openapi.EVENT_STREAM,
    )
    async def answer_stream(self, http: Request):
        """The answer as server-sent events: ``data: {"delta"}`` per text delta, then ``event: done``."""

        async def respond(job: Job) -> StreamingResponse:
            body = await self._start(http, AnswerRequestBody, job)
            return StreamingResponse(streams.answer_events(self.pipeline, job, body), media_type="text/event-stream")

        return await self._serve(http, respond)

    @app.post("/relevance", response_model=RelevanceResponse, openapi_extra=request_body_openapi(RelevanceRequestBody))
    async def relevance(self, http: Request):
        """The relevance map, the kept tokens and a heatmap PNG (kept tokens outlined, with a legend)."""

        async def respond(job: Job) -> RelevanceResponse:
            body = await self._start(http, RelevanceRequestBody, job)
            relevance, kept = await self.pipeline.kept(job, body.seed)
            return RelevanceResponse(
                variant=job.variant.name,
                grid=job.scored.grid,
                relevance=relevance.tolist(),
                kept=kept,
                kept_tokens=len(kept),
                total_tokens=relevance.numel(),
                request_id=job.request_id,
                heatmap_png=await asyncio.to_thread(heatmap_png, job.image, relevance, kept),
            )

        return await self._serve(http, respond)

    @app.get("/v1/models")
    def openai_models(self) -> dict:
        """The variants, as OpenAI models."""
        return openai_chat.model_list(settings)

    @app.post(
        "/v1/chat/completions",
        responses=openapi.EVENT_STREAM,
        openapi_extra=request_body_openapi(openai_chat.ChatRequest, forms=False),
    )
    async def openai_chat_completions(self, http: Request):
        """OpenAI's chat completion: one image, one question, the answer from the variant's kept tokens."""

        async def respond(job: Job) -> Response:
            chat = await read_request(http, openai_chat.ChatRequest, LIMIT, forms=False)
            job.variant = chat.model or settings.default_variant
            body = openai_chat.answer_body(chat, settings.default_max_new_tokens, url_hosts(settings))
            if is_remote(body.image):
                body.image = await fetch_image(body.image, settings)
            await self.pipeline.start(job, body)
            if chat.stream:
                return StreamingResponse(streams.chat_chunks(self.pipeline, job, body), media_type="text/event-stream")
            output = await self.pipeline.answer(job, body)
            answered = self.pipeline.answered(job, output)
            completion = openai_chat.completion(
                output, job.variant.name, job.request_id, answered.scorer, answered.cost
            )
            return JSONResponse(completion)

        return await self._serve(http, respond)


add_fallbacks(app)

if KEYS:
    ARRCOC.add_asgi_middleware(auth.BearerAuth, keys=KEYS)
