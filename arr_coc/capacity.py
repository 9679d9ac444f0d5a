"""Cloud Run planning figures from a measured serving benchmark: instances, concurrency, $/month, cold starts.

``benchmarks/bench_serve.py --workload variants`` writes a bench result (:func:`bench_document`):
per variant, the answered requests/s of one instance at each concurrency it was loaded
with. ``arr-coc capacity`` reads it (:func:`read_bench`) and a traffic profile
(:class:`Profile`), and applies :data:`RULES` per variant (:func:`plan_variant`). Money is
US$, time is seconds unless a name says otherwise, a month is :data:`DAYS_PER_MONTH` days.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from arr_coc.errors import InvalidConfigError
from arr_coc.pricing import Instance

BENCH_KIND = "arr-coc-bench-serve"
BENCH_VERSION = 1
DAYS_PER_MONTH = 30
KNEE_FRACTION = 0.9  # the operating point serves at least this share of the best measured requests/s
DEFAULT_UTILIZATION = 0.8
DEFAULT_IDLE_MINUTES = 15.0
FLOAT_SLACK = 1e-9  # keeps float noise (6.4 / 3.2 = 2.0000000000000004) from adding an instance

RULES = [
    f"operating point: the lowest measured concurrency whose requests/s >= {KNEE_FRACTION} x the variant's best "
    "(the knee); rps/instance = its requests/s, Cloud Run concurrency = that concurrency",
    "usable rps per instance = rps x utilization (headroom for bursts)",
    "instances at peak = ceil(peak rps / usable)",
    "instance price p ($/s) = gpus x $/GPU-s + vcpus x $/vCPU-s + memory GiB x $/GiB-s",
    f"active seconds A = active hours x 3600 x {DAYS_PER_MONTH} days; busy instances n = max(1, ceil(requests per "
    "month / A / usable))",
    f"$/month, scale to zero = p x (n x A + tail); tail = {DAYS_PER_MONTH} x idle minutes x 60 when active hours < 24 "
    "(an instance stays up that long after the day's last request), else 0",
    f"$/month, min-instances=1 = p x ({DAYS_PER_MONTH} x 86400 + (n - 1) x A)",
    f"cold starts/month: scale to zero = {DAYS_PER_MONTH} x (1 + instances at peak - n) when active hours < 24, "
    f"else {DAYS_PER_MONTH} x (instances at peak - n); min-instances=1 = {DAYS_PER_MONTH} x (instances at peak - n)",
    f"always-on endpoint = instances at peak x hourly x 24 x {DAYS_PER_MONTH}; hourly = --always-on-hourly, else p x "
    "3600 (min-instances = instances at peak)",
    "cheaper = the lower monthly bill: Cloud Run bills instance-seconds while up; an always-on endpoint bills its "
    "peak instances for every hour",
    "$ per 1,000 answers = $/month / (requests per month / 1000)",
]


class BenchLevel(BaseModel):
    """One concurrency level of one variant, as measured against one instance."""

    concurrency: int = Field(..., ge=1, description="requests in flight")
    requests_per_s: float = Field(..., ge=0, allow_inf_nan=False, description="answered requests per second")
    p50_ms: float | None = Field(None, description="median latency, ms; null when none was answered")
    p95_ms: float | None = Field(None, description="95th-percentile latency, ms; null when none was answered")
    failed: int = Field(0, ge=0, description="requests that got no answer")


class BenchVariant(BaseModel):
    levels: list[BenchLevel] = Field(..., min_length=1)
    cost_per_1k_answers: float | None = Field(None, ge=0, description="US$; null when the answers carried no cost")


class BenchInstance(BaseModel):
    """The instance the benchmark ran as (``arr_coc.pricing.PricingSettings.instance``)."""

    gpus: int = Field(..., ge=0)
    vcpus: float = Field(..., gt=0)
    memory_gib: float = Field(..., gt=0)


class BenchResult(BaseModel):
    """A ``bench_serve.py --workload variants`` result file."""

    kind: str
    version: int
    date: str
    device: str
    instance: BenchInstance
    variants: dict[str, BenchVariant] = Field(..., min_length=1)
    cold_start_s: float | None = None


@dataclass(frozen=True)
class Profile:
    """The traffic to plan for."""

    requests_per_month: float
    peak_rps: float  # requests/s at the busiest moment
    active_hours: float  # hours a day with traffic, in (0, 24]
    utilization: float = DEFAULT_UTILIZATION  # share of an instance's measured rps to plan on, in (0, 1]
    idle_minutes: float = DEFAULT_IDLE_MINUTES  # minutes an idle instance stays up before it scales to zero
    always_on_hourly: float | None = None  # US$ per hour of one always-on instance; None: the Cloud Run instance's


@dataclass(frozen=True)
class Plan:
    """The planning figures of one variant under one profile (US$ per month unless named otherwise)."""

    variant: str
    rps_per_instance: float
    concurrency: int
    instances_at_peak: int
    busy_instances: int
    dollars_per_s: float
    scale_to_zero: float
    min_one: float
    cold_starts_scale_to_zero: int
    cold_starts_min_one: int
    always_on: float
    cheaper: str
    per_1k_scale_to_zero: float
    per_1k_min_one: float
    per_1k_always_on: float
    bench_cost_per_1k_answers: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def finite_number(value: str | float, field: str) -> float:
    """``value`` as a finite float; :class:`InvalidConfigError` naming ``field`` when it is not one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidConfigError(f"must be a number, got {value!r}", field=field) from None
    if not math.isfinite(number):
        raise InvalidConfigError(f"must be a finite number, got {value!r}", field=field)
    return number


