"""RelevanceRunner: the VLM's processor and input embeddings plus the relevance scorer.

``score(items)`` is batchable: each item gets the relevance map of its image for its
question, image by image, so a batch never changes a result. An input error in one
item is returned in that item's ``error`` and leaves the rest of the batch alone.
"""

from __future__ import annotations

import base64
import time

import bentoml

from arr_coc.errors import ArrCocInputError
from arr_coc.images import load_image
from arr_coc.relevance_model import RelevanceModel
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
        self.model = RelevanceModel.from_pretrained(
            models.vlm_source(settings),
            scorer=models.scorer_source(settings),
            device=models.device(settings),
            dtype=models.dtype(settings),
        )

    def _score_one(self, item: ScoreItem, batch_size: int) -> ScoreOutput:
        start = time.perf_counter()
        try:
            image = load_image(base64.b64decode(item.image_b64), max_bytes=settings.max_image_bytes,
                               max_pixels=settings.max_image_pixels)  # fmt: skip
            scored = self.model.score([image], [item.question])[0]
        except ArrCocInputError as error:
            return ScoreOutput(error=RunnerError(kind=error.kind, field=error.field, detail=error.detail))
        return ScoreOutput(
            grid=scored.grid,
            relevance=scored.relevance.flatten().tolist(),
            timings_ms={"relevance": (time.perf_counter() - start) * 1000.0},
            batch_size=batch_size,
        )

    @bentoml.api(**batching(settings.relevance_max_batch_size, settings.relevance_max_latency_ms))
    def score(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        return [self._score_one(item, len(items)) for item in items]
