"""A second question about the same image: time to first token with the vision-feature cache.

    python benchmarks/bench_feature_cache.py [--models testbed,qwen2.5-vl-3b] [--device cpu] [--image 448]
        [--budget 0.25] [--questions 4]

For each model, one drawn scene and ``--questions`` different questions, answered
one after the other by a pipeline with the cache on (``post`` stage, arr-coc at
``--budget``), then by one with it off. Printed per question: TTFT with the cache,
its ratio to the first question's, the vision stage's milliseconds, and whether the
answer equals the uncached pipeline's. Target: the second question's TTFT <= 0.5x
the first's on the 3B configuration.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prune import random_real_size_model  # noqa: E402

from arr_coc.vlm.loading import load_vlm, parse_device, parse_dtype  # noqa: E402
from arr_coc.vlm.pipeline import VLMPipeline  # noqa: E402
from arr_coc.vlm.testbed import ensure_testbed  # noqa: E402
from arr_coc.vlm.types import AnswerRequest, GenerationParams  # noqa: E402
from arr_coc_cli.commands.options import add_device  # noqa: E402
from testkit.drawing import scene  # noqa: E402

QUESTIONS = [
    "Where is the red house?",
    "What is in the sky?",
    "How many windows are there?",
    "What colour is the roof?",
    "Is there a tree?",
    "What is on the left?",
]


def ttft(result) -> float:
    return result.timings_ms["total"] - result.timings_ms["decode"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="testbed,qwen2.5-vl-3b")
    add_device(parser)
    parser.add_argument("--image", type=int, default=448)
    parser.add_argument("--budget", type=float, default=0.25)
    parser.add_argument("--questions", type=int, default=4, choices=range(2, len(QUESTIONS) + 1))
    args = parser.parse_args()
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    for name in args.models.split(","):
        if name == "testbed":
            vlm = load_vlm(ensure_testbed("qwen2.5-vl"), device=device, dtype=dtype)
        else:
            vlm = random_real_size_model(name, device, dtype)
        cached = VLMPipeline(vlm, feature_cache_mb=1024)
        plain = VLMPipeline(vlm, scorer=cached.scorer)
        generation = GenerationParams(max_new_tokens=4)
        warm = AnswerRequest(scene(args.image, args.image, seed=99), "warm up", "arr-coc", args.budget, generation)
        plain.answer(warm)
        image = scene(args.image, args.image)
        requests = [AnswerRequest(image, q, "arr-coc", args.budget, generation) for q in QUESTIONS[: args.questions]]
        start = time.perf_counter()
        with_cache = [cached.answer(r) for r in requests]
        cached_s = time.perf_counter() - start
        without = [plain.answer(r) for r in requests]
        print(
            f"\n{name}, {dtype}, {device}, {args.image}x{args.image}, arr-coc {args.budget:.0%}, post; "
            f"{args.questions} questions in {cached_s:.1f} s with the cache"
        )
        print(
            f"{'question':>8} {'cached':>6} {'TTFT ms':>9} {'vs first':>8} {'vision ms':>9} {'uncached TTFT':>13} "
            f"{'same answer':>11}"
        )
        first = ttft(with_cache[0])
        for i, (a, b) in enumerate(zip(with_cache, without), start=1):
            same = "yes" if a.token_ids == b.token_ids else "NO"
            print(
                f"{i:>8} {str(a.vision_cached):>6} {ttft(a):>9.1f} {ttft(a) / first:>8.2f} "
                f"{a.timings_ms['vision']:>9.1f} {ttft(b):>13.1f} {same:>11}"
            )
        del cached, plain, vlm


if __name__ == "__main__":
    with torch.inference_mode():
        main()
