"""``arr-coc train-scorer`` end to end: an offline W&B run read back after the process ends,
a checkpoint that beats uniform and random recall@25 %, and W&B Launch overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from wandb_jobs import arr_coc, launch_env, offline_env

from arr_coc.provenance import ScorerProvenance
from arr_coc.scorer import RelevanceScorer
from training_hooks.comparison.runfile import find_run_files, read_run

pytestmark = pytest.mark.slow

# A short CPU budget: 224-pixel images (8 x 8 tokens), 80 steps of 8.
TRAIN_ARGS = [
    "--steps",
    "80",
    "--batch-size",
    "8",
    "--train-size",
    "96",
    "--heldout-size",
    "32",
    "--image-size",
    "224",
    "--no-progress",
]
MARGIN = 0.3  # recall@25 % above uniform and random, in absolute terms


@pytest.fixture(scope="module")
def trained(tmp_path_factory, testbed_dir):
    root = tmp_path_factory.mktemp("train")
    config = root / "train.yaml"
    config.write_text("lr: 0.005\nheatmap_every: 40\nseed: 0\n")
    out = root / "scorer"
    done = arr_coc(
        ["train-scorer", "--config", str(config), "--out", str(out), "--model", str(testbed_dir()), *TRAIN_ARGS],
        offline_env(root),
        root,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_file,) = find_run_files(root / "dir")
    return read_run(run_file), out, done.stdout


def test_train_run_logs_config_curves_heatmaps_and_recall(trained) -> None:
    run, out, stdout = trained
    assert (run.job_type, run.group, run.project, run.exit_code) == ("train", "scorer-training", "arr-coc-test", 0)
    assert run.config["steps"] == 80 and run.config["lr"] == 0.005  # flag and config file both reached the run
    assert run.config["methods"] == ["arr-coc", "uniform", "random", "divprune", "cdpruner"]
    losses = run.metric("train/loss")
    assert len(losses) == 80
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10  # it learned
    assert all(norm > 0 for norm in run.metric("train/grad_norm/total"))
    assert len(run.metric("train/grad_norm/participatory")) == 80
    heatmap_steps = [row["_step"] for row in run.history if "heatmaps.count" in row]
    assert heatmap_steps == [40, 80]
    for method in ("arr-coc", "uniform", "random", "divprune", "cdpruner"):
        for percent in (10, 25, 50):
            assert 0.0 <= run.summary[f"recall/{method}@{percent}"] <= 1.0
    (printed,) = [line for line in stdout.splitlines() if line.startswith("arr-coc ")]
    assert f"{run.summary['recall/arr-coc@25']:6.3f}" in printed  # the terminal shows the same recall table


def test_checkpoint_is_a_model_artifact_and_beats_the_baselines(trained, testbed_dir) -> None:
    run, out, _ = trained
    (model,) = [a for a in run.artifacts if a.type == "model"]
    assert model.name == "relevance-scorer"
    assert set(model.files) == {"config.json", "model.safetensors"}
    assert "latest" in model.aliases
    scorer = RelevanceScorer.load(out)
    assert scorer.query_dim == 64 and not scorer.training
    assert scorer.trained_for == ScorerProvenance.of(testbed_dir())  # it knows its model
    s = run.summary
    assert s["recall/arr-coc@25"] >= s["recall/uniform@25"] + MARGIN, s
    assert s["recall/arr-coc@25"] >= s["recall/random@25"] + MARGIN, s
    assert s["recall_gain/uniform@25"] == pytest.approx(s["recall/arr-coc@25"] - s["recall/uniform@25"])


def test_launch_overrides_reach_the_training_job(tmp_path: Path, testbed_dir) -> None:
    overrides = {
        "steps": 3,
        "train_size": 4,
        "heldout_size": 2,
        "image_size": 112,
        "methods": ["arr-coc", "random"],
        "budgets": [0.5],
        "out": str(tmp_path / "launched"),
    }
    done = arr_coc(
        ["train-scorer", "--steps", "500", "--model", str(testbed_dir()), "--no-progress"],
        launch_env(tmp_path, overrides),
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_file,) = find_run_files(tmp_path / "dir")
    run = read_run(run_file)
    assert (run.config["steps"], run.config["image_size"], run.config["budgets"]) == (3, 112, [0.5])
    assert len(run.metric("train/loss")) == 3  # the override, not --steps 500, drove the loop
    assert set(k for k in run.summary if k.startswith("recall/")) == {"recall/arr-coc@50", "recall/random@50"}
    assert json.loads((tmp_path / "launched" / "config.json").read_text())["query_dim"] == 64


def test_bad_launch_override_is_a_config_error(tmp_path: Path, testbed_dir) -> None:
    done = arr_coc(["train-scorer", "--model", str(testbed_dir())], launch_env(tmp_path, {"steps": 0}), tmp_path)
    assert done.returncode == 2
    assert "steps" in done.stderr and "greater than or equal to 1" in done.stderr
    assert find_run_files(tmp_path / "dir") == []  # rejected before any run started
