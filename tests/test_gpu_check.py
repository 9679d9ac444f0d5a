"""benchmarks/gpu_check.sh end to end, in its CPU smoke mode: every step runs and reports its figures."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_step(tmp_path):
    out = tmp_path / "gpu_check.txt"
    env = {**os.environ, "PYTHON": sys.executable, "ARR_COC_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    report = out.read_text()
    assert run.returncode == 0, report[-6000:]
    started = re.findall(r"^== (.+?) \(limit", report, flags=re.M)
    finished = re.findall(r"^-- (.+?): exit 0 after", report, flags=re.M)
    assert started == finished and len(started) == 14  # one dtype on CPU; the GPU run has 15
    for figure in ("images/s", "attention calls", "TTFT ms", "ms/step", "req/s", "passed", "same answer"):
        assert figure in report, figure
    assert "rps/instance" in report and "cheaper" in report  # the capacity table
    assert "step / batch throughput" in report and re.search(r"^\s+step\s+2\s", report, flags=re.M)
    assert "NO" not in re.findall(r"\b(yes|NO)\b", report), "graph/static decode ids differ from eager"


def test_gpu_train_runs_fine_tunes_side_by_side(tmp_path):
    from arr_coc.tasks.shapes_vqa import ANSWER_WORDS
    from arr_coc.vlm.testbed import build_testbed

    start = tmp_path / "start"  # 3 LLM layers and 4 vision blocks, which the grown stage grows to 8 and 8
    build_testbed(start, "qwen2.5-vl", seed=0, size="vqa", words=ANSWER_WORDS)
    overrides = {"device": "cpu", "time_budget_s": 2, "workers": 0, "batch_size": 1, "heldout_size": 1}
    overrides["init"] = str(start)
    run = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "gpu_train.sh"),
            str(tmp_path),
            "grown",
            "pruned",
            "--",
            json.dumps(overrides),
        ],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert re.findall(r"/(grown|pruned): \d+ steps, held-out accuracy", run.stdout) == ["grown", "pruned"], run.stdout
    grown = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert (grown["text_config"]["num_hidden_layers"], grown["vision_config"]["depth"]) == (8, 8)
    assert (tmp_path / "pruned" / "model.safetensors").is_file()


def test_gpu_train_reports_a_failed_run(tmp_path):
    overrides = json.dumps({"device": "cpu", "init": str(tmp_path / "missing")})
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_train.sh"), str(tmp_path), "pruned", "--", overrides],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "ModelNotFoundError" in (tmp_path / "pruned.log").read_text()


def test_gpu_train_refuses_no_names_and_unknown_names(tmp_path):
    for names in ([], ["pruned", "nonesuch"]):
        run = subprocess.run(
            ["bash", str(ROOT / "benchmarks" / "gpu_train.sh"), str(tmp_path), *names],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and "gpu_train.sh:" in run.stderr, (names, run.stderr)
    assert not list(tmp_path.glob("*.log")), "nothing started"
