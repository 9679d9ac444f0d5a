"""VLMRunner: vision encoder + pruned generation of a Qwen-VL model.

With ``ARR_COC_SCHEDULER=step`` (the default) one scheduler thread owns the model
(:class:`arr_coc.vlm.scheduler.StepScheduler`): every request, ``answer`` or
``stream``, joins the running decode batch at the next step and leaves it as soon
as it is done. ``answer`` is then not adaptively batched: BentoML's dispatcher
sends one batch at a time and waits for all of it, which is the run-to-the-end
batching the scheduler replaces; newcomers that arrive together are prepared and
prefilled together by the scheduler itself.

With ``ARR_COC_SCHEDULER=batch``, ``answer(items)`` is adaptively batched and each
batch runs to its end; a stream decodes alone, step by step, taking turns with
the batches on the model lock.

Either way requests with different image sizes, questions, methods, budgets and
prompt lengths get the results they would get alone; each item may carry the
relevance map the relevance runner computed (without one the runner scores the
image itself); an item with bad input fails alone. ``stream(item)`` yields JSON
lines: text deltas, then one summary line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import anyio.to_thread
import bentoml
import torch

from arr_coc.errors import ArrCocInputError, InvalidRelevanceError
from arr_coc.vlm.types import AnswerRequest, AnswerResult, GenerationParams
from model_store import sources
from serving.bentoml_helpers import batching, json_media_type, kept_connections, resources, runner_threads
from serving.draining import CountInFlight, Gate, stop_after_drain
from serving.settings import get_server_settings
from serving.wire import AnswerItem, AnswerOutput, RunnerError

if TYPE_CHECKING:  # model code is only imported in the runner's own process (service.py imports this module)
    from arr_coc.vlm.scheduler import SchedulerStats, StepScheduler, Ticket

settings = get_server_settings()
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
RUNNING_ROWS = bentoml.metrics.Gauge(
    name="arr_coc_running_rows", documentation="Step scheduler: requests in the running decode batch"
)
QUEUE_DEPTH = bentoml.metrics.Gauge(
    name="arr_coc_queue_depth", documentation="Step scheduler: requests waiting for a row"
)
STEP_SECONDS = bentoml.metrics.Histogram(
    name="arr_coc_decode_step_seconds",
    documentation="Step scheduler: time of one decode step over every running row",
    buckets=(0.002, 0.004, 0.006, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
STEP = settings.scheduler == "step"


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


def to_output(
    result: AnswerResult, batch_size: int, ticket: Ticket | None = None, busy_ms: float = 0.0
) -> AnswerOutput:
    """``busy_ms``: the request's share of the model's time (the step scheduler's ``ticket`` carries its own)."""
    if ticket is not None:
        busy_ms = ticket.busy_ms
    if ticket is not None and ticket.steps:
        batch_size = round(ticket.rows_seen / ticket.steps)
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
        queue_depth=0 if ticket is None else ticket.queued_behind,
        generated_tokens=len(result.token_ids) if ticket is None else ticket.generated_tokens,
        step_ms=result.timings_ms.get("decode", 0.0) / ticket.steps if ticket is not None and ticket.steps else 0.0,
        busy_ms=busy_ms,
    )


