"""``arr-coc capacity``: Cloud Run planning figures from a bench result, checked against figures worked by hand,
its bad inputs refused with typed errors, and the bench result ``bench_serve.py --workload variants`` writes."""

from __future__ import annotations

import json
import math

import pytest

from arr_coc.capacity import (
    BenchLevel,
    BenchVariant,
    Profile,
    bench_document,
    idle_tail_s,
    operating_point,
    plan_variant,
    read_bench,
)
from arr_coc.errors import InvalidConfigError
from arr_coc.pricing import Instance
from arr_coc_cli.main import main

L4 = Instance(gpus=1, vcpus=8, memory_gib=32, price_gpu_s=0.0001867, price_vcpu_s=0.000018, price_gib_s=0.000002)
PRICE_OPTIONS = ["--price-gpu-s", "0.0001867", "--price-vcpu-s", "0.000018", "--price-gib-s", "0.000002"]


def levels(*figures: tuple[int, float]) -> list[dict]:
    return [
        {"concurrency": c, "requests_per_s": rps, "p50_ms": 300.0, "p95_ms": 410.0, "failed": 0} for c, rps in figures
    ]


KNEE_AT_8 = levels((1, 1.5), (8, 4.0), (16, 4.2))


def write_bench(tmp_path, variants: dict[str, list[dict]] | None = None, **changes) -> str:
    variants = variants or {"arr-coc-25": KNEE_AT_8, "full": levels((1, 1.0), (4, 2.0), (16, 2.1))}
    document = bench_document(
        date="2026-12-04",
        device="CUDA",
        instance={"gpus": 1, "vcpus": 8.0, "memory_gib": 32.0},
        levels=variants,
        cost_per_1k_answers={"arr-coc-25": 0.12},
    )
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({**document, **changes}))
    return str(path)


def capacity(bench: str, *options: str) -> list[str]:
    return ["capacity", bench, *options]


PROFILE_OPTIONS = ["--requests-per-month", "1000000", "--peak-rps", "10", "--active-hours", "8", *PRICE_OPTIONS]


def test_an_eight_hour_profile_gives_the_figures_worked_by_hand():
    # knee: best 4.2 rps (at 16); 4.0 >= 0.9 x 4.2 = 3.78, so concurrency 8 at 4.0 rps (1.5 is below)
    # usable = 4.0 x 0.8 = 3.2 rps; at peak: ceil(10 / 3.2) = ceil(3.125) = 4 instances
    # A = 8 h x 3600 x 30 = 864,000 s; mean = 1,000,000 / 864,000 = 1.157 rps -> n = max(1, ceil(0.362)) = 1
    # p = 1 x 0.0001867 + 8 x 0.000018 + 32 x 0.000002 = 0.0003947 $/s
    # scale to zero = 0.0003947 x (1 x 864,000 + 30 x 15 x 60) = 0.0003947 x 891,000 = $351.6777
    # min-1 = 0.0003947 x (30 x 86,400 + 0 x A) = 0.0003947 x 2,592,000 = $1,023.0624
    # always-on = 4 x (0.0003947 x 3600) x 24 x 30 = 4 x 1.42092 x 720 = $4,092.2496
    # cold starts: scale to zero = 30 x (1 + 4 - 1) = 120; min-1 = 30 x (4 - 1) = 90
    # per 1,000 answers: 351.6777 / 1000 = 0.3517; 1,023.0624 / 1000 = 1.0231; 4,092.2496 / 1000 = 4.0922
    profile = Profile(requests_per_month=1_000_000, peak_rps=10, active_hours=8)
    variant = BenchVariant(levels=KNEE_AT_8)
    plan = plan_variant("arr-coc-25", variant, L4, profile)
    assert (plan.concurrency, plan.rps_per_instance) == (8, 4.0)
    assert (plan.instances_at_peak, plan.busy_instances) == (4, 1)
    assert plan.dollars_per_s == pytest.approx(0.0003947, abs=1e-12)
    assert round(plan.scale_to_zero, 2) == 351.68
    assert round(plan.min_one, 2) == 1023.06
    assert round(plan.always_on, 2) == 4092.25
    assert (plan.cold_starts_scale_to_zero, plan.cold_starts_min_one) == (120, 90)
    assert plan.cheaper == "Cloud Run, scale to zero"
    assert (round(plan.per_1k_scale_to_zero, 4), round(plan.per_1k_min_one, 4)) == (0.3517, 1.0231)
    assert round(plan.per_1k_always_on, 4) == 4.0922


