"""Teacher relevance: which visual tokens the VLM itself uses to answer, with no labels.

For one (image, question) the VLM first answers greedily with all its visual
tokens; that answer is the model's own, so no label is needed. A teacher then
rates every visual token ``[H', W']`` by how much the model relied on it:

- ``attention``: attention from the text after the image (the question, the
  chat template's tail and the model's answer) to the visual tokens, in the
  middle LLM layers (``layers``, a fraction range of the decoder stack), averaged
  over heads, query rows and layers. Each (head, row) is renormalized over the
  visual tokens, so text sinks (the first token) do not matter; visual tokens
  whose hidden state is ``sink_ratio`` times the median visual norm or more at a
  layer's input (attention sinks: massive activations that draw attention from
  every query) get no attention at that layer.
- ``attribution``: input x gradient of the answer's log-probability with respect
  to the visual tokens' embeddings after the merger (and Qwen3-VL's DeepStack
  features), ``|sum_d x_d * g_d|`` per token: one backward pass per sample.

Both maps are scaled to ``[0, 1]`` by their maximum. The VLM is frozen and runs
in whatever dtype it was loaded in; the map is float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from arr_coc.vlm.decoding import generate_rows
from arr_coc.vlm.grid import merged_grid
from arr_coc.vlm.inputs import EncodedRequest, encode_request
from arr_coc.vlm.loading import LoadedVLM
from arr_coc.vlm.pruning import LLMRow, VisionFeatures, encode_images, encoder_outputs, full_positions, prune_row
from arr_coc.vlm.sampling import RowDecoder
from arr_coc.vlm.types import GenerationParams

TEACHERS = ("attention", "attribution")


class TeacherConfig(BaseModel):
    """How a teacher map is computed (part of the distillation run's config)."""

    model_config = ConfigDict(extra="forbid")

    teacher: Literal["attention", "attribution"] = Field("attribution", description="attention or attribution")
    answer_tokens: int = Field(8, ge=1, description="most tokens of the model's own greedy answer")
    layers: tuple[float, float] = Field(
        (0.25, 0.75), description="attention: the decoder layers [lo * n, hi * n) whose attention is averaged"
    )
    sink_ratio: float = Field(
        20.0, gt=1, description="attention: a visual token whose hidden norm is this many medians is a sink"
    )

    @field_validator("layers")
    @classmethod
    def _fraction_range(cls, layers: tuple[float, float]) -> tuple[float, float]:
        lo, hi = layers
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"layers must be fractions 0 <= lo < hi <= 1, got {layers}")
        return layers


@dataclass
class TeacherMap:
    """One sample's teacher: ``relevance [H', W']`` float32 in [0, 1] and the all-token answer it explains."""

    relevance: torch.Tensor
    answer_ids: list[int]
    grid: tuple[int, int]


