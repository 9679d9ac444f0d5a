"""Decode milliseconds per step by decode mode and batch size, and whether the modes agree.

    python benchmarks/bench_decode.py [--model testbed|qwen2.5-vl-3b|qwen2-vl-2b] [--device cuda]
        [--modes eager static graph step] [--batches 1 16] [--steps 32]

One batch of drawn scenes (448x448, 25 % of the visual tokens kept, one question
each) is prefilled, then decoded for exactly ``--steps`` steps (end tokens are
ignored, so every mode and batch runs the same number of steps). Printed per mode
and batch: decode ms per step (the fastest of ``--repeats`` runs; the first run of
each mode also captures its graphs and is not counted), the ratio to eager, and
whether the greedy ids equal eager's. ``graph`` needs CUDA (elsewhere it runs as
``static``). ``step`` is the step scheduler's slot cache (graph-captured on CUDA):
the same rows submitted together, each step timed as the scheduler times it. Where a
mode's ids differ from eager's, the top-2 logit margin of eager's logits at the first
differing step says whether it is a near tie (kernel rounding) or a real difference.
``qwen2.5-vl-3b`` is a random-weight model of that checkpoint's published
configuration (see ``bench_prune.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prune import REAL_CONFIGS, random_real_size_model  # noqa: E402

from arr_coc.vlm import decoding  # noqa: E402
from arr_coc.vlm.decoding import generate_rows, synchronize  # noqa: E402
from arr_coc.vlm.loading import load_vlm, parse_device, parse_dtype  # noqa: E402
from arr_coc.vlm.pipeline import VLMPipeline  # noqa: E402
from arr_coc.vlm.sampling import RowDecoder  # noqa: E402
from arr_coc.vlm.scheduler import StepScheduler  # noqa: E402
from arr_coc.vlm.static_decoding import length_bucket  # noqa: E402
from arr_coc.vlm.testbed import ensure_testbed  # noqa: E402
from arr_coc.vlm.types import AnswerRequest, GenerationParams  # noqa: E402
from arr_coc_cli.commands.options import add_device  # noqa: E402
from testkit.drawing import scene  # noqa: E402


def decode_run(pipeline: VLMPipeline, prepared, steps: int) -> tuple[float, list[list[int]]]:
    """(decode ms per step, ids per row) of one generation of exactly ``steps`` decode steps."""
    params = GenerationParams(max_new_tokens=steps + 1)
    decoders = [RowDecoder(pipeline.vlm.tokenizer, params, (), pipeline.vlm.device) for _ in prepared]
    timings: dict[str, float] = {}
    for _ in generate_rows(pipeline.vlm, [p.row for p in prepared], decoders, timings, static=pipeline.static):
        pass
    synchronize(pipeline.vlm.device)
    return timings["decode"] / steps, [d.ids for d in decoders]


MARGINS: list[list[float]] = []  # per decode step of the run being recorded: each row's top-2 logit margin


def recording_push(push):
    """``decoding._push`` that also records each row's top-2 logit margin (a host sync: for this benchmark only)."""

    def wrapped(decoders, logits):
        top = logits.float().topk(2, dim=-1).values
        MARGINS.append((top[:, 0] - top[:, 1]).tolist())
        return push(decoders, logits)

    return wrapped


def step_run(scheduler: StepScheduler, prepared, steps: int) -> tuple[float, list[list[int]]]:
    """(ms per step, ids per row) of the rows decoded together by the step scheduler."""
    spent: list[float] = []
    scheduler.observer = lambda stats: spent.append(stats.step_ms)
    params = GenerationParams(max_new_tokens=steps + 1)
    tickets = []
    for p in prepared:
        p.request.generation = params
        tickets.append(scheduler.submit(p.request))
    while scheduler.iterate():
        pass
    return sum(spent) / max(1, len(spent)), [t.wait(0).token_ids for t in tickets]


def first_difference(ids: list[list[int]], reference: list[list[int]], margins: list[list[float]]) -> str:
    """``row r step s: margin m`` of the first differing step of each differing row (eager's margins)."""
    notes = []
    for row, (got, want) in enumerate(zip(ids, reference)):
        step = next((s for s, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if step is not None and step < len(margins) and row < len(margins[step]):
            notes.append(f"row {row} step {step}: top-2 margin {margins[step][row]:.4f}")
    return "; ".join(notes[:4])


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
    eager_margins: dict[int, list[list[float]]] = {}
    for mode in args.modes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decode = ("graph" if device.type == "cuda" else "static") if mode == "step" else mode
            pipeline = VLMPipeline(vlm, decode=decode)
        scheduler = None
        for batch in args.batches:
            requests = [AnswerRequest(scene(448, 448), f"What is in part {i}?", "arr-coc", 0.25) for i in range(batch)]
            prepared = pipeline.prepare(requests, {})
            if mode == "step":
                longest = max(p.row.length for p in prepared) + args.steps + 2
                scheduler = StepScheduler(pipeline, rows=max(args.batches), cache_tokens=length_bucket(longest))
                scheduler.cache.warm_up()

                def run():
                    return step_run(scheduler, prepared, args.steps)
            else:

                def run():
                    return decode_run(pipeline, prepared, args.steps)

            first = time.perf_counter()
            run()  # makes (and on CUDA captures) the bucket
            first_s = time.perf_counter() - first
            MARGINS.clear()
            runs = [run()]
            margins = list(MARGINS)
            runs += [run() for _ in range(args.repeats - 1)]
            ms = min(r[0] for r in runs)
            ids = [row[: args.steps + 1] for row in runs[0][1]]
            if mode == "eager":
                eager_ms[batch], eager_ids[batch], eager_margins[batch] = ms, ids, margins
            ratio = f"{ms / eager_ms[batch]:.2f}" if batch in eager_ms else "-"
            same = "-"
            if batch in eager_ids:
                reference = [row[: len(got)] for row, got in zip(eager_ids[batch], ids)]
                same = "yes" if ids == reference else "NO"
            label = "step" if mode == "step" else pipeline.decode
            print(f"{label:>7} {batch:>5} {ms:>8.2f} {ratio:>8} {same:>11} {first_s:>11.2f}")
            if same == "NO":
                print(f"        first differences: {first_difference(ids, eager_ids[batch], eager_margins[batch])}")


if __name__ == "__main__":
    decoding._push = recording_push(decoding._push)
    with torch.no_grad():
        main()
