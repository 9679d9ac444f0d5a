"""One request across the two runners: validate once, score, then answer or select; record the outcome.

The front decodes and checks the image and the question once; the runners get the
decoded pixels (:class:`serving.wire.Pixels`), never an encoded image. The
relevance runner scores (adaptive batches), the VLM runner prunes and answers with
that relevance. A request that names no variant gets the traffic split's variant for
its caller (:mod:`serving.traffic`), else the default. Every answer carries its cost
(:mod:`arr_coc.pricing`: its share of the runners' busy time, priced as instance
time). Every outcome, success or failure, feeds ``/metrics`` and W&B.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import torch
from PIL import Image

from arr_coc.adaptive import AutoBudget, auto_budget
from arr_coc.errors import ArrCocInputError, InvalidBudgetError
from arr_coc.pricing import AnswerCost
from arr_coc.query import check_question
from arr_coc.selection import FEATURE_METHODS, allocate, as_budget
from arr_coc.variants import Variant, ad_hoc, get_variant
from front import metrics
from front.errors import describe
from front.runner_failures import StreamReplayError, is_connection_failure
from front.schemas import AnswerResponse, GenerationFields, ImageQuestion
from front.uploads import decode_image_field
from serving.settings import ServerSettings
from serving.wire import AnswerItem, AnswerOutput, Pixels, RunnerError, ScoreItem, ScoreOutput
from training_hooks.tracking.service_tracking import Tracking, tracking_name

logger = logging.getLogger("arr_coc.service")


class RunnerInputError(ArrCocInputError):
    """An input error a runner found; carries the runner's kind."""

    def __init__(self, error: RunnerError) -> None:
        super().__init__(error.detail, field=error.field)
        self._kind = error.kind

    @property
    def kind(self) -> str:
        return self._kind


def checked(output: ScoreOutput | AnswerOutput):
    """``output``, or its runner's input error raised."""
    if output.error is not None:
        raise RunnerInputError(output.error)
    return output


def stage_timings(scored: ScoreOutput, output: AnswerOutput) -> dict[str, float]:
    """Milliseconds by stage: ``relevance`` (relevance runner) then the VLM runner's
    ``preprocess``, ``vision``, ``selection`` (allocation on the given relevance),
    ``prefill``, ``decode``, ``total``."""
    vlm = {("selection" if stage == "scoring" else stage): ms for stage, ms in output.timings_ms.items()}
    return {**scored.timings_ms, **vlm}


@dataclass
class Job:
    """A validated request on its way: its variant, decoded image (and its pixels for the runners), question,
    and when it began."""

    variant: Variant | str
    started: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    image: Image.Image | None = None
    pixels: Pixels | None = None
    question: str = ""
    scored: ScoreOutput | None = None
    caller: str | None = None  # the key the traffic split places it by (serving.traffic.caller_key)

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


