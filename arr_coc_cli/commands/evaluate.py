"""``arr-coc eval``: run a variant over a dataset, tracked as a W&B job (``job_type=eval``)."""

from __future__ import annotations

import argparse

from arr_coc.vocabulary import COVERAGE_MEANING, STAGES
from arr_coc_cli.commands.options import add_device, add_method, add_wandb_mode, parse_budget


def run(args: argparse.Namespace) -> int:
    from training_hooks.jobs.eval_job import run_eval_job

    values = {
        "variant": args.variant or "",
        "method": args.method or "",
        "budget": args.budget,
        "coverage": args.coverage,
        "stage": args.stage,
        "dataset": args.dataset,
        "size": args.size,
        "limit": args.limit,
        "seed": args.seed,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "model": args.model or "",
        "scorer": args.scorer or "",
        "fidelity": args.fidelity,
    }
    return run_eval_job(
        {k: v for k, v in values.items() if v is not None}, wandb_mode=args.wandb, device=args.device, dtype=args.dtype
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a variant on a dataset (W&B job_type=eval)")
    parser.add_argument("--variant", help="a registered variant, e.g. arr-coc-25, uniform-10, full")
    add_method(parser, None, "ad-hoc variant: its selection method")
    parser.add_argument("--budget", type=parse_budget, help="ad-hoc variant: tokens kept, a count, a ratio or auto")
    parser.add_argument("--coverage", type=float, help=f"with an auto budget: {COVERAGE_MEANING}")
    parser.add_argument(
        "--stage",
        choices=STAGES,
        help="ad-hoc variant: select after the vision tower (post) or before it (pre)",
    )
    parser.add_argument("--dataset", default="vqa", help="dataset name (built in: vqa, synthetic)")
    parser.add_argument("--size", type=int, default=64, help="samples in the held-out split")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=336, help="side of the synthetic images, pixels")
    parser.add_argument("--batch-size", type=int, default=1, help="requests per answer_batch call")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument(
        "--fidelity",
        action="store_true",
        help="also answer with every token and log answer fidelity and first-token KL against those answers",
    )
    parser.add_argument("--model", help="VLM hub id or directory (default: the embedded trained VQA testbed)")
    parser.add_argument("--scorer", help="relevance scorer checkpoint directory (default: the variant's)")
    add_device(parser)
    add_wandb_mode(parser)
    parser.set_defaults(func=run)
