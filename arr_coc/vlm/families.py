"""The supported Qwen-VL families and what differs between them.

Every family shares one answering path (processor -> vision tower -> merger ->
LLM with 3-row M-RoPE); a :class:`Family` records only the differences: the
transformers ``model_type`` and classes, the vision patch size, and whether the
vision tower also emits DeepStack features (Qwen3-VL) that must be pruned with the
same indices as the merger outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import transformers

from arr_coc.errors import UnsupportedModelError


@dataclass(frozen=True)
class Family:
    """One Qwen-VL family.

    name: the CLI / settings name, e.g. ``qwen2.5-vl``.
    model_type: ``config.model_type`` of its checkpoints, e.g. ``qwen2_5_vl``.
    patch_size: vision patch side in pixels (a merged token covers ``2 * patch_size``).
    deepstack: the vision tower returns per-layer DeepStack features.
    """

    name: str
    model_type: str
    model_class: str
    config_class: str
    processor_class: str
    video_processor_class: str
    patch_size: int
    deepstack: bool

    def model_cls(self) -> type:
        return getattr(transformers, self.model_class)

    def config_cls(self) -> type:
        return getattr(transformers, self.config_class)

    def processor_cls(self) -> type:
        return getattr(transformers, self.processor_class)

    def video_processor_cls(self) -> type:
        return getattr(transformers, self.video_processor_class)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "qwen2-vl",
            "qwen2_vl",
            "Qwen2VLForConditionalGeneration",
            "Qwen2VLConfig",
            "Qwen2VLProcessor",
            "Qwen2VLVideoProcessor",
            patch_size=14,
            deepstack=False,
        ),
        Family(
            "qwen2.5-vl",
            "qwen2_5_vl",
            "Qwen2_5_VLForConditionalGeneration",
            "Qwen2_5_VLConfig",
            "Qwen2_5_VLProcessor",
            "Qwen2VLVideoProcessor",
            patch_size=14,
            deepstack=False,
        ),
        Family(
            "qwen3-vl",
            "qwen3_vl",
            "Qwen3VLForConditionalGeneration",
            "Qwen3VLConfig",
            "Qwen3VLProcessor",
            "Qwen3VLVideoProcessor",
            patch_size=16,
            deepstack=True,
        ),
    )
}

BY_MODEL_TYPE: dict[str, Family] = {f.model_type: f for f in FAMILIES.values()}


def family_by_name(name: str) -> Family:
    """The family called ``name`` (``qwen2-vl``, ``qwen2.5-vl``, ``qwen3-vl``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}", field="family") from None


def family_of_model_type(model_type: str) -> Family:
    """The family whose checkpoints have ``config.model_type == model_type``."""
    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not a supported Qwen-VL family; supported: {', '.join(BY_MODEL_TYPE)}",
            field="model",
        ) from None
