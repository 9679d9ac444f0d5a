"""The types that cross between the front and the runners (pydantic, serialized by BentoML).

The front decodes an image once and sends its :class:`Pixels`; the relevance runner
answers a :class:`ScoreItem` with a :class:`ScoreOutput`, the VLM runner an
:class:`AnswerItem` with an :class:`AnswerOutput`. An input error a runner finds in one
item travels back in that item's ``error`` (:class:`RunnerError`).
"""

from __future__ import annotations

from PIL import Image
from pydantic import BaseModel, Field

from arr_coc.adaptive import AutoBudget, Calibration
from arr_coc.errors import InvalidImageError


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
    busy_ms: float = Field(0.0, ge=0, description="this item's share of its batch's scoring time, ms")
    error: RunnerError | None = None


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
    batch_size: int = 1  # rows it was decoded with (step scheduler: the mean over its steps, rounded)
    queue_depth: int = 0  # step scheduler: requests ahead of it when it arrived
    step_ms: float = 0.0  # step scheduler: mean time of its decode steps
    generated_tokens: int = 0  # also counts ids a stop string cut off
    busy_ms: float = Field(0.0, ge=0, description="this request's share of the model's time (batches, steps), ms")
    error: RunnerError | None = None
