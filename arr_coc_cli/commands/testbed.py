"""``arr-coc testbed``: build the offline tiny Qwen-VL models.

``arr-coc testbed build DIR --family qwen2.5-vl`` writes a checkpoint directory
that loads with ``from_pretrained`` (and ``arr-coc answer --model DIR``) with no
network; ``arr-coc testbed path`` prints (building if absent) the embedded
default that ``arr-coc answer`` and the service use without ``--model``.
"""

from __future__ import annotations

import argparse

from arr_coc.vocabulary import TESTBED_FAMILIES

FAMILIES = TESTBED_FAMILIES[1:]  # the random-weight testbeds of each family (the embedded one is shipped, not built)
DEFAULT_FAMILY = "qwen2.5-vl"


def run_build(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from arr_coc.vlm.testbed import build_testbed

    hf_logging.disable_progress_bar()
    directory = build_testbed(args.directory, args.family, args.seed)
    print(directory)
    return 0


def run_path(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from arr_coc.vlm.testbed import ensure_testbed

    hf_logging.disable_progress_bar()
    print(ensure_testbed(args.family, args.root, args.seed))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("testbed", help="build the offline tiny Qwen-VL testbed models")
    actions = parser.add_subparsers(dest="action", required=True)

    build = actions.add_parser("build", help="write a tiny random-weight model of a family into DIR")
    build.add_argument("directory", metavar="DIR")
    build.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    build.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same files)")
    build.set_defaults(func=run_build)

    path = actions.add_parser("path", help="print the cached testbed directory, building it if absent")
    path.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    path.add_argument("--root", help="cache root (default: $ARR_COC_HOME/testbed or ~/.cache/arr-coc/testbed)")
    path.add_argument("--seed", type=int, default=0)
    path.set_defaults(func=run_path)
