"""``arr-coc models import``: put the VLM and the scorer into the BentoML model store.

With no flags it imports the embedded default, the trained VQA testbed and its
trained scorer shipped in the package, so ``bentoml build`` works on a fresh clone
without training anything. A scorer whose ``trained_for`` record names another VLM
than ``--vlm`` is refused before anything is stored (:mod:`arr_coc.provenance`). The store lives in the serving layer (``model_store.store``),
imported when the command runs.
"""

from __future__ import annotations

import argparse

from arr_coc.settings import get_settings
from arr_coc.vocabulary import TESTBED_FAMILIES


def run_import(args: argparse.Namespace) -> int:
    from arr_coc.vlm.testbed import EMBEDDED, EMBEDDED_SCORER, testbed_source

    testbed = args.testbed or (None if args.vlm else EMBEDDED)
    vlm = args.vlm or str(testbed_source(testbed, get_settings().home / "testbed"))
    scorer = args.scorer or (str(EMBEDDED_SCORER) if testbed == EMBEDDED else None)
    from model_store.store import import_models

    for tag in import_models(vlm, scorer):
        print(tag)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="manage the models bentos bundle")
    actions = parser.add_subparsers(dest="action", required=True)
    importer = actions.add_parser(
        "import", help="copy the VLM (and scorer) into the BentoML model store (default: the embedded pair)"
    )
    source = importer.add_mutually_exclusive_group()
    source.add_argument("--vlm", help="VLM checkpoint directory or hub id")
    source.add_argument(
        "--testbed",
        choices=list(TESTBED_FAMILIES),
        help=f"a testbed: {TESTBED_FAMILIES[0]} (the default, trained, with its scorer) or a random-weight family",
    )
    importer.add_argument(
        "--scorer",
        help="relevance-scorer checkpoint directory, trained for this VLM: one recording another is refused "
        "(default: the embedded one with the embedded testbed, else none)",
    )
    importer.set_defaults(func=run_import)
