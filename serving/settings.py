"""The server's settings: one object for the front service and both runners.

:class:`ServerSettings` inherits the library's :class:`arr_coc.settings.Settings`
(which model and scorer, device, dtype, decode, feature cache, warm-up, torch
threads) and :class:`training_hooks.tracking.settings.TrackingSettings` (W&B), and
adds what only the server reads: access control, the default variant and the
traffic split, request
limits, timeouts and the drain, the runners' batching, workers and GPU shares, and
the VLM runner's scheduler; and :class:`arr_coc.pricing.PricingSettings` (what an
answer costs). Every field reads ``ARR_COC_<FIELD>`` (upper case), e.g.
``ARR_COC_VLM_MAX_BATCH_SIZE=16``; ``bentofile.yaml`` sets the production values.

A served model without a trained scorer (a model other than the shipped testbed and
no ``ARR_COC_SCORER``) would have the ``arr-coc`` variants select with random
weights: :attr:`arr_coc.settings.Settings.scorer_state` says so (``/v1/models``,
answers, serve runs, the start-up log), and unless ``ARR_COC_DEFAULT_VARIANT`` is set
the default variant is :data:`TRAINING_FREE_DEFAULT` instead.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from arr_coc.pricing import Instance, PricingSettings
from arr_coc.settings import Settings
from arr_coc.vocabulary import TRAIN_SCORER_COMMAND
from serving.traffic import TrafficSplit
from training_hooks.tracking.settings import TrackingSettings

TRAINING_FREE_DEFAULT = "divprune-25"
"""The default variant when the served model has no trained scorer: DivPrune (diversity over the tower's own
features, no training) is the strongest training-free method of the quality table at small budgets, at the
budget of the default ``arr-coc-25``."""


class ServerSettings(Settings, TrackingSettings, PricingSettings):
    """The service's configuration; every variable is in the docs (docs/settings.md)."""

    # Serving
    api_key: SecretStr = Field(
        SecretStr(""),
        description="API key(s), comma-separated: when set, every route but /livez, /readyz and /metrics needs "
        "'Authorization: Bearer <key>'; empty = no access control",
    )
    default_variant: str = Field(
        "arr-coc-25",
        description=f"variant served when a request names none; when unset and the model has no trained scorer, "
        f"{TRAINING_FREE_DEFAULT} (training-free)",
    )
    traffic: str = Field(
        "",
        description="A/B split of the requests that name no variant, e.g. 'arr-coc-25=0.5,full=0.5' (registered "
        "variants, positive weights); sticky per caller (API key, else X-Arr-Coc-User); empty = the default variant",
    )
    max_image_bytes: int = Field(20 * 1024 * 1024, gt=0, description="largest accepted image, in bytes")
    max_image_pixels: int = Field(40_000_000, gt=0, description="largest accepted image, in pixels (w*h)")
    max_question_chars: int = Field(2000, gt=0, description="longest accepted question, in characters")
    max_new_tokens_limit: int = Field(512, gt=0, description="largest max_new_tokens a request may ask for")
    default_max_new_tokens: int = Field(32, gt=0, description="max_new_tokens when a request names none")
    image_url_hosts: str = Field(
        "", description="comma-separated hosts whose http(s) image URLs /v1/chat/completions may fetch; empty = none"
    )
    max_concurrency: int = Field(32, ge=1, description="model requests in flight per front worker; more get 429")
    stream_idle_timeout_s: float = Field(60.0, gt=0, description="longest wait for a stream's next event, in seconds")
    client_idle_timeout_s: float = Field(
        30.0, gt=0, description="longest wait for the next part of a request body, in seconds; slower clients get 408"
    )
    drain_timeout_s: float = Field(
        5.0,
        ge=0,
        description="on SIGTERM, the longest wait for requests in flight (new ones get 503 meanwhile); W&B then gets "
        "what is left of Cloud Run's 10 s grace",
    )

    # Runners: adaptive batching, workers, resources
    # BentoML rejects (503) a request it expects to exceed max_latency_ms, so these are
    # latency ceilings, not batching windows: the dispatcher sizes its windows itself.
    relevance_max_batch_size: int = Field(
        16, ge=1, description="relevance runner: adaptive batches of at most this many images (1 = off)"
    )
    relevance_max_latency_ms: int = Field(
        20_000,
        ge=1,
        description="relevance runner: latency ceiling of adaptive batching, in ms (BentoML answers 503 past it)",
    )
    vlm_max_batch_size: int = Field(
        8, ge=1, description="VLM runner, batch scheduler: adaptive batches of at most this many requests (1 = off)"
    )
    vlm_max_latency_ms: int = Field(
        120_000, ge=1, description="VLM runner, batch scheduler: latency ceiling of adaptive batching, in ms"
    )
    scheduler: Literal["step", "batch"] = Field(
        "step",
        description="VLM runner: 'step' (requests join and leave one running decode batch between steps, "
        "streams included) or 'batch' (each adaptive batch runs to its end; streams decode alone)",
    )
    vlm_rows: int = Field(16, ge=1, description="step scheduler: most requests decoding at once")
    vlm_cache_tokens: int = Field(
        2048, ge=2, description="step scheduler: KV slots per row (prompt + answer); longer requests decode alone"
    )
    vlm_prefill_tokens: int = Field(
        8192, ge=1, description="step scheduler: most prompt tokens prefilled between two decode steps"
    )
    relevance_workers: int = Field(1, ge=1, description="relevance runner processes")
    vlm_workers: int = Field(1, ge=1, description="VLM runner processes (each loads the model)")
    runner_timeout_s: int = Field(300, ge=1, description="request timeout of each runner, in seconds")
    relevance_gpu: float = Field(0.0, ge=0, description="GPU share of the relevance runner (0 = none)")
    vlm_gpu: float = Field(0.0, ge=0, description="GPU share of the VLM runner (0 = none)")

    _training_free_default: bool = PrivateAttr(False)

    @field_validator("traffic")
    @classmethod
    def _valid_split(cls, value: str) -> str:
        TrafficSplit.parse(value)  # raises on an unknown variant or a weight that is not positive
        return value

    @cached_property
    def traffic_split(self) -> TrafficSplit | None:
        """The parsed :attr:`traffic`; ``None`` when requests that name no variant get :attr:`default_variant`."""
        return TrafficSplit.parse(self.traffic)

    @cached_property
    def served_instance(self) -> Instance:
        """The instance answers are priced on: one GPU when a runner holds a GPU share (unless set otherwise)."""
        return self.instance(on_gpu=self.vlm_gpu > 0 or self.relevance_gpu > 0)

    @model_validator(mode="after")
    def _no_random_default(self) -> ServerSettings:
        """Without a trained scorer, a default variant nobody chose never selects with random weights."""
        if not self.scorer_trained and "default_variant" not in self.model_fields_set:
            self.default_variant = TRAINING_FREE_DEFAULT
            self._training_free_default = True
        return self

    @property
    def training_free_default(self) -> bool:
        """Whether :attr:`default_variant` is :data:`TRAINING_FREE_DEFAULT` because there is no trained scorer."""
        return self._training_free_default

    def untrained_scorer_notice(self) -> str | None:
        """One sentence for people (start-up log, ``/v1/models``, the web page) when the scorer is untrained."""
        if self.scorer_trained:
            return None
        model = self.model or f"the {self.testbed_family} testbed"
        why = "training-free" if self._training_free_default else "ARR_COC_DEFAULT_VARIANT"
        command = TRAIN_SCORER_COMMAND.replace("<id>", self.model) if self.model else TRAIN_SCORER_COMMAND
        return (
            f"{model} has no trained relevance scorer: the arr-coc variants select with an untrained scorer "
            f"(random weights). The default variant is {self.default_variant} ({why}). Train a scorer with "
            f"`{command}` and serve it with ARR_COC_SCORER=DIR."
        )


@lru_cache(maxsize=1)
def get_server_settings() -> ServerSettings:
    """The process-wide server settings, read once from the environment."""
    return ServerSettings()
