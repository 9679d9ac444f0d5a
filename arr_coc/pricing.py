"""What an instance costs and what one answer costs on it.

Cloud Run bills an instance with a GPU for every resource it holds (the GPU, its
vCPUs, its memory) for as long as it is up: instance-based billing, the only billing
a GPU service has. An answer's cost is therefore the instance time it held:

    held_s  = its share of the runners' busy time (each batch's, or each decode
              step's, wall time divided among the requests in it), relevance + VLM
    dollars = held_s * (gpus * price_gpu_s + vcpus * price_vcpu_s + memory_gib * price_gib_s)

The defaults are Cloud Run's published prices for Tier 1 regions (us-central1,
europe-west1/4, us-east4), instance-based billing, an NVIDIA L4 without zonal
redundancy (``deploy/cloudrun/service.yaml`` turns it off), read from
https://cloud.google.com/run/pricing on 2026-12-04: L4 $0.0001867 per GPU-second
($0.672 per hour), $0.000018 per vCPU-second, $0.000002 per GiB-second. The
instance defaults are the manifest's (8 vCPUs, 32 GiB, one L4). Other regions,
committed-use discounts or zonal redundancy ($0.0002909 per L4-second): set
``ARR_COC_PRICE_*``.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings

from arr_coc.settings import ENV_CONFIG

PRICES_SOURCE = "https://cloud.google.com/run/pricing (Tier 1, instance-based billing, L4 without zonal redundancy)"
PRICES_READ_ON = "2026-12-04"


class PricingSettings(BaseSettings):
    """Prices per second of each resource, and the resources of one instance."""

    model_config = ENV_CONFIG

    price_gpu_s: float = Field(
        allow_inf_nan=False, default=0.0001867, ge=0, description="US$ per GPU-second (Cloud Run, NVIDIA L4, Tier 1)"
    )
    price_vcpu_s: float = Field(
        allow_inf_nan=False,
        default=0.000018,
        ge=0,
        description="US$ per vCPU-second (Cloud Run, instance-based, Tier 1)",
    )
    price_gib_s: float = Field(
        allow_inf_nan=False,
        default=0.000002,
        ge=0,
        description="US$ per GiB-second of memory (Cloud Run, instance-based)",
    )
    instance_gpus: int | None = Field(
        None, ge=0, description="GPUs per instance; unset = 1 when a runner has a GPU share, else 0"
    )
    instance_vcpus: float = Field(8.0, gt=0, description="vCPUs per instance (deploy/cloudrun/service.yaml)")
    instance_memory_gib: float = Field(
        32.0, gt=0, description="memory per instance, GiB (deploy/cloudrun/service.yaml)"
    )

    def instance(self, on_gpu: bool) -> Instance:
        """This instance's resources; ``on_gpu``: a runner holds a GPU share (when ``instance_gpus`` is unset)."""
        gpus = self.instance_gpus if self.instance_gpus is not None else int(on_gpu)
        return Instance(
            gpus=gpus,
            vcpus=self.instance_vcpus,
            memory_gib=self.instance_memory_gib,
            price_gpu_s=self.price_gpu_s,
            price_vcpu_s=self.price_vcpu_s,
            price_gib_s=self.price_gib_s,
        )


class Instance(BaseModel):
    """One instance's resources and their prices per second (US$)."""

    gpus: int = Field(1, ge=0)
    vcpus: float = Field(8.0, gt=0)
    memory_gib: float = Field(32.0, gt=0)
    price_gpu_s: float = Field(0.0001867, ge=0)
    price_vcpu_s: float = Field(0.000018, ge=0)
    price_gib_s: float = Field(0.000002, ge=0)

    @property
    def dollars_per_s(self) -> float:
        """What the instance costs per second it is up."""
        return self.gpus * self.price_gpu_s + self.vcpus * self.price_vcpu_s + self.memory_gib * self.price_gib_s

    def cost(self, held_s: float) -> AnswerCost:
        """The cost of holding this instance for ``held_s`` seconds."""
        return AnswerCost(
            held_s=held_s,
            gpu_s=held_s * self.gpus,
            vcpu_s=held_s * self.vcpus,
            gib_s=held_s * self.memory_gib,
            dollars=held_s * self.dollars_per_s,
        )


class AnswerCost(BaseModel):
    """What one answer cost: the instance seconds it held, and those seconds per resource, priced."""

    held_s: float = Field(..., ge=0, description="its share of the runners' busy time, seconds")
    gpu_s: float = Field(..., ge=0, description="GPU-seconds billed for it (0 on an instance without a GPU)")
    vcpu_s: float = Field(..., ge=0, description="vCPU-seconds billed for it")
    gib_s: float = Field(..., ge=0, description="GiB-seconds of memory billed for it")
    dollars: float = Field(..., ge=0, description="US$")


@lru_cache(maxsize=1)
def get_pricing_settings() -> PricingSettings:
    """The process-wide pricing settings, read once from the environment."""
    return PricingSettings()