def test_heavy_round_the_clock_traffic_on_a_cheap_always_on_endpoint_makes_it_the_cheaper():
    # knee 8 at 4.0 rps, usable 3.2 rps; at peak: ceil(10 / 3.2) = 4
    # A = 24 x 3600 x 30 = 2,592,000 s; mean = 20,000,000 / 2,592,000 = 7.716 rps -> n = ceil(2.411) = 3
    # 24 active hours: no tail; scale to zero = 0.0003947 x 3 x 2,592,000 = $3,069.1872
    # min-1 = 0.0003947 x (2,592,000 + 2 x 2,592,000) = $3,069.1872 (the same: traffic never stops)
    # always-on at $0.25/h = 4 x 0.25 x 24 x 30 = $720.00: cheaper
    # cold starts: scale to zero = 30 x (4 - 3) = 30 (no daily first start); min-1 = 30 x (4 - 3) = 30
    # per 1,000 answers: 3,069.1872 / 20,000 = 0.1535; 720 / 20,000 = 0.036
    profile = Profile(requests_per_month=20_000_000, peak_rps=10, active_hours=24, always_on_hourly=0.25)
    plan = plan_variant("arr-coc-25", BenchVariant(levels=KNEE_AT_8), L4, profile)
    assert (plan.instances_at_peak, plan.busy_instances) == (4, 3)
    assert round(plan.scale_to_zero, 2) == round(plan.min_one, 2) == 3069.19
    assert round(plan.always_on, 2) == 720.00
    assert plan.cheaper == "always-on endpoint"
    assert (plan.cold_starts_scale_to_zero, plan.cold_starts_min_one) == (30, 30)
    assert (round(plan.per_1k_scale_to_zero, 4), round(plan.per_1k_always_on, 4)) == (0.1535, 0.036)


def test_round_the_clock_traffic_has_no_idle_tail_and_no_daily_cold_start():
    # at peak ceil(2 / 3.2) = 1 = n: one instance up all month either way
    # scale to zero = min-1 = 0.0003947 x 2,592,000 = $1,023.06; cold starts 30 x (1 - 1) = 0 each
    assert idle_tail_s(24, 15) == 0.0 and idle_tail_s(8, 15) == 30 * 15 * 60
    profile = Profile(requests_per_month=1_000_000, peak_rps=2, active_hours=24)
    plan = plan_variant("arr-coc-25", BenchVariant(levels=KNEE_AT_8), L4, profile)
    assert round(plan.scale_to_zero, 2) == round(plan.min_one, 2) == 1023.06
    assert (plan.cold_starts_scale_to_zero, plan.cold_starts_min_one) == (0, 0)


def test_the_operating_point_is_the_lowest_concurrency_near_the_best():
    def point(*figures):
        return operating_point([BenchLevel(**level) for level in levels(*figures)])

    assert point((1, 1.5), (8, 4.0), (16, 4.2)).concurrency == 8
    assert point((1, 3.0), (4, 3.1), (16, 2.0)).concurrency == 1, "3.0 >= 0.9 x 3.1"
    assert point((1, 1.0), (4, 2.0), (16, 2.5)).concurrency == 16, "2.0 < 0.9 x 2.5 = 2.25"
    assert point((4, 3.78), (16, 4.2)).concurrency == 4, "exactly 0.9 x the best counts"


def test_peak_instances_are_not_rounded_up_by_float_noise():
    # usable = 4.0 x 0.8 = 3.2; 6.4 / 3.2 is 2.0000000000000004 in floats: 2 instances, not 3
    profile = Profile(requests_per_month=1_000, peak_rps=6.4, active_hours=8)
    plan = plan_variant("v", BenchVariant(levels=KNEE_AT_8), L4, profile)
    assert plan.instances_at_peak == 2


