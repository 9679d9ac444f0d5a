"""``arr-coc dashboard``: a W&B workspace comparing the variants (``--dry-run`` prints it instead of saving)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from training_hooks.comparison.dashboard import build_workspace, outline, save

    workspace = build_workspace(args.entity, args.project, args.deployment, args.name)
    if args.dry_run:
        print(outline(workspace))
        return 0
    print(save(workspace))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("dashboard", help="create a W&B workspace comparing variants (wandb-workspaces)")
    parser.add_argument("--entity", required=True, help="W&B entity (user or team)")
    parser.add_argument("--project", default="arr-coc", help="W&B project of the serve and eval runs")
    parser.add_argument("--deployment", help="only this deployment's serve runs (eval runs always shown)")
    parser.add_argument("--name", default="ARR-COC variants", help="workspace name")
    parser.add_argument("--dry-run", action="store_true", help="print the workspace model, send nothing")
    parser.set_defaults(func=run)
