"""Images/s of texture + relevance scoring on CPU, and where the time goes.

    python benchmarks/bench_scorer.py [--repeats 10] [--threads N] [--device cuda] [--batches 1 16 64]

For 448x448 images on a 16x16 grid and 1344x1344 on 48x48, at batch 1, 16 and 64:
images per second of ``RelevanceScorer`` (texture -> knowing -> balancing, untrained
weights, which cost the same as trained ones) and the share of each stage (stage
shares are host-side laps, so on CUDA they show launch order, not kernel time).
Each case also times the scorer without its shape stem and exploration head (the
architecture before them) in the same run, interleaved, and prints the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from arr_coc.scorer import RelevanceScorer
from arr_coc.vlm.loading import parse_device
from arr_coc_cli.commands.options import add_device

CASES = [(448, (16, 16)), (1344, (48, 48))]
BATCHES = [1, 16, 64]
QUERY_DIM = 1536  # Qwen2.5-VL-1.5B-class hidden size: the query projection is not free


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(scorer, images, grid, queries, repeats):
    with torch.inference_mode():
        scorer.score(images, grid, queries)  # warm-up
        synchronize(images.device)
        stages: dict[str, float] = {}
        start = time.perf_counter()
        for _ in range(repeats):
            for stage, ms in scorer.score(images, grid, queries).timings_ms.items():
                stages[stage] = stages.get(stage, 0.0) + ms
        synchronize(images.device)
        elapsed = time.perf_counter() - start
    return images.shape[0] * repeats / elapsed, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_device(parser, dtype=False)
    parser.add_argument("--batches", type=int, nargs="+", default=BATCHES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    scorer = RelevanceScorer(QUERY_DIM).eval().to(device)
    without_stem = RelevanceScorer(QUERY_DIM, stem_channels=0, explore_head=False).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {device}, {args.threads} threads, {args.repeats} repeats, query dim {QUERY_DIM}")
    print(f"{'image':>10} {'grid':>6} {'batch':>5} {'images/s':>9} {'no stem':>8} {'ratio':>6}   stage shares")
    for size, grid in CASES:
        for batch in args.batches:
            images = torch.rand(batch, 3, size, size, generator=generator).to(device)
            queries = torch.randn(batch, QUERY_DIM, generator=generator).to(device)
            rates, baseline = [], []
            for _ in range(2):  # interleaved, so both see the same machine
                rate, stages = measure(scorer, images, grid, queries, args.repeats)
                rates.append(rate)
                baseline.append(measure(without_stem, images, grid, queries, args.repeats)[0])
            rate, base = max(rates), max(baseline)
            total = sum(stages.values())
            shares = "  ".join(f"{name} {100 * ms / total:4.1f}%" for name, ms in stages.items())
            print(
                f"{size:>4}x{size:<5} {grid[0]:>2}x{grid[1]:<3} {batch:>5} {rate:>9.1f} {base:>8.1f} "
                f"{rate / base:>6.2f}   {shares}"
            )


if __name__ == "__main__":
    main()
