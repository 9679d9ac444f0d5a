"""The Cloud Run manifest and deploy script: what an L4 deployment needs, and variants side by side."""

from __future__ import annotations

import os
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


# deploy.sh --dry-run: the commands a deploy runs, and the traffic specs it refuses.

SCOPE = "--project demo --region us-central1"
IMAGE = "us-central1-docker.pkg.dev/demo/arr-coc/arr-coc:dry-run"
BUILD = [
    "env ARR_COC_RELEVANCE_GPU=0.5 ARR_COC_VLM_GPU=0.5 .venv/bin/bentoml build -o tag",
    f".venv/bin/bentoml containerize arr-coc:dry-run --platform linux/amd64 -t {IMAGE}",
    f"docker push {IMAGE}",
]
SHOW_TRAFFIC = f"gcloud run services describe arr-coc {SCOPE} --format 'yaml(status.traffic)'"


@pytest.fixture
def stubs(tmp_path):
    """gcloud and docker that only record being called: a dry run or a refused option calls neither."""
    for name in ("gcloud", "docker"):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho "$0 $*" >> "{tmp_path}/called"\nexit 1\n')
        stub.chmod(0o755)
    return tmp_path


def deploy(stubs: Path, *args: str, project: str | None = "demo") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PROJECT", "REPOSITORY", "SERVICE", "BIN")}
    env.update(PATH=f"{stubs}{os.pathsep}{env['PATH']}", REGION="us-central1")
    if project:
        env["PROJECT"] = project
    return subprocess.run(["bash", str(DEPLOY / "deploy.sh"), *args], env=env, capture_output=True, text=True)


def printed(result: subprocess.CompletedProcess) -> list[str]:
    """The commands a dry run prints, without their ``+ `` prefix."""
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def dry_run(stubs: Path, *args: str, project: str | None = "demo") -> list[str]:
    result = deploy(stubs, "--dry-run", *args, project=project)
    assert result.returncode == 0, result.stderr
    assert not (stubs / "called").exists(), (stubs / "called").read_text()
    return printed(result)


def gcloud(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("gcloud ")]


def test_a_plain_deploy_replaces_the_service_from_the_manifest(stubs):
    assert dry_run(stubs) == [
        *BUILD,
        f"sed 's|image: IMAGE|image: {IMAGE}|' deploy/cloudrun/service.yaml > MANIFEST",
        f"gcloud run services replace MANIFEST {SCOPE}",
        f"gcloud run services describe arr-coc {SCOPE} --format 'value(status.url)'",
    ]


def test_models_are_imported_before_the_build(stubs):
    lines = dry_run(stubs, "--vlm", "Qwen/Qwen2.5-VL-3B-Instruct", "--scorer", "my-scorer")
    assert lines[:2] == [
        ".venv/bin/arr-coc models import --vlm Qwen/Qwen2.5-VL-3B-Instruct --scorer my-scorer",
        BUILD[0],
    ]


def test_a_tagged_revision_gets_no_traffic_and_its_default_variant(stubs):
    lines = dry_run(stubs, "--tag", "arr25", "--variant", "arr-coc-25")
    assert lines[:3] == BUILD
    assert gcloud(lines) == [
        f"gcloud run deploy arr-coc --image {IMAGE} --tag arr25 --no-traffic "
        f"--update-env-vars ARR_COC_DEFAULT_VARIANT=arr-coc-25 {SCOPE}",
        SHOW_TRAFFIC,
    ]


def test_a_tagged_revision_without_variant_drops_the_inherited_one(stubs):
    assert gcloud(dry_run(stubs, "--tag=full"))[0] == (
        f"gcloud run deploy arr-coc --image {IMAGE} --tag full --no-traffic --remove-env-vars ARR_COC_DEFAULT_VARIANT "
        f"{SCOPE}"
    )


def test_traffic_alone_splits_between_tags_without_a_build(stubs):
    assert dry_run(stubs, "--traffic", "arr25=50,full=50") == [
        f"gcloud run services update-traffic arr-coc --to-tags arr25=50,full=50 {SCOPE}",
        SHOW_TRAFFIC,
    ]


