"""In-process throughput by batch size and budget: requests/s and where a batch's time goes.

    python benchmarks/bench_batch.py [--model testbed|qwen2.5-vl-3b] [--device cuda] [--decode auto]
        [--batches 1 8 16 32] [--budgets 1.0 0.25 0.1] [--new-tokens 16]

Each batch is ``B`` drawn scenes (448x448, a different question each) answered by
one ``VLMPipeline.answer_batch`` call: one vision-tower call, one scorer call per
image size, one prefill, one decode loop. Printed per budget and batch: requests
per second (fastest of ``--repeats``), its ratio to batch 1 at that budget, and
each stage's milliseconds for the whole batch (vision, scoring, prefill, decode).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prune import REAL_CONFIGS, random_real_size_model  # noqa: E402

from arr_coc.vlm.loading import load_vlm, parse_device, parse_dtype  # noqa: E402
from arr_coc.vlm.pipeline import VLMPipeline  # noqa: E402
from arr_coc.vlm.testbed import ensure_testbed  # noqa: E402
from arr_coc.vlm.types import AnswerRequest, GenerationParams  # noqa: E402
from arr_coc_cli.commands.options import add_device  # noqa: E402
from testkit.drawing import scene  # noqa: E402

STAGES = ("vision", "scoring", "prefill", "decode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed", choices=["testbed", *REAL_CONFIGS])
    add_device(parser)
    parser.add_argument("--decode", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.25, 0.1])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    if args.model == "testbed":
        vlm = load_vlm(ensure_testbed("qwen2.5-vl"), device=device, dtype=dtype)
    else:
        vlm = random_real_size_model(args.model, device, dtype)
    pipeline = VLMPipeline(vlm, decode=args.decode)
    pipeline.warm_up(tuple(args.batches))
    print(f"{args.model}, {dtype}, {device}, {pipeline.decode} decode, {args.new_tokens} new tokens, 448x448 scenes")
    print(f"{'budget':>6} {'batch':>5} {'req/s':>8} {'vs b=1':>7} " + " ".join(f"{s + ' ms':>11}" for s in STAGES))
    generation = GenerationParams(max_new_tokens=args.new_tokens)
    for budget in args.budgets:
        single = None
        for batch in args.batches:
            requests = [
                AnswerRequest(scene(448, 448), f"What is in part {i}?", "arr-coc", budget, generation)
                for i in range(batch)
            ]
            best, stages = float("inf"), {}
            for _ in range(args.repeats):
                start = time.perf_counter()
                results = pipeline.answer_batch(requests)
                elapsed = time.perf_counter() - start
                if elapsed < best:
                    best, stages = elapsed, results[0].timings_ms
            rate = batch / best
            single = single or rate
            print(
                f"{budget:>6.0%} {batch:>5} {rate:>8.1f} {rate / single:>7.2f} "
                + " ".join(f"{stages.get(s, 0.0):>11.1f}" for s in STAGES)
            )


if __name__ == "__main__":
    main()
