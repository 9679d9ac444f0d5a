"""The learning-rate schedule: linear warm-up, then cosine decay to 5 % of the peak at the planned step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from arr_coc.training.testbed.config import TrainTestbedConfig


@dataclass
class Plan:
    """The number of steps a run takes: ``config.steps``, or fewer where a time budget says so."""

    steps: int


def schedule(config: TrainTestbedConfig, plan: Plan | None = None):
    """Linear warm-up, then cosine decay to 5 % of the peak at ``plan.steps`` (default ``config.steps``)."""
    plan = plan or Plan(config.steps)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, plan.steps - config.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
