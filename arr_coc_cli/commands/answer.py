"""``arr-coc answer IMAGE QUESTION``: answer from the relevance-pruned visual tokens.

Without ``--model`` the VLM is the embedded default: the VQA testbed shipped in the
package with its scorer, trained on the synthetic VQA task (it answers that task's
questions); ``--model`` takes a hub id or a checkpoint directory of Qwen2-VL,
Qwen2.5-VL or Qwen3-VL.
"""

from __future__ import annotations

import argparse
import json
import sys

from arr_coc.vocabulary import COVERAGE_MEANING, DECODE_MODES, PRE_METHODS, STAGES
from arr_coc_cli.commands.options import add_device, add_method, parse_budget


def result_json(result) -> dict:
    """The ``--json`` object: answer, token_ids, kept_tokens, total_tokens, kept, timings_ms (+ grid)."""
    return {
        "answer": result.answer,
        "token_ids": list(result.token_ids),
        "kept_tokens": result.kept_tokens,
        "total_tokens": result.total_tokens,
        "kept": result.kept.tolist(),
        "grid": list(result.grid),
        "timings_ms": {stage: round(ms, 3) for stage, ms in result.timings_ms.items()},
    }


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from arr_coc.adaptive import auto_budget
    from arr_coc.images import load_image
    from arr_coc.vlm.pipeline import VLMPipeline
    from arr_coc.vlm.types import AnswerRequest, GenerationParams

    hf_logging.disable_progress_bar()
    pipeline = VLMPipeline.from_pretrained(
        args.model, scorer=args.scorer, device=args.device, dtype=args.dtype, decode=args.decode
    )
    request = AnswerRequest(
        image=load_image(args.image),
        question=args.question,
        method=args.method,
        budget=auto_budget(args.coverage) if args.budget == "auto" else args.budget,
        stage=args.stage,
        generation=GenerationParams(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            stop=tuple(args.stop),
            seed=args.seed,
        ),
    )
    if args.stream and not args.json:
        stream = pipeline.stream(request)
        for delta in stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        result = stream.result
    else:
        result = pipeline.answer(request)
        if args.json:
            print(json.dumps(result_json(result)))
            return 0
        print(result.answer)
    timings = ", ".join(f"{stage} {ms:.1f} ms" for stage, ms in result.timings_ms.items())
    print(
        f"kept {result.kept_tokens} of {result.total_tokens} visual tokens "
        f"(grid {result.grid[0]}x{result.grid[1]}, {args.method}); {timings}",
        file=sys.stderr,
    )
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("answer", help="answer a question about an image from the kept visual tokens")
    parser.add_argument("image", help="image file")
    parser.add_argument("question")
    parser.add_argument("--model", help="hub id or checkpoint directory (default: the embedded trained VQA testbed)")
    add_method(parser, "arr-coc", "selection method")
    parser.add_argument(
        "--budget",
        type=parse_budget,
        default=0.25,
        help="tokens kept: a count, a ratio, or auto (as many as the question needs)",
    )
    parser.add_argument(
        "--coverage",
        type=float,
        default=None,
        help=f"with --budget auto: {COVERAGE_MEANING}",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sampling and of the random method")
    parser.add_argument("--scorer", help="relevance scorer checkpoint directory (default: untrained, seeded)")
    add_device(parser)
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="post",
        help="post: select from the vision tower's outputs; pre: select first, run the tower on the "
        f"kept tokens only ({', '.join(('none', *PRE_METHODS))})",
    )
    parser.add_argument(
        "--decode",
        choices=DECODE_MODES,
        default="auto",
        help="decode loop: auto (CUDA graphs on CUDA, eager on CPU), eager, static, graph",
    )
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)