def test_the_command_prints_a_row_per_variant_and_the_rules(tmp_path, capsys):
    assert main(capacity(write_bench(tmp_path), *PROFILE_OPTIONS)) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(("arr-coc-25 ", "full "))}
    assert set(rows) == {"arr-coc-25", "full"}
    assert "$351.68" in rows["arr-coc-25"] and "$1,023.06" in rows["arr-coc-25"] and "$4,092.25" in rows["arr-coc-25"]
    assert "120 / 90" in rows["arr-coc-25"]
    assert "concurrency" in out and "instances at peak" in out
    assert "rules:" in out and "ceil(peak rps / usable)" in out
    assert "Cloud Run bills instance-seconds while up" in out


def test_the_command_plans_the_variants_asked_for_as_json(tmp_path, capsys):
    assert main(capacity(write_bench(tmp_path), *PROFILE_OPTIONS, "--variants", "arr-coc-25", "--json")) == 0
    figures = json.loads(capsys.readouterr().out)
    assert list(figures["variants"]) == ["arr-coc-25"]
    plan = figures["variants"]["arr-coc-25"]
    assert (plan["concurrency"], plan["instances_at_peak"]) == (8, 4)
    assert round(plan["scale_to_zero"], 2) == 351.68 and round(plan["always_on"], 2) == 4092.25
    assert plan["bench_cost_per_1k_answers"] == 0.12
    assert figures["instance"] == {"gpus": 1, "vcpus": 8.0, "memory_gib": 32.0}
    assert figures["profile"]["utilization"] == 0.8


def test_the_prices_default_to_the_pricing_settings(tmp_path, capsys, monkeypatch):
    from arr_coc.pricing import get_pricing_settings

    monkeypatch.setenv("ARR_COC_PRICE_GPU_S", "0.0001")
    monkeypatch.setenv("ARR_COC_PRICE_VCPU_S", "0")
    monkeypatch.setenv("ARR_COC_PRICE_GIB_S", "0")
    get_pricing_settings.cache_clear()
    try:
        options = ["--requests-per-month", "1000000", "--peak-rps", "10", "--active-hours", "24", "--json"]
        assert main(capacity(write_bench(tmp_path), *options)) == 0
    finally:
        get_pricing_settings.cache_clear()
    plan = json.loads(capsys.readouterr().out)["variants"]["arr-coc-25"]
    assert plan["dollars_per_s"] == pytest.approx(0.0001)
    assert round(plan["min_one"], 2) == round(0.0001 * 2_592_000, 2)  # one instance all month: $259.20


BAD_PROFILES = [
    (["--requests-per-month", "0"], "requests_per_month: must be > 0"),
    (["--requests-per-month", "-5"], "requests_per_month: must be > 0"),
    (["--requests-per-month", "lots"], "requests_per_month: must be a number, got 'lots'"),
    (["--requests-per-month", "nan"], "requests_per_month: must be a finite number"),
    (["--peak-rps", "0"], "peak_rps: must be > 0"),
    (["--peak-rps", "-1"], "peak_rps: must be > 0"),
    (["--active-hours", "0"], "active_hours: must be in (0, 24]"),
    (["--active-hours", "25"], "active_hours: must be in (0, 24]"),
    (["--utilization", "0"], "utilization: must be in (0, 1]"),
    (["--utilization", "1.5"], "utilization: must be in (0, 1]"),
    (["--peak-rps", "0.5"], "peak_rps: 0.5 requests/s is below the mean of the active hours (11.574"),
    (["--price-gpu-s", "-0.1"], "price_gpu_s: a price cannot be negative"),
    (["--price-vcpu-s", "cheap"], "price_vcpu_s: must be a number, got 'cheap'"),
    (["--price-gib-s", "-0.000001"], "price_gib_s: a price cannot be negative"),
    (["--always-on-hourly", "-2"], "always_on_hourly: a price cannot be negative"),
    (["--variants", "arr-coc-10"], "variants: arr-coc-10 not in the bench file; it holds arr-coc-25, full"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_PROFILES, ids=[m.split(":")[0] for _, m in BAD_PROFILES])
def test_a_bad_option_is_refused_with_exit_code_2_naming_it(tmp_path, capsys, changes, message):
    options = {"--requests-per-month": "10000000", "--peak-rps": "20", "--active-hours": "8"}
    extra = []
    for name, value in zip(changes[::2], changes[1::2]):
        if name in options:
            options[name] = value
        else:
            extra += [name, value]
    argv = capacity(write_bench(tmp_path), *[part for pair in options.items() for part in pair], *extra)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_bench_file_that_is_missing_not_json_or_of_another_kind_is_refused(tmp_path, capsys):
    not_json = tmp_path / "not.json"
    not_json.write_text("req/s 3.2\n")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "arr-coc-quality", "version": 1}))
    cases = [
        (str(tmp_path / "absent.json"), "does not exist"),
        (str(not_json), "is not a JSON file"),
        (str(other), "its kind is 'arr-coc-quality', not 'arr-coc-bench-serve'"),
        (write_bench(tmp_path, version=2), "this reads version 1"),
    ]
    for path, message in cases:
        assert main(capacity(path, *PROFILE_OPTIONS)) == 2
        err = capsys.readouterr().err
        assert err.startswith("arr-coc capacity: bench: ") and message in err, err


