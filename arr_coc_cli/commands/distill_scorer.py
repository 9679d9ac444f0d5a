"""``arr-coc distill-scorer``: a relevance scorer taught by the VLM itself, no labels (W&B job_type=distill).

Flags override the ``--config`` file (JSON/YAML, keys as in
``arr_coc.distill.config.DistillConfig``); W&B Launch overrides win over both.
"""

from __future__ import annotations

import argparse

from arr_coc_cli.commands.options import add_device, add_wandb_mode


def run(args: argparse.Namespace) -> int:
    from training_hooks.jobs.distill_job import run_distill_job

    layers = args.layers if args.layers in (None, "auto") else tuple(float(x) for x in args.layers.split(","))
    cli_values = {
        "model": args.model,
        "images": args.images,
        "questions": args.questions,
        "self_questions": args.self_questions,
        "teacher": args.teacher,
        "teacher_layers": layers,
        "shard": args.shard,
        "maps": args.maps,
        "out": args.out,
        "steps": args.steps,
        "train_size": args.train_size,
        "heldout_size": args.heldout_size,
        "seed": args.seed,
    }
    return run_distill_job(
        args.config,
        cli_values,
        wandb_mode=args.wandb,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )


def _layers(text: str) -> str:
    if text == "auto":
        return text
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"--layers is LO,HI (fractions of the decoder stack), got {text!r}")
    for part in parts:
        try:
            float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--layers is LO,HI with numbers, got {text!r}") from None
    return text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill-scorer", help="train a relevance scorer from the VLM's own attention or attribution (no labels)"
    )
    parser.add_argument("--config", help="JSON or YAML file of distillation parameters")
    parser.add_argument("--model", help="VLM hub id or directory (default: the embedded testbed)")
    parser.add_argument("--images", help="folder of images to distil from")
    parser.add_argument("--questions", help='JSONL file of {"image": path, "question": text} lines')
    parser.add_argument("--self-questions", type=int, help="questions the VLM writes about each image of --images")
    parser.add_argument("--teacher", help="attention (default), attribution, or labels (the synthetic task)")
    parser.add_argument(
        "--layers",
        type=_layers,
        help="attention: decoder layers LO,HI as fractions, or auto (default: the range whose top tokens keep "
        "the model's own answers best)",
    )
    parser.add_argument("--shard", help="K/N: compute only this shard of the teacher maps, then stop")
    parser.add_argument("--maps", help="folder of teacher-map shards (default <out>/teacher-maps)")
    parser.add_argument("--out", help="checkpoint directory (default ./distilled-scorer)")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--train-size", type=int, help="synthetic task: training pairs")
    parser.add_argument("--heldout-size", type=int, help="synthetic task: held-out samples")
    parser.add_argument("--seed", type=int)
    add_device(parser)  # the VLM's dtype; the scorer trains in float32
    add_wandb_mode(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.set_defaults(func=run)
