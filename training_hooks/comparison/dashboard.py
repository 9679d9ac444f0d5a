"""A W&B workspace that compares variants, built in code with ``wandb-workspaces``.

``build_workspace(entity, project, deployment)`` returns the workspace model (nothing
is sent); :func:`save` writes it to W&B. Runs are grouped by variant (``config.variant``)
and, when a deployment is named, the serve runs are filtered to it (``config.tracking.deployment``)
while eval runs stay in. Sections:

- quality: accuracy and target recall against the kept ratio (eval runs), accuracy per variant;
- time to first token: prefill and whole-request latency p50/p95 per variant, latency over time (serve runs);
- throughput: answered requests per second, batch sizes per runner;
- kept tokens: the kept-ratio distribution per variant, over time and in the eval summaries;
- cost: US$ per 1,000 answers over time and per variant, and cost against accuracy and
  against fidelity per variant (eval runs) with the running maximum of quality along
  cost drawn: that staircase is the Pareto front (the best quality any variant gives
  at that cost or less);
- examples: the sampled requests with their heatmaps (``serve/examples``).
"""

from __future__ import annotations

from arr_coc.vocabulary import QUESTION_KINDS
from training_hooks.tracking.serve_events import PREFIX
from training_hooks.tracking.tracker import EXAMPLES_KEY


def build_workspace(entity: str, project: str, deployment: str | None = None, name: str = "ARR-COC variants"):
    """The workspace model comparing every variant's serve and eval runs of ``entity/project``."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    summary = wr.SummaryMetric
    sections = [
        ws.Section(
            name="Quality vs kept tokens (eval runs)",
            panels=[
                wr.ScatterPlot(title="accuracy vs kept ratio", x=summary("kept_ratio"), y=summary("accuracy")),
                wr.ScatterPlot(title="target recall vs kept ratio", x=summary("kept_ratio"), y=summary("recall")),
                wr.BarPlot(title="accuracy per variant", metrics=[summary("accuracy")], groupby="config.variant"),
            ],
            is_open=True,
        ),
        ws.Section(
            name="Time to first token (serve runs)",
            panels=[
                wr.BarPlot(
                    title="prefill and whole-request latency p50 / p95 per variant (ms)",
                    metrics=[summary(f"{name}_p{q}_ms") for name in ("prefill", "latency") for q in (50, 95)],
                    groupby="config.variant",
                ),
                wr.LinePlot(title="latency p50 / p95 (ms)", y=[f"{PREFIX}latency_ms/p50", f"{PREFIX}latency_ms/p95"]),
            ],
            is_open=True,
        ),
        ws.Section(
            name="Throughput (serve runs)",
            panels=[
                wr.LinePlot(title="answered requests / s", y=[f"{PREFIX}throughput_rps"]),
                wr.LinePlot(
                    title="batch size per runner",
                    y=[f"{PREFIX}batch_size/relevance/mean", f"{PREFIX}batch_size/vlm/mean"],
                ),
                wr.LinePlot(
                    title="step scheduler: running rows and queue depth (mean)",
                    y=[f"{PREFIX}scheduler/running_rows/mean", f"{PREFIX}scheduler/queue_depth/mean"],
                ),
                wr.LinePlot(
                    title="decode step p50 / p95 (ms)",
                    y=[f"{PREFIX}scheduler/step_ms/p50", f"{PREFIX}scheduler/step_ms/p95"],
                ),
                wr.LinePlot(title="generated tokens / s", y=[f"{PREFIX}generated_tokens_per_s"]),
                wr.ScalarChart(
                    title="throughput per variant", metric=summary("throughput_rps"), groupby_aggfunc="mean"
                ),
            ],
        ),
        ws.Section(
            name="Kept tokens",
            panels=[
                wr.LinePlot(title="mean kept ratio (serve windows)", y=[f"{PREFIX}kept_ratio/mean"]),
                wr.BarPlot(
                    title="kept ratio per variant and question template (eval)",
                    metrics=[summary(f"kept_ratio/{kind}") for kind in QUESTION_KINDS],
                    groupby="config.variant",
                ),
                wr.BarPlot(
                    title="kept ratio mean / p95 (eval)",
                    metrics=[summary("kept_ratio"), summary("kept_ratio_p95")],
                    groupby="config.variant",
                ),
            ],
        ),
        ws.Section(
            name="Cost per answer",
            panels=[
                wr.LinePlot(title="US$ per 1,000 answers (serve windows)", y=[f"{PREFIX}cost/dollars_per_1k_answers"]),
                wr.BarPlot(
                    title="US$ per 1,000 answers per variant",
                    metrics=[summary("cost_per_1k_answers")],
                    groupby="config.variant",
                ),
                wr.ScatterPlot(
                    title="accuracy vs US$ per 1,000 answers (eval runs; line: Pareto front)",
                    x=summary("cost_per_1k_answers"),
                    y=summary("accuracy"),
                    running_ymax=True,
                ),
                wr.ScatterPlot(
                    title="fidelity vs US$ per 1,000 answers (eval runs; line: Pareto front)",
                    x=summary("cost_per_1k_answers"),
                    y=summary("fidelity"),
                    running_ymax=True,
                ),
                wr.LinePlot(title="GPU-seconds per answer (serve windows)", y=[f"{PREFIX}cost/gpu_s_per_answer"]),
            ],
            is_open=True,
        ),
        ws.Section(
            name="Examples with heatmaps",
            panels=[wr.WeavePanelSummaryTable(table_name=EXAMPLES_KEY)],
        ),
    ]
    filters = ""
    if deployment is not None:  # this deployment's serve runs, and every eval run
        filters = ws.Or(ws.Config("tracking.deployment") == deployment, ws.Metric("JobType") == "eval")
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name,
        sections=sections,
        runset_settings=ws.RunsetSettings(filters=filters, groupby=[ws.Config("variant")]),
    )


def outline(workspace) -> str:
    """What the workspace holds, one line per section and panel (for ``--dry-run``)."""
    lines = [
        f"{workspace.entity}/{workspace.project}: {workspace.name}",
        f"  runs: filters {workspace.runset_settings.filters or 'none'}, grouped by "
        f"{', '.join(g.name for g in workspace.runset_settings.groupby)}",
    ]
    for section in workspace.sections:
        lines.append(f"  [{section.name}]")
        lines += [
            f"    {type(panel).__name__}: {getattr(panel, 'title', None) or getattr(panel, 'table_name', '')}"
            for panel in section.panels
        ]
    return "\n".join(lines)


def save(workspace) -> str:
    """Write ``workspace`` to W&B (needs ``WANDB_API_KEY`` and the network); returns its URL."""
    return workspace.save().url
