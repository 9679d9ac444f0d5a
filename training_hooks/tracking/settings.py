"""W&B tracking settings: ``ARR_COC_WANDB``, ``ARR_COC_WANDB_PROJECT``, ``ARR_COC_WANDB_WINDOW_S``,
``ARR_COC_WANDB_SAMPLE_RATE``, ``ARR_COC_DEPLOYMENT``, ``ARR_COC_SCORER_ARTIFACT``.

They live with tracking, not with the server, because two sides read them: the
serving front (its serve runs: project, windows, sampled examples, deployment name,
the scorer's artifact in the run config) and the training and evaluation jobs (the
project their runs go to), and a job imports no serving code. The server's settings
inherit these (:class:`serving.settings.ServerSettings`); a job reads them alone
through :func:`get_tracking_settings`.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings

from arr_coc.settings import ENV_CONFIG


class TrackingSettings(BaseSettings):
    """Where and how often runs are logged to W&B."""

    model_config = ENV_CONFIG

    wandb: bool = Field(False, description="track with W&B even without WANDB_API_KEY (e.g. offline)")
    wandb_project: str = Field("arr-coc", description="W&B project of serve/train/eval runs")
    wandb_window_s: float = Field(30.0, gt=0, description="seconds per logged window of serve metrics")
    wandb_sample_rate: float = Field(0.01, ge=0, le=1, description="share of requests logged as table examples")
    deployment: str = Field("local", description="deployment name in W&B run names")
    scorer_artifact: str = Field("", description="W&B artifact name the scorer came from, for run configs")


@lru_cache(maxsize=1)
def get_tracking_settings() -> TrackingSettings:
    """The process-wide tracking settings, read once from the environment."""
    return TrackingSettings()
