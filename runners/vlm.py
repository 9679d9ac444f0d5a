"""VLMRunner: vision encoder + pruned generation of a Qwen-VL model.

``answer(items)`` is batchable: requests with different image sizes, questions,
methods, budgets and prompt lengths share one batched prefill and decode and get
the results they would get alone. Each item may carry the relevance map the
relevance runner computed; without one the runner scores the image itself. If an
item has bad input, the batch is answered one by one so only that item fails.
``stream(item)`` yields JSON lines: text deltas, then one summary line.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncGenerator

import anyio.to_thread
import bentoml
import torch
from pydantic import BaseModel, Field

from arr_coc.adaptive import AutoBudget
from arr_coc.errors import ArrCocInputError, InvalidRelevanceError
from arr_coc.settings import get_settings
from arr_coc.vlm.types import AnswerRequest, AnswerResult, GenerationParams
from model_store import sources
from runners.draining import CountInFlight, Gate, stop_after_drain
from runners.relevance import (
    Pixels,
    RunnerError,
    batching,
    json_media_type,
    kept_connections,
    resources,
    runner_threads,
)

settings = get_settings()
GATE = Gate()  # this process's requests in flight, for the drain on SIGTERM
logger = logging.getLogger(__name__)

GENERATED_TOKENS = bentoml.metrics.Counter(
    name="arr_coc_generated_tokens",
    documentation="Tokens the VLM runner generated, by API (a stream's stop where its reader left)",
    labelnames=["api"],
)
ABANDONED_STREAMS = bentoml.metrics.Counter(
    name="arr_coc_abandoned_streams",
    documentation="Streams whose reader left before the end; the runner stopped generating them",
)


class AnswerItem(BaseModel):
    pixels: Pixels
    question: str
    method: str
    budget: int | float | AutoBudget
    stage: str = "post"
    relevance: list[float] | None = None
    cells: list[float] | None = None  # 3 x H' x W', channel-major, from the same scoring as relevance
    explore: float | None = Field(None, ge=0.0, le=1.0)
    grid: tuple[int, int] | None = None
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int


class AnswerOutput(BaseModel):
    answer: str = ""
    token_ids: list[int] = Field(default_factory=list)
    kept: list[int] = Field(default_factory=list)
    total_tokens: int = 0
    grid: tuple[int, int] = (0, 0)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    prompt_tokens: int = 0
    finish_reason: str | None = None
    vision_cached: bool = False
    batch_size: int = 1
    error: RunnerError | None = None


def to_request(item: AnswerItem) -> AnswerRequest:
    """One item as the library's request (typed errors on bad input)."""
    image = item.pixels.image()
    relevance = cells = None
    if item.relevance is not None and item.grid is not None:
        relevance = torch.tensor(item.relevance, dtype=torch.float32).reshape(item.grid)
        if item.cells:
            tokens = item.grid[0] * item.grid[1]
            if len(item.cells) % tokens:
                raise InvalidRelevanceError(
                    f"{len(item.cells)} appearance values do not split into {item.grid} cells", field="cells"
                )
            cells = torch.tensor(item.cells, dtype=torch.float32).reshape(-1, *item.grid)
    return AnswerRequest(
        image=image,
        question=item.question,
        method=item.method,
        budget=item.budget,
        stage=item.stage,
        relevance=relevance,
        cells=cells,
        explore=item.explore,
        generation=GenerationParams(
            max_new_tokens=item.max_new_tokens,
            temperature=item.temperature,
            top_p=item.top_p,
            stop=tuple(item.stop),
            seed=item.seed,
        ),
    )


def to_output(result: AnswerResult, batch_size: int) -> AnswerOutput:
    return AnswerOutput(
        answer=result.answer,
        token_ids=result.token_ids,
        kept=result.kept.tolist(),
        total_tokens=result.total_tokens,
        grid=result.grid,
        timings_ms=result.timings_ms,
        batch_size=batch_size,
        vision_cached=result.vision_cached,
        prompt_tokens=result.prompt_tokens,
        finish_reason=result.finish_reason,
    )


def error_output(error: ArrCocInputError) -> AnswerOutput:
    return AnswerOutput(error=RunnerError(kind=error.kind, field=error.field, detail=error.detail))


