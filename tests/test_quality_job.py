"""`arr-coc quality`: every method at every budget, one W&B eval run each, a table and a plot."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from wandb_jobs import arr_coc, offline_env

from arr_coc.adaptive import DEFAULT_COVERAGE, AutoBudget, Calibration
from arr_coc.errors import InvalidConfigError, NoImagesError, NoQuestionsError, UnknownDatasetError
from arr_coc.selection import allocate
from arr_coc_cli.main import build_parser
from training_hooks.comparison import plots
from training_hooks.comparison.runfile import find_run_files, read_run
from training_hooks.jobs import quality_job
from training_hooks.jobs.quality_job import (
    BUDGETS,
    PLOT_XRANGE,
    PLOT_XTICKS,
    QualityParams,
    accuracy_plot,
    format_markdown,
    plot_xrange,
    quality_variants,
    run_quality_job,
)

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
    assert rows[0]["fidelity"] == 1.0 and rows[0]["first_token_kl"] == 0.0  # against its own answers
    assert all(0 <= r["fidelity"] <= 1 and r["first_token_kl"] >= 0 for r in rows)
    assert (out / "fidelity_vs_kept_ratio.png").is_file()
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
    assert by_group["arr-coc-25"].summary["fidelity"] == pytest.approx(rows[1]["fidelity"])
    assert by_group["full"].summary["first_token_kl"] == 0.0
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
        "fidelity": 0.875,
        "first_token_kl": 0.01234,
        "kept_tokens_mean": 12.0,
        "kept_ratio": 0.1,
        "latency_p50_ms": 9.0,
        "kept_ratio_p95": 0.125,
        "kept_ratio/colour": 0.05,
        "kept_ratio/count": 0.2,
    }
    line = format_markdown([row]).splitlines()[2]
    assert line == (
        "| v | arr-coc | post | 0.1 | 0.500 | 1.000 | nan | 0.250 | 0.750 | 0.875 | 0.0123 | 12.0 | 0.100 | 0.125 "
        "| 0.050 | nan | 0.200 | 9 |"
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


POST_METHODS = ("arr-coc", "uniform", "random", "divprune", "cdpruner")
PRE_METHODS = ("arr-coc", "uniform", "random")


def test_default_budgets_are_the_small_ones_the_usual_ones_and_auto() -> None:
    assert BUDGETS == (0.03, 0.05, 0.1, 0.25, 0.5, "auto")
    params = QualityParams()
    assert params.budgets == [0.03, 0.05, 0.1, 0.25, 0.5, "auto"] and params.stages == ["post", "pre"]


def test_default_rows_hold_3_and_5_percent_and_auto_for_every_method_at_each_stage() -> None:
    variants = quality_variants(QualityParams())
    names = [v.name for v in variants]
    assert len(names) == len(set(names)) == 1 + 6 * len(POST_METHODS) + 6 * len(PRE_METHODS)
    rows = {(v.method, v.stage, v.budget if isinstance(v.budget, float) else str(v.budget)): v.name for v in variants}
    for method in POST_METHODS:
        assert rows[(method, "post", 0.03)] == f"{method}-3"
        assert rows[(method, "post", 0.05)] == f"{method}-5"
    for method in PRE_METHODS:
        assert rows[(method, "pre", 0.03)] == f"{method}-pre-3"
        assert rows[(method, "pre", 0.05)] == f"{method}-pre-5"
    assert not any(v.stage == "pre" for v in variants if v.method in ("divprune", "cdpruner"))
    auto = {(v.method, v.stage): v.name for v in variants if isinstance(v.budget, AutoBudget)}
    assert auto == {
        ("arr-coc", "post"): "arr-coc-auto",
        ("arr-coc", "pre"): "arr-coc-pre-auto",
        ("uniform", "post"): "uniform@auto",
        ("uniform", "pre"): "uniform@auto@pre",
        ("random", "post"): "random@auto",
        ("random", "pre"): "random@auto@pre",
        ("divprune", "post"): "divprune@auto",
        ("cdpruner", "post"): "cdpruner@auto",
    }
    assert all(v.budget == AutoBudget() for v in variants if isinstance(v.budget, AutoBudget))
    assert names[:7] == ["full", "arr-coc-3", "arr-coc-5", "arr-coc-10", "arr-coc-25", "arr-coc-50", "arr-coc-auto"]


def test_an_auto_budget_keeps_as_many_tokens_whatever_the_method() -> None:
    """Why every method gets an auto row: the count comes from the relevance, the method picks which."""
    generator = torch.Generator().manual_seed(3)
    n, dim = 64, 8
    relevance = torch.rand(n, generator=generator) ** 4
    features, question = torch.randn(n, dim, generator=generator), torch.randn(2, dim, generator=generator)
    table = Calibration(coverage_table=((0.5, 0.6), (0.9, 0.2)))
    for calibration in (Calibration(), table):
        counts = {
            method: allocate(
                [relevance],
                AutoBudget(),
                method,
                grid=[(8, 8)],
                features=[features],
                question_tokens=[question],
                calibration=calibration,
            )[0].numel()
            for method in POST_METHODS
        }
        assert len(set(counts.values())) == 1, counts
        assert 1 <= counts["arr-coc"] < n


def test_the_budgets_help_names_the_default() -> None:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    budgets = next(a for a in action.choices["quality"]._actions if "--budgets" in a.option_strings)
    assert "default " + " ".join(f"{b:g}" if isinstance(b, float) else b for b in BUDGETS) in budgets.help


def test_the_percent_axis_is_logarithmic_with_readable_small_ticks() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots()
    try:
        plots.set_x_axis(axes, xrange=PLOT_XRANGE, xscale="log", xticks=PLOT_XTICKS, percent=True)
        figure.canvas.draw()
        assert axes.get_xscale() == "log"
        assert axes.get_xlim() == pytest.approx((0.02, 1.0))
        assert list(axes.get_xticks()) == pytest.approx([0.03, 0.05, 0.1, 0.25, 0.5, 1.0])
        assert [t.get_text() for t in axes.get_xticklabels()] == ["3%", "5%", "10%", "25%", "50%", "100%"]
        assert not any(t.get_text() for t in axes.get_xticklabels(minor=True))
        plots.set_x_axis(axes, xrange=(0.0, 1.0))  # the default stays a plain linear axis
        assert axes.get_xscale() == "linear" and axes.get_xlim() == (0.0, 1.0)
    finally:
        pyplot.close(figure)
    with pytest.raises(ValueError):
        plots.check_x_axis("log", (0.0, 1.0))
    with pytest.raises(ValueError):
        plots.check_x_axis("symlog")


def _marker_x(image: Image.Image, colour: tuple[int, int, int]) -> float:
    """Mean x of the leftmost run of columns holding ``colour`` (the data point; the legend lies right)."""
    pixels = np.asarray(image.convert("RGB"))
    columns = np.flatnonzero((pixels == colour).all(axis=2).any(axis=0)).tolist()
    assert columns, f"no pixel of {colour}"
    run = [columns[0]]
    for x in columns[1:]:
        if x - run[-1] > 1:
            break
        run.append(x)
    return sum(run) / len(run)


@pytest.mark.parametrize("xscale, expected", [("log", 0.2218), ("linear", 0.0444)])
def test_a_log_plot_spreads_the_small_budgets_apart(xscale, expected, tmp_path) -> None:
    colours = [(255, 0, 0), (0, 0, 255), (0, 160, 0)]
    series = [
        plots.Series(f"s{i}", [(x, 0.5)], colour=colour, line=False)
        for i, (x, colour) in enumerate(zip((0.03, 0.05, 0.5), colours))
    ]
    path = plots.scatter_plot(
        series,
        tmp_path / f"{xscale}.png",
        title="t",
        xlabel="x",
        ylabel="y",
        xrange=PLOT_XRANGE if xscale == "log" else (0.0, 1.0),
        yrange=(0.0, 1.0),
        xscale=xscale,
        xticks=PLOT_XTICKS if xscale == "log" else None,
        xpercent=xscale == "log",
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 520)
        x3, x5, x50 = (_marker_x(image, colour) for colour in colours)
    # log: (log 5/3) / (log 10) of the 5 %-to-50 % distance lies between 3 % and 5 %; linear: 2 / 45
    assert (x5 - x3) / (x50 - x5) == pytest.approx(expected, abs=0.03)


def _row(variant, method, budget, kept_ratio, accuracy, stage="post") -> dict:
    return {
        "variant": variant,
        "method": method,
        "stage": stage,
        "budget": budget,
        "kept_ratio": kept_ratio,
        "accuracy": accuracy,
    }


def test_the_accuracy_plot_uses_the_log_percent_axis_and_labels_auto_points(tmp_path, monkeypatch) -> None:
    rows = [
        _row("full", "none", 1.0, 1.0, 0.9),
        _row("arr-coc-3", "arr-coc", 0.03, 0.031, 0.6),
        _row("arr-coc-5", "arr-coc", 0.05, 0.052, 0.7),
        _row("arr-coc-auto", "arr-coc", f"auto@{DEFAULT_COVERAGE:g}", 0.07, 0.8),
        _row("uniform-pre-3", "uniform", 0.03, 0.031, 0.4, stage="pre"),
    ]
    calls = []
    real = quality_job.scatter_plot
    monkeypatch.setattr(quality_job, "scatter_plot", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    path = accuracy_plot(rows, tmp_path / "plot.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 520)
    (series, _), kwargs = calls[0]
    assert kwargs["xscale"] == "log" and kwargs["xpercent"] is True
    assert kwargs["xrange"] == (0.02, 1.0) and tuple(kwargs["xticks"]) == (0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
    by_name = {s.name: s for s in series}
    assert set(by_name) == {"arr-coc", "uniform (pre)"}
    assert by_name["arr-coc"].points == [(0.031, 0.6), (0.052, 0.7), (0.07, 0.8), (1.0, 0.9)]
    assert by_name["arr-coc"].labels == ["", "", f"auto@{DEFAULT_COVERAGE:g}", ""]


def test_the_plot_range_widens_only_for_a_row_below_it() -> None:
    assert plot_xrange([_row("full", "none", 1.0, 1.0, 0.9), _row("a", "arr-coc", 0.03, 0.03, 0.5)]) == (0.02, 1.0)
    low, high = plot_xrange([_row("a", "arr-coc", "auto@0.5", 0.01, 0.5)])
    assert 0 < low < 0.01 and high == 1.0


def test_markdown_without_answers_shows_fidelity_kept_tokens_and_latency() -> None:
    row = {
        "variant": "uniform-3",
        "method": "uniform",
        "budget": 0.03,
        "fidelity": 0.5,
        "first_token_kl": 0.12345,
        "kept_tokens_mean": 1.0,
        "kept_ratio": 0.03,
        "kept_ratio_p95": 0.04,
        "latency_p50_ms": 12.0,
    }
    header, _, line = format_markdown([row]).splitlines()
    assert "accuracy" not in header and "recall" not in header
    assert line == "| uniform-3 | uniform | post | 0.03 | 0.500 | 0.1235 | 1.0 | 0.030 | 0.040 | 12 |"


def task_images(folder: Path, count: int) -> Path:
    """``count`` held-out scenes of the task as PNG files, and one file that is not an image."""
    from arr_coc.tasks.shapes_vqa import ShapesVQA

    folder.mkdir(parents=True)
    scenes = ShapesVQA(count, "heldout", seed=5)
    for index in range(count):
        scenes[index].image.save(folder / f"scene{index}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_fidelity_on_a_folder_of_images_needs_no_answers(tmp_path) -> None:
    out = tmp_path / "quality"
    images = task_images(tmp_path / "images", 4)
    args = ["quality", "--fidelity", "--images", str(images), "--methods", "uniform", "--budgets", "0.03"]
    args += ["--stages", "post", "--batch-size", "6", "--out", str(out), "--wandb", "offline"]
    done = arr_coc(args, offline_env(tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "12 questions (templates)" in done.stderr and "unreadable image: 1" in done.stderr
    rows = json.loads((out / "quality.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["full", "uniform-3"]
    full, pruned = rows
    assert (full["fidelity"], full["first_token_kl"], full["samples"]) == (1.0, 0.0, 12)
    assert pruned["fidelity"] < 1.0 and pruned["first_token_kl"] > 0.0 and pruned["kept_ratio"] < 0.05
    assert "accuracy" not in pruned and not any(key.startswith("accuracy/") for key in pruned)
    table = (out / "quality.md").read_text().splitlines()
    assert "| fidelity | first-token KL |" in table[0] and "accuracy" not in table[0]
    assert (out / "fidelity_vs_kept_ratio.png").is_file() and not (out / "accuracy_vs_kept_ratio.png").exists()
    runs = {run.group: run for run in map(read_run, find_run_files(tmp_path / "dir"))}
    assert runs["uniform-3"].summary["fidelity"] == pytest.approx(pruned["fidelity"])
    assert runs["uniform-3"].summary["first_token_kl"] == pytest.approx(pruned["first_token_kl"])
    assert runs["full"].config["dataset"] == "questions" and runs["full"].config["question_source"] == "templates"
    assert runs["full"].config["questions"] == str(images)
    compared = subprocess.run(
        [sys.executable, "-m", "arr_coc_cli", "compare", str(tmp_path / "dir"), "--out", str(tmp_path / "plots")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compared.returncode == 0, compared.stderr[-2000:]
    header, *lines = compared.stdout.splitlines()
    assert "fidelity" in header.split() and "first_token_kl" in header.split()
    column = header.split().index("fidelity")
    by_variant = {line.split()[0]: line.split() for line in lines if line.startswith(("full", "uniform-3"))}
    assert by_variant["full"][column] == "1" and float(by_variant["uniform-3"][column]) == pytest.approx(
        pruned["fidelity"], abs=1e-3
    )


def test_fidelity_on_a_question_file(tmp_path, capsys) -> None:
    images = task_images(tmp_path / "images", 2)
    lines = [
        {"image": "images/scene0.png", "question": "What colour is the star?"},
        {"image": "images/scene1.png", "question": "How many red objects are there?"},
        {"image": "images/scene1.png"},
        {"image": "images/broken.png", "question": "What shape is the red object?"},
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    values = {"questions": str(questions), "methods": ["arr-coc"], "budgets": [0.1], "stages": ["post"]}
    assert run_quality_job({**values, "out": str(tmp_path / "q")}, wandb_mode="off", device="cpu") == 0
    assert "2 questions (file)" in capsys.readouterr().err
    rows = json.loads((tmp_path / "q" / "quality.json").read_text())["rows"]
    assert [r["samples"] for r in rows] == [2, 2] and rows[0]["fidelity"] == 1.0
    assert images.is_dir()


@pytest.mark.parametrize(
    "values, error, message",
    [
        ({"images": "IMAGES", "questions": "QUESTIONS"}, InvalidConfigError, "not both"),
        ({"fidelity": True}, InvalidConfigError, "--fidelity needs questions without answers"),
        ({"fidelity": True, "images": "EMPTY"}, NoImagesError, "holds no image files"),
        ({"images": "MISSING"}, NoImagesError, "no such folder"),
        ({"questions": "QUESTIONS", "self_questions": 2}, InvalidConfigError, "--self-questions"),
        ({"questions": "BAD"}, NoQuestionsError, "gave no (image, question) pair"),
        ({"images": "IMAGES", "self_questions": -1}, InvalidConfigError, "self_questions"),
    ],
)
def test_bad_question_sources_fail_before_any_model_work(values, error, message, tmp_path, monkeypatch) -> None:
    images = task_images(tmp_path / "images", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "questions.jsonl").write_text(json.dumps({"image": "images/scene0.png", "question": "Why?"}) + "\n")
    (tmp_path / "bad.jsonl").write_text("{nope\n")
    paths = {
        "IMAGES": str(images),
        "QUESTIONS": str(tmp_path / "questions.jsonl"),
        "EMPTY": str(tmp_path / "empty"),
        "MISSING": str(tmp_path / "missing"),
        "BAD": str(tmp_path / "bad.jsonl"),
    }
    values = {key: paths.get(value, value) if isinstance(value, str) else value for key, value in values.items()}
    monkeypatch.setattr("arr_coc.vlm.pipeline.VLMPipeline.from_pretrained", None)  # any model load would fail
    with pytest.raises(error) as raised:
        run_quality_job({**values, "out": str(tmp_path / "q")}, wandb_mode="off", device="cpu")
    assert message in str(raised.value)
    assert not (tmp_path / "q").exists()


def test_the_cli_names_a_contradiction_with_exit_code_2(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "arr_coc_cli", "quality", "--images", str(tmp_path), "--questions", "q.jsonl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "give --images DIR or --questions FILE, not both" in result.stderr
