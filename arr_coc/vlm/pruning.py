"""Visual features of all tokens, and the pruned LLM sequence of the kept ones.

The vision tower and merger run once over every patch of every image
(``get_image_features(...).pooler_output``, ``[N, D]`` per image; Qwen3-VL also
gives DeepStack features, one ``[N, D]`` per DeepStack layer). After selection,
:func:`prune_row` drops the image-pad tokens that were not kept from
``input_ids`` and slices the model's own 3-row M-RoPE position ids of the FULL
sequence at the kept positions: every kept visual token keeps its original
(t, h, w) position and the text after the image keeps its original positions, so
nothing is renumbered. The features and DeepStack features are sliced with the
same indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from arr_coc.vlm.loading import LoadedVLM


@dataclass
class VisionFeatures:
    """Merger outputs of one image: ``features [N, D]``; ``deepstack`` a list of ``[N, D]`` or ``None``."""

    features: torch.Tensor
    deepstack: list[torch.Tensor] | None

    def select(self, kept: torch.Tensor) -> VisionFeatures:
        """The rows ``kept [K]`` (raster indices) of every feature map."""
        index = kept.to(self.features.device)
        deepstack = None if self.deepstack is None else [d[index] for d in self.deepstack]
        return VisionFeatures(self.features[index], deepstack)


@dataclass
class LLMRow:
    """What the LLM receives for one request (no batch dimension).

    input_ids: ``[L']`` with only the kept image-pad tokens, ``L' = L - N + K``.
    positions: ``[3, L']`` the stock M-RoPE ids at the kept positions.
    vision: features of the ``K`` kept tokens, in raster order.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    vision: VisionFeatures

    @property
    def length(self) -> int:
        return int(self.input_ids.numel())


def encode_images(
    vlm: LoadedVLM, pixel_values: list[torch.Tensor], grids_thw: list[torch.Tensor]
) -> list[VisionFeatures]:
    """One vision-tower pass over all images (attention never crosses images).

    Gradients flow when the caller enables them (testbed training); serving calls it under ``no_grad``.

    pixel_values: per image ``[P_b, C * T * p * p]``; grids_thw: per image ``[3]``.
    Returns per image ``N_b = P_b / m^2`` merged features.
    """
    model = vlm.model
    pixels = torch.cat(pixel_values).to(vlm.device)
    thw = torch.stack([g.reshape(3) for g in grids_thw]).to(vlm.device)
    out = model.get_image_features(pixels, thw, return_dict=True)
    features = list(out.pooler_output)
    deepstack = getattr(out, "deepstack_features", None) if vlm.family.deepstack else None
    result = []
    for i, feats in enumerate(features):
        layers = None if deepstack is None else [layer[i] for layer in deepstack]
        result.append(VisionFeatures(feats, layers))
    return result


@torch.no_grad()
def full_positions(
    vlm: LoadedVLM, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor, image_grid_thw: torch.Tensor
) -> torch.Tensor:
    """``[3, L]`` M-RoPE ids of the full (unpruned) sequence from the model's own ``get_rope_index``."""
    positions, _ = vlm.model.model.get_rope_index(
        input_ids[None],
        mm_token_type_ids=mm_token_type_ids[None],
        image_grid_thw=image_grid_thw.reshape(1, 3),
    )
    return positions[:, 0]


def prune_row(
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    mm_token_type_ids: torch.Tensor,
    vision: VisionFeatures,
    kept: torch.Tensor,
    vision_is_kept: bool = False,
) -> LLMRow:
    """Keep all text tokens and the image tokens ``kept [K]`` (raster indices into the N image tokens).

    ``vision`` holds all ``N`` tokens' features, or with ``vision_is_kept`` only the
    ``K`` kept ones (the tower ran on them alone: ``stage = "pre"``).
    """
    image_slots = torch.nonzero(mm_token_type_ids == 1).flatten()
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    keep[image_slots] = False
    keep[image_slots[kept.to(image_slots.device)]] = True
    kept_vision = vision if vision_is_kept else vision.select(kept)
    return LLMRow(input_ids=input_ids[keep], positions=positions[:, keep], vision=kept_vision)


def encoder_outputs(vlm: LoadedVLM, rows: list[LLMRow]) -> dict[str, BaseModelOutputWithPooling]:
    """``mm_encoder_outputs`` for a forward over ``rows`` (row order = image order)."""
    features = tuple(row.vision.features for row in rows)
    if not vlm.family.deepstack:
        return {"image": BaseModelOutputWithPooling(pooler_output=features)}
    layers = len(rows[0].vision.deepstack)
    deepstack = [tuple(row.vision.deepstack[j] for row in rows) for j in range(layers)]
    return {"image": BaseModelOutputWithDeepstackFeatures(pooler_output=features, deepstack_features=deepstack)}
