"""The W&B workspace that compares variants, built offline and checked panel by panel (nothing is sent)."""

from __future__ import annotations

import wandb_workspaces.reports.v2 as wr

from arr_coc_cli.main import main
from training_hooks.comparison.dashboard import build_workspace


def metric_names(panel) -> set[str]:
    names = set()
    for attr in ("x", "y", "metric", "metrics"):
        value = getattr(panel, attr, None)
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                names.add(getattr(item, "name", item))
    return names


def test_the_workspace_compares_variants_on_what_users_judge():
    workspace = build_workspace("team", "arr-coc", deployment="prod")
    panels = [panel for section in workspace.sections for panel in section.panels]
    names = set().union(*(metric_names(p) for p in panels))
    assert {"accuracy", "kept_ratio", "recall", "prefill_p50_ms", "prefill_p95_ms", "throughput_rps"} <= names
    assert {"serve/kept_ratio/mean", "kept_ratio/count", "kept_ratio_p95"} <= names
    assert {"serve/scheduler/running_rows/mean", "serve/scheduler/step_ms/p95", "serve/generated_tokens_per_s"} <= names
    assert any(isinstance(p, wr.WeavePanelSummaryTable) and p.table_name == "serve/examples" for p in panels)
    assert [g.name for g in workspace.runset_settings.groupby] == ["variant"]
    shown = str(workspace.runset_settings.filters)
    assert "tracking.deployment" in shown and "prod" in shown and "eval" in shown


def test_cost_is_drawn_against_quality_with_its_pareto_front():
    section = next(s for s in build_workspace("team", "arr-coc").sections if s.name == "Cost per answer")
    names = set().union(*(metric_names(p) for p in section.panels))
    assert {"serve/cost/dollars_per_1k_answers", "cost_per_1k_answers", "serve/cost/gpu_s_per_answer"} <= names
    scatters = [p for p in section.panels if isinstance(p, wr.ScatterPlot)]
    quality = {frozenset(metric_names(p) - {"cost_per_1k_answers"}) for p in scatters}
    assert quality == {frozenset({"accuracy"}), frozenset({"fidelity"})}
    # cost on x, quality on y, the running maximum of quality along cost: the Pareto front
    assert all(p.x.name == "cost_per_1k_answers" and p.running_ymax for p in scatters)


def test_without_a_deployment_every_run_is_shown(capsys):
    assert not build_workspace("team", "arr-coc").runset_settings.filters
    assert main(["dashboard", "--entity", "team", "--deployment", "prod", "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "team/arr-coc: ARR-COC variants" and "grouped by variant" in printed[1]
    assert sum(line.startswith("  [") for line in printed) == 6 and any("WeavePanelSummaryTable" in x for x in printed)
