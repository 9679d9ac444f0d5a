"""RelevanceRunner: the VLM's processor and input embeddings plus the relevance scorer.

Images arrive decoded (:class:`Pixels`, from the front), so nothing is decoded twice.
``score(items)`` is batchable: the batch is scored in one scorer call per image
size, and each item gets the relevance map of its image for its question (equal
to its lone score within float noise). An input error in one
item is returned in that item's ``error`` and leaves the rest of the batch alone.
"""

from __future__ import annotations

import time

import bentoml
from PIL import Image
from pydantic import BaseModel, Field

from arr_coc.adaptive import Calibration
from arr_coc.errors import ArrCocInputError, InvalidImageError
from arr_coc.query import check_question
from arr_coc.settings import get_settings
from model_store import sources
from runners.draining import CountInFlight, Gate, stop_after_drain

settings = get_settings()
GATE = Gate()  # this process's requests in flight, for the drain on SIGTERM


class RunnerError(BaseModel):
    """An input error a runner found in one item; the rest of its batch is unaffected."""

    kind: str
    field: str | None
    detail: str


class Pixels(BaseModel):
    """A decoded image as it crosses between processes: raw RGB bytes, never encoded again.

    data: ``[H, W, 3]`` uint8 in row-major order; size: ``(W, H)`` in pixels.
    """

    data: bytes
    size: tuple[int, int]

    @classmethod
    def of(cls, image: Image.Image) -> Pixels:
        rgb = image.convert("RGB")
        return cls(data=rgb.tobytes(), size=rgb.size)

    def image(self) -> Image.Image:
        width, height = self.size
        if width < 1 or height < 1 or len(self.data) != width * height * 3:
            raise InvalidImageError(f"{len(self.data)} bytes are not {width}x{height} RGB pixels", field="image")
        return Image.frombytes("RGB", self.size, self.data)


class ScoreItem(BaseModel):
    pixels: Pixels
    question: str


class ScoreOutput(BaseModel):
    grid: tuple[int, int] = (0, 0)
    relevance: list[float] = Field(default_factory=list, description="H' x W' scores, raster order")
    cells: list[float] = Field(default_factory=list, description="3 x H' x W' appearance cells, channel-major")
    explore: float = Field(0.0, ge=0.0, le=1.0, description="arr-coc's exploration weight for this image")
    calibration: Calibration = Field(default_factory=Calibration, description="how the scorer's auto budgets count")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    batch_size: int = 1
    error: RunnerError | None = None


def resources(gpu_share: float) -> dict:
    return {"gpu": gpu_share} if gpu_share > 0 else {"cpu": "1"}


def kept_connections() -> dict:
    """``bentoml.service`` ``runner_connection`` config: the front keeps its client session to this runner.

    BentoML replaces a dependency's client session every 100 requests or 300 s (to find
    new replicas behind a DNS name) and awaits the old session's close inside the call
    that triggers the swap; under load that call sometimes never reached the runner
    (streams stalled until the front's idle timeout: 17 in 90 s at concurrency 16 here;
    once, a unary call waited out the 300 s timeout). The runners of this bundle live
    beside the front, on one address that never moves, so the session is kept.
    """
    return {"max_requests": 2**62, "max_age": float(2**62)}


def runner_threads(threads: int) -> None:
    """Set this runner's torch CPU threads: ``threads``, or with 0 the cores split between the two runners.

    Two model processes that each start a thread per core fight over every core; on a
    CPU host that cost the served pipeline about 15 % of its throughput.
    """
    import os

    import torch

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))


def json_media_type(service) -> None:
    """Declare the JSON media type of ``service``'s outputs up front.

    BentoML otherwise derives a list output's media type from its JSON schema, built
    anew for every response (a fifth of the relevance runner's CPU time here).
    """
    for api in service.apis.values():
        api.output_spec.media_type = api.output_spec.media_type or "application/json"


def batching(max_batch_size: int, max_latency_ms: int) -> dict:
    """``bentoml.api`` arguments: adaptive batching, or none when ``max_batch_size`` is 1.

    Without batching the API still takes a list (of one item), so callers do not change.
    """
    if max_batch_size <= 1:
        return {"batchable": False}
    return {"batchable": True, "max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms}


@bentoml.service(
    name="relevance-runner",
    resources=resources(settings.relevance_gpu),
    workers=settings.relevance_workers,
    traffic={"timeout": settings.runner_timeout_s},
    runner_connection=kept_connections(),
)
class RelevanceRunner:
    def __init__(self) -> None:
        # Model code is imported here, in the runner's own process: the front imports this module too.
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
                )
            )
        return outputs


json_media_type(RelevanceRunner)
RelevanceRunner.add_asgi_middleware(CountInFlight, gate=GATE)