def observe(stats: SchedulerStats) -> None:
    """A scheduler round's figures, into ``/metrics``."""
    RUNNING_ROWS.set(stats.running)
    QUEUE_DEPTH.set(stats.queued)
    STEP_SECONDS.observe(stats.step_ms / 1000.0)


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
        # Model code is imported here, in the runner's own process: service.py imports this module in every process.
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
            # the batch scheduler's decode buckets; the step scheduler captures its own below
            graphs = not STEP and self.pipeline.static is not None and self.pipeline.static.graphs
            sizes = tuple(b for b in BATCH_BUCKETS if b <= settings.vlm_max_batch_size) if graphs else (1,)
            spent = self.pipeline.warm_up(sizes, cache_tokens=settings.warm_cache_tokens if graphs else 0)
            logger.info(
                "VLM runner warmed up (%s decode): %s ms per batch size",
                self.pipeline.decode,
                {size: round(ms) for size, ms in spent.items()},
            )
        self.scheduler: StepScheduler | None = None
        if STEP:
            from arr_coc.vlm.scheduler import StepScheduler

            self.scheduler = StepScheduler(
                self.pipeline,
                rows=settings.vlm_rows,
                cache_tokens=settings.vlm_cache_tokens,
                prefill_tokens=settings.vlm_prefill_tokens,
                observer=observe,
            )
            if settings.warm_up:
                self.scheduler.cache.warm_up()  # CUDA graphs of every row bucket
            self.scheduler.start()
            logger.info(
                "VLM runner: step scheduler, %d rows of %d KV slots (%.0f MB)",
                settings.vlm_rows,
                settings.vlm_cache_tokens,
                self.scheduler.cache.bytes / 2**20,
            )

    def _one_by_one(self, items: list[AnswerItem]) -> list[AnswerOutput]:
        outputs = []
        for item in items:
            start = time.perf_counter()
            try:
                result = self.pipeline.answer(to_request(item))
                outputs.append(to_output(result, len(items), busy_ms=(time.perf_counter() - start) * 1000.0))
            except ArrCocInputError as error:
                outputs.append(error_output(error))
        return outputs

    @bentoml.api(**(batching(1, 1) if STEP else batching(settings.vlm_max_batch_size, settings.vlm_max_latency_ms)))
    async def answer(self, items: list[AnswerItem]) -> list[AnswerOutput]:
        if self.scheduler is None:
            outputs = await anyio.to_thread.run_sync(self._answer_batch, items)
        else:
            outputs = list(await asyncio.gather(*(self._answer_step(item) for item in items)))
        GENERATED_TOKENS.labels(api="answer").inc(sum(len(output.token_ids) for output in outputs))
        return outputs

    def _answer_batch(self, items: list[AnswerItem]) -> list[AnswerOutput]:
        try:
            requests = [to_request(item) for item in items]
            results, busy_ms = self._locked(_timed, self.pipeline.answer_batch, requests)
            return [to_output(result, len(items), busy_ms=busy_ms / len(items)) for result in results]
        except ArrCocInputError:
            return self._locked(self._one_by_one, items)

    async def _answer_step(self, item: AnswerItem) -> AnswerOutput:
        """One request through the step scheduler; a caller that leaves frees its row."""
        try:
            request = to_request(item)
        except ArrCocInputError as error:
            return error_output(error)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        ticket = self.scheduler.submit(request, on_done=lambda: loop.call_soon_threadsafe(_resolve, done))
        try:
            await done
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        try:
            return to_output(ticket.wait(0), 1, ticket)
        except ArrCocInputError as error:
            return error_output(error)

    @bentoml.api(**batching(settings.vlm_max_batch_size, settings.vlm_max_latency_ms))
    def select(self, items: list[AnswerItem]) -> list[AnswerOutput]:
        """Kept tokens only (vision pass + selection, no generation), for ``/relevance``."""
        if self.scheduler is not None:
            return self.scheduler.call(self._select, items)
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
        """JSON lines: ``{"delta"}`` per text delta, then ``{"done": AnswerOutput}`` (or one ``{"error"}`` line).

        A reader that leaves (the front closed the connection) stops the generation
        after the step in progress and frees what it held at once.
        """
        try:
            request = to_request(item)
        except ArrCocInputError as error:
            yield json.dumps({"error": error_output(error).error.model_dump()}) + "\n"
            return
        steps = self._step_stream(request) if self.scheduler is not None else self._locked_stream(request)
        try:
            async for line in steps:
                yield line
        finally:
            await steps.aclose()

    async def _step_stream(self, request: AnswerRequest) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()
        ticket = self.scheduler.submit(
            request, listener=lambda delta: loop.call_soon_threadsafe(deltas.put_nowait, delta)
        )
        finished = False
        try:
            while (delta := await deltas.get()) is not None:
                yield json.dumps({"delta": delta}) + "\n"
            finished = True
        finally:
            if not finished:
                ticket.cancel()
                ABANDONED_STREAMS.inc()
            GENERATED_TOKENS.labels(api="stream").inc(ticket.generated_tokens)
        try:
            final = to_output(ticket.wait(0), 1, ticket)
        except ArrCocInputError as error:
            yield json.dumps({"error": error_output(error).error.model_dump()}) + "\n"
            return
        yield json.dumps({"done": final.model_dump(exclude={"token_ids"})}) + "\n"

    async def _locked_stream(self, request: AnswerRequest) -> AsyncGenerator[str, None]:
        """Batch scheduler: each decode step in a worker thread under the model lock, once the last line was taken.

        The steps are closed here when the reader leaves, which frees their KV cache and
        static buffers at once (a sync generator API would leave that to the garbage collector).
        """
        try:
            answer, busy_ms = await anyio.to_thread.run_sync(self._locked, _timed, self.pipeline.stream, request)
        except ArrCocInputError as error:
            yield json.dumps({"error": error_output(error).error.model_dump()}) + "\n"
            return
        steps, finished = iter(answer), False
        try:
            while True:
                delta, step_ms = await anyio.to_thread.run_sync(self._locked, _timed, next, steps, None)
                busy_ms += step_ms
                if delta is None:
                    break
                yield json.dumps({"delta": delta}) + "\n"
            finished = True
        finally:
            steps.close()
            GENERATED_TOKENS.labels(api="stream").inc(answer.generated_tokens)
            if not finished:
                ABANDONED_STREAMS.inc()
        final = to_output(answer.result, 1, busy_ms=busy_ms)
        yield json.dumps({"done": final.model_dump(exclude={"token_ids"})}) + "\n"

    def _locked(self, function, *args):
        """``function(*args)`` holding the model lock: batches and stream steps take turns, as on one thread."""
        with self.model_lock:
            return function(*args)


def _timed(function, *args):
    """``(function(*args), its wall time in ms)``."""
    start = time.perf_counter()
    result = function(*args)
    return result, (time.perf_counter() - start) * 1000.0


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


json_media_type(VLMRunner)
VLMRunner.add_asgi_middleware(CountInFlight, gate=GATE)
