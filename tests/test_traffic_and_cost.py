"""The A/B split of requests that name no variant, and the cost of each answer (no server)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError
from starlette.datastructures import Headers

from arr_coc.pricing import Instance, PricingSettings
from front import metrics
from front.pipeline import Job, Pipeline
from front.schemas import AnswerRequestBody
from serving.settings import ServerSettings
from serving.traffic import InvalidTrafficError, TrafficSplit, caller_key
from serving.wire import AnswerOutput, ScoreOutput
from training_hooks.tracking.service_tracking import Tracking

pytestmark = []

L4 = Instance(gpus=1, vcpus=8, memory_gib=32, price_gpu_s=0.0001867, price_vcpu_s=0.000018, price_gib_s=0.000002)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus=1", "unknown variant 'bogus'"),
        ("full=0", "positive number"),
        ("full=-0.5", "positive number"),
        ("full=inf", "positive number"),
        ("full=nan", "positive number"),
        ("full=half", "not a number"),
        ("full", "VARIANT=WEIGHT"),
        ("=0.5", "VARIANT=WEIGHT"),
        ("full=1,full=2", "twice"),
    ],
)
def test_a_bad_split_is_refused_with_what_is_wrong(spec, message):
    with pytest.raises(InvalidTrafficError, match=message):
        TrafficSplit.parse(spec)
    with pytest.raises(ValidationError, match="traffic"):  # at start-up, naming the setting
        ServerSettings(traffic=spec)


def test_weights_are_normalised_and_empty_means_no_split():
    assert TrafficSplit.parse("") is None and TrafficSplit.parse(" , ") is None
    assert TrafficSplit.parse("arr-coc-25=3, full=1").shares() == {"arr-coc-25": 0.75, "full": 0.25}
    assert ServerSettings(traffic="full=2").traffic_split.shares() == {"full": 1.0}


def test_a_caller_keeps_its_variant_and_callers_split_by_share():
    split = TrafficSplit.parse("arr-coc-25=0.7,full=0.3")
    callers = [f"user:{i}" for i in range(4000)]
    first = [split.assign(c) for c in callers]
    assert first == [split.assign(c) for c in callers], "sticky: the same key always gets the same variant"
    assert abs(first.count("arr-coc-25") / len(callers) - 0.7) < 0.03
    moved = TrafficSplit.parse("arr-coc-25=0.6,full=0.4")
    changed = sum(a != b for a, b in zip(first, (moved.assign(c) for c in callers)))
    assert abs(changed / len(callers) - 0.1) < 0.03, "a 10-point change of weights moves about 10 % of callers"


def test_callers_without_a_key_are_placed_at_random_by_share():
    split, rng = TrafficSplit.parse("divprune-25=1,full=3"), random.Random(0)
    drawn = [split.assign(None, rng) for _ in range(4000)]
    assert abs(drawn.count("full") / len(drawn) - 0.75) < 0.03


def test_the_caller_key_is_the_api_key_then_the_user_header():
    keys = (b"k1", b"k2")
    both = Headers({"authorization": "Bearer k2", "x-arr-coc-user": "ann"})
    assert caller_key(both, keys) == "key:k2"
    assert caller_key(both, ()) == "user:ann", "without access control the bearer token is no identity"
    assert caller_key(Headers({"X-Arr-Coc-User": " bob "}), keys) == "user:bob"
    assert caller_key(Headers({"x-arr-coc-user": "  "}), keys) is None
    assert caller_key(Headers({}), ()) is None


class Tracker:
    def __init__(self) -> None:
        self.fields: list[dict] = []

    def record(self, variant, latency_ms, example=None, **fields) -> None:
        self.fields.append({"variant": variant, **fields})


def pipeline(**settings) -> Pipeline:
    made = Pipeline(None, None, tracking=Tracking(ServerSettings()), settings=ServerSettings(**settings))
    made.tracking = Tracker()
    return made


def test_requests_that_name_no_variant_get_their_callers_side_of_the_split():
    split = pipeline(traffic="arr-coc-25=0.5,full=0.5")
    body = AnswerRequestBody(image="x", question="q")
    chosen = {split.pick_variant(body, f"user:{i}").name for i in range(40)}
    assert chosen == {"arr-coc-25", "full"}
    assert {split.pick_variant(body, "user:7").name for _ in range(5)} == {split.split.assign("user:7")}
    named = AnswerRequestBody(image="x", question="q", variant="divprune-25")
    assert split.pick_variant(named, "user:7").name == "divprune-25", "a named variant is served as named"
    assert pipeline().pick_variant(body, "user:7").name == "arr-coc-25", "no split: the default variant"
    before = metrics.TRAFFIC_ASSIGNED.labels(variant="full")._value.get()
    assigned = [split.default_for(f"user:{i}") for i in range(40)]
    assert metrics.TRAFFIC_ASSIGNED.labels(variant="full")._value.get() - before == assigned.count("full")


def test_the_instance_price_and_an_answers_cost_by_hand():
    assert L4.dollars_per_s == pytest.approx(0.0001867 + 8 * 0.000018 + 32 * 0.000002)  # 0.0003947 $/s
    cost = L4.cost(0.5)
    assert (cost.held_s, cost.gpu_s, cost.vcpu_s, cost.gib_s) == (0.5, 0.5, 4.0, 16.0)
    assert cost.dollars == pytest.approx(0.5 * 0.0003947)
    assert Instance(gpus=0).cost(2.0).gpu_s == 0.0


def test_prices_default_to_cloud_run_l4_and_bad_ones_fail_at_start_up(monkeypatch):
    defaults = PricingSettings()
    assert (defaults.price_gpu_s, defaults.price_vcpu_s, defaults.price_gib_s) == (0.0001867, 0.000018, 0.000002)
    assert defaults.instance(on_gpu=True).gpus == 1 and defaults.instance(on_gpu=False).gpus == 0
    assert PricingSettings(instance_gpus=1).instance(on_gpu=False).gpus == 1
    for value, message in (("-0.1", "greater than or equal to 0"), ("cheap", "valid number"), ("nan", "finite")):
        monkeypatch.setenv("ARR_COC_PRICE_GPU_S", value)
        with pytest.raises(ValidationError, match=message):
            ServerSettings()
    monkeypatch.setenv("ARR_COC_PRICE_GPU_S", "0.0002909")  # the L4 with zonal redundancy
    assert ServerSettings().price_gpu_s == 0.0002909


def answered(made: Pipeline, variant: str, relevance_busy_ms: float, vlm_busy_ms: float):
    job = Job(made.pick_variant(AnswerRequestBody(image="x", question="q", variant=variant)))
    job.scored = ScoreOutput(grid=(2, 2), relevance=[0.0] * 4, busy_ms=relevance_busy_ms)
    output = AnswerOutput(answer="red", kept=[0, 1], total_tokens=4, busy_ms=vlm_busy_ms)
    return made.answered(job, output)


def test_an_answer_costs_its_share_of_both_runners_busy_time():
    made = pipeline(vlm_gpu=0.5, relevance_gpu=0.5)
    assert made.instance.gpus == 1
    label = "cdpruner-10"  # a variant no other test answers, so the counters start at zero here
    dollars_before = metrics.COST_DOLLARS.labels(variant=label)._value.get()
    response = answered(made, label, relevance_busy_ms=100.0, vlm_busy_ms=400.0)
    assert response.cost.held_s == pytest.approx(0.5) and response.cost.gpu_s == pytest.approx(0.5)
    assert response.cost.dollars == pytest.approx(0.5 * made.instance.dollars_per_s)
    answered(made, label, relevance_busy_ms=100.0, vlm_busy_ms=1400.0)  # 1.5 s
    spent = metrics.COST_DOLLARS.labels(variant=label)._value.get() - dollars_before
    assert spent == pytest.approx(2.0 * made.instance.dollars_per_s)
    per_1k = metrics.COST_PER_1K.labels(variant=label)._value.get()
    assert per_1k == pytest.approx(1000 * 1.0 * made.instance.dollars_per_s), "mean of 0.5 s and 1.5 s, per 1,000"
    recorded = [f for f in made.tracking.fields if "cost_dollars" in f]
    assert [round(f["gpu_s"], 6) for f in recorded] == [0.5, 1.5]
    cpu_only = answered(pipeline(), label, relevance_busy_ms=100.0, vlm_busy_ms=400.0)
    assert cpu_only.cost.gpu_s == 0.0 and cpu_only.cost.vcpu_s == pytest.approx(4.0)
