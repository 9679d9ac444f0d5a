"""Decode milliseconds per step by decode mode and batch size, and whether the modes agree.

    python benchmarks/bench_decode.py [--model testbed|qwen2.5-vl-3b|qwen2-vl-2b] [--device cuda]
        [--modes eager static graph] [--batches 1 16] [--steps 32]

One batch of drawn scenes (448x448, 25 % of the visual tokens kept, one question
each) is prefilled, then decoded for exactly ``--steps`` steps (end tokens are
ignored, so every mode and batch runs the same number of steps). Printed per mode
and batch: decode ms per step (the fastest of ``--repeats`` runs; the first run of
each mode also captures its graphs and is not counted), the ratio to eager, and
whether the greedy ids equal eager's. ``graph`` needs CUDA (elsewhere it runs as
``static``). ``qwen2.5-vl-3b`` is a random-weight model of that checkpoint's
published configuration (see ``bench_prune.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_prune import REAL_CONFIGS, random_real_size_model  # noqa: E402
from drawing import scene  # noqa: E402

from arr_coc.vlm.decoding import generate_rows, synchronize  # noqa: E402
from arr_coc.vlm.loading import load_vlm, parse_device, parse_dtype  # noqa: E402
from arr_coc.vlm.pipeline import VLMPipeline  # noqa: E402
from arr_coc.vlm.sampling import RowDecoder  # noqa: E402
from arr_coc.vlm.testbed import ensure_testbed  # noqa: E402
from arr_coc.vlm.types import AnswerRequest, GenerationParams  # noqa: E402
from arr_coc_cli.commands.options import add_device  # noqa: E402


def decode_run(pipeline: VLMPipeline, prepared, steps: int) -> tuple[float, list[list[int]]]:
    """(decode ms per step, ids per row) of one generation of exactly ``steps`` decode steps."""
    params = GenerationParams(max_new_tokens=steps + 1)
    decoders = [RowDecoder(pipeline.vlm.tokenizer, params, (), pipeline.vlm.device) for _ in prepared]
    timings: dict[str, float] = {}
    for _ in generate_rows(pipeline.vlm, [p.row for p in prepared], decoders, timings, static=pipeline.static):
        pass
    synchronize(pipeline.vlm.device)
    return timings["decode"] / steps, [d.ids for d in decoders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed", choices=["testbed", *REAL_CONFIGS])
    add_device(parser)
    parser.add_argument("--modes", nargs="+", default=["eager", "static", "graph"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    start = time.perf_counter()
    if args.model == "testbed":
        vlm = load_vlm(ensure_testbed("qwen2.5-vl"), device=device, dtype=dtype)
    else:
        vlm = random_real_size_model(args.model, device, dtype)
    print(
        f"{args.model}, {dtype}, {device}, torch {torch.__version__}, loaded in {time.perf_counter() - start:.1f} s, "
        f"{args.steps} decode steps per run"
    )
    print(f"{'mode':>7} {'batch':>5} {'ms/step':>8} {'vs eager':>8} {'ids = eager':>11} {'first run s':>11}")
    eager_ms: dict[int, float] = {}
    eager_ids: dict[int, list] = {}
    for mode in args.modes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline = VLMPipeline(vlm, decode=mode)
        for batch in args.batches:
            requests = [AnswerRequest(scene(448, 448), f"What is in part {i}?", "arr-coc", 0.25) for i in range(batch)]
            prepared = pipeline.prepare(requests, {})
            first = time.perf_counter()
            decode_run(pipeline, prepared, args.steps)  # makes (and on CUDA captures) the bucket
            first_s = time.perf_counter() - first
            runs = [decode_run(pipeline, prepared, args.steps) for _ in range(args.repeats)]
            ms = min(r[0] for r in runs)
            ids = runs[0][1]
            if mode == "eager":
                eager_ms[batch], eager_ids[batch] = ms, ids
            ratio = f"{ms / eager_ms[batch]:.2f}" if batch in eager_ms else "-"
            same = ("yes" if ids == eager_ids[batch] else "NO") if batch in eager_ids else "-"
            print(f"{pipeline.decode:>7} {batch:>5} {ms:>8.2f} {ratio:>8} {same:>11} {first_s:>11.2f}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
