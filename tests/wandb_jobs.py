"""Helpers of the W&B job tests: run ``arr-coc`` in a subprocess with W&B offline in a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from testkit.markers import require

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_S = 300  # guard against a hang; never a timing assertion
TRAINING_COMMANDS = ("train-testbed", "train-scorer", "distill-scorer", "recipe")
"""Commands that train: a test running one must be marked ``slow`` (the subprocess has no audit hook)."""


def offline_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of an offline job whose W&B files all live under ``root``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "ARR_COC_"))}
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR"):
        path = root / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[f"WANDB_{name}"] = str(path)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        HF_HUB_OFFLINE="1",
        ARR_COC_HOME=str(root / "home"),
        ARR_COC_WANDB_PROJECT="arr-coc-test",
        TQDM_DISABLE="1",
    )
    env.update(extra)
    return env


def launch_env(root: Path, overrides: dict) -> dict[str, str]:
    """An offline environment as a W&B Launch agent sets it: ``WANDB_LAUNCH`` + ``WANDB_CONFIG``."""
    return offline_env(root, WANDB_LAUNCH="true", WANDB_CONFIG=json.dumps(overrides))


def arr_coc(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m arr_coc_cli ARGS`` to completion (the run file is complete once it returns)."""
    if args and args[0] in TRAINING_COMMANDS:
        require("slow", f"runs arr-coc {args[0]}")
    return subprocess.run(
        [sys.executable, "-m", "arr_coc_cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
