"""``arr-coc models import``: put the VLM and the scorer into the BentoML model store.

The store lives in the serving layer, so this command imports ``runners.store``
only when it runs; ``import arr_coc`` stays free of bentoml.
"""

from __future__ import annotations

import argparse
import importlib

from arr_coc.settings import get_settings
from arr_coc.vlm.testbed import ensure_testbed


def run_import(args: argparse.Namespace) -> int:
    vlm = args.vlm or str(ensure_testbed(args.testbed, get_settings().home / "testbed"))
    store = importlib.import_module("runners.store")
    for tag in store.import_models(vlm, args.scorer):
        print(tag)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="manage the models bentos bundle")
    actions = parser.add_subparsers(dest="action", required=True)
    importer = actions.add_parser("import", help="copy the VLM (and scorer) into the BentoML model store")
    source = importer.add_mutually_exclusive_group(required=True)
    source.add_argument("--vlm", help="VLM checkpoint directory or hub id")
    source.add_argument("--testbed", choices=["qwen2-vl", "qwen2.5-vl", "qwen3-vl"], help="the embedded testbed")
    importer.add_argument("--scorer", help="relevance-scorer checkpoint directory")
    importer.set_defaults(func=run_import)