@bentoml.service(
    name="vlm-runner",
    resources=resources(settings.vlm_gpu),
    workers=settings.vlm_workers,
    traffic={"timeout": settings.runner_timeout_s},
    runner_connection=kept_connections(),
)
class VLMRunner:
    def __init__(self) -> None:
        # Model code is imported here, in the runner's own process: the front imports this module too.
        from arr_coc.vlm.pipeline import VLMPipeline
        from arr_coc.vlm.static_decoding import BATCH_BUCKETS

        runner_threads(settings.torch_threads)
        stop_after_drain(GATE, settings.drain_timeout_s + 1.0)  # outlasts the front's drain
        self.model_lock = threading.Lock()
        self.pipeline = VLMPipeline.from_pretrained(
            sources.vlm_source(settings),
            scorer=sources.scorer_source(settings),
            device=settings.device,
            dtype=settings.dtype,
            decode=settings.decode,
            feature_cache_mb=settings.feature_cache_mb,
        )
        if settings.warm_up:  # before /readyz: the first request is as fast as the tenth
            graphs = self.pipeline.static is not None and self.pipeline.static.graphs
            sizes = tuple(b for b in BATCH_BUCKETS if b <= settings.vlm_max_batch_size) if graphs else (1,)
            spent = self.pipeline.warm_up(sizes, cache_tokens=settings.warm_cache_tokens)
            logger.info(
                "VLM runner warmed up (%s decode): %s ms per batch size",
                self.pipeline.decode,
                {size: round(ms) for size, ms in spent.items()},
            )

    def _one_by_one(self, items: list[AnswerItem]) -> list[AnswerOutput]:
        outputs = []
        for item in items:
            try:
                outputs.append(to_output(self.pipeline.answer(to_request(item)), len(items)))
            except ArrCocInputError as error:
                outputs.append(error_output(error))
        return outputs

    @bentoml.api(**batching(settings.vlm_max_batch_size, settings.vlm_max_latency_ms))
    def answer(self, items: list[AnswerItem]) -> list[AnswerOutput]:
        try:
            results = self._locked(self.pipeline.answer_batch, [to_request(item) for item in items])
            outputs = [to_output(result, len(items)) for result in results]
        except ArrCocInputError:
            outputs = self._locked(self._one_by_one, items)
        GENERATED_TOKENS.labels(api="answer").inc(sum(len(output.token_ids) for output in outputs))
        return outputs

    @bentoml.api(**batching(settings.vlm_max_batch_size, settings.vlm_max_latency_ms))
    def select(self, items: list[AnswerItem]) -> list[AnswerOutput]:
        """Kept tokens only (vision pass + selection, no generation), for ``/relevance``."""
        return self._locked(self._select, items)

    def _select(self, items: list[AnswerItem]) -> list[AnswerOutput]:
        outputs = []
        for item in items:
            try:
                prepared = self.pipeline.prepare([to_request(item)], {})[0]
            except ArrCocInputError as error:
                outputs.append(error_output(error))
                continue
            outputs.append(
                AnswerOutput(
                    kept=prepared.kept.tolist(),
                    total_tokens=prepared.total_tokens,
                    grid=prepared.grid,
                    batch_size=len(items),
                )
            )
        return outputs

    @bentoml.api
    async def stream(self, item: AnswerItem) -> AsyncGenerator[str, None]:
        """JSON lines: ``{"delta"}`` per text delta, then ``{"done": AnswerOutput}``.

        Each decode step runs in a worker thread under the model lock, only when the
        previous line has been taken. A reader that leaves (the front closed the
        connection) stops the generation after the step in progress: the steps are
        closed here, at once, which frees their KV cache and static buffers (a sync
        generator API would leave that to the garbage collector).
        """
        try:
            answer = await anyio.to_thread.run_sync(self._locked, self.pipeline.stream, to_request(item))
        except ArrCocInputError as error:
            yield json.dumps({"error": error_output(error).error.model_dump()}) + "\n"
            return
        steps, finished = iter(answer), False
        try:
            while (delta := await anyio.to_thread.run_sync(self._locked, next, steps, None)) is not None:
                yield json.dumps({"delta": delta}) + "\n"
            finished = True
        finally:
            steps.close()
            GENERATED_TOKENS.labels(api="stream").inc(answer.generated_tokens)
            if not finished:
                ABANDONED_STREAMS.inc()
        final = to_output(answer.result, 1)
        yield json.dumps({"done": final.model_dump(exclude={"token_ids"})}) + "\n"

    def _locked(self, function, *args):
        """``function(*args)`` holding the model lock: batches and stream steps take turns, as on one thread."""
        with self.model_lock:
            return function(*args)


json_media_type(VLMRunner)
VLMRunner.add_asgi_middleware(CountInFlight, gate=GATE)
