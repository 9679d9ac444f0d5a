"""``arr-coc train-scorer``: train the relevance scorer on the synthetic set, tracked as a W&B job.

Flags override the ``--config`` file (JSON/YAML, keys as in
``arr_coc.training.config.TrainConfig``); W&B Launch overrides win over both.
"""

from __future__ import annotations

import argparse

from arr_coc_cli.commands.options import add_device, add_wandb_mode


def run(args: argparse.Namespace) -> int:
    from training_hooks.jobs.train_job import run_train_job

    cli_values = {
        "steps": args.steps,
        "out": args.out,
        "model": args.model,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "train_size": args.train_size,
        "heldout_size": args.heldout_size,
        "image_size": args.image_size,
        "dataset": args.dataset,
        "lr": args.lr,
    }
    return run_train_job(
        args.config, cli_values, wandb_mode=args.wandb, device=args.device, progress=not args.no_progress
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser("train-scorer", help="train the relevance scorer (W&B job_type=train)")
    parser.add_argument("--config", help="JSON or YAML file of training parameters")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 300)")
    parser.add_argument("--out", help="checkpoint directory (default ./scorer-checkpoint)")
    parser.add_argument("--model", help="VLM hub id or directory (default: the embedded trained VQA testbed)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--train-size", type=int, help="training samples")
    parser.add_argument("--heldout-size", type=int, help="held-out samples for recall@budget")
    parser.add_argument("--image-size", type=int, help="side of the synthetic images, pixels")
    parser.add_argument("--dataset", help="training data: vqa (default, the synthetic VQA task) or synthetic")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    add_device(parser, dtype=False)  # training runs in float32
    add_wandb_mode(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.set_defaults(func=run)
