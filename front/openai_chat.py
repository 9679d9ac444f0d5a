"""OpenAI-compatible chat: the shapes of ``/v1/chat/completions`` and ``/v1/models``, mapped to ARR-COC's own.

A chat request carries one image (an ``image_url`` content part holding a base64
data URI) and the question (the text parts of the last user message). ``model``
names a variant (``/v1/models`` lists them); the extension field ``arr_coc`` may
instead give ``variant`` or ``method`` + ``budget`` (+ ``stage``). Remote
``http(s)`` image URLs are refused unless ``ARR_COC_IMAGE_URL_HOSTS`` names their host
(off by default: the server then fetches nothing). Errors use OpenAI's body,
``{"error": {"message", "type", "param", "code"}}`` (:mod:`front.errors`). Responses
carry the extension ``arr_coc: {"scorer": "trained" | "untrained" | null, "cost": {...}}``
(the scorer the selection read, null for methods that read none; what the answer
cost, as in ``/answer``). ``model`` is the variant that answered: the one the request
named, else the traffic split's for its caller, else the deployment's default.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from arr_coc.errors import InvalidImageError, InvalidQuestionError, UnknownVariantError
from arr_coc.pricing import AnswerCost
from arr_coc.variants import VARIANTS
from arr_coc.vocabulary import STAGES
from front.schemas import AnswerRequestBody, Budget
from serving.settings import ServerSettings
from serving.wire import AnswerOutput

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", None: "stop"}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str = Field(..., description="a base64 data URI (data:image/png;base64,...); remote URLs are refused")
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class ArrCocOptions(BaseModel):
    """The ARR-COC extension: which visual tokens the model sees."""

    model_config = ConfigDict(extra="forbid")

    variant: str | None = Field(None, max_length=64)
    method: str | None = Field(None, max_length=64)
    budget: Budget | None = None
    coverage: float | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    stage: Literal[STAGES] | None = None


class ChatRequest(BaseModel):
    """Body of ``POST /v1/chat/completions`` (fields OpenAI defines and ARR-COC does not use are ignored)."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str | None = Field(None, max_length=128, description="a variant from /v1/models; default: the deployment's")
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 (the default here) is greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    arr_coc: ArrCocOptions | None = None


def _image_and_question(messages: list[ChatMessage], url_hosts: frozenset[str]) -> tuple[str, str]:
    images = [
        part.image_url.url
        for m in messages
        if m.role == "user" and isinstance(m.content, list)
        for part in m.content
        if isinstance(part, ImagePart)
    ]
    if len(images) != 1:
        raise InvalidImageError(f"send exactly one image_url part, got {len(images)}", field="messages")
    url = images[0]
    if url.startswith(("http://", "https://")) and urlsplit(url).hostname not in url_hosts:
        raise InvalidImageError(
            "remote image URLs of this host are not fetched; send the image as a base64 data URI", field="messages"
        )
    last = next((m for m in reversed(messages) if m.role == "user"), None)
    content = last.content if last is not None else None
    texts = [content] if isinstance(content, str) else [p.text for p in content or [] if isinstance(p, TextPart)]
    question = "\n".join(t for t in texts if t).strip()
    if not question:
        raise InvalidQuestionError("the last user message has no text", field="messages")
    return url, question


def answer_body(
    request: ChatRequest, default_max_tokens: int, url_hosts: frozenset[str] = frozenset()
) -> AnswerRequestBody:
    """The ``/answer`` body a chat request stands for (typed errors, or pydantic's, for bad fields).

    Its ``image`` is the data URI, or an http(s) URL of one of ``url_hosts`` for :func:`front.uploads.fetch_image`.
    """
    image, question = _image_and_question(request.messages, url_hosts)
    options = request.arr_coc or ArrCocOptions()
    variant = options.variant
    if request.model and request.model not in VARIANTS:
        raise UnknownVariantError(f"unknown model {request.model!r}; GET /v1/models lists them", field="model")
    variant = variant or request.model
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    return AnswerRequestBody.model_validate(
        {
            "image": image,
            "question": question,
            "variant": variant,
            "method": options.method,
            "budget": options.budget,
            "stage": options.stage,
            "coverage": options.coverage,
            "min_tokens": options.min_tokens,
            "max_tokens": options.max_tokens,
            "max_new_tokens": request.max_completion_tokens or request.max_tokens or default_max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": stop,
            "seed": request.seed or 0,
        }
    )


def usage(output: AnswerOutput) -> dict[str, int]:
    """Token counts, with the visual tokens the LLM saw (``visual_tokens_kept``) out of the image's."""
    completion = len(output.token_ids)
    return {
        "prompt_tokens": output.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": output.prompt_tokens + completion,
        "visual_tokens_kept": len(output.kept),
        "visual_tokens_total": output.total_tokens,
    }


def extension(scorer: str | None, cost: AnswerCost | None) -> dict[str, Any]:
    """The ``arr_coc`` object of a response: the scorer the selection read and, when known, the answer's cost."""
    return {"scorer": scorer} if cost is None else {"scorer": scorer, "cost": cost.model_dump()}


def completion(
    output: AnswerOutput, model: str, request_id: str, scorer: str | None = None, cost: AnswerCost | None = None
) -> dict[str, Any]:
    """A ``chat.completion`` object; ``scorer`` (``trained``/``untrained``/``None``) and ``cost`` go into ``arr_coc``."""
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": output.answer},
                "finish_reason": FINISH_REASONS.get(output.finish_reason, "stop"),
            }
        ],
        "usage": usage(output),
        "arr_coc": extension(scorer, cost),
    }


def chunk(
    completion_id: str,
    model: str,
    delta: dict[str, str],
    finish_reason: str | None = None,
    output: AnswerOutput | None = None,
    scorer: str | None = None,
    cost: AnswerCost | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object; the last one carries ``finish_reason``, ``usage`` and ``arr_coc``."""
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if output is not None:
        body["usage"] = usage(output)
        body["arr_coc"] = extension(scorer, cost)
    return body


def model_list(settings: ServerSettings) -> dict[str, Any]:
    """``/v1/models``: every registered variant, as a model, with what it keeps under the ``arr_coc`` extension.

    The list's own ``arr_coc`` gives the deployment's ``default_variant``, its ``traffic`` split
    (variant -> share of the requests that name none; null without a split), its ``scorer``
    (``trained``/``untrained``) and, without a trained scorer, a ``notice`` naming the
    command that trains one; each ``arr-coc`` variant carries its ``scorer`` too.
    """
    scorer = settings.scorer_state
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": "arr-coc",
                "arr_coc": variant_details(variant, scorer),
            }
            for name, variant in VARIANTS.items()
        ],
        "arr_coc": {
            "default_variant": settings.default_variant,
            "traffic": split.shares() if (split := settings.traffic_split) else None,
            "scorer": scorer,
            "notice": settings.untrained_scorer_notice(),
        },
    }


def variant_details(variant, scorer: str | None = None) -> dict[str, Any]:
    """``method``, ``budget`` (a number or ``auto``), ``stage`` (and an auto budget's bounds); an ``arr-coc``
    variant's ``scorer`` when given."""
    config = variant.as_config()
    details = {
        key: config[key]
        for key in ("method", "budget", "stage", "coverage", "min_tokens", "max_tokens")
        if key in config
    }
    if scorer is not None and variant.method == "arr-coc":
        details["scorer"] = scorer
    return details
