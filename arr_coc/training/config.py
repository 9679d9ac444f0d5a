"""Parameters of scorer training, from a config file, the command line and overrides.

Precedence, lowest first: the defaults below, the ``--config`` file (JSON or
YAML), command-line flags, then overrides from outside (W&B Launch or a sweep,
applied by ``training_hooks``). Every layer is validated by :class:`TrainConfig`,
so a bad value is an :class:`InvalidConfigError` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from arr_coc.errors import ArrCocInputError, InvalidConfigError
from arr_coc.selection import check_method, resolve_budget
from arr_coc.tasks import check_dataset
from arr_coc.vocabulary import PRUNING_METHODS


class TrainConfig(BaseModel):
    """Everything one training run depends on (the W&B run config)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    steps: int = Field(300, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="samples per step")
    lr: float = Field(3e-3, gt=0, description="AdamW peak learning rate (cosine decay to 10 %)")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(10, ge=0)
    dataset: str = Field("vqa", description="training data: vqa (the synthetic VQA task) or synthetic")
    train_size: int = Field(512, ge=1, description="training samples")
    heldout_size: int = Field(128, ge=1, description="held-out samples for recall@budget")
    image_size: int = Field(336, ge=56, description="side of the synthetic images, pixels")
    seed: int = Field(0, ge=0, description="seeds data, initial weights and batch order")
    bce_weight: float = Field(1.0, ge=0, description="weight of the class-balanced BCE term")
    rank_weight: float = Field(1.0, ge=0, description="weight of the pairwise ranking term")
    rank_temperature: float = Field(0.1, gt=0, description="softness of the ranking term")
    balancer_warmup_steps: int = Field(
        0,
        ge=0,
        description="steps the balancer keeps its equal mix while the maps learn (else it can settle on a "
        "question-blind map before the participatory one reads the question, and its softmax never recovers)",
    )
    participatory_weight: float = Field(
        1.0, ge=0, description="weight of the same loss on the question-conditioned (participatory) map alone"
    )
    explore_samples: int = Field(
        1000, ge=0, description="training samples the exploration weight is fitted on, after the loop (0: not fitted)"
    )
    teacher: Literal["labels", "attention", "attribution"] = Field(
        "labels", description="what the scorer learns: the task's target masks, or the VLM's attention or attribution"
    )
    teacher_top: float = Field(
        0.1, gt=0, le=1, description="share of a teacher map's highest tokens the BCE term treats as relevant"
    )
    hidden: int = Field(32, ge=1, description="scorer hidden width")
    embed_dim: int = Field(32, ge=1, description="scorer cell/query embedding width")
    stem_channels: int = Field(16, ge=0, description="shape-stem features per token (0: no shape stem)")
    stem_pixels_per_cell: int = Field(
        4, ge=4, multiple_of=4, description="pixels per token side the shape stem reads (4: the texture's own)"
    )
    methods: list[str] = Field(list(PRUNING_METHODS))
    budgets: list[float] = Field([0.1, 0.25, 0.5], min_length=1, description="kept ratios for recall@budget")
    heatmap_every: int = Field(100, ge=0, description="steps between heatmap images (0 = only at the end)")
    eval_every: int = Field(0, ge=0, description="steps between held-out recall evaluations (0 = only at the end)")
    model: str = Field("", description="VLM hub id or directory; empty = the embedded testbed")
    out: str = Field("scorer-checkpoint", description="directory of the trained scorer checkpoint")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, dataset: str) -> str:
        return check_dataset(dataset)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("at least one method")
        for method in methods:
            check_method(method)
        return methods

    @field_validator("budgets")
    @classmethod
    def _ratios(cls, budgets: list[float]) -> list[float]:
        for budget in budgets:
            if isinstance(budget, int) and not isinstance(budget, bool) and budget != 1:
                raise ValueError(f"budgets are ratios in (0, 1], got {budget}")
            resolve_budget(float(budget), 1)
        return [float(b) for b in budgets]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a ``.json``, ``.yaml`` or ``.yml`` file; :class:`InvalidConfigError` if unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise InvalidConfigError(f"cannot read {path}: {error.strerror}", field="config") from error
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise InvalidConfigError(f"{path} does not parse: {error}", field="config") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidConfigError(f"{path} must hold a mapping of parameters, got {type(data).__name__}", field="config")
    return data


def validate(model: type[BaseModel], *layers: Mapping[str, Any]) -> BaseModel:
    """``model`` built from ``layers`` merged left to right; errors become :class:`InvalidConfigError`."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    try:
        return model.model_validate(merged)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        raise InvalidConfigError(first["msg"], field=field) from None
    except ArrCocInputError as error:
        raise InvalidConfigError(error.detail, field=error.field or "config") from None


def train_config(
    file_values: Mapping[str, Any] = {}, cli_values: Mapping[str, Any] = {}, overrides: Mapping[str, Any] = {}
) -> TrainConfig:
    """The validated :class:`TrainConfig` of defaults < file < command line < overrides."""
    return validate(TrainConfig, file_values, cli_values, overrides)