class Pipeline:
    """The front's side of the request path; holds the runner handles and the W&B tracking."""

    def __init__(self, relevance_runner, vlm_runner, tracking: Tracking, settings: ServerSettings) -> None:
        self.relevance_runner = relevance_runner
        self.vlm_runner = vlm_runner
        self.tracking = tracking
        self.settings = settings
        self.split = settings.traffic_split
        self.instance = settings.served_instance
        self.spent: dict[str, tuple[float, int]] = {}  # variant -> (US$, answers) in this worker
        if notice := settings.untrained_scorer_notice():  # at start-up; also in /v1/models and on the web page
            logger.warning(notice)

    async def keep_runners_up(self) -> None:
        """Touch both runners (``/readyz``): while this front drains, a runner it still needs stays up."""
        runners = (self.relevance_runner, self.vlm_runner)
        await asyncio.gather(*(runner.is_ready(timeout=1) for runner in runners), return_exceptions=True)

    def scorer_of(self, variant: Variant) -> str | None:
        """``"trained"``/``"untrained"``: the scorer ``variant``'s selection reads; ``None`` when it reads none."""
        return self.settings.scorer_state if variant.method == "arr-coc" else None

    def default_for(self, caller: str | None) -> str:
        """The variant of a request that names none: the traffic split's for ``caller``, else the default."""
        if self.split is None:
            return self.settings.default_variant
        name = self.split.assign(caller)
        metrics.TRAFFIC_ASSIGNED.labels(variant=name).inc()
        return name

    def pick_variant(self, body: ImageQuestion, caller: str | None = None) -> Variant:
        """The request's variant: its method + budget (+ stage, + auto bounds) over its named variant, else over
        :meth:`default_for`."""
        base = get_variant(body.variant or self.default_for(caller))
        bounds = {"coverage": body.coverage, "min_tokens": body.min_tokens, "max_tokens": body.max_tokens}
        overrides = [body.method, body.budget, body.stage, *bounds.values()]
        if all(value is None for value in overrides):
            return base
        method = body.method or base.method
        if method == "none" and body.budget is not None:
            raise InvalidBudgetError(
                "the method 'none' keeps every token; name another method to use a budget", field="budget"
            )
        budget = as_budget(body.budget if body.budget is not None else base.budget)
        if any(value is not None for value in bounds.values()):
            if not isinstance(budget, AutoBudget):
                field = next(name for name, value in bounds.items() if value is not None)
                raise InvalidBudgetError(f"{field} applies to budget 'auto' only", field=field)
            budget = auto_budget(**{**budget.model_dump(), **{k: v for k, v in bounds.items() if v is not None}})
        return ad_hoc(method, budget, body.stage or base.stage)

    async def start(self, job: Job, body: ImageQuestion) -> Job:
        """Check the variant and question, decode the image (in a thread: CPU work), and score it."""
        job.variant = self.pick_variant(body, job.caller)
        job.question = check_question(body.question, self.settings.max_question_chars)
        _, job.image = await asyncio.to_thread(decode_image_field, body.image, self.settings)
        job.pixels = Pixels.of(job.image)
        item = ScoreItem(pixels=job.pixels, question=job.question)
        job.scored = checked((await call_runner(self.relevance_runner, "score", [item]))[0])
        metrics.RUNNER_BATCH_SIZE.labels(runner="relevance").observe(job.scored.batch_size)
        return job

    def answer_item(self, job: Job, generation: GenerationFields) -> AnswerItem:
        variant, scored = job.variant, job.scored
        return AnswerItem(
            pixels=job.pixels,
            question=job.question,
            method=variant.method,
            budget=variant.budget,
            stage=variant.stage,
            relevance=scored.relevance,
            cells=scored.cells,
            explore=scored.explore,
            grid=scored.grid,
            **{name: getattr(generation, name) for name in GenerationFields.model_fields},
        )

    async def answer(self, job: Job, generation: GenerationFields) -> AnswerOutput:
        item = self.answer_item(job, generation)
        return checked((await call_runner(self.vlm_runner, "answer", [item]))[0])

    async def events(self, job: Job, generation: GenerationFields) -> AsyncIterator[dict]:
        """The VLM runner's stream as events: ``{"delta": str}``, then ``{"done": AnswerOutput}``.

        A stream whose connection breaks (BentoML recycles its client sessions under
        requests in flight) is opened again and replayed: generation is a pure
        function of the item (greedy, or sampled from its seed), so the text already
        passed on is skipped and checked, and only the rest is passed on. Each event
        must come within ``stream_idle_timeout_s``; a stream that falls silent (a
        connection left open by a runner that died) is replayed the same way, and after
        :data:`RETRIES` tries ``TimeoutError`` ends it. A runner's input error is raised
        as :class:`RunnerInputError`.
        """
        item, passed = self.answer_item(job, generation), ""
        for attempt in range(RETRIES + 1):
            replayed = ""
            try:
                async for event in _stream_events(
                    self.vlm_runner.to_async.stream(item), self.settings.stream_idle_timeout_s
                ):
                    if "delta" not in event:
                        yield event
                        continue
                    replayed += event["delta"]
                    if len(replayed) <= len(passed):
                        continue
                    if not replayed.startswith(passed):
                        raise StreamReplayError("the resumed stream does not repeat the text already sent")
                    new, passed = replayed[len(passed) :], replayed
                    yield {"delta": new}
                return
            except Exception as error:
                if attempt == RETRIES or not (is_connection_failure(error) or isinstance(error, TimeoutError)):
                    raise
                reason = "idle_timeout" if isinstance(error, TimeoutError) else "connection"
                metrics.RUNNER_RETRIES.labels(call="stream", reason=reason).inc()

    async def kept(self, job: Job, seed: int) -> tuple[torch.Tensor, list[int]]:
        """``relevance [H', W']`` and the kept indices; feature-based methods ask the VLM runner."""
        scored, variant = job.scored, job.variant
        relevance = torch.tensor(scored.relevance).reshape(scored.grid)
        if variant.method not in FEATURE_METHODS:
            cells = torch.tensor(scored.cells).reshape(-1, *scored.grid) if scored.cells else None
            kept = allocate(
                relevance[None],
                variant.budget,
                variant.method,
                seed,
                cells=None if cells is None else [cells],
                explore=scored.explore,
                calibration=scored.calibration,
            )
            return relevance, kept[0].tolist()
        item = self.answer_item(job, GenerationFields())
        return relevance, checked((await call_runner(self.vlm_runner, "select", [item]))[0]).kept

    def answered(self, job: Job, output: AnswerOutput) -> AnswerResponse:
        """The response of an answered request, recorded in ``/metrics`` and W&B."""
        variant, scored = job.variant, job.scored
        metrics.RUNNER_BATCH_SIZE.labels(runner="vlm").observe(output.batch_size)
        timings = stage_timings(scored, output)
        metrics.observe_stages(timings)
        kept_ratio = len(output.kept) / output.total_tokens
        name = tracking_name(variant)
        metrics.KEPT_RATIO.labels(variant=name).observe(kept_ratio)
        cost = self.instance.cost((scored.busy_ms + output.busy_ms) / 1000.0)
        self.count_cost(name, cost)
        cached = output.vision_cached if variant.stage == "post" else None
        if cached is not None:
            metrics.VISION_CACHE.labels(result="hit" if cached else "miss").inc()
        self.tracking.record(
            variant,
            job.elapsed_ms,
            stages_ms=timings,
            vision_cached=cached,
            kept_ratio=kept_ratio,
            batch_sizes={"relevance": scored.batch_size, "vlm": output.batch_size},
            example=(job.image, scored, output, job.question),
            generated_tokens=output.generated_tokens,
            decoding=decoding_figures(output),
            cost_dollars=cost.dollars,
            gpu_s=cost.gpu_s,
        )
        return AnswerResponse(
            answer=output.answer,
            variant=variant.name,
            kept_tokens=len(output.kept),
            total_tokens=output.total_tokens,
            kept_ratio=kept_ratio,
            timings_ms=timings,
            finish_reason=output.finish_reason,
            scorer=self.scorer_of(variant),
            cost=cost,
            request_id=job.request_id,
        )

    def count_cost(self, variant: str, cost: AnswerCost) -> None:
        """One answer's cost into ``/metrics``: totals by variant and this worker's cost per 1,000 answers."""
        metrics.ANSWERS.labels(variant=variant).inc()
        metrics.COST_DOLLARS.labels(variant=variant).inc(cost.dollars)
        metrics.GPU_SECONDS.labels(variant=variant).inc(cost.gpu_s)
        dollars, answers = self.spent.get(variant, (0.0, 0))
        self.spent[variant] = dollars + cost.dollars, answers + 1
        metrics.COST_PER_1K.labels(variant=variant).set(1000.0 * (dollars + cost.dollars) / (answers + 1))

    def failed(self, job: Job, error: Exception) -> None:
        """Count a failed request by its error kind, in ``/metrics`` and W&B."""
        kind = describe(error)[1]
        metrics.ERRORS.labels(kind=kind).inc()
        self.tracking.record(job.variant, job.elapsed_ms, error_kind=kind)


