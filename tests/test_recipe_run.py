"""`arr-coc recipe` end to end: a two-stage recipe of tiny steps trains a testbed, then a scorer for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from arr_coc.provenance import vlm_fingerprint
from arr_coc.scorer import RelevanceScorer
from arr_coc_cli.main import main

pytestmark = pytest.mark.slow

TINY = Path(__file__).resolve().parent / "recipes" / "tiny" / "recipe.yaml"


def test_a_tiny_recipe_makes_its_final_checkpoint_from_the_stage_before(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    flags = ["--out", str(out), "--device", "cpu", "--wandb", "off", "--no-progress"]
    assert main(["recipe", str(TINY), *flags]) == 0
    printed = capsys.readouterr().out
    assert "== stage 1 of 2: scratch (train-testbed)" in printed and "== stage 2 of 2: scorer (train-scorer)" in printed
    assert printed.rstrip().endswith(f"recipe done: {out / 'scorer'}")
    assert (out / "scratch" / "model.safetensors").is_file()
    scorer = RelevanceScorer.load(out / "scorer")
    assert scorer.trained_for is not None and scorer.trained_for.fingerprint == vlm_fingerprint(out / "scratch")
