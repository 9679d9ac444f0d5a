"""``arr-coc recipe``: run a recipe's stages in order, each through the job its own command runs.

A recipe file names its stages: a command kind, a config file beside the recipe, and the
earlier stage each starts from (:mod:`arr_coc.training.recipe`;
``configs/testbed/recipe.yaml`` makes the embedded testbed and its scorer). Stage NAME
writes ``OUT/NAME``, so ``--from NAME`` runs the rest of a recipe whose earlier outputs
are in OUT. Every stage's config is checked before the first one runs; ``--dry-run``
prints the plan and stops there. ``--device`` applies to every training stage (calibration
runs on the CPU).
"""

from __future__ import annotations

import argparse

from arr_coc_cli.commands.options import add_device, add_wandb_mode

DEFAULT_OUT = "checkpoints"


def stage_values(stage, device: str) -> dict:
    """What the recipe sets in a stage's config, over its file: the inputs, the output and the device."""
    if stage.kind == "train-testbed":
        return {"init": str(stage.init) if stage.init else None, "out": str(stage.out), "device": device}
    if stage.kind == "train-scorer":
        return {"model": str(stage.init), "out": str(stage.out)}
    return {}


def check_stage_config(stage, device: str):
    """The validated config of ``stage``: file < recipe values; an error names the stage."""
    from arr_coc.errors import InvalidConfigError, InvalidRecipeError
    from arr_coc.training.config import load_config_file, train_config, validate
    from arr_coc.training.testbed import train_testbed_config
    from arr_coc_cli.commands.calibrate import CalibrateConfig

    validators = {
        "train-testbed": train_testbed_config,
        "train-scorer": train_config,
        "calibrate": lambda *layers: validate(CalibrateConfig, *layers),
    }
    try:
        return validators[stage.kind](load_config_file(stage.config), stage_values(stage, device))
    except InvalidConfigError as error:
        raise InvalidRecipeError(f"{stage.config}: {error.detail}", field=f"{stage.name}.{error.field}") from None


def run_stage(stage, config, args: argparse.Namespace, device: str) -> int:
    """Run one stage through its command's job function; returns its exit code."""
    progress = not args.no_progress
    if stage.kind == "train-testbed":
        from training_hooks.jobs.train_testbed_job import run_train_testbed_job

        return run_train_testbed_job(
            str(stage.config), stage_values(stage, device), wandb_mode=args.wandb, progress=progress
        )
    if stage.kind == "train-scorer":
        from training_hooks.jobs.train_job import run_train_job

        return run_train_job(
            str(stage.config), stage_values(stage, device), wandb_mode=args.wandb, device=device, progress=progress
        )
    from arr_coc_cli.commands.calibrate import calibrate_scorer

    return calibrate_scorer(stage.init, stage.model, config.size, config.seed, stage.out)


def describe(stage, config_width: int = 0) -> str:
    """One line of the plan: number, name, kind, config, what it starts from, where it writes."""
    start = str(stage.init) if stage.init else "- (random weights)"
    if stage.model is not None:
        start += f", beside {stage.model}"
    config = str(stage.config).ljust(config_width)
    return f"{stage.number:>3}. {stage.name:<14} {stage.kind:<13} {config}  init: {start}  -> {stage.out}"


def run(args: argparse.Namespace) -> int:
    from arr_coc.training.recipe import check_inputs, load_recipe, plan_stages
    from arr_coc.vlm.loading import parse_device

    recipe, config_dir = load_recipe(args.recipe)
    stages = plan_stages(recipe, config_dir, args.out, args.start)
    device = str(parse_device(args.device))
    configs = [check_stage_config(stage, device) for stage in stages]
    print(f"recipe {args.recipe}: {len(stages)} of {len(recipe.stages)} stages on {device}, outputs in {args.out}")
    width = max(len(str(stage.config)) for stage in stages)
    for stage in stages:
        print(describe(stage, width))
    if args.dry_run:
        return 0
    check_inputs(stages)
    for stage, config in zip(stages, configs):
        print(f"== stage {stage.number} of {len(recipe.stages)}: {stage.name} ({stage.kind})", flush=True)
        code = run_stage(stage, config, args, device)
        if code:
            return code
    print(f"recipe done: {stages[-1].out}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "recipe", help="run a recipe's training stages in order (configs/testbed/recipe.yaml)"
    )
    parser.add_argument("recipe", help="recipe file (YAML): its stages, each a kind, a config file and an init stage")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"directory of the stages' outputs (default {DEFAULT_OUT})")
    parser.add_argument(
        "--dry-run", action="store_true", help="check every stage's config, print the plan, run nothing"
    )
    parser.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage (earlier outputs in --out)")
    add_device(parser, dtype=False)  # training runs in float32
    add_wandb_mode(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.set_defaults(func=run)
