"""``arr-coc compare``: variants x metrics from W&B runs, as a table and PNG plots.

Sources: an offline run folder, a ``.wandb`` file, or a folder holding many runs
(e.g. a ``WANDB_DIR``), read with :mod:`training_hooks.comparison.runfile`; anything else
is an ``entity/project`` (or ``project``) read with the W&B public API. Only
summary and config are read, the same fields parallel-coordinates panels use.

Rows: one per (variant, job type), the metrics averaged over its runs. ``eval``
and ``serve`` runs give their summary (``fidelity`` and ``first_token_kl``, the
label-free measures, where an evaluation computed them; ``cost_per_1k``, US$ per
1,000 answers); a ``train`` run gives one row per method and budget of its held-out
recall table (``arr-coc@0.25 (train)``...).

Cost against quality: per variant, its cost per 1,000 answers (from its serve runs,
else its eval runs) against its accuracy (else fidelity) from its eval runs; the
variants no other variant beats on both (cheaper or as cheap, and as good or better)
form the Pareto front, printed under the table and drawn in ``cost_vs_quality.png``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arr_coc.errors import NoRunsError
from training_hooks.comparison.plots import PALETTE, Series, scatter_plot

METRICS = {  # column -> summary keys, first present wins
    "recall": ("recall",),
    "accuracy": ("accuracy",),
    "fidelity": ("fidelity",),
    "first_token_kl": ("first_token_kl",),
    "kept_ratio": ("kept_ratio", "kept_ratio_mean"),
    "kept_tokens": ("kept_tokens_mean",),
    "latency_p50_ms": ("latency_p50_ms",),
    "latency_p95_ms": ("latency_p95_ms",),
    "throughput_rps": ("throughput_rps",),
    "cost_per_1k": ("cost_per_1k_answers",),
}
QUALITY_FOR_COST = ("accuracy", "fidelity")  # the quality a variant's cost is weighed against, first present wins
JOB_TYPES = ("eval", "serve", "train")


@dataclass
class RunSummary:
    """What compare reads of one run: identity, config and summary."""

    source: str
    job_type: str
    group: str
    config: dict[str, Any]
    summary: dict[str, Any]


@dataclass
class Row:
    """One line of the table: a variant (per job type) and its metrics, averaged over ``runs`` runs."""

    variant: str
    method: str
    job_type: str
    runs: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_offline(path: Path) -> list[RunSummary]:
    """Every run below ``path`` (a run folder, a ``.wandb`` file or a folder of runs)."""
    from training_hooks.comparison.runfile import find_run_files, read_run

    files = [path] if path.is_file() else find_run_files(path)
    if not files:
        raise NoRunsError(f"no run-*.wandb file under {path}", field="runs")
    runs = []
    for file in files:
        data = read_run(file, allow_truncated_tail=True)
        runs.append(RunSummary(str(file), data.job_type, data.group, data.config, data.summary))
    return runs


def read_online(project: str) -> list[RunSummary]:
    """Finished and running runs of an ``entity/project`` through the W&B public API."""
    try:
        import wandb

        api = wandb.Api(timeout=30)
        found = list(api.runs(project, filters={"jobType": {"$in": list(JOB_TYPES)}}))
    except Exception as error:  # no key, no network, no such project
        raise NoRunsError(f"cannot read W&B project {project!r}: {error}", field="runs") from error
    if not found:
        raise NoRunsError(f"W&B project {project!r} has no eval, serve or train runs", field="runs")
    return [
        RunSummary(run.url, run.job_type or "", run.group or "", dict(run.config), dict(run.summary._json_dict))
        for run in found
    ]


def read_sources(sources: Iterable[str]) -> list[RunSummary]:
    """Runs of every source: existing paths offline, other strings as W&B projects."""
    runs = []
    for source in sources:
        path = Path(source)
        if path.exists():
            runs.extend(read_offline(path))
        elif source.startswith(("/", ".", "~")) or source.count("/") > 1:
            raise NoRunsError(f"no such run folder or file: {source}", field="runs")
        else:
            runs.extend(read_online(source))
    return runs


def _variant_of(run: RunSummary) -> tuple[str, str]:
    """``(variant name, method)``; a pre-encoder variant's method reads ``<method>-pre`` so it plots on its own."""
    variant = run.config.get("variant")
    if isinstance(variant, Mapping):  # serve runs nest the variant
        name, method, stage = variant.get("name") or run.group, variant.get("method", ""), variant.get("stage")
    else:
        name, method, stage = variant or run.group or "?", run.config.get("method", ""), run.config.get("stage")
    return str(name), f"{method}-pre" if stage == "pre" and method else str(method)


