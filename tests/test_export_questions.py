"""Serve runs keep their sampled requests as a question file; ``arr-coc export-questions`` merges them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import wandb_jobs

from arr_coc.errors import NoQuestionsError, NoRunsError
from arr_coc.tasks.image_questions import load_question_file
from arr_coc_cli.main import main
from training_hooks.comparison.runfile import find_run_files, read_run
from training_hooks.tracking.serve_samples import SAMPLES_DIR, SAMPLES_FILE, export_questions

REPO = Path(__file__).resolve().parents[1]

# Two serve runs through the real W&B backend, offline: "sampled" keeps every request as an example
# (four, one repeating an earlier image and question; at most three kept), "unsampled" keeps none.
SCRIPT = """
    import numpy as np
    from training_hooks.tracking.tracker import InferenceTracker, TrackerConfig

    def image(value, width):
        return np.full((96, width, 3), value, np.uint8)

    for name, rate in (("sampled", 1.0), ("unsampled", 0.0)):
        settings = TrackerConfig(project="arr-coc-test", deployment=name, window_s=3600, example_rate=rate,
                                 max_examples=3, example_max_px=64)
        tracker = InferenceTracker("arr-coc-25", {"variant": "arr-coc-25"}, settings, worker_id=0)
        asked = [(image(40, 128), "What is red?"), (image(200, 96), "How many?"), (image(40, 128), "What is red?"),
                 (image(90, 32), "Too many?")]
        for pixels, question in asked:
            example = None
            if tracker.wants_example():
                from training_hooks.tracking.serve_events import Example
                example = Example(pixels, np.eye(4), [0, 5], question, "an answer")
            tracker.record(5.0, kept_ratio=0.25, example=example)
        assert tracker.close(timeout_s=60) and tracker.backend_errors == 0, tracker.backend_errors
"""


@pytest.fixture(scope="module")
def serve_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-runs")
    env = wandb_jobs.offline_env(root, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env, cwd=root, check=True, timeout=300)
    return root


def run_folder(root: Path, deployment: str) -> Path:
    (folder,) = [f.parent for f in find_run_files(root) if read_run(f).name.startswith(deployment)]
    return folder


def test_a_serve_run_keeps_its_samples_as_a_question_file(serve_runs):
    folder = run_folder(serve_runs, "sampled")
    lines = [json.loads(line) for line in (folder / SAMPLES_DIR / SAMPLES_FILE).read_text().splitlines()]
    assert [line["question"] for line in lines] == ["What is red?", "How many?", "What is red?"]  # max_examples
    assert all(line["answer"] == "an answer" and line["kept_ratio"] == 0.125 for line in lines)
    questions = load_question_file(folder / SAMPLES_DIR / SAMPLES_FILE)
    assert [q.image.size for q in questions] == [(64, 48), (64, 64), (64, 48)]  # the table's images
    assert not (folder / "files" / SAMPLES_DIR).exists()  # local only: not among the files W&B uploads
    assert not (run_folder(serve_runs, "unsampled") / SAMPLES_DIR).exists()


def test_export_questions_merges_runs_and_stores_each_image_once(serve_runs, tmp_path, capsys):
    out = tmp_path / "export" / "questions.jsonl"
    assert main(["export-questions", "--runs", str(serve_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 questions about 2 images from 2 serve runs" in printed
    assert "duplicate: 1" in printed and "serve run without samples: 1" in printed
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["question"] for line in lines] == ["What is red?", "How many?"]
    run_id = read_run(run_folder(serve_runs, "sampled")).run_id
    assert all(line["variant"] == "arr-coc-25" and line["run"] == run_id for line in lines)
    assert all(line["image"].startswith("questions-images/") for line in lines)
    assert len(list((out.parent / "questions-images").iterdir())) == 2
    questions = load_question_file(out)
    assert [q.question for q in questions] == ["What is red?", "How many?"]
    assert questions.samples[0].image.getpixel((0, 0)) == (40, 40, 40)
    assert not list(out.parent.glob("*.partial"))
    report = export_questions(serve_runs, tmp_path / "one.jsonl", limit=1)
    assert report.questions == 1 and len((tmp_path / "one.jsonl").read_text().splitlines()) == 1


def test_export_questions_says_what_is_missing(serve_runs, tmp_path, capsys):
    with pytest.raises(NoQuestionsError, match="logged no usable sample"):
        export_questions(run_folder(serve_runs, "unsampled"), tmp_path / "q.jsonl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoRunsError, match="no run-\\*.wandb file"):
        export_questions(empty, tmp_path / "q.jsonl")
    assert main(["export-questions", "--runs", str(tmp_path / "missing"), "--out", str(tmp_path / "q.jsonl")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert not (tmp_path / "q.jsonl").exists()
