"""The ``arr-coc`` command line (also ``python -m arr_coc_cli``).

Each sub-command lives in ``arr_coc_cli/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys

from arr_coc.errors import ArrCocError
from arr_coc_cli.commands import (
    answer,
    calibrate,
    capacity,
    compare,
    dashboard,
    distill_scorer,
    evaluate,
    export_questions,
    models,
    quality,
    recipe,
    relevance,
    testbed,
    train_scorer,
    train_testbed,
)

COMMANDS = [
    relevance,
    testbed,
    answer,
    models,
    calibrate,
    train_scorer,
    train_testbed,
    distill_scorer,
    recipe,
    evaluate,
    compare,
    quality,
    dashboard,
    export_questions,
    capacity,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arr-coc", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The exit status: 0, or 2 for bad input (argparse's own errors included, its message printed)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except ArrCocError as error:
        print(f"arr-coc {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
