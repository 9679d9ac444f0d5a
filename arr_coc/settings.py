"""The library's settings: which VLM and relevance scorer to load, and how to run them.

Every field reads the environment variable ``ARR_COC_<FIELD>`` (upper case), e.g.
``ARR_COC_MODEL=Qwen/Qwen2.5-VL-3B-Instruct`` or ``ARR_COC_DECODE=graph``. Defaults
load the embedded testbed model on CPU; ``bentofile.yaml`` sets the production values
for the container. The server reads these through its own settings, which add what
only a server needs (``serving.settings``).

A model without a trained scorer (a model other than the shipped testbed and no
``ARR_COC_SCORER``) has the ``arr-coc`` variants select with random weights:
:attr:`Settings.scorer_state` says so.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from arr_coc.vocabulary import (
    DECODE_MODES,
    DEVICE_HELP,
    DTYPE_HELP,
    SCORER_STATES,
    TESTBED_FAMILIES,
    device_name,
    dtype_name,
)

EMBEDDED_TESTBED = TESTBED_FAMILIES[0]
"""The shipped, trained testbed: the one model served with a trained scorer by default."""
ENV_CONFIG = SettingsConfigDict(env_prefix="ARR_COC_", extra="ignore", protected_namespaces=())
"""How every ARR-COC settings class reads the environment: field ``x`` from ``ARR_COC_X``."""


class Settings(BaseSettings):
    """The models to load and how to run them; every variable is in the docs (docs/settings.md)."""

    model_config = ENV_CONFIG

    model: str = Field("", description="VLM hub id or local directory; empty = the embedded testbed")
    testbed_family: Literal[TESTBED_FAMILIES] = Field(
        "qwen2.5-vl-vqa",
        description="the testbed served when no model is named: 'qwen2.5-vl-vqa' (shipped, trained on the "
        "synthetic VQA task, with its trained scorer) or a family's random-weight testbed",
    )
    home: Path = Field(Path.home() / ".cache" / "arr-coc", description="where testbed models are built")
    scorer: str = Field(
        "",
        description="relevance-scorer checkpoint directory; empty = the shipped scorer with the shipped testbed, "
        "else untrained (seeded)",
    )
    device: Annotated[str, AfterValidator(device_name)] = Field("auto", description=DEVICE_HELP)
    dtype: Annotated[str, AfterValidator(dtype_name)] = Field("auto", description=DTYPE_HELP)
    decode: Literal[DECODE_MODES] = Field(
        "auto",
        description="decode loop: 'auto' (graph on CUDA, eager on CPU), 'eager' (growing KV cache), 'static' "
        "(static KV cache per batch bucket), 'graph' (static cache + one captured CUDA graph per bucket)",
    )
    feature_cache_mb: float = Field(
        256, ge=0, description="MB of vision-tower outputs kept by image content for further questions (0 = off)"
    )
    torch_threads: int = Field(
        0, ge=0, description="CPU threads of each model runner's torch ops; 0 = the cores shared by the two runners"
    )
    warm_up: bool = Field(True, description="run warm-up batches (and capture decode graphs) before /readyz is ready")
    warm_cache_tokens: int = Field(
        2048, ge=1, description="with graph decode, warm-up captures every batch bucket up to this cache length"
    )

    @property
    def scorer_trained(self) -> bool:
        """Whether the runners load a trained scorer: ``scorer`` names a checkpoint, or the shipped testbed is
        served with its shipped scorer (what :func:`model_store.sources.scorer_source` loads)."""
        return bool(self.scorer) or (not self.model and self.testbed_family == EMBEDDED_TESTBED)

    @property
    def scorer_state(self) -> Literal[SCORER_STATES]:
        """``"trained"`` or ``"untrained"`` (seeded random weights)."""
        return "trained" if self.scorer_trained else "untrained"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
