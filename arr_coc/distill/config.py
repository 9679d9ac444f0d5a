"""Parameters of ``arr-coc distill-scorer``: scorer training plus where the pairs and the teacher come from."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from arr_coc.distill.maps import parse_shard
from arr_coc.distill.teachers import TeacherConfig
from arr_coc.training.config import TrainConfig, validate


class DistillConfig(TrainConfig):
    """Everything one distillation run depends on (the W&B run config).

    Pairs come from ``questions`` (a JSONL file), or ``images`` (a folder) with
    ``self_questions`` written by the VLM or, for the embedded testbed, the task's
    question templates; with neither, from the synthetic task's training split
    (``dataset``, ``train_size``; its labels then only evaluate).
    """

    teacher: str = Field("attention", description="attention, attribution, or labels (the synthetic task's masks)")
    images: str = Field("", description="folder of images to distil from")
    questions: str = Field("", description='JSONL file of {"image": path, "question": text} lines')
    self_questions: int = Field(0, ge=0, description="questions the VLM writes per image of `images` (0: none)")
    question_prompt: str = Field("", description="what the VLM is asked to write questions with (empty: default)")
    heldout_share: float = Field(0.1, gt=0, lt=1, description="share of the user's pairs held out for recall")
    shard: str = Field("", description="K/N: compute only this shard's teacher maps, then stop")
    maps: str = Field("", description="folder of teacher-map shards (default: <out>/teacher-maps)")
    answer_tokens: int = Field(8, ge=1, description="most tokens of the model's own all-token answer")
    teacher_layers: tuple[float, float] | Literal["auto"] = Field(
        "auto", description="attention: decoder layer fraction range, or auto (chosen by answer fidelity)"
    )
    layer_probe: int = Field(32, ge=1, description="attention with auto layers: pairs the choice is made on")
    sink_ratio: float = Field(20.0, gt=1, description="attention: hidden-norm multiple of the median that is a sink")
    out: str = Field("distilled-scorer", description="directory of the distilled scorer checkpoint")

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.teacher not in ("labels", "attention", "attribution"):
            raise ValueError(f"teacher must be attention, attribution or labels, got {self.teacher!r}")
        if self.images and self.questions:
            raise ValueError("give images or questions, not both")
        if self.self_questions and not self.images:
            raise ValueError("self_questions writes questions about `images`; give an image folder")
        if self.teacher == "labels" and (self.images or self.questions):
            raise ValueError("the labels teacher needs the synthetic task's masks; user images have none")
        if self.shard:
            parse_shard(self.shard)
        if self.teacher_layers != "auto":
            TeacherConfig(teacher="attention", layers=self.teacher_layers, sink_ratio=self.sink_ratio)
        return self

    def teacher_config(self, layers: tuple[float, float] | None = None) -> TeacherConfig:
        """The :class:`TeacherConfig` of a model teacher (not ``labels``); ``layers`` resolves ``auto``."""
        chosen = layers or (self.teacher_layers if self.teacher_layers != "auto" else None)
        return TeacherConfig(
            teacher=self.teacher,
            answer_tokens=self.answer_tokens,
            sink_ratio=self.sink_ratio,
            **({"layers": chosen} if chosen else {}),
        )

    @property
    def user_data(self) -> bool:
        return bool(self.images or self.questions)


def distill_config(*layers: Mapping[str, Any]) -> DistillConfig:
    """The validated :class:`DistillConfig` of defaults < each layer (file, flags, overrides)."""
    return validate(DistillConfig, *layers)
