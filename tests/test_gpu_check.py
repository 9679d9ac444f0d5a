"""benchmarks/gpu_check.sh end to end, in its CPU smoke mode: every step runs and reports its figures."""

import os
import re
import subprocess
import sys
from pathlib import Path

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
    assert started == finished and len(started) == 11  # one dtype on CPU; the GPU run has 12
    for figure in ("images/s", "attention calls", "TTFT ms", "ms/step", "req/s", "passed", "same answer"):
        assert figure in report, figure
    assert "NO" not in re.findall(r"\b(yes|NO)\b", report), "graph/static decode ids differ from eager"
