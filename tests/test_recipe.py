"""Recipes: the shipped recipe's plan, and recipes that do not chain failing with a typed error before anything runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from arr_coc.errors import InvalidRecipeError
from arr_coc.training.recipe import STAGE_KINDS, load_recipe, plan_stages
from arr_coc_cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "configs" / "testbed" / "recipe.yaml"
TINY = Path(__file__).resolve().parent / "recipes" / "tiny" / "recipe.yaml"


def write_recipe(directory: Path, stages: list[dict], configs: dict[str, dict]) -> Path:
    for name, values in configs.items():
        (directory / name).write_text(yaml.safe_dump(values))
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}))
    return path


def test_the_shipped_recipe_chains_every_stage_to_the_one_before(tmp_path) -> None:
    recipe, config_dir = load_recipe(SHIPPED)
    stages = plan_stages(recipe, config_dir, tmp_path)
    assert stages[0].init is None and stages[0].kind == "train-testbed"
    for before, stage in zip(stages, stages[1:]):
        assert stage.init == before.out == tmp_path / before.name
    assert [s.kind for s in stages[-3:]] == ["train-testbed", "train-scorer", "calibrate"]
    assert stages[-1].model == stages[-3].out, "calibrated beside the VLM its scorer was trained for"
    used = {s.config.name for s in stages} | {"recipe.yaml"}
    assert used == {p.name for p in config_dir.iterdir()}, "every config file beside the recipe is a stage's"


def test_a_dry_run_prints_every_stage_with_its_config_and_resolved_init(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["recipe", str(SHIPPED), "--dry-run", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    recipe, config_dir = load_recipe(SHIPPED)
    assert printed[0].startswith(f"recipe {SHIPPED}: {len(recipe.stages)} of {len(recipe.stages)} stages on cpu")
    assert len(printed) == 1 + len(recipe.stages)
    for line, stage in zip(printed[1:], recipe.stages):
        assert stage.name in line and stage.kind in line and str(config_dir / stage.config) in line
        init = str(out / stage.init) if stage.init else "- (random weights)"
        assert f"init: {init}" in line and line.endswith(f"-> {out / stage.name}")
    assert not out.exists(), "a dry run makes nothing"


def test_a_dry_run_from_a_stage_plans_the_rest(tmp_path, capsys) -> None:
    assert main(["recipe", str(SHIPPED), "--dry-run", "--from", "scorer", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and "scorer" in printed[1] and f"beside {tmp_path / 'pruned'}" in printed[2]


@pytest.mark.parametrize(
    "stages, configs, field, message",
    [
        (
            [
                {"name": "a", "kind": "train-testbed", "config": "a.yaml"},
                {"name": "b", "kind": "train-llm", "config": "a.yaml"},
            ],
            {"a.yaml": {}},
            "stages.1.kind",
            "unknown stage kind 'train-llm'; use one of: " + ", ".join(STAGE_KINDS),
        ),
        (
            [{"name": "a", "kind": "train-testbed", "config": "missing.yaml"}],
            {},
            "stages.0.config",
            "no config file",
        ),
        (
            [
                {"name": "a", "kind": "train-testbed", "config": "a.yaml", "init": "b"},
                {"name": "b", "kind": "train-testbed", "config": "a.yaml"},
            ],
            {"a.yaml": {}},
            "stages.0.init",
            "'b', which is not an earlier stage",
        ),
        (
            [{"name": "a", "kind": "train-scorer", "config": "a.yaml"}],
            {"a.yaml": {}},
            "stages.0.init",
            "a train-scorer stage starts from a train-testbed stage",
        ),
        (
            [
                {"name": "a", "kind": "train-testbed", "config": "a.yaml"},
                {"name": "a", "kind": "train-testbed", "config": "a.yaml"},
            ],
            {"a.yaml": {}},
            "stages.1.name",
            "used twice",
        ),
        ([], {}, "stages", "at least 1 item"),
    ],
)
def test_a_recipe_that_does_not_chain_is_a_typed_error(tmp_path, stages, configs, field, message) -> None:
    path = write_recipe(tmp_path, stages, configs)
    with pytest.raises(InvalidRecipeError, match=message) as caught:
        load_recipe(path)
    assert caught.value.field == field


def test_the_cli_reports_a_bad_recipe_or_stage_config_with_exit_code_2(tmp_path, capsys) -> None:
    path = write_recipe(tmp_path, [{"name": "a", "kind": "calibrate!", "config": "a.yaml"}], {"a.yaml": {}})
    assert main(["recipe", str(path), "--dry-run"]) == 2
    assert "arr-coc recipe: stages.0.kind: unknown stage kind 'calibrate!'" in capsys.readouterr().err
    path = write_recipe(
        tmp_path, [{"name": "a", "kind": "train-testbed", "config": "a.yaml"}], {"a.yaml": {"stepz": 3}}
    )
    assert main(["recipe", str(path), "--dry-run"]) == 2
    assert "arr-coc recipe: a.stepz:" in capsys.readouterr().err
    assert main(["recipe", str(tmp_path / "nowhere.yaml"), "--dry-run"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_run_from_a_stage_whose_input_was_never_made_stops_before_training(tmp_path, capsys) -> None:
    assert main(["recipe", str(TINY), "--from", "scorer", "--out", str(tmp_path), "--wandb", "off"]) == 2
    err = capsys.readouterr().err
    assert f"stage 'scorer' reads {tmp_path / 'scratch'}, which does not exist: run the recipe from 'scratch'" in err
    assert not (tmp_path / "scorer").exists()


def test_a_calibrate_stage_calibrates_its_scorer_beside_the_vlm_it_was_trained_for(tmp_path, monkeypatch) -> None:
    from arr_coc_cli.commands import calibrate
    from arr_coc_cli.commands.recipe import check_stage_config, run_stage

    calls = []
    monkeypatch.setattr(calibrate, "calibrate_scorer", lambda *args: calls.append(args) or 0)
    recipe, config_dir = load_recipe(SHIPPED)
    (stage,) = plan_stages(recipe, config_dir, tmp_path, "calibrate")
    config = check_stage_config(stage, "cpu")
    assert run_stage(stage, config, argparse.Namespace(no_progress=True, wandb="off"), "cpu") == 0
    assert calls == [(tmp_path / "scorer", tmp_path / "pruned", 400, 11, tmp_path / "calibrate")]