def test_latest_takes_all_the_traffic_back(stubs):
    assert dry_run(stubs, "--traffic", "latest=100") == [
        f"gcloud run services update-traffic arr-coc --to-latest {SCOPE}",
        SHOW_TRAFFIC,
    ]


def test_a_tagged_deploy_then_a_split(stubs):
    lines = gcloud(dry_run(stubs, "--tag", "full", "--variant", "full", "--traffic", "arr25=90,full=010"))
    assert [line.split(" --")[0] for line in lines] == [
        "gcloud run deploy arr-coc",
        "gcloud run services update-traffic arr-coc",
        "gcloud run services describe arr-coc",
    ]
    assert f"--to-tags arr25=90,full=10 {SCOPE}" in lines[1]


def test_a_dry_run_needs_no_project_but_a_real_run_does(stubs):
    assert "--project PROJECT" in dry_run(stubs, "--traffic", "latest=100", project=None)[0]
    result = deploy(stubs, "--traffic", "latest=100", project=None)
    assert result.returncode != 0 and "PROJECT" in result.stderr
    assert not (stubs / "called").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--traffic", "arr25=50,full=40"], "sum to 90, not 100"),
        (["--traffic", "arr25=60,full=60"], "sum to 120, not 100"),
        (["--traffic", "arr25=-10,full=110"], "bad percent '-10'"),
        (["--traffic", "arr25=50.5,full=49.5"], "bad percent '50.5'"),
        (["--traffic", "arr25=half,full=50"], "bad percent 'half'"),
        (["--traffic", "arr25=1000"], "bad percent '1000'"),
        (["--traffic", "Arr25=100"], "bad tag 'Arr25'"),
        (["--traffic", "25arr=100"], "bad tag '25arr'"),
        (["--traffic", "arr_25=100"], "bad tag 'arr_25'"),
        (["--traffic", "arr25-=100"], "bad tag 'arr25-'"),
        (["--traffic", "=100"], "bad tag ''"),
        (["--traffic", "arr25=50,arr25=50"], "'arr25' appears twice"),
        (["--traffic", ""], "empty --traffic"),
        (["--traffic"], "--traffic needs a value"),
        (["--traffic", "arr25=50,,full=50"], "empty entry"),
        (["--traffic", "arr25=100,"], "empty entry"),
        (["--traffic", "arr25"], "want tag=percent"),
        (["--traffic", "latest=50,full=50"], "latest=100 alone"),
        (["--tag", "Full"], "bad tag 'Full'"),
        (["--tag", "latest"], "'latest' names the latest revision"),
        (["--tag="], "--tag needs a value"),
        (["--variant", "full"], "--variant needs --tag"),
        (["--tag", "full", "--variant", "full,x"], "bad variant"),
        (["--traffic", "arr25=100", "--vlm", "Qwen/Qwen2.5-VL-3B-Instruct"], "builds nothing"),
        (["--canary"], "unknown option: --canary"),
    ],
)
def test_a_bad_option_exits_with_a_message_and_runs_nothing(stubs, args, message):
    for dry in ([], ["--dry-run"]):
        result = deploy(stubs, *dry, *args)
        assert result.returncode != 0
        assert message in result.stderr, result.stderr
        assert not printed(result) and not (stubs / "called").exists()


def test_help_prints_the_options(stubs):
    result = deploy(stubs, "--help", project=None)
    assert result.returncode == 0
    for option in ("--tag", "--variant", "--traffic", "--dry-run", "--vlm", "--scorer"):
        assert option in result.stdout


def test_the_cost_of_an_answer_prices_the_instance_the_manifest_asks_for(template):
    from arr_coc.pricing import PricingSettings

    limits = template["spec"]["containers"][0]["resources"]["limits"]
    instance = PricingSettings().instance(on_gpu=True)
    assert (instance.vcpus, instance.memory_gib, instance.gpus) == (
        float(limits["cpu"]),
        quantity(limits["memory"]),
        int(limits["nvidia.com/gpu"]),
    )
    annotations = template["metadata"]["annotations"]
    assert annotations["run.googleapis.com/gpu-zonal-redundancy-disabled"] == "true"  # the price of the default
