"""What crosses the wire: the HTTP API's request/response models and the runners' items.

Limits come from :func:`arr_coc.settings.get_settings` when the module is imported,
so they appear in the OpenAPI schema BentoML serves. Images travel between the
front and the runners as the (already validated) encoded bytes in base64: the
runners decode them again, which is cheap next to the model work and keeps the
items plain JSON.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from arr_coc.settings import get_settings

_settings = get_settings()

Budget = Annotated[
    int | float,
    Field(description="kept visual tokens: a count (int >= 1) or a ratio (float in (0, 1])"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationFields(_Strict):
    """Decoding settings shared by the answer endpoints."""

    max_new_tokens: int = Field(_settings.default_max_new_tokens, ge=1, le=_settings.max_new_tokens_limit)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=16)
    seed: int = Field(0, ge=0, lt=2**63)


class ImageQuestion(_Strict):
    """An image and a question about it, with the pruning to apply."""

    image: str = Field(
        ...,
        min_length=1,
        max_length=(_settings.max_image_bytes * 4) // 3 + 256,
        description=f"the image as base64 or a data URI; at most {_settings.max_image_bytes} bytes "
        f"and {_settings.max_image_pixels} pixels once decoded",
    )
    question: str = Field(..., min_length=1, max_length=_settings.max_question_chars)
    variant: str | None = Field(None, max_length=64, description="a registered variant; default: the deployment's")
    method: str | None = Field(None, max_length=64, description="overrides the variant's method (with budget)")
    budget: Budget | None = None
    stage: Literal["post", "pre"] | None = Field(
        None,
        description="overrides the variant's stage: 'post' selects from the vision tower's outputs, 'pre' before "
        "the tower, which then runs on the kept tokens only (none, uniform, random, arr-coc)",
    )


class AnswerRequestBody(ImageQuestion, GenerationFields):
    """Body of ``POST /answer`` and ``POST /answer_stream``."""


class RelevanceRequestBody(ImageQuestion):
    """Body of ``POST /relevance``."""

    seed: int = Field(0, ge=0, lt=2**63, description="seed of the random method")


class AnswerResponse(BaseModel):
    answer: str
    variant: str
    kept_tokens: int
    total_tokens: int
    kept_ratio: float
    timings_ms: dict[str, float]
    request_id: str


class RelevanceResponse(BaseModel):
    variant: str
    grid: tuple[int, int]
    relevance: list[list[float]]
    kept: list[int]
    kept_tokens: int
    total_tokens: int
    heatmap_png: str = Field(..., description="base64 PNG: the relevance overlay, dropped tokens dimmed")
    request_id: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx of the API carries this body."""

    error: str = Field(..., description="kind of error, e.g. invalid_budget, image_too_large, runner_unavailable")
    field: str | None = Field(None, description="request field at fault, if any")
    detail: str = Field(..., description="what was wrong and the limit that applies")


# --- between the front and the runners ------------------------------------------------


class RunnerError(BaseModel):
    """An input error a runner found in one item; the rest of its batch is unaffected."""

    kind: str
    field: str | None
    detail: str


class ScoreItem(BaseModel):
    image_b64: str
    question: str


class ScoreOutput(BaseModel):
    grid: tuple[int, int] = (0, 0)
    relevance: list[float] = Field(default_factory=list, description="H' x W' scores, raster order")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    batch_size: int = 1
    error: RunnerError | None = None


class AnswerItem(BaseModel):
    image_b64: str
    question: str
    method: str
    budget: int | float
    stage: str = "post"
    relevance: list[float] | None = None
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
    relevance: list[float] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    prompt_tokens: int = 0
    finish_reason: str | None = None
    vision_cached: bool = False
    batch_size: int = 1
    error: RunnerError | None = None
