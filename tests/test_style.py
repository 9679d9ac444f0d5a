"""The code style the project keeps: ruff's formatter and its lint rules (pyproject.toml), checked, never assumed."""

from __future__ import annotations

import subprocess
import sys

from testkit.serving import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_the_code_is_formatted():
    result = ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]


def test_the_code_passes_the_lint_rules():
    result = ruff("check", ".")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
