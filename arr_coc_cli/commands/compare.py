"""``arr-coc compare``: a variants x metrics table and PNG plots from W&B runs."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from training_hooks.comparison.compare import run_compare

    return run_compare(args.sources, args.out)


def register(subparsers) -> None:
    parser = subparsers.add_parser("compare", help="compare variants across W&B runs (table + PNG plots)")
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="RUN_DIR_OR_PROJECT",
        help="offline run folder, .wandb file, folder of runs, or entity/project (online)",
    )
    parser.add_argument("--out", default="compare-plots", help="folder for the PNG plots")
    parser.set_defaults(func=run)