def price(value: str | float, field: str) -> float:
    """A price, US$ per unit: a finite number >= 0."""
    number = finite_number(value, field)
    if number < 0:
        raise InvalidConfigError(f"a price cannot be negative, got {number:g}", field=field)
    return number


def check_profile(profile: Profile) -> None:
    """Raise :class:`InvalidConfigError` for a profile outside its ranges, or one whose peak is below its mean."""
    if profile.requests_per_month <= 0:
        raise InvalidConfigError(f"must be > 0, got {profile.requests_per_month:g}", field="requests_per_month")
    if profile.peak_rps <= 0:
        raise InvalidConfigError(f"must be > 0, got {profile.peak_rps:g}", field="peak_rps")
    if not 0 < profile.active_hours <= 24:
        raise InvalidConfigError(f"must be in (0, 24], got {profile.active_hours:g}", field="active_hours")
    if not 0 < profile.utilization <= 1:
        raise InvalidConfigError(f"must be in (0, 1], got {profile.utilization:g}", field="utilization")
    if profile.idle_minutes < 0:
        raise InvalidConfigError(f"cannot be negative, got {profile.idle_minutes:g}", field="idle_minutes")
    if profile.always_on_hourly is not None and profile.always_on_hourly < 0:
        raise InvalidConfigError(
            f"a price cannot be negative, got {profile.always_on_hourly:g}", field="always_on_hourly"
        )
    mean = mean_active_rps(profile.requests_per_month, active_seconds(profile.active_hours))
    if profile.peak_rps < mean:
        raise InvalidConfigError(
            f"{profile.peak_rps:g} requests/s is below the mean of the active hours ({mean:.3f} requests/s = "
            f"{profile.requests_per_month:g} requests / ({profile.active_hours:g} h x {DAYS_PER_MONTH} days)): "
            "an impossible profile",
            field="peak_rps",
        )


def operating_point(levels: list[BenchLevel]) -> BenchLevel:
    """The knee: the lowest concurrency whose requests/s >= :data:`KNEE_FRACTION` x the best of ``levels``."""
    best = max(level.requests_per_s for level in levels)
    near_best = [level for level in levels if level.requests_per_s >= KNEE_FRACTION * best - FLOAT_SLACK]
    return min(near_best, key=lambda level: level.concurrency)


def usable_rps(rps: float, utilization: float) -> float:
    """Requests/s to plan on per instance: its measured ``rps`` x ``utilization``."""
    return rps * utilization


def instances_for(rps: float, usable: float) -> int:
    """Instances that serve ``rps`` requests/s at ``usable`` requests/s each (ceil)."""
    return math.ceil(rps / usable - FLOAT_SLACK)


def active_seconds(active_hours: float) -> float:
    """Seconds with traffic per month."""
    return active_hours * 3600 * DAYS_PER_MONTH


def mean_active_rps(requests_per_month: float, active_s: float) -> float:
    """Mean requests/s while traffic is on."""
    return requests_per_month / active_s


def busy_instances(requests_per_month: float, active_s: float, usable: float) -> int:
    """Instances up on average while traffic is on: at least one."""
    return max(1, instances_for(mean_active_rps(requests_per_month, active_s), usable))


def idle_tail_s(active_hours: float, idle_minutes: float) -> float:
    """Seconds per month an instance stays up after each day's last request (none when traffic never stops)."""
    return DAYS_PER_MONTH * idle_minutes * 60 if active_hours < 24 else 0.0


def scale_to_zero_dollars(dollars_per_s: float, busy: int, active_s: float, tail_s: float) -> float:
    """US$ per month with min-instances = 0: ``busy`` instances while active, one more ``tail_s``."""
    return dollars_per_s * (busy * active_s + tail_s)


def min_one_dollars(dollars_per_s: float, busy: int, active_s: float) -> float:
    """US$ per month with min-instances = 1: one instance all month, the other busy ones while active."""
    return dollars_per_s * (DAYS_PER_MONTH * 86400 + (busy - 1) * active_s)


def cold_starts_scale_to_zero(active_hours: float, at_peak: int, busy: int) -> int:
    """Cold starts per month with min-instances = 0: the day's first instance, and each one the peak adds."""
    daily = at_peak - busy + (1 if active_hours < 24 else 0)
    return DAYS_PER_MONTH * daily


def cold_starts_min_one(at_peak: int, busy: int) -> int:
    """Cold starts per month with min-instances = 1: each instance the peak adds."""
    return DAYS_PER_MONTH * (at_peak - busy)


def always_on_dollars(at_peak: int, hourly: float) -> float:
    """US$ per month of ``at_peak`` instances up every hour at ``hourly`` US$ each."""
    return at_peak * hourly * 24 * DAYS_PER_MONTH


