"""`arr-coc quality`: every method at every budget, one W&B eval run each, a table and a plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from wandb_jobs import arr_coc, offline_env

from arr_coc.adaptive import DEFAULT_COVERAGE
from arr_coc.errors import InvalidConfigError, UnknownDatasetError
from training_hooks.comparison.runfile import find_run_files, read_run
from training_hooks.jobs.quality_job import QualityParams, format_markdown, quality_variants, run_quality_job

ROOT = Path(__file__).resolve().parents[1]


def test_variants_cover_full_then_every_method_and_budget() -> None:
    variants = quality_variants(QualityParams(methods=["arr-coc", "cdpruner"], budgets=[0.1, 0.3]))
    assert [(v.name, v.method, v.budget, v.stage) for v in variants] == [
        ("full", "none", 1.0, "post"),
        ("arr-coc-10", "arr-coc", 0.1, "post"),
        ("arr-coc@0.3", "arr-coc", 0.3, "post"),
        ("cdpruner-10", "cdpruner", 0.1, "post"),
        ("cdpruner@0.3", "cdpruner", 0.3, "post"),
        ("arr-coc-pre-10", "arr-coc", 0.1, "pre"),
        ("arr-coc@0.3@pre", "arr-coc", 0.3, "pre"),
    ]  # cdpruner needs the tower's features: no pre rows


def test_a_small_table_is_written_and_logged(tmp_path) -> None:
    out = tmp_path / "quality"
    done = arr_coc(
        [
            "quality",
            "--size",
            "6",
            "--methods",
            "arr-coc",
            "divprune",
            "--budgets",
            "0.25",
            "--out",
            str(out),
            "--batch-size",
            "3",
            "--wandb",
            "offline",
            "--stages",
            "post",
            "pre",
        ],
        offline_env(tmp_path),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "quality.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["full", "arr-coc-25", "divprune-25", "arr-coc-pre-25"]
    assert [r["stage"] for r in rows] == ["post", "post", "post", "pre"]
    assert rows[3]["kept_tokens_mean"] == rows[1]["kept_tokens_mean"]
    for row in rows:
        assert row["samples"] == 6 and 0 <= row["accuracy"] <= 1 and 0 <= row["recall"] <= 1
        assert {"accuracy/colour", "accuracy/shape", "accuracy/count"} & set(row)
    assert rows[0]["kept_ratio"] == 1.0 and 0.2 < rows[1]["kept_ratio"] < 0.3
    table = (out / "quality.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("| full |")
    assert "| arr-coc-25 |" in done.stdout
    with Image.open(out / "accuracy_vs_kept_ratio.png") as plot:
        assert plot.size[0] > 400
    runs = [read_run(path) for path in find_run_files(tmp_path / "dir")]
    by_group = {run.config.get("variant"): run for run in runs}
    assert set(by_group) == {"full", "arr-coc-25", "divprune-25", "arr-coc-pre-25"}
    assert by_group["arr-coc-pre-25"].config["stage"] == "pre"
    assert all(run.job_type == "eval" and run.group == run.config["variant"] for run in runs)
    assert by_group["arr-coc-25"].summary["accuracy"] == pytest.approx(rows[1]["accuracy"])
    assert by_group["divprune-25"].config["method"] == "divprune"


def test_markdown_rows_carry_per_kind_accuracy() -> None:
    row = {
        "variant": "v",
        "method": "arr-coc",
        "budget": 0.1,
        "accuracy": 0.5,
        "accuracy/colour": 1.0,
        "accuracy/count": 0.25,
        "recall": 0.75,
        "kept_tokens_mean": 12.0,
        "kept_ratio": 0.1,
        "latency_p50_ms": 9.0,
        "kept_ratio_p95": 0.125,
        "kept_ratio/colour": 0.05,
        "kept_ratio/count": 0.2,
    }
    line = format_markdown([row]).splitlines()[2]
    assert line == (
        "| v | arr-coc | post | 0.1 | 0.500 | 1.000 | nan | 0.250 | 0.750 | 12.0 | 0.100 | 0.125 | 0.050 | nan "
        "| 0.200 | 9 |"
    )
    auto = format_markdown([{**row, "budget": "auto@0.6"}]).splitlines()[2]
    assert "| auto@0.6 |" in auto


@pytest.mark.parametrize(
    "values, error",
    [
        ({"size": 0}, InvalidConfigError),
        ({"methods": []}, InvalidConfigError),
        ({"dataset": "coco"}, UnknownDatasetError),
        ({"methods": ["blur"]}, InvalidConfigError),
        ({"budgets": [1.5]}, InvalidConfigError),
        ({"budgets": ["auto"], "coverages": [1.5]}, InvalidConfigError),
        ({"budgets": ["most"]}, InvalidConfigError),
        ({"stages": ["middle"]}, InvalidConfigError),
    ],
)
def test_bad_parameters_fail_before_any_model_work(values, error, tmp_path) -> None:
    with pytest.raises(error):
        run_quality_job({**values, "out": str(tmp_path / "q")}, wandb_mode="off", device="cpu")
    assert not (tmp_path / "q").exists()


def test_cli_reports_bad_flags_with_exit_code_2(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "arr_coc_cli", "quality", "--size", "0", "--wandb", "off", "--out", str(tmp_path / "q")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "size" in result.stderr


def test_auto_budgets_give_one_variant_per_coverage() -> None:
    variants = quality_variants(
        QualityParams(
            methods=["arr-coc"], budgets=["auto", 0.1], coverages=[DEFAULT_COVERAGE, 0.9], stages=["post", "pre"]
        )
    )
    names = [v.name for v in variants]
    assert names == [
        "full",
        "arr-coc-auto",
        "arr-coc@auto(coverage=0.9)",
        "arr-coc-10",
        "arr-coc-pre-auto",
        "arr-coc@auto(coverage=0.9)@pre",
        "arr-coc-pre-10",
    ]


def test_plots_skip_non_finite_points_and_keep_their_size(tmp_path) -> None:
    from PIL import Image

    from training_hooks.comparison.plots import Series, scatter_plot

    path = scatter_plot(
        [Series("a", [(0.1, 0.5), (0.2, float("nan")), (0.3, 0.7)], labels=["x", "y", "z"])],
        tmp_path / "deep" / "plot.png",
        title="t",
        xlabel="x",
        ylabel="y",
        xrange=(0, 1),
    )
    with Image.open(path) as image:
        assert image.size == (800, 520) and image.format == "PNG"
