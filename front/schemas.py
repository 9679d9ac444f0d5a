"""The HTTP API's request and response models.

Limits come from :func:`serving.settings.get_server_settings` when the module is imported,
so they appear in the OpenAPI document. Fields are strict where JSON has several
spellings of one thing: a budget is a JSON number, never ``true`` or ``"0.5"``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from arr_coc.pricing import AnswerCost
from arr_coc.variants import VARIANTS
from arr_coc.vocabulary import COVERAGE_MEANING, METHODS, PRE_METHODS, SCORER_STATES, STAGES
from serving.settings import get_server_settings

_settings = get_server_settings()

Budget = Annotated[
    StrictInt | StrictFloat | Literal["auto"],
    Field(
        description="kept visual tokens: a count (int >= 1), a ratio (float in (0, 1]) or 'auto' (as many as the "
        "question needs: see coverage)"
    ),
]


ScorerState = Literal[SCORER_STATES]
SCORER_DESCRIPTION = (
    "the relevance scorer the selection read: 'trained', or 'untrained' (random weights: the served model has no "
    "trained scorer; `arr-coc distill-scorer` trains one)"
)


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
        description=f"the image as base64 or a data URI (a file in a multipart form); at most "
        f"{_settings.max_image_bytes} bytes and {_settings.max_image_pixels} pixels once decoded (else 413)",
    )
    question: str = Field(..., min_length=1, max_length=_settings.max_question_chars)
    variant: str | None = Field(
        None,
        max_length=64,
        description="a registered variant; default: the deployment's",
        json_schema_extra={"enum": sorted(VARIANTS)},
    )
    method: str | None = Field(
        None,
        max_length=64,
        description="overrides the variant's method (with budget)",
        json_schema_extra={"enum": list(METHODS)},
    )
    budget: Budget | None = None
    coverage: StrictFloat | StrictInt | None = Field(None, description=f"with budget 'auto': {COVERAGE_MEANING}")
    min_tokens: StrictInt | None = Field(None, description="with budget 'auto': keep at least this many tokens")
    max_tokens: StrictInt | None = Field(None, description="with budget 'auto': keep at most this many tokens")
    stage: Literal[STAGES] | None = Field(
        None,
        description="overrides the variant's stage: 'post' selects from the vision tower's outputs, 'pre' before "
        f"the tower, which then runs on the kept tokens only (none, {', '.join(PRE_METHODS)})",
    )


class AnswerRequestBody(ImageQuestion, GenerationFields):
    """Body of ``POST /answer`` and ``POST /answer_stream``."""


class RelevanceRequestBody(ImageQuestion):
    """Body of ``POST /relevance``."""

    seed: int = Field(0, ge=0, lt=2**63, description="seed of the random method")


class AnswerResponse(BaseModel):
    """Body of ``POST /answer``, and the ``done`` event of ``POST /answer_stream``."""

    answer: str
    variant: str
    kept_tokens: int
    total_tokens: int
    kept_ratio: float
    timings_ms: dict[str, float] = Field(
        ..., description="milliseconds per stage: relevance, preprocess, vision, selection, prefill, decode, total"
    )
    finish_reason: Literal["eos", "stop", "length"] | None = Field(
        None, description="why decoding ended: the end token, a stop string, or max_new_tokens"
    )
    scorer: ScorerState | None = Field(None, description=f"{SCORER_DESCRIPTION}; null for methods that read none")
    cost: AnswerCost | None = Field(
        None, description="what the answer cost: its share of the runners' busy time, priced as Cloud Run instance time"
    )
    request_id: str


class RelevanceResponse(BaseModel):
    variant: str
    grid: tuple[int, int]
    relevance: list[list[float]]
    kept: list[int]
    kept_tokens: int
    total_tokens: int
    heatmap_png: str = Field(..., description="base64 PNG: the relevance overlay, dropped tokens dimmed")
    scorer: ScorerState = Field(
        default_factory=lambda: _settings.scorer_state,  # the deployment's: every map is the scorer's
        description=SCORER_DESCRIPTION.replace("the selection read", "the map is from"),
    )
    request_id: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx of the API carries this body."""

    error: str = Field(..., description="kind of error, e.g. invalid_budget, image_too_large, runner_unavailable")
    field: str | None = Field(None, description="request field at fault, if any")
    detail: str = Field(..., description="what was wrong and the limit that applies")
