"""The Cloud Run manifest and deploy script say what an L4 deployment needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.settings import ServerSettings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "cloudrun"


@pytest.fixture(scope="module")
def manifest():
    return yaml.safe_load((DEPLOY / "service.yaml").read_text())


@pytest.fixture(scope="module")
def template(manifest):
    return manifest["spec"]["template"]


def quantity(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi)?", str(value))
    assert match, value
    return float(match[1]) / (1024 if match[2] == "Mi" else 1)


def test_knative_service(manifest):
    assert manifest["apiVersion"] == "serving.knative.dev/v1" and manifest["kind"] == "Service"


def test_one_l4_gpu_enough_cpu_and_memory(template):
    annotations = template["metadata"]["annotations"]
    assert annotations["run.googleapis.com/accelerator"] == "nvidia-l4"
    limits = template["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert float(limits["cpu"]) >= 4
    assert quantity(limits["memory"]) >= 16


def test_no_cpu_throttling_and_scaling(template):
    annotations = template["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert annotations["autoscaling.knative.dev/minScale"] == "0"
    assert annotations["autoscaling.knative.dev/maxScale"] == "5"


def test_probes_use_bentoml_health_endpoints(template):
    container = template["spec"]["containers"][0]
    port = container["ports"][0]["containerPort"]
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "models need minutes to load"


def test_concurrency_and_timeout_fit_the_runners(template):
    defaults = ServerSettings()
    bentofile = yaml.safe_load((DEPLOY.parents[1] / "bentofile.yaml").read_text())
    envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    max_batch = int(envs.get("ARR_COC_VLM_MAX_BATCH_SIZE", defaults.vlm_max_batch_size))
    rows = int(envs.get("ARR_COC_VLM_ROWS", defaults.vlm_rows))
    runner_timeout = int(envs.get("ARR_COC_RUNNER_TIMEOUT_S", defaults.runner_timeout_s))
    assert template["spec"]["containerConcurrency"] >= max(max_batch, rows)  # enough requests to fill the rows
    assert template["spec"]["timeoutSeconds"] > runner_timeout + 30  # the front waits runner + 30 s


def test_both_runners_share_gpu_zero(template):
    envs = {e["name"]: e["value"] for e in yaml.safe_load((DEPLOY.parents[1] / "bentofile.yaml").read_text())["envs"]}
    shares = float(envs["ARR_COC_RELEVANCE_GPU"]), float(envs["ARR_COC_VLM_GPU"])
    assert shares[0] == shares[1] and sum(shares) <= 1.0  # equal fractions land on one GPU


def test_deploy_script_is_valid_bash_and_complete():
    script = DEPLOY / "deploy.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for step in ('bentoml" build', 'bentoml" containerize', "docker push", "gcloud run services replace"):
        assert step in text, step
    assert "image: IMAGE" in (DEPLOY / "service.yaml").read_text()


def test_the_deploy_is_private_by_default():
    manifest = yaml.safe_load((DEPLOY.parents[1] / "deploy" / "cloudrun" / "service.yaml").read_text())
    assert manifest["metadata"]["annotations"]["run.googleapis.com/ingress"] in (
        "all",
        "internal",
        "internal-and-cloud-load-balancing",
    )
    script = (DEPLOY.parents[1] / "deploy" / "cloudrun" / "deploy.sh").read_text()
    commands = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not any("allUsers" in line or "--allow-unauthenticated" in line for line in commands)
