"""The real server with W&B tracking on (offline): the serve run holds config and windows, and its
sampled requests export as a question file."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from arr_coc.scorer import RelevanceScorer
from arr_coc.tasks.image_questions import load_question_file
from arr_coc.vlm.testbed import EMBEDDED_MODEL
from testkit.drawing import scene
from testkit.serving import Server, b64_png
from training_hooks.comparison.runfile import find_run_files, read_run
from training_hooks.tracking.serve_samples import export_questions

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]


def test_serve_run_records_windows_and_variant_config(tmp_path):
    width = json.loads((EMBEDDED_MODEL / "config.json").read_text())["text_config"]["hidden_size"]
    scorer = RelevanceScorer(width, seed=3).save(tmp_path / "scorer")  # another scorer for the embedded model
    server = Server(
        tmp_path,
        ARR_COC_WANDB="1",
        ARR_COC_WANDB_WINDOW_S="1",
        ARR_COC_WANDB_SAMPLE_RATE="1",
        ARR_COC_DEPLOYMENT="ci",
        ARR_COC_SCORER=str(scorer),
        ARR_COC_SCORER_ARTIFACT="arr-coc/relevance-scorer:v3",
    )
    image = b64_png(scene(224, 168))
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for budget in (0.25, 0.25, 0.5):
                response = http.post(
                    "/answer",
                    json={
                        "image": image,
                        "question": "Where?",
                        "budget": budget,
                        "max_new_tokens": 3,
                        "variant": "uniform-25",
                    },
                )
                assert response.status_code == 200, response.text
            assert http.post("/answer", json={"image": image, "question": "Where?", "budget": 0}).status_code == 422
            time.sleep(2.5)  # let a window close
    finally:
        server.stop()
    runs = [read_run(path) for path in find_run_files(tmp_path / "wandb")]
    assert runs, (tmp_path / "serve.log").read_text()[-3000:]
    by_group = {run.group: run for run in runs}
    assert "uniform@0.25" not in by_group and "uniform@0.5" not in by_group, "ad-hoc budgets share one run"
    ad_hoc = by_group["uniform@custom"]
    assert ad_hoc.job_type == "serve"
    assert ad_hoc.config["method"] == "uniform" and ad_hoc.config["budget"] == "custom"
    assert ad_hoc.config["vlm"] == "testbed:qwen2.5-vl-vqa" and "git_commit" in ad_hoc.config
    assert ad_hoc.config["scorer"] == str(scorer) and ad_hoc.config["scorer_state"] == "trained"
    assert ad_hoc.config["scorer_artifact"] == "arr-coc/relevance-scorer:v3"
    requests = sum(row.get("serve/requests", 0) for row in ad_hoc.history)
    assert requests == 3
    assert ad_hoc.summary["requests"] == 3 and ad_hoc.summary["latency_p50_ms"] > 0
    assert any("serve/kept_ratio/mean" in row for row in ad_hoc.history)  # the budgets it got, as values
    failed = by_group["arr-coc-25"]
    assert failed.summary["errors"] == 1
    exported = export_questions(tmp_path / "wandb", tmp_path / "questions.jsonl")  # the sampled requests
    assert (exported.questions, exported.images, exported.skipped.get("duplicate")) == (1, 1, 2)
    (sample,) = load_question_file(tmp_path / "questions.jsonl").samples
    assert sample.question == "Where?" and sample.image.size == (224, 168)


def test_unreachable_wandb_never_fails_a_request(tmp_path):
    """Tracking on, online, but W&B's server is a closed loopback port: wandb.init hangs and fails
    in the owner thread while every request is answered."""
    server = Server(
        tmp_path,
        ARR_COC_WANDB="1",
        WANDB_MODE="online",
        WANDB_API_KEY="x" * 40,
        WANDB_BASE_URL="http://127.0.0.1:9",
        WANDB_INIT_TIMEOUT="30",
    )
    image = b64_png(scene(224, 168))
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            statuses = [
                http.post("/answer", json={"image": image, "question": "Where?", "max_new_tokens": 2}).status_code
                for _ in range(6)
            ]
            assert statuses == [200] * 6
            assert http.get("/livez").status_code == 200
    finally:
        server.stop()


def test_a_model_without_a_trained_scorer_says_so_everywhere(tmp_path):
    """A random-weight testbed and no ARR_COC_SCORER: the default variant is training-free, arr-coc variants still
    answer, and the start-up log, /v1/models, the answers and the serve runs all say their scorer is untrained."""
    server = Server(tmp_path, ARR_COC_TESTBED_FAMILY="qwen2.5-vl", ARR_COC_WANDB="1", ARR_COC_WANDB_WINDOW_S="1")
    image = b64_png(scene(224, 168))
    question = {"image": image, "question": "Where?", "max_new_tokens": 2}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            listed = http.get("/v1/models").json()
            assert listed["arr_coc"]["default_variant"] == "divprune-25" and listed["arr_coc"]["scorer"] == "untrained"
            assert "arr-coc distill-scorer --model <id> --images DIR --out DIR" in listed["arr_coc"]["notice"]
            arr_coc = {model["id"]: model["arr_coc"].get("scorer") for model in listed["data"]}
            assert arr_coc["arr-coc-25"] == "untrained" and arr_coc["divprune-25"] is None
            default = http.post("/answer", json=question).json()
            assert default["variant"] == "divprune-25" and default["scorer"] is None, default
            named = http.post("/answer", json={**question, "variant": "arr-coc-25"}).json()
            assert named["variant"] == "arr-coc-25" and named["scorer"] == "untrained" and named["kept_tokens"] > 0
            chat = {
                "model": "arr-coc-25",
                "max_tokens": 2,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                            {"type": "text", "text": "Where?"},
                        ],
                    }
                ],
            }
            completion = http.post("/v1/chat/completions", json=chat).json()
            assert completion["arr_coc"]["scorer"] == "untrained", completion
            assert completion["arr_coc"]["cost"]["dollars"] > 0 and completion["arr_coc"]["cost"]["gpu_s"] == 0
            assert http.post("/relevance", json={"image": image, "question": "Where?"}).json()["scorer"] == "untrained"
            time.sleep(2.5)  # let a window close
    finally:
        server.stop()
    assert "no trained relevance scorer" in (tmp_path / "serve.log").read_text()
    by_group = {run.group: run for run in (read_run(path) for path in find_run_files(tmp_path / "wandb"))}
    for group in ("arr-coc-25", "divprune-25"):
        assert by_group[group].config["scorer"] == "untrained" == by_group[group].config["scorer_state"]