def _train_rows(run: RunSummary) -> list[Row]:
    rows = []
    for key, value in run.summary.items():
        number = _number(value)
        if not key.startswith("recall/") or "@" not in key or number is None:
            continue
        method, percent = key.removeprefix("recall/").rsplit("@", 1)
        ratio = float(percent) / 100
        rows.append(Row(f"{method}@{ratio:g}", method, "train", 1, {"recall": number, "kept_ratio": ratio}))
    return rows


def build_rows(runs: Iterable[RunSummary]) -> list[Row]:
    """Rows sorted by job type, method and kept ratio; metrics averaged over runs of one variant."""
    sums: dict[tuple[str, str], Row] = {}
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for run in runs:
        if run.job_type == "train":
            candidates = _train_rows(run)
        elif run.job_type in JOB_TYPES:
            name, method = _variant_of(run)
            metrics = {}
            for column, keys in METRICS.items():
                value = next((_number(run.summary[k]) for k in keys if k in run.summary), None)
                if value is not None:
                    metrics[column] = value
            candidates = [Row(name, method, run.job_type, 1, metrics)]
        else:
            continue
        for row in candidates:
            key = (row.job_type, row.variant)
            total = sums.setdefault(key, Row(row.variant, row.method, row.job_type))
            total.runs += 1
            for column, value in row.metrics.items():
                total.metrics[column] = total.metrics.get(column, 0.0) + value
                counts[key][column] += 1
    rows = []
    for key, row in sums.items():
        row.metrics = {c: v / counts[key][c] for c, v in row.metrics.items()}
        rows.append(row)
    order = {job: i for i, job in enumerate(JOB_TYPES)}
    return sorted(rows, key=lambda r: (order[r.job_type], r.method, r.metrics.get("kept_ratio", 2.0), r.variant))


def format_rows(rows: list[Row]) -> str:
    """The variants x metrics table as aligned text (``-`` where a run has no such metric)."""
    columns = list(METRICS)
    header = ["variant", "job", "runs", *columns]
    lines = [header]
    for row in rows:
        cells = [row.variant, row.job_type, str(row.runs)]
        cells += [f"{row.metrics[c]:.4g}" if c in row.metrics else "-" for c in columns]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )


def _series(rows: list[Row], metric: str, marker: str, suffix: str) -> list[Series]:
    """One series per (method, job type) of the rows that have ``metric`` and a kept ratio.

    A method keeps its colour across plots and metrics; only eval/serve points are labelled.
    """
    methods = sorted({row.method or row.variant for row in rows})
    by_method: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        if metric in row.metrics and "kept_ratio" in row.metrics:
            by_method[(row.method or row.variant, row.job_type)].append(row)
    return [
        Series(
            f"{method} ({job}){suffix}",
            [(r.metrics["kept_ratio"], r.metrics[metric]) for r in group],
            [r.variant if job != "train" else "" for r in group],
            PALETTE[methods.index(method) % len(PALETTE)],
            marker,
        )
        for (method, job), group in sorted(by_method.items())
    ]


@dataclass(frozen=True)
class CostPoint:
    """A variant's cost per 1,000 answers (US$) and its quality (``metric``: accuracy or fidelity)."""

    variant: str
    method: str
    cost: float
    quality: float
    metric: str


