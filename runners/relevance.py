"""RelevanceRunner: the VLM's processor and input embeddings plus the relevance scorer.

``score(items)`` is batchable: the batch is scored in one scorer call per image
size, and each item gets the relevance map of its image for its question (equal
to its lone score within float noise). An input error in one
item is returned in that item's ``error`` and leaves the rest of the batch alone.
"""

from __future__ import annotations

import base64
import time

import bentoml

from arr_coc.errors import ArrCocInputError
from arr_coc.images import load_image
from arr_coc.query import check_question
from arr_coc.settings import get_settings
from runners import models
from runners.schemas import RunnerError, ScoreItem, ScoreOutput

settings = get_settings()


def _resources(gpu_share: float) -> dict:
    return {"gpu": gpu_share} if gpu_share > 0 else {"cpu": "1"}


def batching(max_batch_size: int, max_latency_ms: int) -> dict:
    """``bentoml.api`` arguments: adaptive batching, or none when ``max_batch_size`` is 1.

    Without batching the API still takes a list (of one item), so callers do not change.
    """
    if max_batch_size <= 1:
        return {"batchable": False}
    return {"batchable": True, "max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms}


@bentoml.service(
    name="relevance-runner",
    resources=_resources(settings.relevance_gpu),
    workers=settings.relevance_workers,
    traffic={"timeout": settings.runner_timeout_s},
)
class RelevanceRunner:
    def __init__(self) -> None:
        # Model code is imported here, in the runner's own process: the front imports this module too.
        from arr_coc.relevance_model import RelevanceModel

        self.model = RelevanceModel.from_pretrained(
            models.vlm_source(settings),
            scorer=models.scorer_source(settings),
            device=models.device(settings),
            dtype=models.dtype(settings),
        )
        if settings.warm_up:  # before /readyz: the first request is as fast as the tenth
            self.model.warm_up()

    def _decode(self, item: ScoreItem):
        """The item's image, with its question checked; a typed error instead when either is bad."""
        try:
            image = load_image(base64.b64decode(item.image_b64), max_bytes=settings.max_image_bytes,
                               max_pixels=settings.max_image_pixels)  # fmt: skip
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
                outputs.append(ScoreOutput(error=RunnerError(kind=result.kind, field=result.field, detail=result.detail)))
                continue
            outputs.append(ScoreOutput(grid=maps[i].grid, relevance=maps[i].relevance.flatten().tolist(),
                                       timings_ms={"relevance": elapsed_ms}, batch_size=len(items)))  # fmt: skip
        return outputs
