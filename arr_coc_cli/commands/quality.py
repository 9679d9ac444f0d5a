"""``arr-coc quality``: accuracy, target recall and answer fidelity of every method at every budget on the
held-out split, or answer fidelity alone on the user's own questions (``--fidelity --images DIR | --questions FILE``)."""

from __future__ import annotations

import argparse

from arr_coc.vocabulary import METHODS, PRE_METHODS, PRUNING_METHODS, STAGES
from arr_coc_cli.commands.options import add_device, add_wandb_mode


def run(args: argparse.Namespace) -> int:
    from training_hooks.jobs.quality_job import run_quality_job

    values = {
        "size": args.size,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "out": args.out,
        "model": args.model,
        "scorer": args.scorer,
        "dataset": args.dataset,
        "methods": args.methods,
        "budgets": args.budgets,
        "stages": args.stages,
        "split": args.split,
        "coverages": args.coverages,
        "fidelity": args.fidelity or None,
        "images": args.images,
        "questions": args.questions,
        "self_questions": args.self_questions,
        "question_prompt": args.question_prompt,
        "max_new_tokens": args.max_new_tokens,
    }
    return run_quality_job(
        {k: v for k, v in values.items() if v is not None}, wandb_mode=args.wandb, device=args.device, dtype=args.dtype
    )


def _budget(text: str) -> float | str:
    return text if text == "auto" else float(text)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quality", help="the quality table: every method x budget, accuracy and fidelity (W&B eval runs)"
    )
    parser.add_argument(
        "--size", type=int, help="held-out samples, or at most this many of your questions (default 300)"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-size", type=int, help="requests per answer_batch call (default 8)")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, help=f"methods besides full (default: {', '.join(PRUNING_METHODS)})"
    )
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=_budget,
        help="kept ratios or auto (default 0.03 0.05 0.1 0.25 0.5 auto: auto rows for every method)",
    )
    parser.add_argument(
        "--coverages", nargs="+", type=float, help="coverages of the auto budget (default: the served one)"
    )
    parser.add_argument(
        "--split",
        choices=["heldout", "train"],
        help="heldout (default) for the table; train with an unused --seed to tune settings",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        help=f"pruning stages (default both; pre only for {', '.join(PRE_METHODS)})",
    )
    parser.add_argument("--dataset", help="dataset name (default vqa)")
    parser.add_argument("--model", help="VLM directory or hub id (default: the embedded trained testbed)")
    parser.add_argument("--scorer", help="scorer checkpoint (default: the embedded one with the embedded model)")
    parser.add_argument("--out", help="folder for quality.md, quality.json and the plots (default ./quality)")
    parser.add_argument(
        "--fidelity",
        action="store_true",
        help="answer fidelity on your own questions (no answers needed): with --images or --questions",
    )
    parser.add_argument("--images", metavar="DIR", help="a folder of images to ask questions about")
    parser.add_argument(
        "--questions", metavar="FILE", help='a JSONL of {"image": path, "question": text} lines (export-questions)'
    )
    parser.add_argument(
        "--self-questions",
        type=int,
        metavar="N",
        help="with --images: the VLM writes N questions per image (default: the task's three templates)",
    )
    parser.add_argument("--question-prompt", help="what --self-questions asks the VLM ({n} = N)")
    parser.add_argument("--max-new-tokens", type=int, help="max new tokens of each answer (default 4)")
    add_device(parser)
    add_wandb_mode(parser)
    parser.set_defaults(func=run)
