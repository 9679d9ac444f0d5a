"""``arr-coc capacity``: Cloud Run planning figures per variant from a measured bench result and a traffic profile."""

from __future__ import annotations

import argparse
import json

HEADERS = [
    "variant",
    "rps/instance",
    "concurrency",
    "instances at peak",
    "$/month scale to zero",
    "$/month min-1",
    "cold starts/month (s2z / min-1)",
    "always-on $/month",
    "cheaper",
]


def dollars(amount: float) -> str:
    return f"${amount:,.2f}"


def table_rows(plans: list) -> list[list[str]]:
    """One row of :data:`HEADERS` per plan."""
    return [
        [
            plan.variant,
            f"{plan.rps_per_instance:.2f}",
            str(plan.concurrency),
            str(plan.instances_at_peak),
            dollars(plan.scale_to_zero),
            dollars(plan.min_one),
            f"{plan.cold_starts_scale_to_zero} / {plan.cold_starts_min_one}",
            dollars(plan.always_on),
            plan.cheaper,
        ]
        for plan in plans
    ]


def aligned(rows: list[list[str]]) -> list[str]:
    """``rows`` (the first one the headers) as aligned lines: text left, figures right."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    left = {0, len(widths) - 1}
    return [
        "  ".join(
            cell.ljust(width) if column in left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]


def comparison(plan) -> str:
    """Which option is cheaper, both monthly figures, and each option per 1,000 answers."""
    cloud_run = min(plan.scale_to_zero, plan.min_one)
    return (
        f"{plan.variant}: {plan.cheaper} is cheaper: Cloud Run {dollars(cloud_run)}/month vs always-on "
        f"{dollars(plan.always_on)}/month; per 1,000 answers: scale to zero ${plan.per_1k_scale_to_zero:.4f}, "
        f"min-1 ${plan.per_1k_min_one:.4f}, always-on ${plan.per_1k_always_on:.4f}"
        + (
            f"; the bench measured ${plan.bench_cost_per_1k_answers:.4f} of busy instance time"
            if plan.bench_cost_per_1k_answers is not None
            else ""
        )
    )


def report(bench, instance, profile, plans) -> str:
    """The table, what it rests on, and the rules."""
    from arr_coc.capacity import RULES

    lines = [
        f"bench: {bench.date} on {bench.device}; instance {instance.gpus} GPU, {instance.vcpus:g} vCPUs, "
        f"{instance.memory_gib:g} GiB at ${instance.dollars_per_s:.7f}/s "
        f"(${instance.price_gpu_s:.7f}/GPU-s, ${instance.price_vcpu_s:.7f}/vCPU-s, "
        f"${instance.price_gib_s:.7f}/GiB-s)",
        f"traffic: {profile.requests_per_month:,.0f} requests/month, peak {profile.peak_rps:g} requests/s, "
        f"{profile.active_hours:g} active hours/day, utilization {profile.utilization:g}, "
        f"idle {profile.idle_minutes:g} min before scale to zero",
        "",
        *aligned([HEADERS, *table_rows(plans)]),
        "",
        *(comparison(plan) for plan in plans),
        "",
        "rules:",
        *(f"  - {rule}" for rule in RULES),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from arr_coc.capacity import Profile, finite_number, plan, price, read_bench
    from arr_coc.pricing import Instance, get_pricing_settings

    bench = read_bench(args.bench)
    profile = Profile(
        requests_per_month=finite_number(args.requests_per_month, "requests_per_month"),
        peak_rps=finite_number(args.peak_rps, "peak_rps"),
        active_hours=finite_number(args.active_hours, "active_hours"),
        utilization=finite_number(args.utilization, "utilization"),
        idle_minutes=finite_number(args.idle_minutes, "idle_minutes"),
        always_on_hourly=None if args.always_on_hourly is None else price(args.always_on_hourly, "always_on_hourly"),
    )
    settings = get_pricing_settings()
    prices = {
        name: getattr(settings, name) if getattr(args, name) is None else price(getattr(args, name), name)
        for name in ("price_gpu_s", "price_vcpu_s", "price_gib_s")
    }
    instance = Instance(**bench.instance.model_dump(), **prices)
    plans = plan(bench, args.variants, instance, profile)
    if args.json:
        figures = {
            "profile": vars(profile),
            "prices": {name.removeprefix("price_"): value for name, value in prices.items()},
            "instance": bench.instance.model_dump(),
            "variants": {p.variant: p.as_dict() for p in plans},
        }
        print(json.dumps(figures, indent=2))
    else:
        print(report(bench, instance, profile, plans))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "capacity", help="Cloud Run instances, concurrency, $/month and cold starts per variant, from a bench result"
    )
    parser.add_argument("bench", help="a bench result: benchmarks/bench_serve.py --workload variants --out FILE")
    parser.add_argument("--requests-per-month", required=True, help="answers asked for per month")
    parser.add_argument("--peak-rps", required=True, help="requests/s at the busiest moment")
    parser.add_argument("--active-hours", required=True, help="hours a day with traffic, in (0, 24]")
    parser.add_argument("--variants", nargs="+", help="variants to plan (default: every one in the bench result)")
    parser.add_argument("--utilization", default="0.8", help="share of an instance's measured rps to plan on (0.8)")
    parser.add_argument(
        "--idle-minutes", default="15", help="minutes an idle instance stays up before scaling to zero (15)"
    )
    parser.add_argument(
        "--always-on-hourly", help="US$ per hour of one always-on instance (default: the Cloud Run instance's price)"
    )
    parser.add_argument("--price-gpu-s", help="US$ per GPU-second (default: ARR_COC_PRICE_GPU_S or Cloud Run's L4)")
    parser.add_argument("--price-vcpu-s", help="US$ per vCPU-second (default: ARR_COC_PRICE_VCPU_S or Cloud Run's)")
    parser.add_argument("--price-gib-s", help="US$ per GiB-second (default: ARR_COC_PRICE_GIB_S or Cloud Run's)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    parser.set_defaults(func=run)