@dataclass
class _FullRow:
    """The all-token prompt of one sample, its features and the model's greedy answer."""

    encoded: EncodedRequest
    row: LLMRow
    answer_ids: list[int]
    grid: tuple[int, int]

    def sequence(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids [1, L + A]`` and ``position_ids [3, 1, L + A]``: the prompt, then the answer's ids."""
        answer = torch.tensor(self.answer_ids, dtype=torch.long)
        start = self.row.positions[:, -1].max() + 1
        answer_positions = (start + torch.arange(len(self.answer_ids))).expand(3, -1)
        ids = torch.cat([self.row.input_ids, answer])
        positions = torch.cat([self.row.positions, answer_positions], dim=1)
        return ids[None].to(device), positions[:, None].to(device)

    @property
    def image_slots(self) -> torch.Tensor:
        """``[N]`` sequence positions of the visual tokens, raster order."""
        return torch.nonzero(self.encoded.mm_token_type_ids == 1).flatten()


def layer_range(layers: tuple[float, float], count: int) -> range:
    """Decoder layer indices ``[lo * count, hi * count)``, at least one."""
    lo = min(int(layers[0] * count), count - 1)
    return range(lo, max(lo + 1, int(round(layers[1] * count))))


@torch.no_grad()
def _full_row(vlm: LoadedVLM, image: Image.Image, question: str, answer_tokens: int) -> _FullRow:
    encoded = encode_request(vlm.processor, image, question, vlm.context_length, answer_tokens)
    vision = encode_images(vlm, [encoded.pixel_values], [encoded.image_grid_thw])[0]
    positions = full_positions(vlm, encoded.input_ids, encoded.mm_token_type_ids, encoded.image_grid_thw)
    everything = torch.arange(vision.features.shape[0])
    row = prune_row(encoded.input_ids, positions, encoded.mm_token_type_ids, vision, everything)
    decoder = RowDecoder(vlm.tokenizer, GenerationParams(max_new_tokens=answer_tokens), vlm.eos_token_ids, vlm.device)
    answer = [t for event in generate_rows(vlm, [row], [decoder]) for t in event.tokens if t is not None]
    return _FullRow(encoded, row, answer, merged_grid(encoded.image_grid_thw, vlm.merge_size))


def _decoder_layers(vlm: LoadedVLM) -> torch.nn.ModuleList:
    return vlm.model.model.language_model.layers


@contextmanager
def _eager_text_attention(vlm: LoadedVLM) -> Iterator[None]:
    """The LLM attends with the eager implementation (the one that returns its weights) inside the block."""
    config = vlm.model.model.language_model.config
    previous = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = previous


def visual_attention(attention: torch.Tensor, norms: torch.Tensor, sink_ratio: float) -> torch.Tensor:
    """``attention [H, R, N]`` of R query rows to N visual tokens, sinks dropped, each (head, row) summing to 1.

    norms: ``[N]`` the visual tokens' hidden-state norms at the layer's input; a token at
    ``sink_ratio`` times their median or more is a sink and gets 0.
    """
    sinks = norms >= sink_ratio * norms.median()
    attention = attention.masked_fill(sinks, 0.0)
    return attention / attention.sum(-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def attention_relevance(vlm: LoadedVLM, full: _FullRow, config: TeacherConfig) -> torch.Tensor:
    """``[N]`` mean attention of the text after the image to each visual token (see the module doc)."""
    layers = _decoder_layers(vlm)
    chosen = layer_range(config.layers, len(layers))
    slots = full.image_slots.to(vlm.device)
    captured: dict[int, torch.Tensor] = {}

    residual: dict[int, torch.Tensor] = {}

    def keep_residual(index: int):
        def capture(module, args, kwargs) -> None:
            residual[index] = kwargs.get("hidden_states", args[0] if args else None)

        return capture

    def keep_weights(index: int):
        def capture(module, args, kwargs, output) -> None:
            captured[index] = output[1]

        return capture

    handles = [layers[i].register_forward_pre_hook(keep_residual(i), with_kwargs=True) for i in chosen]
    handles += [layers[i].self_attn.register_forward_hook(keep_weights(i), with_kwargs=True) for i in chosen]
    ids, positions = full.sequence(vlm.device)
    try:
        with _eager_text_attention(vlm):
            vlm.model(
                input_ids=ids,
                position_ids=positions,
                mm_encoder_outputs=encoder_outputs(vlm, [full.row]),
                use_cache=False,
            )
    finally:
        for handle in handles:
            handle.remove()
    after_image = int(slots[-1]) + 1
    total = torch.zeros(slots.numel(), device=vlm.device)
    for index in chosen:
        weights, hidden = captured[index], residual[index]  # [1, H, L, L], [1, L, D] (the layer's input)
        attention = weights[0, :, after_image:, :][:, :, slots].float()  # [H, rows, N]
        norms = hidden[0, slots].float().norm(dim=-1)  # [N]
        total += visual_attention(attention, norms, config.sink_ratio).mean(dim=(0, 1))
    return total / len(chosen)


def attribution_relevance(vlm: LoadedVLM, full: _FullRow) -> torch.Tensor:
    """``[N]`` ``|x . d log p(answer) / dx|`` over each visual token's merger output (and DeepStack features)."""
    vision = full.row.vision
    features = vision.features.detach().clone().requires_grad_(True)
    deepstack = (
        None if vision.deepstack is None else [d.detach().clone().requires_grad_(True) for d in vision.deepstack]
    )
    row = LLMRow(full.row.input_ids, full.row.positions, VisionFeatures(features, deepstack))
    ids, positions = full.sequence(vlm.device)
    prompt = full.row.length
    with torch.enable_grad():
        logits = vlm.model(
            input_ids=ids, position_ids=positions, mm_encoder_outputs=encoder_outputs(vlm, [row]), use_cache=False
        ).logits[0, prompt - 1 : -1]  # [A, V]: the logits that chose each answer token
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        answer = torch.tensor(full.answer_ids, device=log_probs.device)
        score = log_probs.gather(1, answer[:, None]).sum()
        inputs = [features] + (deepstack or [])
        grads = torch.autograd.grad(score, inputs)
    contribution = sum((x.float() * g.float()).sum(-1) for x, g in zip(inputs, grads))
    return contribution.abs().detach()


def teacher_map(vlm: LoadedVLM, image: Image.Image, question: str, config: TeacherConfig) -> TeacherMap:
    """The teacher's ``[H', W']`` map of one (image, question), scaled to [0, 1]."""
    full = _full_row(vlm, image, question, config.answer_tokens)
    if config.teacher == "attention":
        relevance = attention_relevance(vlm, full, config)
    else:
        relevance = attribution_relevance(vlm, full)
    relevance = relevance / relevance.max().clamp_min(1e-12)
    return TeacherMap(relevance.reshape(full.grid).float().cpu(), full.answer_ids, full.grid)