def per_1k_answers(dollars_per_month: float, requests_per_month: float) -> float:
    """US$ per 1,000 answers."""
    return dollars_per_month / (requests_per_month / 1000)


def cheaper_option(scale_to_zero: float, min_one: float, always_on: float) -> str:
    """The option with the lower monthly bill: Cloud Run (its cheaper setting) or the always-on endpoint."""
    cloud_run = "Cloud Run, scale to zero" if scale_to_zero <= min_one else "Cloud Run, min-instances=1"
    return cloud_run if min(scale_to_zero, min_one) <= always_on else "always-on endpoint"


def plan_variant(name: str, variant: BenchVariant, instance: Instance, profile: Profile) -> Plan:
    """The planning figures of one variant on ``instance`` (its resources and their prices, :data:`RULES`);
    the profile must have passed :func:`check_profile`."""
    if all(level.requests_per_s <= 0 for level in variant.levels):
        raise InvalidConfigError(
            f"every level of {name!r} answered 0 requests/s: nothing to plan on (see its failures)", field="bench"
        )
    point = operating_point(variant.levels)
    usable = usable_rps(point.requests_per_s, profile.utilization)
    at_peak = instances_for(profile.peak_rps, usable)
    active_s = active_seconds(profile.active_hours)
    busy = busy_instances(profile.requests_per_month, active_s, usable)
    dollars_per_s = instance.dollars_per_s
    tail_s = idle_tail_s(profile.active_hours, profile.idle_minutes)
    scale_to_zero = scale_to_zero_dollars(dollars_per_s, busy, active_s, tail_s)
    min_one = min_one_dollars(dollars_per_s, busy, active_s)
    hourly = profile.always_on_hourly if profile.always_on_hourly is not None else dollars_per_s * 3600
    always_on = always_on_dollars(at_peak, hourly)
    return Plan(
        variant=name,
        rps_per_instance=point.requests_per_s,
        concurrency=point.concurrency,
        instances_at_peak=at_peak,
        busy_instances=busy,
        dollars_per_s=dollars_per_s,
        scale_to_zero=scale_to_zero,
        min_one=min_one,
        cold_starts_scale_to_zero=cold_starts_scale_to_zero(profile.active_hours, at_peak, busy),
        cold_starts_min_one=cold_starts_min_one(at_peak, busy),
        always_on=always_on,
        cheaper=cheaper_option(scale_to_zero, min_one, always_on),
        per_1k_scale_to_zero=per_1k_answers(scale_to_zero, profile.requests_per_month),
        per_1k_min_one=per_1k_answers(min_one, profile.requests_per_month),
        per_1k_always_on=per_1k_answers(always_on, profile.requests_per_month),
        bench_cost_per_1k_answers=variant.cost_per_1k_answers,
    )


def plan(bench: BenchResult, variants: list[str] | None, instance: Instance, profile: Profile) -> list[Plan]:
    """One :class:`Plan` per variant asked for (default: every one the bench holds, in its order) on
    ``instance`` (the bench's resources, priced)."""
    check_profile(profile)
    names = variants or list(bench.variants)
    missing = [name for name in names if name not in bench.variants]
    if missing:
        raise InvalidConfigError(
            f"{', '.join(missing)} not in the bench file; it holds {', '.join(bench.variants)}", field="variants"
        )
    return [plan_variant(name, bench.variants[name], instance, profile) for name in names]


def read_bench(path: str | Path) -> BenchResult:
    """The bench result at ``path``; :class:`InvalidConfigError` when it is missing, not JSON, or not one."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidConfigError(f"{path} does not exist", field="bench") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidConfigError(f"{path} is not a JSON file ({error})", field="bench") from None
    kind = document.get("kind") if isinstance(document, dict) else None
    if kind != BENCH_KIND:
        raise InvalidConfigError(
            f"{path} is not a bench result: its kind is {kind!r}, not {BENCH_KIND!r} "
            "(benchmarks/bench_serve.py --workload variants --out FILE writes one)",
            field="bench",
        )
    if document.get("version") != BENCH_VERSION:
        raise InvalidConfigError(
            f"{path} is version {document.get('version')!r}; this reads version {BENCH_VERSION}", field="bench"
        )
    try:
        return BenchResult.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidConfigError(f"{path}: {where}: {first['msg']}", field="bench") from None


def bench_document(
    date: str,
    device: str,
    instance: dict,
    levels: dict[str, list[dict]],
    cost_per_1k_answers: dict[str, float | None],
) -> dict:
    """A bench result as JSON data: ``levels`` per variant (:class:`BenchLevel` fields), each variant's cost, US$."""
    variants = {
        name: {"levels": variant_levels, "cost_per_1k_answers": cost_per_1k_answers.get(name)}
        for name, variant_levels in levels.items()
    }
    document = {
        "kind": BENCH_KIND,
        "version": BENCH_VERSION,
        "date": date,
        "device": device,
        "instance": instance,
        "variants": variants,
        "cold_start_s": None,
    }
    return BenchResult.model_validate(document).model_dump(mode="json")