def test_a_malformed_bench_file_is_refused_naming_the_field(tmp_path):
    path = write_bench(tmp_path, instance={"gpus": 1, "vcpus": -8, "memory_gib": 32})
    with pytest.raises(InvalidConfigError, match=r"instance\.vcpus"):
        read_bench(path)


def test_a_variant_that_answered_nothing_is_refused(tmp_path, capsys):
    bench = write_bench(tmp_path, {"arr-coc-25": KNEE_AT_8, "broken": levels((1, 0.0), (4, 0.0))})
    assert main(capacity(bench, *PROFILE_OPTIONS)) == 2
    assert "every level of 'broken' answered 0 requests/s" in capsys.readouterr().err
    assert main(capacity(bench, *PROFILE_OPTIONS, "--variants", "arr-coc-25")) == 0


def test_the_bench_workload_turns_measured_levels_into_a_file_the_command_reads(tmp_path, capsys):
    from arr_coc.pricing import get_pricing_settings
    from benchmarks.bench_serve import cost_per_1k_answers, variants_document

    measured = {
        "arr-coc-25": [(1, (1.5, 300.0, 410.0, 0), [0.0001, 0.0003]), (8, (4.0, 900.0, 1200.0, 1), [0.0002])],
        "full": [(1, (0.0, math.nan, math.nan, 16), [])],
        "divprune-25": [(1, (2.0, 250.0, 300.0, 0), [None, 0.0001])],
    }
    document = variants_document(measured, on_gpu=True, date="2026-12-04")
    instance = get_pricing_settings().instance(True)
    assert document["kind"] == "arr-coc-bench-serve" and document["version"] == 1
    assert (document["device"], document["date"], document["cold_start_s"]) == ("CUDA", "2026-12-04", None)
    assert document["instance"] == {"gpus": instance.gpus, "vcpus": instance.vcpus, "memory_gib": instance.memory_gib}
    arr_coc = document["variants"]["arr-coc-25"]
    assert arr_coc["levels"][1] == {
        "concurrency": 8,
        "requests_per_s": 4.0,
        "p50_ms": 900.0,
        "p95_ms": 1200.0,
        "failed": 1,
    }
    assert arr_coc["cost_per_1k_answers"] == pytest.approx(1000 * 0.0002)  # mean of 0.0001, 0.0003, 0.0002
    full = document["variants"]["full"]
    assert full["levels"][0]["p50_ms"] is None and full["cost_per_1k_answers"] is None
    assert document["variants"]["divprune-25"]["cost_per_1k_answers"] is None, "one answer carried no cost"
    assert cost_per_1k_answers([]) is None
    assert variants_document(measured, on_gpu=False, date="2026-12-04")["device"] == "CPU"

    path = tmp_path / "bench.json"
    path.write_text(json.dumps(document))
    json.loads(path.read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN
    assert main(capacity(str(path), *PROFILE_OPTIONS, "--variants", "arr-coc-25", "divprune-25")) == 0
    assert "arr-coc-25" in capsys.readouterr().out
