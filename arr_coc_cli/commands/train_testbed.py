"""``arr-coc train-testbed``: train the tiny Qwen2.5-VL on the synthetic VQA task, tracked as a W&B job.

Flags override the ``--config`` file (JSON/YAML, keys as in
``arr_coc.training.testbed.TrainTestbedConfig``); W&B Launch overrides win over both.
"""

from __future__ import annotations

import argparse

from arr_coc_cli.commands.options import add_wandb_mode


def run(args: argparse.Namespace) -> int:
    from training_hooks.jobs.train_testbed_job import run_train_testbed_job

    cli_values = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "out": args.out,
        "heldout_size": args.heldout_size,
        "eval_every": args.eval_every,
        "workers": args.workers,
        "pre_share": args.pre_share,
        "target_share": args.target_share,
        "init": args.init,
        "time_budget_s": args.time_budget,
    }
    return run_train_testbed_job(args.config, cli_values, wandb_mode=args.wandb, progress=not args.no_progress)


def register(subparsers) -> None:
    parser = subparsers.add_parser("train-testbed", help="train the VQA testbed VLM from scratch (W&B job_type=train)")
    parser.add_argument("--config", help="JSON or YAML file of training parameters")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, help="examples per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="checkpoint directory (default ./testbed-checkpoint)")
    parser.add_argument("--heldout-size", type=int, help="held-out samples per evaluation")
    parser.add_argument("--eval-every", type=int, help="steps between held-out evaluations (0 = at the end)")
    parser.add_argument("--workers", type=int, help="DataLoader workers drawing scenes")
    parser.add_argument("--pre-share", type=float, help="share of examples whose tokens drop before the tower")
    parser.add_argument(
        "--target-share", type=float, help="share of examples keeping most target tokens and few others"
    )
    parser.add_argument("--init", help="checkpoint to fine-tune (default: random weights from --seed)")
    parser.add_argument("--time-budget", type=float, help="seconds of training after which the run ends early")
    add_wandb_mode(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.set_defaults(func=run)