RETRIES = 2


def decoding_figures(output: AnswerOutput) -> dict[str, float]:
    """The step scheduler's figures of one answer (none from the batch scheduler, which has no steps to share)."""
    if not output.step_ms:
        return {}
    return {"running_rows": output.batch_size, "queue_depth": output.queue_depth, "step_ms": output.step_ms}


async def call_runner(runner, name: str, items: list):
    """``await runner.to_async.<name>(items)``, tried again (up to :data:`RETRIES` times) when the connection breaks.

    Runner calls are pure functions of their items, so a retry is safe.
    """
    for attempt in range(RETRIES + 1):
        try:
            return await getattr(runner.to_async, name)(items)
        except Exception as error:
            if attempt == RETRIES or not is_connection_failure(error):
                raise
            metrics.RUNNER_RETRIES.labels(call=name, reason="connection").inc()


def http_response_of(stream) -> aiohttp.ClientResponse | None:
    """The HTTP response under a suspended runner stream (BentoML's client nests it in async generators)."""
    generators, seen = [stream], set()
    while generators:
        generator = generators.pop()
        frame = getattr(generator, "ag_frame", None)
        if frame is None or id(generator) in seen:
            continue
        seen.add(id(generator))
        for value in frame.f_locals.values():
            if isinstance(value, aiohttp.ClientResponse):
                return value
            if inspect.isasyncgen(value):
                generators.append(value)
    return None


async def _stream_events(stream, idle_timeout_s: float) -> AsyncIterator[dict]:
    """JSON-lines pieces of a runner stream -> events, each within ``idle_timeout_s`` of the last.

    However the stream ends (done, failed, or its reader gone: a client that left), its
    HTTP response is closed at once, so the runner sees the connection drop and stops
    generating. BentoML's client leaves that response to the garbage collector, which
    let the runner finish every abandoned generation.
    """
    pieces, buffer, response = stream.__aiter__(), "", None
    try:
        while True:
            try:
                piece = await asyncio.wait_for(pieces.__anext__(), idle_timeout_s)
            except StopAsyncIteration:
                return
            response = response or http_response_of(pieces)
            buffer += piece
            *lines, buffer = buffer.split("\n")
            for line in filter(None, lines):
                event = json.loads(line)
                if "error" in event:
                    raise RunnerInputError(RunnerError.model_validate(event["error"]))
                if "done" in event:
                    event = {"done": AnswerOutput.model_validate(event["done"])}
                yield event
    finally:
        if response is not None:
            response.close()
        if hasattr(pieces, "aclose"):
            await pieces.aclose()
