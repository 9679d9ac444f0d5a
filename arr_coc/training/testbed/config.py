"""The parameters of one testbed training run (:class:`TrainTestbedConfig`, logged as the W&B run config).

Defaults < config file < flags < W&B Launch overrides, validated by :func:`train_testbed_config`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from arr_coc.training.config import validate
from arr_coc.vlm.growth import Growth
from arr_coc.vocabulary import QUESTION_KINDS, QuestionKind


class TrainTestbedConfig(BaseModel):
    """Everything one testbed training run depends on (the W&B run config)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    steps: int = Field(2400, ge=1, description="optimizer steps")
    batch_size: int = Field(24, ge=1, description="examples per step")
    lr: float = Field(2e-3, gt=0, description="AdamW peak learning rate (cosine decay to 5 %)")
    vision_lr_scale: float = Field(1.0, gt=0, description="learning-rate factor of the vision tower")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(100, ge=0)
    min_keep: float = Field(0.1, gt=0, le=1, description="smallest kept share of visual tokens (augmentation)")
    pre_share: float = Field(0.5, ge=0, le=1, description="share of examples whose tokens are dropped before the tower")
    target_share: float = Field(
        0.0, ge=0, le=1, description="share of examples keeping most target tokens and few others (small budgets)"
    )
    target_extra: float = Field(0.1, ge=0, le=1, description="largest share of non-target tokens those examples keep")
    distractors: bool = Field(
        False, description="those examples take their non-target tokens from the other objects first (look-alikes)"
    )
    kinds: tuple[QuestionKind, ...] = Field(
        QUESTION_KINDS,
        min_length=1,
        description="question kinds drawn for training; one listed twice is drawn twice as often",
    )
    balance_counts: bool = Field(False, description="the probe's same-colour count head weighs every count equally")
    freeze_embeddings: bool = Field(
        False, description="keep the input embeddings (the shipped scorer's queries) fixed while fine-tuning"
    )
    init: str = Field("", description="checkpoint to start from (fine-tuning); empty = random weights from seed")
    probe_weight: float = Field(0.5, ge=0, description="weight of the per-token probe loss on the vision tower")
    probe_pre: bool = Field(
        False, description="probe the kept tokens of the examples dropped before the tower too (visible counts)"
    )
    hint_weight: float = Field(0.5, ge=0, description="weight of the LLM's hints (two attention maps, one read-out)")
    seed: int = Field(0, ge=0, description="seeds the initial weights, the data order and the token dropping")
    heldout_size: int = Field(96, ge=1, description="held-out samples answered at each evaluation")
    eval_every: int = Field(400, ge=0, description="steps between held-out evaluations (0 = only at the end)")
    workers: int = Field(1, ge=0, description="DataLoader workers drawing and processing scenes")
    growth: Growth = Field(
        default_factory=Growth, description="larger sizes for the init checkpoint (arr_coc.vlm.growth); 0 keeps"
    )
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|cuda(:\d+)?)$",
        description="where the model trains: cpu, cuda or cuda:N (data is drawn on CPU)",
    )
    stop_after: int = Field(0, ge=0, description="end the run after this many steps, whatever the schedule (0 = steps)")
    time_budget_s: float = Field(
        0.0, ge=0, description="stop early at this many seconds of training (0 = run all steps); see train_testbed"
    )
    out: str = Field("testbed-checkpoint", description="directory of the trained checkpoint")


def train_testbed_config(*layers) -> TrainTestbedConfig:
    """The validated config of defaults < ``layers`` (merged left to right)."""
    return validate(TrainTestbedConfig, *layers)
