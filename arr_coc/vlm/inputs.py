"""From an image and a question to the stock model inputs of one request.

The prompt is the processor's chat template over one user message
``[image, question]`` with ``add_generation_prompt=True``; the processor then
expands ``<|image_pad|>`` to one token per merged visual token. Anyone holding the
same processor rebuilds exactly these inputs, which is what the equivalence tests
compare against.

Input checks happen here, before any model work: an empty or over-long question,
an image of extreme aspect ratio, generation settings out of range. An image
smaller than one patch is upscaled by the processor to its ``min_pixels``; an
image above ``max_pixels`` is first shrunk with Pillow straight to the size the
processor would pick, so a 10000 x 10000 upload never becomes a full-size
tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from arr_coc.errors import InvalidGenerationConfigError, InvalidImageError, InvalidQuestionError
from arr_coc.query import check_question
from arr_coc.vlm.types import GenerationParams

MAX_ASPECT_RATIO = 200  # the Qwen-VL processors refuse more
MAX_NEW_TOKENS = 4096
MAX_STOP_STRINGS = 16
CHARS_PER_TOKEN_BOUND = 32  # no tokenizer packs more characters into one token


@dataclass
class EncodedRequest:
    """The stock inputs of one request (no batch dimension).

    input_ids: ``[L]`` prompt ids with all ``N`` image-pad tokens.
    mm_token_type_ids: ``[L]`` 0 text, 1 image.
    pixel_values: ``[P, C * T * p * p]`` flattened patches, ``P = t * h * w``.
    image_grid_thw: ``[3]`` ``(t, h, w)`` in patches.
    question_ids: ``[Q]`` ids of the question alone (for the query embedding).
    """

    prompt: str
    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    question_ids: torch.Tensor

    @property
    def num_visual_tokens(self) -> int:
        return int((self.mm_token_type_ids == 1).sum())


def chat_messages(question: str) -> list[dict]:
    """One user turn holding the image then the question."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def prompt_text(processor, question: str) -> str:
    """The chat-templated prompt with one ``<|vision_start|><|image_pad|><|vision_end|>`` block."""
    return processor.apply_chat_template(chat_messages(question), add_generation_prompt=True, tokenize=False)


def _pixel_limits(image_processor) -> tuple[int, int, int]:
    size = image_processor.size
    factor = int(image_processor.patch_size) * int(image_processor.merge_size)
    return int(size["shortest_edge"]), int(size["longest_edge"]), factor


def resized_size(image_processor, width: int, height: int) -> tuple[int, int]:
    """``(height, width)`` in pixels that the processor resizes a ``width x height`` image to."""
    if min(width, height) < 1:
        raise InvalidImageError(f"image of {width}x{height} pixels is empty", field="image")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InvalidImageError(
            f"aspect ratio {max(width, height) / min(width, height):.0f}:1 of a {width}x{height} image "
            f"exceeds {MAX_ASPECT_RATIO}:1",
            field="image",
        )
    min_pixels, max_pixels, factor = _pixel_limits(image_processor)
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def prepare_image(image_processor, image: Image.Image) -> Image.Image:
    """RGB ``image``, pre-shrunk with Pillow when above the processor's ``max_pixels``."""
    if not isinstance(image, Image.Image):
        raise InvalidImageError(f"expected a PIL image, got {type(image).__name__}", field="image")
    height, width = resized_size(image_processor, image.width, image.height)
    if image.mode != "RGB":
        image = image.convert("RGB")
    _, max_pixels, _ = _pixel_limits(image_processor)
    if image.width * image.height > max_pixels:
        image = image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return image


def check_generation(params: GenerationParams) -> GenerationParams:
    """Raise :class:`InvalidGenerationConfigError` unless every field is in range."""

    def bad(field: str, detail: str) -> InvalidGenerationConfigError:
        return InvalidGenerationConfigError(detail, field=field)

    if isinstance(params.max_new_tokens, bool) or not isinstance(params.max_new_tokens, int):
        raise bad("max_new_tokens", f"must be an int, got {params.max_new_tokens!r}")
    if not 1 <= params.max_new_tokens <= MAX_NEW_TOKENS:
        raise bad("max_new_tokens", f"must be in [1, {MAX_NEW_TOKENS}], got {params.max_new_tokens}")
    temperature = float(params.temperature)
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 100.0:
        raise bad("temperature", f"must be a finite float in [0, 100], got {params.temperature!r}")
    top_p = float(params.top_p)
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise bad("top_p", f"must be in (0, 1], got {params.top_p!r}")
    stops = (params.stop,) if isinstance(params.stop, str) else tuple(params.stop)
    if len(stops) > MAX_STOP_STRINGS or any(not isinstance(s, str) or not s for s in stops):
        raise bad("stop", f"must be at most {MAX_STOP_STRINGS} non-empty strings, got {params.stop!r}")
    if isinstance(params.seed, bool) or not isinstance(params.seed, int) or not 0 <= params.seed < 2**63:
        raise bad("seed", f"must be an int in [0, 2**63), got {params.seed!r}")
    return GenerationParams(params.max_new_tokens, temperature, top_p, stops, params.seed)


def encode_request(
    processor, image: Image.Image, question: str, context_length: int, max_new_tokens: int
) -> EncodedRequest:
    """Stock processor inputs of one request, after the input checks.

    Raises :class:`InvalidQuestionError` when the question is empty, or when the
    prompt (with all its visual tokens) plus ``max_new_tokens`` exceeds
    ``context_length`` tokens.
    """
    question = check_question(question, max_chars=context_length * CHARS_PER_TOKEN_BOUND)
    image = prepare_image(processor.image_processor, image)
    prompt = prompt_text(processor, question)
    batch = processor(text=[prompt], images=[image], return_tensors="pt")
    input_ids = batch["input_ids"][0]
    question_ids = processor.tokenizer(question, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if input_ids.numel() + max_new_tokens > context_length:
        raise InvalidQuestionError(
            f"the prompt is {input_ids.numel()} tokens ({question_ids.numel()} of them the question); "
            f"with max_new_tokens={max_new_tokens} it exceeds the model's context of {context_length} tokens",
            field="question",
        )
    return EncodedRequest(
        prompt=prompt,
        input_ids=input_ids,
        mm_token_type_ids=batch["mm_token_type_ids"][0],
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"][0],
        question_ids=question_ids,
    )