def cost_points(rows: list[Row]) -> list[CostPoint]:
    """One point per variant that has a cost (serve rows first, else eval) and an eval quality."""
    cost: dict[str, float] = {}
    for job in ("eval", "serve"):  # serve overwrites eval: what the deployment measured wins
        cost.update(
            {r.variant: r.metrics["cost_per_1k"] for r in rows if r.job_type == job and "cost_per_1k" in r.metrics}
        )
    points = []
    for row in rows:
        if row.job_type != "eval" or row.variant not in cost:
            continue
        metric = next((m for m in QUALITY_FOR_COST if m in row.metrics), None)
        if metric is not None:
            points.append(CostPoint(row.variant, row.method, cost[row.variant], row.metrics[metric], metric))
    return points


def pareto_front(points: list[CostPoint]) -> list[CostPoint]:
    """The points no other point dominates (cost <= and quality >=, one of them strictly), by rising cost."""

    def dominated(p: CostPoint) -> bool:
        return any(
            q.cost <= p.cost and q.quality >= p.quality and (q.cost < p.cost or q.quality > p.quality) for q in points
        )

    return sorted((p for p in points if not dominated(p)), key=lambda p: (p.cost, -p.quality))


def format_front(points: list[CostPoint]) -> str:
    """The Pareto front as one line per variant, or why there is none."""
    if not points:
        return "cost vs quality: no variant has both a cost (serve or eval runs) and an eval accuracy or fidelity"
    lines = ["Pareto front, cost per 1,000 answers vs quality (no variant is cheaper and as good):"]
    lines += [f"  {p.variant}: ${p.cost:.4g} per 1k answers, {p.metric} {p.quality:.4g}" for p in pareto_front(points)]
    return "\n".join(lines)


def cost_plot(points: list[CostPoint], out: Path) -> Path:
    """``cost_vs_quality.png``: every variant (a colour per method) and the Pareto front joined by a line."""
    methods = sorted({p.method for p in points})
    series = [
        Series(
            method,
            [(p.cost, p.quality) for p in points if p.method == method],
            [p.variant for p in points if p.method == method],
            PALETTE[methods.index(method) % len(PALETTE)],
            "circle",
            line=False,
        )
        for method in methods
    ]
    front = pareto_front(points)
    series.append(Series("Pareto front", [(p.cost, p.quality) for p in front], [], (0, 0, 0), "triangle"))
    return scatter_plot(
        series,
        out / "cost_vs_quality.png",
        title="Cost vs quality per variant",
        xlabel="US$ per 1,000 answers",
        ylabel=" / ".join(sorted({p.metric for p in points})),
        yrange=(0.0, 1.0),
    )


def write_plots(rows: list[Row], out: str | Path) -> list[Path]:
    """``quality_vs_kept_ratio.png``, ``latency_vs_kept_ratio.png`` and, when variants have a cost and a
    quality, ``cost_vs_quality.png`` in ``out``."""
    out = Path(out)
    quality = _series(rows, "recall", "circle", " recall") + _series(rows, "accuracy", "square", " accuracy")
    quality += _series(rows, "fidelity", "triangle", " fidelity")
    latency = _series(rows, "latency_p50_ms", "circle", " p50") + _series(rows, "latency_p95_ms", "triangle", " p95")
    return [
        scatter_plot(
            quality,
            out / "quality_vs_kept_ratio.png",
            title="Quality vs kept visual tokens",
            xlabel="kept ratio",
            ylabel="recall / accuracy / fidelity",
            xrange=(0.0, 1.0),
            yrange=(0.0, 1.0),
        ),
        scatter_plot(
            latency,
            out / "latency_vs_kept_ratio.png",
            title="Latency vs kept visual tokens",
            xlabel="kept ratio",
            ylabel="latency, ms",
            xrange=(0.0, 1.0),
        ),
    ] + ([cost_plot(points, out)] if (points := cost_points(rows)) else [])


def run_compare(sources: list[str], out: str | Path) -> int:
    """Print the table, write the plots; returns the exit code (0)."""
    rows = build_rows(read_sources(sources))
    if not rows:
        raise NoRunsError("the runs hold no eval, serve or train summaries to compare", field="runs")
    print(format_rows(rows))
    print(format_front(cost_points(rows)))
    for path in write_plots(rows, out):
        print(f"wrote {path}")
    return 0
