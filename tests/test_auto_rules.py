"""benchmarks/auto_rules.py: the allocation rules' kept ratio and target recall on a small draw."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_auto_rules_prints_one_row_per_rule_with_sane_figures():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "auto_rules.py"), "--size", "16", "--seed", "9"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {
        m[0]: [float(x) for x in m[1:]]
        for m in re.findall(r"^\| (.+?) \| ([\d.]+) / ([\d.]+) \| ([\d.]+) \|", run.stdout, re.M)
    }
    assert len(rows) == 14, run.stdout
    for ratio, (mean, p95, recall) in ((0.05, rows["fixed 5%"]), (0.1, rows["fixed 10%"])):
        assert abs(mean - ratio) < 0.01 and 0.0 <= recall <= 1.0
    assert rows["fixed 10%"][2] >= rows["fixed 5%"][2], "more tokens never recall less"
    assert rows["auto per image, coverage 0.8"][0] >= rows["auto per image, coverage 0.6"][0]
    assert rows["auto, coverage 0.9"][0] >= rows["auto, coverage 0.8"][0]
    assert rows["auto, coverage 0.9"][2] >= rows["auto, coverage 0.8"][2]
