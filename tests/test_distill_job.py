"""``arr-coc distill-scorer`` end to end on the embedded testbed: offline W&B runs read back, teacher-map
shards shared by several jobs, the user's own image folder, and the bad inputs."""

from __future__ import annotations

import pytest
from wandb_jobs import arr_coc, offline_env

from arr_coc.adaptive import IDENTITY
from arr_coc.provenance import ScorerProvenance
from arr_coc.scorer import RelevanceScorer
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.vlm.testbed import EMBEDDED_MODEL
from training_hooks.comparison.runfile import find_run_files, read_run

pytestmark = pytest.mark.slow

SMALL = ["--train-size", "12", "--heldout-size", "8", "--steps", "4", "--layers", "0,0.25", "--no-progress"]


def only_run(root):
    (run_file,) = find_run_files(root / "dir")
    return read_run(run_file)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    out = root / "scorer"
    done = arr_coc(["distill-scorer", "--out", str(out), *SMALL], offline_env(root), root)
    assert done.returncode == 0, done.stderr[-3000:]
    return only_run(root), out


def test_distill_run_logs_teacher_maps_fidelity_and_the_scorer(distilled) -> None:
    run, out = distilled
    assert (run.job_type, run.group, run.exit_code) == ("distill", "scorer-distillation", 0)
    assert run.config["teacher"] == "attention" and run.config["teacher_layers"] == [0.0, 0.25]
    assert run.summary["pairs"] == 12
    assert 0.0 <= run.summary["teacher_recall@10"] <= 1.0 and run.summary["teacher_recall@25"] > 0.3
    for stage in ("", "@pre"):
        for budget in ("0.05", "0.1", "0.25"):
            assert 0.0 <= run.summary[f"fidelity/arr-coc@{budget}{stage}"] <= 1.0
            assert run.summary[f"first_token_kl/arr-coc@{budget}{stage}"] >= 0.0
    assert any("teacher_maps.count" in row for row in run.history)  # the maps as images
    assert [row["_step"] for row in run.history if "train/loss" in row] == [1, 2, 3, 4], "no training step dropped"
    assert any("fidelity_table" in key for row in run.history for key in row)
    kinds = {(a.name, a.type) for a in run.artifacts}
    assert ("teacher-maps-attention-0-of-1", "teacher-maps") in kinds
    assert ("relevance-scorer", "model") in kinds
    scorer = RelevanceScorer.load(out)
    assert scorer.trained_for == ScorerProvenance.of(EMBEDDED_MODEL, vlm=scorer.trained_for.vlm)
    assert scorer.calibration != IDENTITY and scorer.calibration.coverage_table  # auto, fitted to the teacher
    assert (out / "teacher-maps" / "teacher-attention-0-of-1.safetensors").is_file()
    assert not list(out.glob(".encoded-samples-*"))  # the encoded samples lived on disk only while training


def test_shard_jobs_share_the_teacher_and_training_reads_every_shard(tmp_path) -> None:
    maps = tmp_path / "maps"
    for k in (0, 1):
        root = tmp_path / f"shard{k}"
        args = ["distill-scorer", "--shard", f"{k}/2", "--maps", str(maps), "--out", str(root / "scorer"), *SMALL]
        done = arr_coc(args, offline_env(root), tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not (root / "scorer").exists()  # a shard job computes its maps and stops
        run = only_run(root)
        assert [a.name for a in run.artifacts] == [f"teacher-maps-attention-{k}-of-2"]
    assert sorted(p.name for p in maps.iterdir()) == [
        "teacher-attention-0-of-2.safetensors",
        "teacher-attention-1-of-2.safetensors",
    ]
    root = tmp_path / "train"
    done = arr_coc(
        ["distill-scorer", "--maps", str(maps), "--out", str(root / "scorer"), *SMALL], offline_env(root), tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(root)
    kinds = [a.type for a in run.artifacts if a.type != "run_table"]
    assert kinds == ["model"]  # trained from the shards, nothing recomputed
    assert RelevanceScorer.load(root / "scorer").trained_for is not None


def test_a_folder_of_the_users_images_with_an_unreadable_file(tmp_path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    scenes = ShapesVQA(5, "heldout", 3)
    for i in range(5):
        scenes[i].image.save(images / f"scene{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    root = tmp_path / "run"
    args = ["distill-scorer", "--images", str(images), "--teacher", "attribution", "--out", str(root / "scorer")]
    done = arr_coc([*args, "--steps", "2", "--no-progress"], offline_env(root), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(root)
    assert run.summary["pairs"] == 15  # the task's three templates per readable image
    assert run.summary["skipped/unreadable image"] == 1
    assert run.config["teacher"] == "attribution"
    assert 0.0 <= run.summary["fidelity/arr-coc@0.1"] <= 1.0
    assert "accuracy" not in {k.split("/")[0] for k in run.summary}  # no labels, no accuracy
    assert RelevanceScorer.load(root / "scorer").trained_for is not None
    assert not list((root / "scorer").glob(".encoded-samples-*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--images", "{empty}"], "holds no image files"),
        (["--images", "{empty}", "--questions", "q.jsonl"], "not both"),
        (["--shard", "2/2"], "shard"),
        (["--teacher", "saliency"], "teacher"),
        (["--layers", "0.5"], "LO,HI"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, args, message) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.replace("{empty}", str(empty)) for a in args]
    done = arr_coc(["distill-scorer", "--out", str(tmp_path / "scorer"), *args], offline_env(tmp_path), tmp_path)
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert message in done.stderr
    assert not (tmp_path / "scorer").exists()
