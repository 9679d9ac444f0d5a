"""The ``arr-coc`` command line (also ``python -m arr_coc``).

Each sub-command lives in ``arr_coc/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from arr_coc.errors import ArrCocError

COMMAND_MODULES = [
    "arr_coc.commands.relevance",
    "arr_coc.commands.testbed",
    "arr_coc.commands.answer",
    "arr_coc.commands.models",
    "arr_coc.commands.calibrate",
    "training_hooks.commands.train_scorer",
    "training_hooks.commands.train_testbed",
    "training_hooks.commands.evaluate",
    "training_hooks.commands.compare",
    "training_hooks.commands.quality",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arr-coc", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ArrCocError as error:
        print(f"arr-coc {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
