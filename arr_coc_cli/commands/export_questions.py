"""``arr-coc export-questions``: the requests serve runs sampled, as one question file (JSONL + images)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from training_hooks.tracking.serve_samples import export_questions

    report = export_questions(args.runs, args.out, limit=args.limit)
    skipped = ", ".join(f"{reason}: {count}" for reason, count in sorted(report.skipped.items()))
    print(
        f"wrote {report.questions} questions about {report.images} images from {report.runs} serve runs "
        f"to {report.out} (images in {report.images_dir})" + (f"; skipped {skipped}" if skipped else "")
    )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-questions", help="sampled serve requests -> a question file for label-free quality and distillation"
    )
    parser.add_argument(
        "--runs", required=True, help="an offline run folder, a .wandb file, or a folder of runs (e.g. WANDB_DIR)"
    )
    parser.add_argument("--out", required=True, help="the JSONL to write; its images go to <name>-images/ beside it")
    parser.add_argument("--limit", type=_positive, help="at most this many questions")
    parser.set_defaults(func=run)
