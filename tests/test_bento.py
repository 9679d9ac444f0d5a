"""`arr-coc models import` + `bentoml build`: the bento holds the service, the models and a Dockerfile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
import yaml

from arr_coc.metrics import answer_matches
from arr_coc.tasks.shapes_vqa import ShapesVQA
from arr_coc.vlm.pipeline import VLMPipeline
from arr_coc.vlm.types import AnswerRequest, GenerationParams
from testkit.drawing import scene
from testkit.serving import Server, b64_png

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict) -> str:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("bento")
    env = {
        **os.environ,
        "BENTOML_HOME": str(home / "bentoml"),
        "ARR_COC_HOME": str(home / "arr-coc"),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
    }
    # no flags: the embedded trained testbed and its scorer, nothing trained or built here
    model_tags = run(sys.executable, "-m", "arr_coc_cli", "models", "import", env=env).split()
    bento_tag = run(sys.executable, "-m", "bentoml", "build", "-o", "tag", env=env).strip().splitlines()[-1]
    bento_tag = bento_tag.removeprefix("__tag__:")
    name, version = bento_tag.split(":")
    return {
        "env": env,
        "home": home,
        "models": model_tags,
        "tag": bento_tag,
        "path": home / "bentoml" / "bentos" / name / version,
    }


def test_models_are_in_the_store(built):
    assert [t.split(":")[0] for t in built["models"]] == ["arr-coc-vlm", "arr-coc-scorer"]
    store = built["home"] / "bentoml" / "models"
    vlm_name, vlm_version = built["models"][0].split(":")
    assert (store / vlm_name / vlm_version / "config.json").is_file()
    assert (store / vlm_name / vlm_version / "model.safetensors").is_file()
    assert (store / vlm_name / vlm_version / "README.md").is_file(), "the model card travels with the model"
    scorer_name, scorer_version = built["models"][1].split(":")
    assert (store / scorer_name / scorer_version / "model.safetensors").is_file()
    assert not (built["home"] / "arr-coc").exists(), "importing the embedded pair builds no testbed"


def test_bento_holds_service_models_and_dockerfile(built):
    bento = built["path"]
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "service:ARRCOC"
    assert sorted(m["tag"] for m in info["models"]) == sorted(built["models"])
    assert {s["name"] for s in info["services"]} == {"arr-coc", "relevance-runner", "vlm-runner"}
    for path in (
        "service.py",
        "runners/vlm.py",
        "runners/relevance.py",
        "serving/wire.py",
        "serving/settings.py",
        "model_store/sources.py",
        "front/pipeline.py",
        "front/static/index.html",
        "arr_coc/scorer.py",
        "arr_coc/vlm/pipeline.py",
        "arr_coc/assets/sample.png",
        "training_hooks/tracking/tracker.py",
        "training_hooks/comparison/compare.py",
    ):
        assert (bento / "src" / path).is_file(), path
    assert not (bento / "src" / "tests").exists()
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "ENTRYPOINT" in dockerfile and "ARR_COC_MODEL=model-store:arr-coc-vlm:latest" in dockerfile
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "download.pytorch.org/whl/cu12" in requirements and "torch==" in requirements


def test_exported_bento_carries_the_model_files(built, tmp_path):
    archive = tmp_path / "arr-coc.bento"
    run(sys.executable, "-m", "bentoml", "export", built["tag"], str(archive), env=built["env"])
    with tarfile.open(archive) as tar:
        names = [n.removeprefix("./") for n in tar.getnames()]
    assert any(n.startswith("models/arr-coc-vlm/") and n.endswith("model.safetensors") for n in names)
    assert any(n.startswith("models/arr-coc-scorer/") and n.endswith("model.safetensors") for n in names)
    assert "src/service.py" in names and "env/docker/Dockerfile" in names


def test_import_refuses_missing_checkpoints(built, tmp_path):
    env = built["env"]
    result = subprocess.run(
        [sys.executable, "-m", "arr_coc_cli", "models", "import", "--vlm", str(tmp_path / "nope")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "model" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "arr_coc_cli", "models", "import", "--testbed", "qwen2.5-vl", "--scorer", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "scorer" in result.stderr
    # the shipped scorer takes the shipped model's 128-d queries, not the random testbed's 64-d ones
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "arr_coc_cli",
            "models",
            "import",
            "--testbed",
            "qwen2.5-vl",
            "--scorer",
            "arr_coc/assets/vqa-scorer",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "128-d" in result.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "bentoml", "models", "list", "-o", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert sorted(m["tag"] for m in json.loads(listed.stdout)) == sorted(built["models"]), (
        "a refused import stores nothing"
    )


def test_built_bento_serves_its_bundled_models(built, tmp_path):
    """`bentoml serve <bento>` from outside the repo, models from the bento's store references: the trained
    testbed answers held-out questions of the synthetic VQA task, exactly as the embedded default does in-process."""
    server = Server(
        tmp_path,
        target=built["tag"],
        cwd=tmp_path,
        BENTOML_HOME=built["env"]["BENTOML_HOME"],
        ARR_COC_MODEL="model-store:arr-coc-vlm:latest",
        ARR_COC_SCORER="model-store:arr-coc-scorer:latest",
        ARR_COC_HOME=str(tmp_path / "no-testbed-here"),
        ARR_COC_DEVICE="cpu",
    )
    try:
        server.wait_ready()
        response = httpx.post(
            f"{server.url}/answer",
            json={"image": b64_png(scene(224, 168)), "question": "Where?", "max_new_tokens": 2},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        samples = [ShapesVQA(8, "heldout", seed=11)[i] for i in range(8)]
        served = []
        for sample in samples:
            response = httpx.post(
                f"{server.url}/answer",
                json={
                    "image": b64_png(sample.image),
                    "question": sample.question,
                    "variant": "full",
                    "max_new_tokens": 4,
                },
                timeout=120,
            )
            assert response.status_code == 200, response.text
            served.append(response.json()["answer"])
    finally:
        server.stop()
    embedded = VLMPipeline.from_pretrained(device="cpu")
    local = [
        embedded.answer(AnswerRequest(s.image, s.question, "none", 1.0, GenerationParams(max_new_tokens=4))).answer
        for s in samples
    ]
    assert served == local, "the bento serves the embedded trained testbed and its scorer"
    right = sum(answer_matches(a, s.answer) for a, s in zip(served, samples))
    assert right >= 3, (served, [s.answer for s in samples])  # chance is about 1.4 of 8
    assert not (tmp_path / "no-testbed-here").exists(), "the bento must not build a testbed"
