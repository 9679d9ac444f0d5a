"""RelevanceRunner: the VLM's processor and input embeddings plus the relevance scorer.

Images arrive decoded (:class:`serving.wire.Pixels`, from the front), so nothing is decoded twice.
``score(items)`` is batchable: the batch is scored in one scorer call per image
size, and each item gets the relevance map of its image for its question (equal
to its lone score within float noise). An input error in one
item is returned in that item's ``error`` and leaves the rest of the batch alone.
"""

from __future__ import annotations

import time

import bentoml

from arr_coc.errors import ArrCocInputError
from arr_coc.query import check_question
from model_store import sources
from serving.bentoml_helpers import batching, json_media_type, kept_connections, resources, runner_threads
from serving.draining import CountInFlight, Gate, stop_after_drain
from serving.settings import get_server_settings
from serving.wire import RunnerError, ScoreItem, ScoreOutput

settings = get_server_settings()
GATE = Gate()  # this process's requests in flight, for the drain on SIGTERM


@bentoml.service(
    name="relevance-runner",
    resources=resources(settings.relevance_gpu),
    workers=settings.relevance_workers,
    traffic={"timeout": settings.runner_timeout_s},
    runner_connection=kept_connections(),
)
class RelevanceRunner:
    def __init__(self) -> None:
        # Model code is imported here, in the runner's own process: service.py imports this module in every process.
        from arr_coc.relevance_model import RelevanceModel

        runner_threads(settings.torch_threads)
        stop_after_drain(GATE, settings.drain_timeout_s + 1.0)  # outlasts the front's drain
        self.model = RelevanceModel.from_pretrained(
            sources.vlm_source(settings),
            scorer=sources.scorer_source(settings),
            device=settings.device,
            dtype=settings.dtype,
        )
        if settings.warm_up:  # before /readyz: the first request is as fast as the tenth
            self.model.warm_up()

    def _decode(self, item: ScoreItem):
        """The item's image, with its question checked; a typed error instead when either is bad."""
        try:
            image = item.pixels.image()
            check_question(item.question)
        except ArrCocInputError as error:
            return error
        return image

    @bentoml.api(**batching(settings.relevance_max_batch_size, settings.relevance_max_latency_ms))
    def score(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        """Relevance maps of a batch, scored together; an item with bad input gets its own error."""
        start = time.perf_counter()
        decoded = [self._decode(item) for item in items]
        good = [i for i, d in enumerate(decoded) if not isinstance(d, ArrCocInputError)]
        try:
            maps = dict(zip(good, self.model.score([decoded[i] for i in good], [items[i].question for i in good])))
        except ArrCocInputError:  # an image the processor refuses: score one by one so only it fails
            maps = {}
            for i in good:
                try:
                    maps[i] = self.model.score([decoded[i]], [items[i].question])[0]
                except ArrCocInputError as error:
                    decoded[i] = error
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        outputs = []
        for i, result in enumerate(decoded):
            if isinstance(result, ArrCocInputError):
                outputs.append(
                    ScoreOutput(error=RunnerError(kind=result.kind, field=result.field, detail=result.detail))
                )
                continue
            outputs.append(
                ScoreOutput(
                    grid=maps[i].grid,
                    relevance=maps[i].relevance.flatten().tolist(),
                    cells=maps[i].cells.flatten().tolist(),
                    explore=maps[i].explore,
                    calibration=self.model.scorer.calibration,
                    timings_ms={"relevance": elapsed_ms},
                    batch_size=len(items),
                    busy_ms=elapsed_ms / len(items),
                )
            )
        return outputs


json_media_type(RelevanceRunner)
RelevanceRunner.add_asgi_middleware(CountInFlight, gate=GATE)
